"""A day of 5-minute cycles through the real features job: how many bronze files it leaves, with compaction.

Not a test. Run: `PYTHONPATH=. .venv/bin/python benchmarks/features/compaction_day.py [--cycles 288]`
Each cycle lands one generated file (5 minutes of events, `generate.file_interval_s` = 300) and runs `run_features`,
as `tidal_incremental` does every 5 minutes. After every cycle it counts the Parquet files and batch folders under
bronze/events (what a reader lists; `_trash/` excluded) and the files the batches wrote in all (what would be
there without compaction). Finally one more file, two days and an hour later, moves the watermark past the day's
end, so the day is closed and compacted to `features.bronze_files_per_date` files. Params are the shipped ones
(`local[2]`, 4 shuffle partitions, 2 days of allowed lateness), except `generate.events_per_file`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def bronze_listing(bronze: Path) -> dict[str, int]:
    """Files and batch folders a reader of bronze lists (hidden _trash / _compacting-* folders are skipped)."""
    dates = [d for d in bronze.glob("event_date=*")]
    return {"files": sum(len(list(d.glob("batch_id=*/*.parquet"))) for d in dates),
            "batch_folders": sum(len(list(d.glob("batch_id=*"))) for d in dates),
            "max_files_per_date": max((len(list(d.glob("batch_id=*/*.parquet"))) for d in dates), default=0),
            "dates": len(dates)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=288, help="5-minute cycles to run (288 = one day)")
    parser.add_argument("--events-per-file", type=int, default=35, help="events per 5-minute file (35 ~ 10k a day)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("compaction_day.json"))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tidal-compaction-")) / "home"
    os.environ["TIDAL_HOME"] = str(home)

    from devtools.generate import generate_stream
    from jobs.features.stream import run_features
    from tidal.config import load_settings
    from tidal.storage import StorageLayout

    overrides = {"generate": {"events_per_file": args.events_per_file}}
    settings = load_settings(overrides=overrides)
    layout = StorageLayout(settings.home).ensure()
    params = settings.params
    written, compactions, trace = 0, [], []
    started = time.monotonic()
    for cycle in range(args.cycles):
        listed_before = bronze_listing(layout.bronze_events)["files"]
        generate_stream(layout, params.generate, seed=1, files=1, event_types=params.base.event_types)
        summary = run_features(settings)
        trace.append({"cycle": cycle + 1, **bronze_listing(layout.bronze_events)})
        compacted = summary["compaction"]["compacted"]
        # listed now = listed before + written by the batch - what this cycle's compactions removed.
        written += trace[-1]["files"] - listed_before + sum(c["files_before"] - c["files_after"] for c in compacted)
        compactions += [{"cycle": cycle + 1, **c} for c in compacted]
        if (cycle + 1) % 24 == 0:
            print(f"cycle {cycle + 1}/{args.cycles}: {trace[-1]} ({time.monotonic() - started:.0f} s)", flush=True)
    day = bronze_listing(layout.bronze_events)

    # One file an hour past the allowed lateness after the last simulated midnight: the watermark (newest event -
    # lateness) passes the end of every simulated date. generate_stream times file k at start_time + k * interval,
    # so the start is moved to put file number `cycles` there.
    from datetime import datetime, timedelta, timezone

    start = datetime.fromisoformat(params.generate.start_time.replace("Z", "+00:00"))
    interval = timedelta(seconds=params.generate.file_interval_s)
    last_day_end = datetime.combine((start + interval * args.cycles).date() + timedelta(days=1), datetime.min.time(),
                                    tzinfo=timezone.utc)
    closing_time = last_day_end + timedelta(seconds=params.features.allowed_lateness_s, hours=1)
    shifted = closing_time - interval * args.cycles
    late = load_settings(overrides={"generate": {"events_per_file": args.events_per_file,
                                                 "start_time": shifted.isoformat().replace("+00:00", "Z")}})
    generate_stream(layout, late.params.generate, seed=1, files=1, event_types=params.base.event_types)
    closing = run_features(settings)
    compactions += [{"cycle": args.cycles + 1, **c} for c in closing["compaction"]["compacted"]]
    closed = bronze_listing(layout.bronze_events)
    result = {
        "cycles": args.cycles, "events_per_file": args.events_per_file,
        "params": {"spark_master": params.features.spark_master, "shuffle_partitions": params.features.shuffle_partitions,
                   "allowed_lateness_s": params.features.allowed_lateness_s,
                   "bronze_max_files_open_date": params.features.bronze_max_files_open_date,
                   "bronze_files_per_date": params.features.bronze_files_per_date},
        "files_written_by_batches": written,
        "after_the_day": day, "max_files_listed_during_the_day": max(t["files"] for t in trace),
        "after_closing_the_day": closed, "compactions": compactions,
        "seconds": round(time.monotonic() - started, 1), "trace": trace,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("trace", "compactions")}, indent=1))
    print(f"{len(compactions)} compactions; wrote {args.out}")


if __name__ == "__main__":
    main()
