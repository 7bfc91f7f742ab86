"""A registry written before checkpoint format 2: the fine-tune refuses it with the remedy, and a full retrain's
candidate replaces it (the gate judges it on its own; it keeps no evidence from the model it cannot read)."""

from __future__ import annotations

import pytest
import torch

from jobs.release.gate import run_gate
from jobs.release.promote import run_promote
from jobs.training.candidate import candidate_metadata, split_holdout, train_config, write_candidate
from jobs.training.finetune import run_finetune
from jobs.training.full_retrain import production_selection
from models.recommender import UnsupportedCheckpointFormat, train
from tests.jobs.training.test_finetune import cycle, write_examples_batch
from tidal.datasets import TRAINING_COLUMNS, load_examples
from tidal.registry import Registry
from tidal.storage import StorageLayout


def test_an_old_format_production_is_refused_by_the_fine_tune_and_replaced_by_a_full_retrain(tidal_env):
    settings = tidal_env()
    layout = StorageLayout(settings.home).ensure()
    registry = Registry(layout.registry)
    write_examples_batch(layout, 0, settings, file_index=0)
    assert cycle(settings, "run-1")["promote"]["version"] == "v000001"
    old = registry.version("v000001")
    torch.save({"format": 1, "weights": {}}, old.model_path)  # what an older tidal left in the registry

    write_examples_batch(layout, 1, settings, file_index=1)
    with pytest.raises(UnsupportedCheckpointFormat, match="retrain to upgrade"):
        run_finetune(settings, "run-2")
    assert production_selection(registry.production()) is None

    examples = load_examples(layout, [0, 1])
    training, holdout = split_holdout(examples, settings.params.gate.holdout_fraction)
    cfg = train_config(settings)
    result = train(training[TRAINING_COLUMNS], cfg=cfg)
    write_candidate(registry, "retrain", result, holdout, holdout.iloc[:0], lambda finite: candidate_metadata(
        "retrain", "full", parent=None, anchor=None, batch_ids=[0, 1], rows={"trained": len(training)},
        time_range=None, trained_on=training, result=result, finite=finite, cfg=cfg))
    gate = run_gate(settings, "retrain")
    assert gate["passed"] is True and gate["production"] is None
    assert gate["reason"].startswith("production cannot be scored (v000001: unsupported checkpoint format 1")
    assert run_promote(settings, "retrain", gate)["version"] == "v000002"
    assert registry.production().version == "v000002"
