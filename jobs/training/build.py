"""The full retrain's training set: a Spark batch job over bronze/events.

The window is `history_days` before the newest event (not before now, so a rerun of the same data gives the same
set), or all of bronze. Examples get the same columns as the streaming features job, with the per-micro-batch
counts recomputed per batch id, so the drift reference stored with the new model compares like with like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tidal.config import Settings
from tidal.storage import StorageLayout, safe_name


def retrain_dir(layout: StorageLayout, run_id: str) -> Path:
    return layout.root / "features" / "retrain" / safe_name(run_id)


def build_training_set(settings: Settings, run_id: str, history_days: int | None) -> dict[str, Any]:
    """Spark batch: bronze events in the window -> examples (the streaming job's columns) under features/retrain/."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from jobs.features.transforms import training_examples
    from tidal.spark import spark_for

    layout = StorageLayout(settings.home).ensure()
    if not any(layout.bronze_events.glob("event_date=*")):
        raise RuntimeError(f"no bronze events under {layout.bronze_events}; run the features job first")
    spark = spark_for(settings)
    # mergeSchema: bronze written before ingest_batch_id existed lacks the column.
    bronze = spark.read.option("mergeSchema", "true").parquet(str(layout.bronze_events))
    if "ingest_batch_id" in bronze.columns:  # the accepting micro-batch; the batch_id folder may be a compaction's
        bronze = bronze.withColumn("batch_id", F.coalesce(F.col("ingest_batch_id"), F.col("batch_id")))
    newest = bronze.agg(F.max("event_time")).first()[0]
    window = bronze
    if history_days is not None:
        window = bronze.filter(F.col("event_time") >= F.lit(newest) - F.expr(f"INTERVAL {int(history_days)} DAYS"))
    examples = training_examples(window, settings.params.features.event_type_weights).drop(
        "user_batch_events", "item_batch_events").join(window.select("event_id", "batch_id"), "event_id")
    # The drift features count events per micro-batch, as the streaming job does (not over the whole window).
    examples = (examples
                .withColumn("user_batch_events", F.count("*").over(Window.partitionBy("batch_id", "user_id")))
                .withColumn("item_batch_events", F.count("*").over(Window.partitionBy("batch_id", "item_id"))))
    out = retrain_dir(layout, run_id) / "examples"
    examples.coalesce(1).write.mode("overwrite").parquet(str(out))
    frame = pd.read_parquet(out)
    times = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    summary = {"run_id": run_id, "examples_path": str(out), "rows": len(frame), "history_days": history_days,
               "batch_ids": sorted(int(b) for b in frame["batch_id"].unique()),
               "event_time_range": [times.min().isoformat(), times.max().isoformat()] if len(frame) else None}
    print(f"[retrain] training set: {len(frame)} examples from batches {summary['batch_ids']} "
          f"({'all history' if history_days is None else f'{history_days} days'})", flush=True)
    if len(frame) < settings.params.retrain.min_examples:
        raise RuntimeError(f"only {len(frame)} examples in the window < retrain.min_examples "
                           f"({settings.params.retrain.min_examples}); widen the history window")
    return summary
