"""quarantine: list what the features job rejected, and replay it once the rule or the data is fixed.

Every rejected record sits in quarantine/events/batch_id=N/ with its raw line, the reason, its source file and
line number; (batch_id, source_file, line_number) is its key. A replay writes the chosen open records as one new
landing file (landing/events/replay-<id>.jsonl), so they go through the real job and the current rules again, and
records their keys in quarantine/replayed/<id>.json. From then on those entries are closed: a record is either
accepted on replay (and counted in that batch), or quarantined again under the new batch with its new reason, never
both open in quarantine and accepted. The replay id is a hash of the keys and the lines, so running the same replay
twice lands nothing the second time.

File-level entries (an empty file, an unreadable or wrongly-shaped Parquet file) have no line to replay: fix the file
and land it again.

Run:
  tidal quarantine list [--reason R]
  tidal quarantine export --out FILE [--reason R]      # one JSON object per open record: {"key", "reason", "record"}
  tidal quarantine replay [--reason R ...] [--batch-ids N ...] [--fixed FILE]
    --fixed: an edited export; each line's "record" replaces the raw line of the entry with that key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from tidal.config import Settings, load_settings
from tidal.storage import StorageLayout, atomic_write_bytes, atomic_write_json, partition_value, read_json


COLUMNS = ["batch_id", "source_file", "line_number", "quarantine_reason", "raw_record"]


def record_key(batch_id: int, source_file: str, line_number: int) -> str:
    return f"{int(batch_id)}:{source_file}:{int(line_number)}"


def replayed_keys(layout: StorageLayout) -> set[str]:
    folder = layout.root / "quarantine" / "replayed"
    return {key for p in folder.glob("*.json") for key in read_json(p)["keys"]} if folder.exists() else set()


def open_records(layout: StorageLayout) -> pd.DataFrame:
    """Every quarantined record not yet replayed, with its key."""
    frames = []
    for folder in sorted(layout.quarantine_events.glob("batch_id=*")):
        if not (folder / "_SUCCESS").exists():
            continue  # a batch still being written (or killed mid-write and about to be replayed)
        frame = pd.read_parquet(folder)
        frame["batch_id"] = partition_value(folder)
        frames.append(frame[COLUMNS])
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "key"])
    records = pd.concat(frames, ignore_index=True)
    records["key"] = [record_key(b, f, n) for b, f, n in
                      zip(records["batch_id"], records["source_file"], records["line_number"])]
    closed = replayed_keys(layout)
    return records[~records["key"].isin(closed)].sort_values(["batch_id", "source_file", "line_number"]) \
        .reset_index(drop=True)


def replay(layout: StorageLayout, reasons: list[str] | None = None, batch_ids: list[int] | None = None,
           fixed: dict[str, str] | None = None) -> dict[str, Any]:
    """Land the chosen open records again (fixed lines where given); returns what was replayed."""
    records = open_records(layout)
    if reasons:
        records = records[records["quarantine_reason"].isin(reasons)]
    if batch_ids:
        records = records[records["batch_id"].isin(batch_ids)]
    if fixed is not None:
        records = records[records["key"].isin(fixed)]
    # Line 0 is a whole file (empty, unreadable or wrongly-shaped Parquet): nothing line-wise to land again.
    file_level = records["raw_record"].isna() | (records["line_number"] == 0)
    skipped = int(file_level.sum())
    records = records[~file_level]
    if records.empty:
        return {"status": "nothing_to_replay", "records": 0, "skipped_file_level": skipped}
    lines = [fixed[k] if fixed is not None else raw for k, raw in zip(records["key"], records["raw_record"])]
    keys = records["key"].tolist()
    replay_id = hashlib.sha256(json.dumps([keys, lines]).encode()).hexdigest()[:16]
    landing_file = layout.landing_events / f"replay-{replay_id}.jsonl"
    ledger = layout.root / "quarantine" / "replayed" / f"{replay_id}.json"
    # Landing file first, then the ledger: a crash between them leaves a replay that the same command completes
    # (same id, same file name) without landing the records twice.
    if not landing_file.exists():
        atomic_write_bytes(landing_file, ("\n".join(line.replace("\n", " ") for line in lines) + "\n").encode())
    reason_counts = records["quarantine_reason"].value_counts().sort_index().to_dict()
    summary = {"status": "replayed", "replay_id": replay_id, "records": len(keys), "landing_file": str(landing_file),
               "reasons": {k: int(v) for k, v in reason_counts.items()}, "skipped_file_level": skipped}
    atomic_write_json(ledger, {**summary, "keys": keys})
    return summary


def export_open(layout: StorageLayout, out: Path, reasons: list[str] | None = None) -> int:
    records = open_records(layout)
    if reasons:
        records = records[records["quarantine_reason"].isin(reasons)]
    records = records[records["raw_record"].notna() & (records["line_number"] != 0)]
    out.write_text("".join(json.dumps({"key": k, "reason": r, "record": raw}) + "\n" for k, r, raw in
                           zip(records["key"], records["quarantine_reason"], records["raw_record"])))
    return len(records)


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal quarantine", description="List, export and replay quarantined records.")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="open records per reason")
    listing.add_argument("--reason", action="append")
    export = sub.add_parser("export", help="open records as JSON lines, to fix by hand")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--reason", action="append")
    again = sub.add_parser("replay", help="land open records again, as they are or fixed")
    again.add_argument("--reason", action="append")
    again.add_argument("--batch-ids", type=int, nargs="+")
    again.add_argument("--fixed", type=Path, help="an edited export: its records replace the raw lines")
    args = parser.parse_args(argv)
    layout = StorageLayout((settings or load_settings()).home).ensure()
    if args.command == "list":
        records = open_records(layout)
        if args.reason:
            records = records[records["quarantine_reason"].isin(args.reason)]
        counts = records["quarantine_reason"].value_counts().sort_index()
        print(json.dumps({"open": len(records), "reasons": {k: int(v) for k, v in counts.items()}}, indent=2))
    elif args.command == "export":
        print(json.dumps({"exported": export_open(layout, args.out, args.reason), "out": str(args.out)}))
    else:
        fixed = None
        if args.fixed:
            fixed = {}
            for line in args.fixed.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    record = entry["record"]
                    fixed[entry["key"]] = record if isinstance(record, str) else json.dumps(record)
        print(json.dumps(replay(layout, args.reason, args.batch_ids, fixed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
