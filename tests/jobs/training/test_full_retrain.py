"""The full retrain's training step on both settings of `retrain.processes`: in the task's process, and over
2 processes with torch.distributed (models/distributed.py). Same training set, same candidate contents."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from jobs.training.full_retrain import train_from_scratch
from tests.jobs.training.test_finetune import write_examples_batch
from tidal.registry import METADATA_FILE, MODEL_FILE
from tidal.storage import StorageLayout


@pytest.mark.slow
def test_a_retrain_over_two_processes_makes_the_same_candidate_as_one(tidal_env, tmp_path):
    from models.recommender import Checkpoint

    one = tidal_env({"retrain": {"processes": 1}})
    layout = StorageLayout(one.home).ensure()
    frames = [write_examples_batch(layout, batch, one, batch).assign(batch_id=batch) for batch in range(3)]
    training_set = tmp_path / "training.parquet"
    pd.concat(frames, ignore_index=True).to_parquet(training_set, index=False)
    built = {"examples_path": str(training_set), "batch_ids": [0, 1, 2], "event_time_range": None}
    request = {"epochs": 2, "history_days": None, "reason": "test", "trigger": "manual", "promote": "register"}

    single = train_from_scratch(one, "retrain-one-process", built, request)
    two = train_from_scratch(tidal_env({"retrain": {"processes": 2}}), "retrain-two-processes", built, request)

    assert single["status"] == two["status"] == "trained"
    assert two["trained_examples"] == single["trained_examples"] > 0
    assert two["losses"] == pytest.approx(single["losses"], abs=1e-4)
    meta = json.loads((Path(two["candidate"]) / METADATA_FILE).read_text())
    assert meta["params"]["retrain"]["processes"] == 2 and meta["finite"] is True
    assert json.loads((Path(single["candidate"]) / METADATA_FILE).read_text())["params"]["retrain"]["processes"] == 1
    # The candidate's model is an ordinary checkpoint, with the single-process model's vocabulary.
    a, b = (Checkpoint.load(Path(s["candidate"]) / MODEL_FILE) for s in (single, two))
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    assert abs(a.score(a.user_ids[:20], a.item_ids) - b.score(a.user_ids[:20], a.item_ids)).max() < 1e-3


def test_a_bad_process_count_is_refused_by_the_config(tidal_env):
    from tidal.config import ConfigError

    with pytest.raises(ConfigError, match="processes"):
        tidal_env({"retrain": {"processes": 0}})
