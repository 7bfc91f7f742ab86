"""Reading the feature store's training examples back as pandas, for the training and gating steps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tidal.storage import StorageLayout

TRAINING_COLUMNS = ["user_id", "item_id", "timestamp", "weight"]


def example_batch_ids(layout: StorageLayout) -> list[int]:
    if not layout.feature_examples.exists():
        return []
    return sorted(int(p.name.split("=")[1]) for p in layout.feature_examples.glob("batch_id=*") if (p / "_SUCCESS").exists())


def load_examples(layout: StorageLayout, batch_ids: list[int]) -> pd.DataFrame:
    """The examples of the given micro-batches, time-ordered, with `weight` = the event-type weight."""
    frames = [pd.read_parquet(layout.examples_batch(b)) for b in batch_ids if layout.examples_batch(b).exists()]
    if not frames:
        return pd.DataFrame(columns=[*TRAINING_COLUMNS, "event_id"])
    examples = pd.concat(frames, ignore_index=True).rename(columns={"event_weight": "weight"})
    return examples.sort_values(["timestamp", "event_id"], kind="stable").reset_index(drop=True)


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
