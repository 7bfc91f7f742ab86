"""tidal.datasets: examples read back time-ordered under the model's names, the one rename both ways, and bounded
history reads."""

from __future__ import annotations

import pandas as pd

from tidal.datasets import (STORE_TO_TRAINING_NAMES, example_batch_ids, load_examples, load_training_set,
                            recent_history, with_feature_store_names, with_training_names)
from tidal.storage import StorageLayout


def write_batch(layout: StorageLayout, batch_id: int, rows: list[tuple[str, int]], done: bool = True) -> None:
    folder = layout.examples_batch(batch_id)
    folder.mkdir(parents=True)
    pd.DataFrame({"event_id": [e for e, _ in rows], "user_id": "u", "item_id": "i",
                  "timestamp": [t for _, t in rows], "event_weight": 1.0}).to_parquet(folder / "part-0.parquet")
    if done:
        (folder / "_SUCCESS").write_text("")


def test_the_rename_goes_both_ways_and_leaves_a_frame_that_has_both(tmp_path):
    store = pd.DataFrame({"event_weight": [2.0], "user_id": ["u"]})
    training = with_training_names(store)
    assert list(training.columns) == ["weight", "user_id"] and STORE_TO_TRAINING_NAMES == {"event_weight": "weight"}
    assert with_feature_store_names(training).equals(store)
    both = pd.DataFrame({"weight": [1.0], "event_weight": [2.0]})
    assert with_feature_store_names(both).equals(both)


def test_load_examples_is_time_ordered_with_ties_by_event_id_and_skips_unfinished_batches(tmp_path):
    layout = StorageLayout(tmp_path).ensure()
    write_batch(layout, 0, [("b", 5), ("a", 5), ("c", 1)])
    write_batch(layout, 1, [("d", 3)])
    write_batch(layout, 2, [("e", 0)], done=False)  # being written: no _SUCCESS yet
    assert example_batch_ids(layout) == [0, 1]
    examples = load_examples(layout, [0, 1])
    assert list(examples["event_id"]) == ["c", "d", "a", "b"] and "weight" in examples.columns
    assert load_examples(layout, []).empty


def test_recent_history_reads_newest_batches_first_and_keeps_the_newest_rows(tmp_path):
    layout = StorageLayout(tmp_path).ensure()
    for batch_id in range(4):
        write_batch(layout, batch_id, [(f"{batch_id}-{i}", batch_id * 10 + i) for i in range(3)])
    history = recent_history(layout, before_batch=3, max_rows=4)
    assert list(history["event_id"]) == ["1-2", "2-0", "2-1", "2-2"]


def test_a_training_set_reads_like_micro_batches(tmp_path):
    path = tmp_path / "examples"
    path.mkdir()
    pd.DataFrame({"event_id": ["y", "x"], "timestamp": [2, 2], "event_weight": [1.0, 3.0]}).to_parquet(path / "p.parquet")
    frame = load_training_set(path)
    assert list(frame["event_id"]) == ["x", "y"] and list(frame["weight"]) == [3.0, 1.0]
