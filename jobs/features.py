"""features: Spark Structured Streaming over landing/events -> bronze, training examples, quarantine.

The stream reads whole landing files (binaryFile source, explicit schema, `trigger(availableNow=True)`) so that an
empty file or bytes that are not UTF-8 are seen and quarantined rather than silently skipped. Each micro-batch is
processed by `process_micro_batch`, which is idempotent per batch id: bronze, examples and quarantine are
overwritten for that batch id, and the batch's manifest is written last, so a replayed batch after a crash
replaces its own output instead of appending to it. The Spark checkpoint under checkpoints/stream/ records which
files were consumed, so a second run reads only new files.

The transforms (`landing_lines`, `classify_events`, `training_examples`) are pure DataFrame -> DataFrame
functions, tested on local[1] with tiny fixtures.

Run: `tidal features` (or `python -m jobs.features`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from jobs.compact import compact_bronze
from jobs.feature_state import (ENTITY_STATE_SCHEMA, ITEM_BUCKET_STATE_SCHEMA, entity_features, flag_outliers,
                                item_content_features, item_window_popularity, prune_item_buckets,
                                update_entity_state, update_item_buckets)
from tidal.config import Settings, load_settings
from tidal.storage import StorageLayout, atomic_write_json, read_json, write_step_summary

REQUIRED_STRING_FIELDS = ("event_id", "user_id", "item_id", "event_type")
EXAMPLE_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "value", "event_time", "timestamp",
                   "event_weight", "hour_of_day", "user_batch_events", "item_batch_events")


@dataclass(frozen=True)
class EventRules:
    """The event contract's rules, as parameters of the pure classification function."""

    event_types: tuple[str, ...]
    max_id_length: int
    max_future_skew_s: int
    now_epoch_s: float  # the reference "now" for future timestamps; passed in so tests are deterministic


def landing_lines(files_df):
    """(path, content, length) file rows -> one row per non-blank line, plus one row per empty file.

    Output: source_file, line_number, line (string or null for an empty file), file_reason (null or a reason).
    """
    from pyspark.sql import functions as F

    with_text = files_df.select(
        F.col("path").alias("source_file"),
        # A plain cast keeps the bytes as they are (decode() would fail the whole batch on one bad byte).
        F.col("content").cast("string").alias("text"),
    ).withColumn("file_is_utf8", F.expr("is_valid_utf8(text)"))
    # Blank means nothing but whitespace (F.trim strips spaces only, not newlines or tabs).
    is_blank = F.regexp_replace(F.coalesce(F.col("text"), F.lit("")), r"\s+", "") == ""
    empty_files = with_text.filter(is_blank).select(
        "source_file", F.lit(0).alias("line_number"), F.lit(None).cast("string").alias("line"),
        F.lit("empty_file").alias("file_reason"))
    lines = (
        with_text.filter(~is_blank)
        .select("source_file", "file_is_utf8",
                F.posexplode(F.split(F.col("text"), "\r?\n")).alias("pos", "line"))
        .filter(F.regexp_replace(F.col("line"), r"\s+", "") != "")
        # split() goes through Java strings, which turn bytes that are not UTF-8 into U+FFFD: in a file that is
        # not valid UTF-8, a line holding U+FFFD is where the bad bytes were.
        .select("source_file", (F.col("pos") + 1).alias("line_number"), "line",
                F.when(~F.col("file_is_utf8") & F.col("line").contains("\ufffd"), F.lit("invalid_utf8"))
                .alias("file_reason"))
    )
    return lines.unionByName(empty_files)


def parquet_schema_problem(schema) -> str | None:
    """Why a landing Parquet file's schema breaks the event contract, or None. Checked per file, before any row is
    read: a file whose columns are missing or mistyped is quarantined whole (one record, reason
    `parquet_wrong_schema`, the problem as its raw record), like an empty file; fix it and land it again."""
    from pyspark.sql import types as T

    fields = {f.name: f.dataType for f in schema.fields}
    problems = [f"missing column {name}" for name in (*REQUIRED_STRING_FIELDS, "event_time") if name not in fields]
    problems += [f"{name} is {fields[name].simpleString()}, not string" for name in REQUIRED_STRING_FIELDS
                 if name in fields and not isinstance(fields[name], T.StringType)]
    if "event_time" in fields and not isinstance(fields["event_time"], (T.TimestampType, T.TimestampNTZType,
                                                                         T.StringType, T.NumericType)):
        problems.append(f"event_time is {fields['event_time'].simpleString()}, not a timestamp")
    if "value" in fields and not isinstance(fields["value"], (T.NumericType, T.NullType)):
        problems.append(f"value is {fields['value'].simpleString()}, not a number")
    return "; ".join(problems) or None


def parquet_lines(spark, paths: list[str]):
    """Landing Parquet files -> the same line rows as landing_lines: each row becomes one JSON line (so it meets the
    same contract checks as a JSON Lines record), numbered in file order. A file that cannot be read, or whose schema
    breaks the contract, becomes one file-level row with its reason."""
    from pyspark.sql import functions as F

    out_schema = "source_file string, line_number int, line string, file_reason string"
    frames = []
    for path in paths:
        try:
            df = spark.read.parquet(path)
            problem = parquet_schema_problem(df.schema)
        except Exception as err:  # noqa: BLE001 - any read failure is a property of the file, not of the run
            frames.append(spark.createDataFrame([(path, 0, f"unreadable: {str(err).splitlines()[0][:300]}",
                                                  "unreadable_parquet")], out_schema))
            continue
        if problem:
            frames.append(spark.createDataFrame([(path, 0, problem, "parquet_wrong_schema")], out_schema))
            continue
        rows = df.select(F.to_json(F.struct(*df.columns)).alias("line")).agg(F.collect_list("line").alias("lines"))
        frames.append(rows.select(F.lit(path).alias("source_file"),
                                  F.posexplode("lines").alias("pos", "line"))
                      .select("source_file", (F.col("pos") + 1).cast("int").alias("line_number"), "line",
                              F.lit(None).cast("string").alias("file_reason")))
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def classify_events(lines_df, rules: EventRules):
    """Parse each line against the event contract. Adds typed event columns and `quarantine_reason`
    (null for an accepted event; otherwise the first rule the record broke)."""
    from pyspark.sql import functions as F

    v = F.expr("try_parse_json(line)")
    df = lines_df.withColumn("_v", v)

    def field_type(name: str):
        return F.expr(f"schema_of_variant(variant_get(_v, '$.{name}', 'variant'))")

    def field_string(name: str):
        return F.expr(f"try_variant_get(_v, '$.{name}', 'string')")

    df = df.select(
        "*",
        *[field_type(f).alias(f"_t_{f}") for f in (*REQUIRED_STRING_FIELDS, "value", "event_time", "context")],
        *[field_string(f).alias(f) for f in REQUIRED_STRING_FIELDS],
        F.expr("try_variant_get(_v, '$.value', 'double')").alias("value"),
        F.expr("to_json(variant_get(_v, '$.context', 'variant'))").alias("context"),
    )
    # event_time: ISO-8601 string, or a number of unix seconds. A string must start with its year: Spark would read
    # a bare time ("10:15:00") as today's, so the same record would classify differently on another day's replay.
    time_text = F.expr("try_variant_get(_v, '$.event_time', 'string')")
    ts_string = F.when(time_text.rlike(r"^\s*[+-]?[0-9]{4}"), F.try_to_timestamp(time_text))
    ts_number = F.expr("timestamp_seconds(try_variant_get(_v, '$.event_time', 'double'))")
    is_number = F.col("_t_event_time").rlike("^(BIGINT|INT|SMALLINT|TINYINT|DOUBLE|FLOAT|DECIMAL.*)$")
    df = df.withColumn("event_time", F.when(is_number, ts_number).otherwise(ts_string))

    numeric_value = F.col("_t_value").rlike("^(BIGINT|INT|SMALLINT|TINYINT|DOUBLE|FLOAT|DECIMAL.*)$")
    checks: list[tuple[Any, Any]] = [
        (F.col("file_reason").isNotNull(), F.col("file_reason")),
        (F.col("_v").isNull() | has_trailing_content(F.col("line")), F.lit("malformed_json")),
        (~F.expr("schema_of_variant(_v)").startswith("OBJECT"), F.lit("not_a_json_object")),
    ]
    for name in (*REQUIRED_STRING_FIELDS, "event_time"):
        checks.append((F.col(f"_t_{name}").isNull() | (F.col(f"_t_{name}") == "VOID"), F.lit(f"missing_{name}")))
    for name in REQUIRED_STRING_FIELDS:
        checks.append((F.col(f"_t_{name}") != "STRING", F.lit(f"wrong_type_{name}")))
    checks += [
        (F.col("_t_value").isNotNull() & (F.col("_t_value") != "VOID") & ~numeric_value, F.lit("wrong_type_value")),
        (F.col("_t_context").isNotNull() & (F.col("_t_context") != "VOID") & ~F.col("_t_context").startswith("OBJECT"),
         F.lit("wrong_type_context")),
    ]
    for name in REQUIRED_STRING_FIELDS:
        checks.append((F.trim(F.col(name)) == "", F.lit(f"empty_{name}")))
        checks.append((F.length(F.col(name)) > rules.max_id_length, F.lit(f"oversized_{name}")))
    checks += [
        (~F.col("event_type").isin(list(rules.event_types)), F.lit("unknown_event_type")),
        (F.col("event_time").isNull(), F.lit("unparseable_event_time")),
        (F.col("event_time") < F.lit("1970-01-01 00:00:00").cast("timestamp"), F.lit("event_time_before_1970")),
        (F.unix_timestamp(F.col("event_time")) > F.lit(rules.now_epoch_s + rules.max_future_skew_s),
         F.lit("future_event_time")),
    ]
    reason = F.lit(None).cast("string")
    for condition, label in reversed(checks):
        reason = F.when(F.coalesce(condition, F.lit(False)), label).otherwise(reason)
    return df.withColumn("quarantine_reason", reason).drop("_v", *[c for c in df.columns if c.startswith("_t_")])


MAX_NESTING_CHECKED = 8  # object/array depth up to which a line is fully checked for a second top-level value


def has_trailing_content(line):
    """True where a line holds more than one top-level JSON value: `{...}{...}`, `{...},{...}`, `{...} junk`.

    try_parse_json reads the first value of a line and ignores the rest, so without this check the second of two
    records glued onto one line would be dropped without a trace. The check works on the line's skeleton: string
    literals blanked (possessive regex: a 100k-character string cannot overflow Java's regex stack), then the
    innermost objects and arrays replaced by a token, MAX_NESTING_CHECKED times; one object ends as that single
    token. Deeper nesting than that falls back to a weaker rule (ends with '}', no '}' then '{')."""
    from pyspark.sql import functions as F

    skeleton = F.regexp_replace(F.regexp_replace(line, r'"(?:[^"\\]++|\\.)*+"', '""'), r"^\s+|\s+$", "")
    reduced = skeleton
    for _ in range(MAX_NESTING_CHECKED):
        reduced = F.regexp_replace(reduced, r"\{[^{}\[\]]*+\}|\[[^{}\[\]]*+\]", "X")
    fully_reduced = ~reduced.rlike(r"[{}\[\]]")
    weak_rule = ~skeleton.endswith("}") | skeleton.rlike(r"\}\s*\{")
    return skeleton.startswith("{") & F.when(fully_reduced, reduced != "X").otherwise(weak_rule)


def training_examples(accepted_df, event_type_weights: dict[str, float], window_keys: tuple[str, ...] = ()):
    """Accepted events -> one training example per event with its numeric features (the drift test reads these).

    The per-batch counts are over the whole input frame, or per value of `window_keys` (to compute many windows in
    one pass, e.g. one per landing file)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    weight_map = F.create_map(*[x for t, w in sorted(event_type_weights.items()) for x in (F.lit(t), F.lit(float(w)))])
    return accepted_df.select(
        "event_id", "user_id", "item_id", "event_type", "value", "event_time",
        F.col("event_time").cast("double").alias("timestamp"),
        F.coalesce(weight_map[F.col("event_type")], F.lit(1.0)).alias("event_weight"),
        F.hour("event_time").alias("hour_of_day"),
        F.count("*").over(Window.partitionBy(*window_keys, "user_id")).alias("user_batch_events"),
        F.count("*").over(Window.partitionBy(*window_keys, "item_id")).alias("item_batch_events"),
    )


def process_micro_batch(spark, files_df, batch_id: int, layout: StorageLayout, settings: Settings,
                        now_epoch_s: float) -> dict[str, Any]:
    """Everything one micro-batch does. Idempotent per batch id; the manifest is written last."""
    from pyspark.sql import functions as F

    params = settings.params
    rules = EventRules(event_types=params.base.event_types, max_id_length=params.base.max_id_length,
                       max_future_skew_s=params.base.max_future_skew_s, now_epoch_s=now_epoch_s)
    zero_byte_files = claim_zero_byte_files(layout, batch_id)
    is_parquet = F.lower(F.col("path")).endswith(".parquet")
    parquet_paths = sorted(r.path for r in files_df.filter(is_parquet).select("path").collect())
    lines = landing_lines(files_df.filter(~is_parquet))
    if parquet_paths:
        lines = lines.unionByName(parquet_lines(spark, parquet_paths))
    if zero_byte_files:
        lines = lines.unionByName(spark.createDataFrame(
            [(path, 0, None, "empty_file") for path in zero_byte_files],
            "source_file string, line_number int, line string, file_reason string"))
    parsed = classify_events(lines, rules).withColumn("batch_id", F.lit(batch_id))

    # Late events and duplicates, against the bounded state the previous batch left (see dedupe_with_watermark).
    previous = latest_manifest_before(layout, batch_id)
    max_seen = datetime.fromisoformat(previous["max_event_time"]) if previous and previous.get("max_event_time") else None
    lateness = params.features.allowed_lateness_s
    watermark = max_seen - timedelta(seconds=lateness) if max_seen else None
    seen_dir = layout.feature_state / "event_ids"
    snapshot = latest_snapshot_before(seen_dir, batch_id)
    seen = (spark.read.parquet(str(snapshot)) if snapshot else
            spark.createDataFrame([], "event_id string, event_time timestamp"))
    # One status per landed record; everything below is a filter on this one cached frame.
    classified = dedupe_with_watermark(parsed, seen, watermark).persist()

    # All the counts in one pass over the cached frame.
    # Times only over accepted rows: a quarantined one can be any timestamp (year 10000 was found by fuzzing), which
    # Python's datetime cannot hold, and one such record must not stop the batch.
    accepted_time = F.when(F.col("status") == "accepted", F.col("event_time"))
    stats = classified.groupBy("status", "quarantine_reason").agg(
        F.count("*").alias("n"), F.min(accepted_time).alias("lo"), F.max(accepted_time).alias("hi"),
        F.max(accepted_time.cast("double")).alias("hi_s"), F.collect_set("source_file").alias("files")).collect()
    accepted_stats = next((r for r in stats if r["status"] == "accepted"), None)
    # Epoch seconds, not the collected datetime: that one is naive, in the Python process's local zone.
    batch_max = datetime.fromtimestamp(accepted_stats["hi_s"], tz=timezone.utc) if accepted_stats else None
    new_max = max([t for t in (max_seen, batch_max) if t is not None], default=None)
    new_watermark = new_max - timedelta(seconds=lateness) if new_max else None

    accepted = classified.filter(F.col("status") == "accepted")
    quarantined = classified.filter(F.col("status") == "quarantined").select(
        "batch_id", "source_file", "line_number", "quarantine_reason", F.col("line").alias("raw_record"))
    # batch_id (a folder) is the unit a replay overwrites; ingest_batch_id (a column) is the batch that accepted the
    # row, and survives compaction, which merges a closed date's batch folders into one (jobs.compact).
    bronze = accepted.select("event_id", "user_id", "item_id", "event_type", "value", "event_time", "context",
                             "source_file", F.lit(batch_id).cast("int").alias("ingest_batch_id"), "batch_id",
                             F.to_date("event_time").alias("event_date"))
    bronze.write.mode("overwrite").partitionBy("event_date", "batch_id").parquet(str(layout.bronze_events))
    # Outliers (bots, scrapers) stay in bronze but leave the training examples and the entity state.
    fp = params.features
    flagged_users, flagged_items = flag_outliers(accepted, fp.outlier_z, fp.outlier_min_events)
    bot_users = sorted(r.user_id for r in flagged_users.collect())
    bot_items = sorted(r.item_id for r in flagged_items.collect())
    training = accepted.filter(~F.col("user_id").isin(bot_users) & ~F.col("item_id").isin(bot_items))
    # Entity state: the previous batch's snapshot + this batch -> this batch's snapshot (never all history).
    state_dir = layout.feature_state / "entities"
    previous_state = latest_snapshot_before(state_dir, batch_id)
    state = update_entity_state(spark.read.parquet(str(previous_state)) if previous_state else
                                spark.createDataFrame([], ENTITY_STATE_SCHEMA), training, fp.half_life_s)
    state.write.mode("overwrite").parquet(str(state_dir / f"batch_id={batch_id}"))
    # Item popularity over sliding windows: per-(item, time bucket) counts, updated the same way.
    buckets_dir = layout.feature_state / "item_buckets"
    previous_buckets = latest_snapshot_before(buckets_dir, batch_id)
    buckets = update_item_buckets(spark.read.parquet(str(previous_buckets)) if previous_buckets else
                                  spark.createDataFrame([], ITEM_BUCKET_STATE_SCHEMA), training,
                                  fp.popularity_bucket_s)
    prune_item_buckets(buckets, fp.popularity_bucket_s, max(fp.popularity_windows_s) + fp.allowed_lateness_s) \
        .write.mode("overwrite").parquet(str(buckets_dir / f"batch_id={batch_id}"))
    examples = entity_features(training_examples(training, fp.event_type_weights),
                               spark.read.parquet(str(state_dir / f"batch_id={batch_id}")), fp.half_life_s,
                               params.base.event_types)
    # The merged, unpruned state: an accepted event older than the pruning horizon still gets its full windows.
    examples = item_window_popularity(examples, buckets, fp.popularity_bucket_s, fp.popularity_windows_s)
    items_csv = layout.landing_items / "items.csv"
    if items_csv.exists():
        examples = item_content_features(examples, spark.read.option("header", True).csv(str(items_csv)))
    examples.write.mode("overwrite").parquet(str(layout.examples_batch(batch_id)))
    quarantined.write.mode("overwrite").parquet(str(layout.quarantine_events / f"batch_id={batch_id}"))
    # The next batch's dedupe state: the ids still above the new watermark, so the state stays bounded by the
    # allowed lateness rather than growing with history.
    state = seen.unionByName(accepted.select("event_id", "event_time"))
    if new_watermark is not None:
        state = state.filter(F.col("event_time") >= F.lit(new_watermark.timestamp()).cast("timestamp"))
    state.write.mode("overwrite").parquet(str(seen_dir / f"batch_id={batch_id}"))
    classified.unpersist()
    count = {status: sum(r["n"] for r in stats if r["status"] == status) for status in ("accepted", "quarantined", "duplicate")}
    reasons = {r["quarantine_reason"]: r["n"] for r in stats if r["status"] == "quarantined"}
    manifest = {
        "batch_id": batch_id,
        "files": sorted({f for r in stats for f in r["files"]}),
        "landed": sum(count.values()),
        "accepted": count["accepted"],
        "quarantined": count["quarantined"],
        "quarantine_reasons": dict(sorted(reasons.items())),
        "duplicates": count["duplicate"],
        "event_time_min": accepted_stats["lo"].isoformat() if accepted_stats else None,
        "event_time_max": accepted_stats["hi"].isoformat() if accepted_stats else None,
        "examples_path": str(layout.examples_batch(batch_id)),
        "outlier_users": bot_users,
        "outlier_items": bot_items,
        "outlier_events_excluded": count["accepted"] - examples_count(layout, batch_id),
        "max_event_time": new_max.isoformat() if new_max else None,
        "watermark": watermark.isoformat() if watermark else None,
    }
    atomic_write_json(batch_manifest_path(layout, batch_id), manifest)
    # A replay of this batch reads the snapshot before it, so only snapshots older than that one can go.
    for old_snapshot in [*seen_dir.glob("batch_id=*"), *state_dir.glob("batch_id=*"), *buckets_dir.glob("batch_id=*")]:
        if int(old_snapshot.name.split("=")[1]) < batch_id - 1:
            shutil.rmtree(old_snapshot, ignore_errors=True)
    return manifest


def examples_count(layout: StorageLayout, batch_id: int) -> int:
    """Rows in a written examples batch, from the Parquet footers (no Spark job)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in layout.examples_batch(batch_id).glob("*.parquet"))


def dedupe_with_watermark(parsed_df, seen_df, watermark: datetime | None):
    """Classified records + the dedupe state (event_id, event_time of accepted events still above the watermark) ->
    the same records with `status` in accepted | duplicate | quarantined.

    - A valid event older than the watermark (the newest event time seen in earlier batches minus
      `features.allowed_lateness_s`) is quarantined as "late": the state no longer holds ids that old, so it could
      not be told from a duplicate, and dropping it silently is not allowed.
    - A late event inside the allowed lateness is accepted like any other.
    - A duplicate is the same event_id delivered earlier: in an earlier batch (the state), or earlier in this batch
      (file name, then line). First delivery wins, whatever the copies' event times, so the outcome does not depend
      on how a restarted stream groups files into micro-batches.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = parsed_df
    if watermark is not None:
        is_late = (F.col("quarantine_reason").isNull()
                   & (F.col("event_time") < F.lit(watermark.timestamp()).cast("timestamp")))
        df = df.withColumn("quarantine_reason", F.when(is_late, F.lit("late")).otherwise(F.col("quarantine_reason")))
    is_valid = F.col("quarantine_reason").isNull()
    first_in_batch = Window.partitionBy("event_id", is_valid).orderBy("source_file", "line_number")
    ranked = df.withColumn("_rank", F.row_number().over(first_in_batch))
    seen = seen_df.select("event_id").distinct().withColumn("_seen", F.lit(True))
    ranked = ranked.join(seen, "event_id", "left")
    return ranked.withColumn(
        "status",
        F.when(~is_valid, F.lit("quarantined"))
        .when((F.col("_rank") > 1) | F.col("_seen").isNotNull(), F.lit("duplicate"))
        .otherwise(F.lit("accepted")),
    ).drop("_rank", "_seen")


def latest_snapshot_before(seen_dir: Path, batch_id: int) -> Path | None:
    """The dedupe state the latest complete earlier batch left (each batch writes a full snapshot)."""
    done = [p for p in seen_dir.glob("batch_id=*")
            if int(p.name.split("=")[1]) < batch_id and (p / "_SUCCESS").exists()] if seen_dir.exists() else []
    return max(done, key=lambda p: int(p.name.split("=")[1])) if done else None


def latest_manifest_before(layout: StorageLayout, batch_id: int) -> dict | None:
    folder = layout.feature_state / "batches"
    earlier = sorted(int(p.stem) for p in folder.glob("*.json") if int(p.stem) < batch_id) if folder.exists() else []
    return read_json(batch_manifest_path(layout, earlier[-1])) if earlier else None


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


def batch_clock(layout: StorageLayout, batch_id: int, now_epoch_s: float) -> float:
    """The "now" a micro-batch judges future timestamps by, fixed at its first attempt.

    A batch replayed after a crash must classify every record exactly as the first attempt did, or an event near
    the skew limit could be quarantined once and accepted on replay; so the first attempt records its clock under
    features/state/clock/ and every replay reads it back.
    """
    path = batch_clock_path(layout, batch_id)
    if path.exists():
        return float(read_json(path)["now_epoch_s"])
    atomic_write_json(path, {"batch_id": batch_id, "now_epoch_s": now_epoch_s})
    return now_epoch_s


def batch_clock_path(layout: StorageLayout, batch_id: int) -> Path:
    return layout.feature_state / "clock" / f"{batch_id:08d}.json"


def batch_manifest_path(layout: StorageLayout, batch_id: int) -> Path:
    return layout.feature_state / "batches" / f"{batch_id:08d}.json"


def read_batch_manifests(layout: StorageLayout, batch_ids: list[int]) -> list[dict]:
    return [read_json(batch_manifest_path(layout, b)) for b in batch_ids]


def summarize_batches(manifests: list[dict], seconds: float) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for m in manifests:
        for reason, count in m["quarantine_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    summary = {
        "batch_ids": [m["batch_id"] for m in manifests],
        "files": sum(len(m["files"]) for m in manifests),
        "landed": sum(m["landed"] for m in manifests),
        "accepted": sum(m["accepted"] for m in manifests),
        "quarantined": sum(m["quarantined"] for m in manifests),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "duplicates": sum(m["duplicates"] for m in manifests),
        "outlier_events_excluded": sum(m.get("outlier_events_excluded", 0) for m in manifests),
        "outlier_users": sorted({u for m in manifests for u in m.get("outlier_users", [])}),
        "seconds": round(seconds, 2),
    }
    # The reconciliation every downstream reader relies on; a mismatch is a bug, never a data problem.
    if summary["landed"] != summary["accepted"] + summary["quarantined"] + summary["duplicates"]:
        raise RuntimeError(f"feature counts do not reconcile: {summary}")
    return summary


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
    batch_ids: list[int] = []

    def on_batch(files_df, batch_id: int) -> None:
        manifest = process_micro_batch(spark, files_df, batch_id, layout, settings, batch_clock(layout, batch_id, now))
        batch_ids.append(batch_id)
        print(f"[features] batch {batch_id}: {manifest['landed']} landed, {manifest['accepted']} accepted, "
              f"{manifest['quarantined']} quarantined, {manifest['duplicates']} duplicates", flush=True)

    query = (stream.writeStream.foreachBatch(on_batch)
             .option("checkpointLocation", str(layout.stream_checkpoint))
             .trigger(availableNow=True).start())
    query.awaitTermination()
    summary = summarize_batches(read_batch_manifests(layout, batch_ids), time.monotonic() - started)
    # After the stream has stopped: this job is bronze's only writer, so no batch can write a date being compacted.
    summary["compaction"] = compact_bronze(spark, settings)
    if reports_dir is not None:
        write_step_summary(reports_dir, "features", summary)
    return summary


def spark_for(settings: Settings):
    from jobs.spark import spark_session

    fp = settings.params.features
    return spark_session(fp.spark_master, fp.shuffle_partitions, driver_memory=fp.spark_driver_memory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal features", description="Process new landing files into features.")
    parser.add_argument("--run-id", default=None, help="report folder name (default: a timestamp)")
    args = parser.parse_args(argv)
    settings = load_settings()
    run_id = args.run_id or datetime.now(timezone.utc).strftime("manual__%Y%m%dT%H%M%S")
    summary = run_features(settings, StorageLayout(settings.home).run_reports(run_id))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
