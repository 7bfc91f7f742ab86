"""compact: rewrite a closed event date's many small bronze files as a few large ones.

Each micro-batch writes its own folder bronze/events/event_date=D/batch_id=N/ (so a replayed batch overwrites exactly
its own output), with up to `features.shuffle_partitions` files in it: a day of 5-minute cycles leaves hundreds of
folders and over a thousand small files per date, which every reader of bronze (the full retrain) must list and open.

A date is compacted when every batch in it is **committed** (no newer than the newest batch in the stream
checkpoint's commits/: an uncommitted batch may be replayed by a restarted stream, which rewrites its own batch_id=N folder, and compacting it
away first would double it) and it holds too many files:
- a **closed** date (the watermark, the newest event time seen minus `features.allowed_lateness_s`, has passed its
  end, so no event of it can be accepted any more) more than `features.bronze_files_per_date`;
- a date still **open** more than `features.bronze_max_files_open_date`: with 5-minute cycles and two days of
  allowed lateness, three dates are open at any time, and they must not pile up files either.

The date is rewritten as one folder event_date=D/batch_id=<newest batch merged>/ holding
`features.bronze_files_per_date` files (an open date gets new batch folders beside it, merged in again later); each row keeps the micro-batch that accepted it in `ingest_batch_id` (a data
column every bronze write carries), so lineage survives compaction. The new folder is built under a hidden name
(`_compacting-...`: Spark and pyarrow skip names starting with _ or .), its row count is checked against the live
folder, and the two are swapped with one renameat2(RENAME_EXCHANGE): a reader sees the old files or the new ones,
never both and never neither. A reader that listed the old files just before the swap cannot open them after it
(they moved): it fails loudly and must retry, which the full retrain's Airflow task does; it never reads a row twice
or misses one. The swapped-out folder waits in bronze/events/_trash/ for `TRASH_GRACE_S` (an operator's undo) and
is then deleted. A crash anywhere leaves the live data whole; the next run removes a half-built folder and starts
that date again (where renameat2 is missing, two renames stand in, and a live folder parked between them is put
back by the next run).

It runs at the end of every `tidal features` run (the only writer of bronze, so nothing writes a date while it is
being compacted), and as `tidal compact` for an operator.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import shutil
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tidal.config import Settings, load_settings
from tidal.landing import newest_committed_batch
from tidal.manifests import latest_manifest
from tidal.storage import StorageLayout


STAGING_PREFIX = "_compacting-"
PARKED_PREFIX = "_parked-"
TRASH_DIR = "_trash"
TRASH_GRACE_S = 3600.0


def current_watermark(layout: StorageLayout, allowed_lateness_s: int) -> datetime | None:
    """The newest event time any batch has seen, minus the allowed lateness (what the next batch will use)."""
    latest = latest_manifest(layout)
    if not latest or not latest.get("max_event_time"):
        return None
    return datetime.fromisoformat(latest["max_event_time"]) - timedelta(seconds=allowed_lateness_s)


def dates_to_compact(bronze: Path, watermark: datetime | None, newest_committed: int | None, files_per_date: int,
                     max_files_open_date: int) -> list[tuple[Path, list[int]]]:
    """(date folder, its batch ids) for every fully committed date with more files than it may keep: a closed date
    more than `files_per_date`, a date still open (events of it can still arrive) more than `max_files_open_date`.
    The second rule bounds the files of the newest dates too, at one rewrite of the date per that many files.
    Pure over the folder listing, so the rule is testable without Spark."""
    out = []
    for date_dir in sorted(bronze.glob("event_date=*")):
        day = date.fromisoformat(date_dir.name.split("=", 1)[1])
        end_of_day = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=1)
        closed = watermark is not None and end_of_day <= watermark
        batches = sorted(int(p.name.split("=", 1)[1]) for p in date_dir.glob("batch_id=*"))
        files = len(list(date_dir.glob("batch_id=*/*.parquet")))
        committed = newest_committed is not None and max(batches, default=0) <= newest_committed
        if files > (files_per_date if closed else max_files_open_date) and committed:
            out.append((date_dir, batches))
    return out


def exchange_paths(a: Path, b: Path) -> None:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE). Where the kernel or libc lacks it, fall
    back to two renames, which leave `b` missing for an instant (stated, not hidden)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, f"renameat2 exchange of {a} and {b}: {os.strerror(err)}")
    # The parked name is not a staging name, so a crash between these renames leaves the live data where
    # restore_parked() puts it back, never where the staging cleanup deletes it.
    parked = b.with_name(PARKED_PREFIX + b.name)
    os.rename(b, parked)
    os.rename(a, b)
    os.rename(parked, a)


def restore_parked(bronze: Path) -> None:
    """After a crash inside the two-rename fallback: a parked live folder goes back if its date is missing, else
    (the new folder is in place) it is only the old copy, and goes to the trash."""
    for parked in bronze.glob(f"{PARKED_PREFIX}event_date=*"):
        live = bronze / parked.name[len(PARKED_PREFIX):]
        if not live.exists():
            os.rename(parked, live)
        else:
            (bronze / TRASH_DIR).mkdir(exist_ok=True)
            os.rename(parked, bronze / TRASH_DIR / f"{live.name}-{int(time.time() * 1000)}")


def purge_trash(bronze: Path, now_s: float, grace_s: float = TRASH_GRACE_S) -> int:
    """Delete swapped-out folders older than the grace period; returns how many went."""
    trash = bronze / TRASH_DIR
    gone = 0
    for entry in trash.iterdir() if trash.exists() else []:
        swapped_ms = entry.name.rsplit("-", 1)[-1]  # the swap time is in the name: a rename keeps the folder's mtime
        if swapped_ms.isdigit() and now_s - int(swapped_ms) / 1000 > grace_s:
            shutil.rmtree(entry, ignore_errors=True)
            gone += 1
    return gone


def compact_date(spark, bronze: Path, date_dir: Path, batches: list[int], files_per_date: int) -> dict[str, Any]:
    """Rewrite one date folder as event_date=D/batch_id=<max batch>/ with `files_per_date` files; swap it in."""
    from pyspark.sql import functions as F

    files_before = len(list(date_dir.glob("batch_id=*/*.parquet")))
    live = spark.read.option("basePath", str(bronze)).option("mergeSchema", "true").parquet(str(date_dir))
    # Bronze written before ingest_batch_id existed carries the batch only in its folder name.
    ingest = (F.coalesce(F.col("ingest_batch_id"), F.col("batch_id")) if "ingest_batch_id" in live.columns
              else F.col("batch_id")).cast("int")
    rows = live.withColumn("ingest_batch_id", ingest).drop("event_date", "batch_id")
    expected = rows.count()
    staging = bronze / f"{STAGING_PREFIX}{date_dir.name}"
    shutil.rmtree(staging, ignore_errors=True)
    target = staging / f"batch_id={max(batches)}"
    (rows.coalesce(files_per_date).sortWithinPartitions("ingest_batch_id", "source_file", "event_id")
     .write.mode("overwrite").parquet(str(target)))
    written = spark.read.parquet(str(target)).count()
    if written != expected:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"compaction of {date_dir.name} wrote {written} rows, expected {expected}; the live folder "
                           f"is untouched. Rerun `tidal compact`; if it repeats, inspect {date_dir}.")
    exchange_paths(staging, date_dir)
    trash = bronze / TRASH_DIR
    trash.mkdir(exist_ok=True)
    os.rename(staging, trash / f"{date_dir.name}-{int(time.time() * 1000)}")
    return {"event_date": date_dir.name.split("=", 1)[1], "batches": batches, "rows": expected,
            "files_before": files_before, "files_after": len(list(date_dir.glob("batch_id=*/*.parquet")))}


def compact_bronze(spark, settings: Settings) -> dict[str, Any]:
    """Compact every closed, committed bronze date that has more files than the target. Returns a summary."""
    layout = StorageLayout(settings.home)
    bronze = layout.bronze_events
    fp = settings.params.features
    if not bronze.exists():
        return {"compacted": [], "trash_purged": 0}
    restore_parked(bronze)
    # A compaction that crashed before its swap (a half-built folder) or just after it (the old folder, whose rows
    # are all in the live one now): either way nothing a reader needs.
    for leftover in bronze.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    purged = purge_trash(bronze, time.time())
    watermark = current_watermark(layout, fp.allowed_lateness_s)
    todo = dates_to_compact(bronze, watermark, newest_committed_batch(layout), fp.bronze_files_per_date,
                            fp.bronze_max_files_open_date)
    done = []
    for date_dir, batches in todo:
        done.append(compact_date(spark, bronze, date_dir, batches, fp.bronze_files_per_date))
        print(f"[compact] {date_dir.name}: {done[-1]['files_before']} files -> {done[-1]['files_after']} "
              f"({done[-1]['rows']} rows, batches {batches[0]}..{batches[-1]})", flush=True)
    return {"compacted": done, "trash_purged": purged, "watermark": watermark.isoformat() if watermark else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tidal compact",
        description="Compact closed bronze dates into a few large files (the features job does this after each run; "
                    "do not run it while `tidal features` runs on the same TIDAL_HOME).")
    parser.parse_args(argv)
    settings = load_settings()
    from tidal.spark import spark_for

    print(json.dumps(compact_bronze(spark_for(settings), settings), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
