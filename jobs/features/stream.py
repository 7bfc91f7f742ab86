"""features: Spark Structured Streaming over landing/events -> bronze, training examples, quarantine.

The stream reads whole landing files (binaryFile source, explicit schema, `trigger(availableNow=True)`) so that an
empty file or bytes that are not UTF-8 are seen and quarantined rather than silently skipped. Each micro-batch is
processed by `process_micro_batch`, which is idempotent per batch id: bronze, examples and quarantine are
overwritten for that batch id, and the batch's manifest is written last, so a replayed batch after a crash
replaces its own output instead of appending to it. The Spark checkpoint under checkpoints/stream/ records which
files were consumed, so a second run reads only new files.

The transforms are pure DataFrame -> DataFrame functions in jobs/features/transforms.py; the feature state in
jobs/features/state.py; the batch manifests and clocks in tidal/manifests.py.

Run: `tidal features` (or `python -m jobs.features.stream`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from jobs.features.compact import compact_bronze
from jobs.features.online import publish_batch
from jobs.features.state import (DEDUPE_STATE_SCHEMA, ENTITY_STATE_SCHEMA, ITEM_BUCKET_STATE_SCHEMA,
                                 USER_RECENT_STATE_SCHEMA, entity_features, item_content_features,
                                 item_window_sums, join_window_popularity, outlier_ids, popularity_keys,
                                 prune_item_buckets, update_entity_state, update_item_buckets, update_user_recent)
from jobs.features.transforms import (EventRules, classify_events, dedupe_with_watermark, example_columns,
                                      landing_lines, parquet_lines)
from tidal.config import Settings, load_settings
from tidal.manifests import (batch_clock, batch_manifest_path, latest_manifest, latest_manifest_before,
                             manifest_batch_ids, read_batch_manifests, summarize_batches)
from tidal.spark import event_line_reader, spark_for
from tidal.storage import StorageLayout, atomic_write_json, partition_value, read_json, record_summary


@dataclass(frozen=True)
class DedupeState:
    """What the previous batch left for deduplication: the ids still above its watermark, and the watermark."""

    seen: Any                    # DataFrame (event_id, event_time)
    max_seen: datetime | None    # the newest accepted event time of all earlier batches
    watermark: datetime | None   # max_seen - features.allowed_lateness_s: older events are "late"


@dataclass(frozen=True)
class BatchStats:
    """The counts of one classified batch, from one pass over the cached frame."""

    rows: list                   # one Row per (status, quarantine_reason): n, lo, hi, lo_s, hi_s, files
    accepted: Any                # the accepted row of `rows`, or None
    new_max: datetime | None     # the newest accepted event time including this batch
    new_watermark: datetime | None

    @property
    def accepted_count(self) -> int:
        return self.accepted["n"] if self.accepted else 0

    @property
    def accepted_range_s(self) -> tuple[float, float] | None:
        """(oldest, newest) accepted event time of the batch in epoch seconds; None when nothing was accepted."""
        return (self.accepted["lo_s"], self.accepted["hi_s"]) if self.accepted else None


def snapshot_dirs(layout: StorageLayout) -> dict[str, Path]:
    """The per-batch state snapshots: dedupe ids, entity state, item popularity buckets, users' recent items."""
    return {"event_ids": layout.feature_state / "event_ids", "entities": layout.feature_state / "entities",
            "item_buckets": layout.feature_state / "item_buckets", "user_recent": layout.feature_state / "user_recent"}


def process_micro_batch(spark, files_df, batch_id: int, layout: StorageLayout, settings: Settings,
                        now_epoch_s: float) -> dict[str, Any]:
    """Everything one micro-batch does: the batch classified and cached once, its counts, then its outputs (side by
    side where they do not read each other). Idempotent per batch id; the manifest is written last."""
    from pyspark.sql import functions as F

    params = settings.params
    lines = batch_lines(spark, files_df, claim_zero_byte_files(layout, batch_id),
                        may_hold_parquet=holds_parquet(layout.landing_events))
    parsed = classify_events(lines, event_rules(settings, now_epoch_s), line_reader=event_line_reader(spark)) \
        .withColumn("batch_id", F.lit(batch_id))
    dedupe = dedupe_state_before(spark, layout, batch_id, params.features.allowed_lateness_s)
    # One status per landed record; everything below is a filter on this one cached frame.
    classified = dedupe_with_watermark(parsed, dedupe.seen, dedupe.watermark).persist()
    stats = batch_stats(classified, dedupe.max_seen, params.features.allowed_lateness_s)
    accepted = classified.filter(F.col("status") == "accepted")

    def training_outputs() -> tuple[list[str], list[str], dict[str, Any]]:
        training, outlier_users, outlier_items = without_outliers(accepted, settings)
        recent, _ = side_by_side(
            lambda: write_recent_items(spark, training, batch_id, layout, settings),
            lambda: write_state_and_examples(spark, training, batch_id, layout, settings, stats.accepted_range_s,
                                             stats.accepted_count))
        return outlier_users, outlier_items, publish_online_state(training, batch_id, layout, settings,
                                                                  stats.new_max, recent)

    # The outputs read the cached batch and nothing of each other, except along the training chain, so they run side
    # by side: a small batch's time is mostly each query's planning and its few short tasks, one after another, with
    # the cores idle in between (benchmarks/features/RESULTS.md, "2026-12-05: the foreachBatch worker imports compiled
    # pyspark; a batch's outputs side by side").
    (outlier_users, outlier_items, online), *_ = side_by_side(
        training_outputs,
        lambda: write_bronze(accepted, batch_id, layout),
        lambda: write_quarantine(classified, batch_id, layout),
        lambda: write_dedupe_state(dedupe.seen, accepted, stats.new_watermark,
                                   snapshot_dirs(layout)["event_ids"] / f"batch_id={batch_id}"))
    classified.unpersist()
    manifest = {**batch_manifest(batch_id, layout, stats, dedupe.watermark, outlier_users, outlier_items),
                "online_store": online}
    atomic_write_json(batch_manifest_path(layout, batch_id), manifest)
    prune_snapshots(layout, batch_id)
    return manifest


def side_by_side(*steps: Callable[[], Any]) -> list[Any]:
    """Run the steps on threads of their own; their results, in order. Every step has ended before this returns or
    raises, so when one fails (and fails its batch before the manifest is written) none is still writing while the
    batch is replayed."""
    with ThreadPoolExecutor(max_workers=len(steps), thread_name_prefix="batch-output") as pool:
        running = [pool.submit(step) for step in steps]
    return [step.result() for step in running]


def event_rules(settings: Settings, now_epoch_s: float) -> EventRules:
    base = settings.params.base
    return EventRules(event_types=base.event_types, max_id_length=base.max_id_length,
                      max_future_skew_s=base.max_future_skew_s, now_epoch_s=now_epoch_s)


def batch_lines(spark, files_df, zero_byte_files: list[str], may_hold_parquet: bool = True):
    """The batch's landing files as lines: JSON Lines files split, Parquet files read, empty files as one row each.
    `may_hold_parquet` False (no Parquet file has landed) skips the query that names the batch's Parquet files."""
    from pyspark.sql import functions as F

    is_parquet = F.lower(F.col("path")).endswith(".parquet")
    # That query reads every file's content, not only its path (the micro-batch's plan does not prune the column):
    # 0.3-0.4 s per million events on the warm server, and one more query on a small batch's critical path.
    parquet_paths = sorted(r.path for r in files_df.filter(is_parquet).select("path").collect()) \
        if may_hold_parquet else []
    lines = landing_lines(files_df.filter(~is_parquet))
    if parquet_paths:
        lines = lines.unionByName(parquet_lines(spark, parquet_paths))
    if zero_byte_files:
        lines = lines.unionByName(spark.createDataFrame(
            [(path, 0, None, "empty_file") for path in zero_byte_files],
            "source_file string, line_number int, line string, file_reason string"))
    return lines


def holds_parquet(landing: Path) -> bool:
    """Whether any Parquet file is in the landing folder or below it (consumed or not): only then can a micro-batch
    hold one, since a batch's files are in the folder when its callback runs. Any case, as batch_lines tests a
    path."""
    return any(name.lower().endswith(".parquet") for _, _, names in os.walk(landing) for name in names)


def dedupe_state_before(spark, layout: StorageLayout, batch_id: int, lateness_s: int) -> DedupeState:
    """Late events and duplicates are judged against the bounded state the previous batch left."""
    previous = latest_manifest_before(layout, batch_id)
    max_seen = datetime.fromisoformat(previous["max_event_time"]) if previous and previous.get("max_event_time") else None
    snapshot = latest_snapshot_before(snapshot_dirs(layout)["event_ids"], batch_id)
    seen = read_snapshot(spark, snapshot, DEDUPE_STATE_SCHEMA)
    return DedupeState(seen, max_seen, max_seen - timedelta(seconds=lateness_s) if max_seen else None)


def batch_stats(classified, max_seen: datetime | None, lateness_s: int) -> BatchStats:
    from pyspark.sql import functions as F

    # Times only over accepted rows: a quarantined one can be any timestamp (year 10000 was found by fuzzing), which
    # Python's datetime cannot hold, and one such record must not stop the batch.
    accepted_time = F.when(F.col("status") == "accepted", F.col("event_time"))
    rows = classified.groupBy("status", "quarantine_reason").agg(
        F.count("*").alias("n"), F.min(accepted_time).alias("lo"), F.max(accepted_time).alias("hi"),
        F.min(accepted_time.cast("double")).alias("lo_s"), F.max(accepted_time.cast("double")).alias("hi_s"),
        F.collect_set("source_file").alias("files"),
        F.sum(F.col("read_by_line_reader").cast("long")).alias("read_by_line_reader")).collect()
    accepted = next((r for r in rows if r["status"] == "accepted"), None)
    # Epoch seconds, not the collected datetime: that one is naive, in the Python process's local zone.
    batch_max = datetime.fromtimestamp(accepted["hi_s"], tz=timezone.utc) if accepted else None
    new_max = max([t for t in (max_seen, batch_max) if t is not None], default=None)
    return BatchStats(rows, accepted, new_max, new_max - timedelta(seconds=lateness_s) if new_max else None)


def write_bronze(accepted, batch_id: int, layout: StorageLayout) -> None:
    from pyspark.sql import functions as F

    # batch_id (a folder) is the unit a replay overwrites; ingest_batch_id (a column) is the batch that accepted the
    # row, and survives compaction, which merges a closed date's batch folders into one (jobs.features.compact).
    bronze = accepted.select("event_id", "user_id", "item_id", "event_type", "value", "event_time", "context",
                             "source_file", F.lit(batch_id).cast("int").alias("ingest_batch_id"), "batch_id",
                             F.to_date("event_time").alias("event_date"))
    bronze.write.mode("overwrite").partitionBy("event_date", "batch_id").parquet(str(layout.bronze_events))


def without_outliers(accepted, settings: Settings) -> tuple[Any, list[str], list[str]]:
    """Outliers (bots, scrapers) stay in bronze but leave the training examples and the entity state."""
    from pyspark.sql import functions as F

    fp = settings.params.features
    users, items = outlier_ids(accepted, fp.outlier_z, fp.outlier_min_events)
    training = accepted.filter(~F.col("user_id").isin(users) & ~F.col("item_id").isin(items))
    return training, users, items


def write_state_and_examples(spark, training, batch_id: int, layout: StorageLayout, settings: Settings,
                             events_time_range_s: tuple[float, float] | None = None,
                             max_training_events: int | None = None) -> None:
    """Entity state and item popularity buckets (the previous snapshot + this batch -> this batch's snapshot, never
    all history), then the training examples with the features they give. `events_time_range_s` bounds the
    training events' times (the batch's accepted ones do): the decayed counts then take one plain sum per key.
    `max_training_events` bounds their number (the batch's accepted count does): see `window_sums_for_join`."""
    fp, dirs = settings.params.features, snapshot_dirs(layout)
    state_path = dirs["entities"] / f"batch_id={batch_id}"
    state = update_entity_state(read_snapshot(spark, latest_snapshot_before(dirs["entities"], batch_id),
                                              ENTITY_STATE_SCHEMA), training, fp.half_life_s, events_time_range_s)

    def item_buckets():
        # Item popularity over sliding windows: per-(item, time bucket) counts, updated the same way. Kept in memory
        # for the batch: the pruned snapshot and the examples' windows both read it (the examples the unpruned one).
        merged = update_item_buckets(read_snapshot(spark, latest_snapshot_before(dirs["item_buckets"], batch_id),
                                                   ITEM_BUCKET_STATE_SCHEMA), training, fp.popularity_bucket_s).persist()
        prune_item_buckets(merged, fp.popularity_bucket_s, max(fp.popularity_windows_s) + fp.allowed_lateness_s) \
            .write.mode("overwrite").parquet(str(dirs["item_buckets"] / f"batch_id={batch_id}"))
        return merged

    # The entity state and the item buckets are independent updates, written side by side.
    _, buckets = side_by_side(lambda: state.write.mode("overwrite").parquet(str(state_path)), item_buckets)
    # Each join below has a side Spark broadcasts while it is under spark.sql.autoBroadcastJoinThreshold (10 MB by
    # default): the entity state (every entity seen so far), the window sums (this batch's items and buckets), the
    # catalogue. Then the examples go from the cached batch to their files without a shuffle; a larger side makes
    # that join a shuffle join, as before. The planner reads the state's size from its files; the window sums are
    # an aggregate, which it takes to be as large as its input: `window_sums_for_join` says how they are broadcast.
    examples = entity_features(example_columns(training, fp.event_type_weights),
                               read_snapshot(spark, state_path, ENTITY_STATE_SCHEMA), fp.half_life_s,
                               settings.params.base.event_types)
    # The merged, unpruned state: an accepted event older than the pruning horizon still gets its full windows.
    sums, cached = window_sums_for_join(
        item_window_sums(popularity_keys(training, fp.popularity_bucket_s), buckets, fp.popularity_bucket_s,
                         fp.popularity_windows_s), max_training_events, settings)
    examples = join_window_popularity(examples, sums, fp.popularity_bucket_s, fp.popularity_windows_s)
    items_csv = layout.landing_items / "items.csv"
    if items_csv.exists():
        examples = item_content_features(examples, read_items_csv(spark, items_csv))
    examples.write.mode("overwrite").parquet(str(layout.examples_batch(batch_id)))
    if cached:
        sums.unpersist()
    buckets.unpersist()


# The window sums are broadcast by a hint while an upper bound of their size is under this. A bound, not an estimate
# (real ids are far shorter than the longest allowed, and events share items and buckets), so it is set above Spark's
# 10 MB broadcast default and well under what the smallest driver heap holds: at the shipped limits, batches of up to
# ~60,000 accepted events, which covers a per-cycle batch and leaves a catch-up batch to the planner.
SUMS_BROADCAST_MAX_BYTES = 64 * 1024 * 1024


def window_sums_for_join(sums, max_training_events: int | None, settings: Settings) -> tuple[Any, bool]:
    """The window sums ready to join the examples to, and whether they were cached (the caller unpersists them).

    They have at most one row per training event (one per distinct item and bucket). While that many rows of the
    widest id `base.max_id_length` allows (characters, up to 4 bytes each in UTF-8) are under
    SUMS_BROADCAST_MAX_BYTES, the join is hinted to broadcast them and they are built inside the examples' query.
    Otherwise they are cached and counted first, a query of their own, so that the planner sees their real size:
    broadcast when it is under the session's threshold, a shuffle join when not (an unmaterialized aggregate is
    estimated at its input's size, which would shuffle every example)."""
    from pyspark.sql import functions as F

    fp = settings.params.features
    # UnsafeRow: an 8-byte null bitmap, an 8-byte slot per column, the id's bytes; a long per window and the bucket.
    row_bytes = 8 + 8 * (3 + len(fp.popularity_windows_s)) + 4 * settings.params.base.max_id_length
    if max_training_events is not None and max_training_events * row_bytes <= SUMS_BROADCAST_MAX_BYTES:
        return F.broadcast(sums), False
    sums = sums.persist()
    sums.count()
    return sums, True


def read_items_csv(spark, path: Path):
    """The item catalogue, every column a string, named by its header. The header is read here, not by Spark: a
    CSV read with `header` and no schema runs one Spark job to take the names from the first line, a fixed cost
    on every micro-batch. A header Spark would rename (an empty or repeated name) is left to Spark."""
    import csv

    from pyspark.sql.types import StringType, StructField, StructType

    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    reader = spark.read.option("header", True)
    if header and all(header) and len(set(header)) == len(header):
        reader = reader.schema(StructType([StructField(name, StringType()) for name in header]))
    return reader.csv(str(path))


def write_recent_items(spark, training, batch_id: int, layout: StorageLayout, settings: Settings) -> Path:
    """The users' recent-items snapshot (always: it is offline state the online store is projected from)."""
    dirs = snapshot_dirs(layout)
    recent = update_user_recent(read_snapshot(spark, latest_snapshot_before(dirs["user_recent"], batch_id),
                                              USER_RECENT_STATE_SCHEMA), training,
                                settings.params.features.online_recent_items)
    snapshot = dirs["user_recent"] / f"batch_id={batch_id}"
    recent.write.mode("overwrite").parquet(str(snapshot))
    return snapshot


def publish_online_state(training, batch_id: int, layout: StorageLayout, settings: Settings, clock: datetime | None,
                         recent_snapshot: Path) -> dict[str, Any]:
    """The batch's online state, projected from its recent-items snapshot and its item buckets
    (jobs/features/online.py). An unreachable store is reported, never raised."""
    if not settings.online_store.url:
        return {"status": "off"}
    users = sorted(r.user_id for r in training.select("user_id").distinct().collect())
    buckets = snapshot_dirs(layout)["item_buckets"] / f"batch_id={batch_id}"
    return publish_batch(layout, settings, batch_id, recent_snapshot,
                         buckets if (buckets / "_SUCCESS").exists() else None,
                         clock.timestamp() if clock else None, users)


def sync_online_store(settings: Settings) -> dict[str, Any]:
    """`tidal features --sync-online`: write the newest committed batch's whole online state (every user and item in
    its snapshots) now, e.g. once the store is back after an outage, without waiting for new events."""
    layout = StorageLayout(settings.home)
    manifest = latest_manifest(layout)
    if manifest is None:
        return {"status": "nothing to sync: no micro-batch has been processed yet"}
    batch_id, dirs = manifest["batch_id"], snapshot_dirs(layout)
    recent, buckets = dirs["user_recent"] / f"batch_id={batch_id}", dirs["item_buckets"] / f"batch_id={batch_id}"
    if not (recent / "_SUCCESS").exists():
        return {"status": f"nothing to sync: batch {batch_id} has no recent-items snapshot (written before the online "
                          "store existed); the next batch writes one"}
    clock = datetime.fromisoformat(manifest["max_event_time"]).timestamp() if manifest.get("max_event_time") else None
    return {"batch_id": batch_id, **publish_batch(layout, settings, batch_id, recent, buckets if
                                                  (buckets / "_SUCCESS").exists() else None, clock, [], full=True)}


def write_quarantine(classified, batch_id: int, layout: StorageLayout) -> None:
    from pyspark.sql import functions as F

    quarantined = classified.filter(F.col("status") == "quarantined").select(
        "batch_id", "source_file", "line_number", "quarantine_reason", F.col("line").alias("raw_record"))
    quarantined.write.mode("overwrite").parquet(str(layout.quarantine_events / f"batch_id={batch_id}"))


def write_dedupe_state(seen, accepted, new_watermark: datetime | None, path: Path) -> None:
    """The next batch's dedupe state: the ids still above the new watermark, so the state stays bounded by the
    allowed lateness rather than growing with history."""
    from pyspark.sql import functions as F

    state = seen.unionByName(accepted.select("event_id", "event_time"))
    if new_watermark is not None:
        state = state.filter(F.col("event_time") >= F.lit(new_watermark.timestamp()).cast("timestamp"))
    state.write.mode("overwrite").parquet(str(path))


def batch_manifest(batch_id: int, layout: StorageLayout, stats: BatchStats, watermark: datetime | None,
                   outlier_users: list[str], outlier_items: list[str]) -> dict[str, Any]:
    count = {status: sum(r["n"] for r in stats.rows if r["status"] == status)
             for status in ("accepted", "quarantined", "duplicate")}
    reasons = {r["quarantine_reason"]: r["n"] for r in stats.rows if r["status"] == "quarantined"}
    return {
        "batch_id": batch_id,
        "files": sorted({f for r in stats.rows for f in r["files"]}),
        "landed": sum(count.values()),
        "accepted": count["accepted"],
        "quarantined": count["quarantined"],
        "quarantine_reasons": dict(sorted(reasons.items())),
        "duplicates": count["duplicate"],
        # How many of the landed lines tidal's event line reader read (tidal.spark.event_line_reader); the others
        # took Spark's variant functions, slower. A drop says the producer's lines changed form (escapes, numbers).
        "lines_read_by_line_reader": sum(r["read_by_line_reader"] for r in stats.rows),
        "event_time_min": stats.accepted["lo"].isoformat() if stats.accepted else None,
        "event_time_max": stats.accepted["hi"].isoformat() if stats.accepted else None,
        "examples_path": str(layout.examples_batch(batch_id)),
        "outlier_users": outlier_users,
        "outlier_items": outlier_items,
        "outlier_events_excluded": count["accepted"] - examples_count(layout, batch_id),
        "max_event_time": stats.new_max.isoformat() if stats.new_max else None,
        "watermark": watermark.isoformat() if watermark else None,
    }


def prune_snapshots(layout: StorageLayout, batch_id: int) -> None:
    """A replay of this batch reads the snapshot before it, so only snapshots older than that one can go."""
    for folder in snapshot_dirs(layout).values():
        for old_snapshot in folder.glob("batch_id=*"):
            if partition_value(old_snapshot) < batch_id - 1:
                shutil.rmtree(old_snapshot, ignore_errors=True)


def examples_count(layout: StorageLayout, batch_id: int) -> int:
    """Rows in a written examples batch, from the Parquet footers (no Spark job)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in layout.examples_batch(batch_id).glob("*.parquet"))


def read_snapshot(spark, path: Path | None, schema: str):
    """A state snapshot this job wrote (or an empty frame before the first), read with its known schema: Parquet
    schema inference would be one more Spark job per read, a fixed cost that dominates a small batch."""
    if path is None:
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(str(path))


def latest_snapshot_before(seen_dir: Path, batch_id: int) -> Path | None:
    """The dedupe state the latest complete earlier batch left (each batch writes a full snapshot)."""
    done = [p for p in seen_dir.glob("batch_id=*")
            if partition_value(p) < batch_id and (p / "_SUCCESS").exists()] if seen_dir.exists() else []
    return max(done, key=partition_value) if done else None


def claim_zero_byte_files(layout: StorageLayout, batch_id: int) -> list[str]:
    """Zero-byte files never reach the stream (Spark's file listing skips them), so each micro-batch claims the
    unclaimed ones it finds in a ledger under features/state/, and quarantines them as empty_file. A replayed batch
    claims the same files again, so each is counted exactly once."""
    ledger_dir = layout.feature_state / "empty_files"
    ledger_dir.mkdir(parents=True, exist_ok=True)
    claimed = {}
    for entry in ledger_dir.glob("*.json"):
        record = read_json(entry)
        claimed[record["path"]] = record["batch_id"]
    mine = []
    for path in sorted(layout.landing_events.glob("*.jsonl")):
        # Spelled as the stream spells its paths (file:/a b/x.jsonl, not percent-encoded), so a file has one key.
        uri = f"file:{path.resolve()}"
        if path.stat().st_size == 0 and claimed.get(uri, batch_id) == batch_id:
            if uri not in claimed:
                atomic_write_json(ledger_dir / f"{hashlib.sha1(uri.encode()).hexdigest()}.json",
                                  {"path": uri, "batch_id": batch_id})
            mine.append(uri)
    return mine


def run_features(settings: Settings, reports_dir: Path | None = None, now_epoch_s: float | None = None) -> dict[str, Any]:
    """Process every landing file not yet consumed; return the summary of the micro-batches this run made."""
    from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType, TimestampType

    started = time.monotonic()
    layout = StorageLayout(settings.home).ensure()
    now = time.time() if now_epoch_s is None else now_epoch_s
    spark = spark_for(settings)
    # binaryFile's fixed schema, stated explicitly (a streaming file source needs one).
    schema = StructType([StructField("path", StringType()), StructField("modificationTime", TimestampType()),
                         StructField("length", LongType()), StructField("content", BinaryType())])
    stream = (
        spark.readStream.format("binaryFile").schema(schema)
        .option("pathGlobFilter", "*.{jsonl,parquet}")
        .option("maxFilesPerTrigger", settings.params.features.max_files_per_trigger)
        .load(str(layout.landing_events))
    )
    # The batches this run makes are the ones the checkpoint commits from here on (a batch a killed run left
    # uncommitted is replayed, and so counted, here). Read from the checkpoint, not gathered by the callback: on a
    # Spark Connect server the callback runs in the server's Python worker, so nothing it appends reaches this process.
    committed_before = last_committed_batch(layout.stream_checkpoint)

    def on_batch(files_df, batch_id: int) -> None:
        # files_df's own session: on Connect this runs server-side, where the job's client session does not exist.
        manifest = process_micro_batch(files_df.sparkSession, files_df, batch_id, layout, settings,
                                       batch_clock(layout, batch_id, now))
        print(f"[features] batch {batch_id}: {manifest['landed']} landed, {manifest['accepted']} accepted, "
              f"{manifest['quarantined']} quarantined, {manifest['duplicates']} duplicates", flush=True)

    query = (stream.writeStream.foreachBatch(on_batch)
             .option("checkpointLocation", str(layout.stream_checkpoint))
             .trigger(availableNow=True).start())
    query.awaitTermination()
    # Every batch writes its manifest before Spark commits it; the manifests, not the commit files, list them all
    # (Spark deletes all but the newest commit files, spark.sql.streaming.minBatchesToRetain).
    committed_now = last_committed_batch(layout.stream_checkpoint)
    batch_ids = [b for b in manifest_batch_ids(layout) if committed_before < b <= committed_now]
    manifests = read_batch_manifests(layout, batch_ids)
    summary = summarize_batches(manifests, time.monotonic() - started)
    summary["online_store"] = online_summary(settings, manifests)
    # After the stream has stopped: this job is bronze's only writer, so no batch can write a date being compacted.
    summary["compaction"] = compact_bronze(spark, settings)
    return record_summary(reports_dir, "features", summary)


def last_committed_batch(checkpoint: Path) -> int:
    """The newest micro-batch the stream's checkpoint has committed (commits/<id>, written once the batch's callback
    has returned), or -1 before the first."""
    commits = checkpoint / "commits"
    return max((int(p.name) for p in commits.iterdir() if p.name.isdigit()), default=-1) if commits.is_dir() else -1


def online_summary(settings: Settings, manifests: list[dict]) -> dict[str, Any]:
    """Where the run's online state went, and which batches could not write it (they are resynced later)."""
    unreachable = [m["batch_id"] for m in manifests if m.get("online_store", {}).get("status") == "unreachable"]
    return {"url": settings.online_store.display_url, "namespace": settings.online_store.namespace,
            "batches_written": sum(m.get("online_store", {}).get("status") == "written" for m in manifests),
            "batches_unreachable": unreachable}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal features", description="Process new landing files into features.")
    parser.add_argument("--run-id", default=None, help="report folder name (default: a timestamp)")
    parser.add_argument("--sync-online", action="store_true",
                        help="only write the newest batch's whole state to the online store (after an outage)")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.sync_online:
        result = sync_online_store(settings)
        print(json.dumps(result, indent=2))
        return 0 if result.get("status") in ("written", None) or result["status"].startswith("nothing") else 1
    run_id = args.run_id or datetime.now(timezone.utc).strftime("manual__%Y%m%dT%H%M%S")
    summary = run_features(settings, StorageLayout(settings.home).run_reports(run_id))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
