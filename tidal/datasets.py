"""Reading the feature store's training examples back as pandas, for the training, gating and drift steps.

One rename separates two vocabularies: the feature store (and params.yaml's drift features) calls the event-type
weight `event_weight`; the model's training frames call it `weight`. `with_training_names` and
`with_feature_store_names` are the only places that translate.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tidal.storage import StorageLayout, partition_value


TRAINING_COLUMNS = ["user_id", "item_id", "timestamp", "weight"]
STORE_TO_TRAINING_NAMES = {"event_weight": "weight"}


def with_training_names(examples: pd.DataFrame) -> pd.DataFrame:
    """The examples under the model's column names (`weight`)."""
    return examples.rename(columns=STORE_TO_TRAINING_NAMES)


def with_feature_store_names(examples: pd.DataFrame) -> pd.DataFrame:
    """The examples under the feature store's column names, as params.yaml's drift features name them."""
    renames = {new: old for old, new in STORE_TO_TRAINING_NAMES.items()
               if new in examples.columns and old not in examples.columns}
    return examples.rename(columns=renames)


def time_ordered(examples: pd.DataFrame) -> pd.DataFrame:
    """Sorted by event time, ties by event id (stable), as every replay and split expects."""
    return examples.sort_values(["timestamp", "event_id"], kind="stable").reset_index(drop=True)


def example_batch_ids(layout: StorageLayout) -> list[int]:
    if not layout.feature_examples.exists():
        return []
    return sorted(partition_value(p) for p in layout.feature_examples.glob("batch_id=*") if (p / "_SUCCESS").exists())


def load_examples(layout: StorageLayout, batch_ids: list[int]) -> pd.DataFrame:
    """The examples of the given micro-batches, time-ordered, with `weight` = the event-type weight."""
    frames = [pd.read_parquet(layout.examples_batch(b)) for b in batch_ids if layout.examples_batch(b).exists()]
    if not frames:
        return pd.DataFrame(columns=[*TRAINING_COLUMNS, "event_id"])
    return time_ordered(with_training_names(pd.concat(frames, ignore_index=True)))


def recent_history(layout: StorageLayout, before_batch: int, max_rows: int) -> pd.DataFrame:
    """The newest `max_rows` examples from batches before `before_batch` (the replay pool and the gate's history).

    Reads batches newest first and stops once it has enough, so the cost is bounded by max_rows, not by history.
    """
    chosen: list[int] = []
    rows = 0
    for batch_id in reversed([b for b in example_batch_ids(layout) if b < before_batch]):
        if rows >= max_rows:
            break
        chosen.append(batch_id)
        rows += pd.read_parquet(layout.examples_batch(batch_id), columns=["event_id"]).shape[0]
    history = load_examples(layout, sorted(chosen))
    return history.iloc[max(0, len(history) - max_rows):].reset_index(drop=True)


def load_item_metadata(layout: StorageLayout) -> pd.DataFrame | None:
    path: Path = layout.landing_items / "items.csv"
    if not path.exists():
        return None
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def load_training_set(path: str | Path) -> pd.DataFrame:
    """A full retrain's training set (one Parquet folder), as load_examples returns micro-batches."""
    return time_ordered(with_training_names(pd.read_parquet(path)))
