"""finetune, gate and promote on example batches written straight into the feature store (no Spark needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from devtools.generate import SyntheticWorld, generate_file_events
from jobs.release.gate import run_gate
from jobs.release.promote import run_promote
from jobs.training.finetune import run_finetune, split_holdout
from tidal.registry import Registry
from tidal.storage import StorageLayout


def write_examples_batch(layout: StorageLayout, batch_id: int, settings, file_index: int) -> pd.DataFrame:
    """Examples shaped like the features job's output, from one synthetic landing file."""
    params = settings.params.generate
    world = SyntheticWorld(params, seed=3, files=file_index + 1)
    events = pd.DataFrame(generate_file_events(world, file_index, 3, params.events_per_file, settings.params.base.event_types))
    ts = pd.to_datetime(events["event_time"], utc=True)
    examples = pd.DataFrame({
        "event_id": events["event_id"], "user_id": events["user_id"], "item_id": events["item_id"],
        "event_type": events["event_type"], "value": events["value"].astype(float), "event_time": ts,
        "timestamp": ts.astype("int64") / 1e9,
        "event_weight": events["event_type"].map(settings.params.features.event_type_weights).astype(float),
        "hour_of_day": ts.dt.hour.astype("int32"),
        "user_batch_events": events.groupby("user_id")["event_id"].transform("count").astype("int64"),
        "item_batch_events": events.groupby("item_id")["event_id"].transform("count").astype("int64"),
    })
    path = layout.examples_batch(batch_id)
    path.mkdir(parents=True)
    examples.to_parquet(path / "part-0.parquet", index=False)
    (path / "_SUCCESS").touch()
    return examples


def cycle(settings, run_id: str) -> dict:
    reports = StorageLayout(settings.home).run_reports(run_id)
    finetune = run_finetune(settings, run_id, reports)
    gate = run_gate(settings, run_id, reports)
    promote = run_promote(settings, run_id, gate, reports)
    return {"finetune": finetune, "gate": gate, "promote": promote}


def test_split_holdout_keeps_the_freshest_slice():
    frame = pd.DataFrame({"timestamp": np.arange(10.0)})
    train, holdout = split_holdout(frame, 0.2)
    assert list(train["timestamp"]) == list(range(8)) and list(holdout["timestamp"]) == [8.0, 9.0]


def test_first_cycle_trains_from_scratch_then_fine_tunes_from_production(tidal_env):
    settings = tidal_env({"gate": {"recall_tolerance": 1.0}})
    layout = StorageLayout(settings.home).ensure()
    first_batch = write_examples_batch(layout, 0, settings, file_index=0)

    first = cycle(settings, "run-1")
    assert first["finetune"]["kind"] == "full" and first["finetune"]["parent"] is None
    assert first["finetune"]["trained_examples"] + first["finetune"]["held_out_examples"] == len(first_batch)
    assert first["gate"]["passed"] and first["gate"]["production"] is None
    assert 0.0 <= first["gate"]["candidate"]["recall_at_10"] <= 1.0 and first["gate"]["candidate"]["users"] > 0
    assert first["promote"]["version"] == "v000001"
    # Freshness starts from the newest event the model learned from: the held-out (freshest) slice is newer.
    newest = pd.Timestamp(Registry(layout.registry).version("v000001").metadata["newest_event_time"]).timestamp()
    times = first_batch["timestamp"].to_numpy()
    assert (times == newest).any() and (times > newest).sum() <= first["finetune"]["held_out_examples"]
    assert newest < times.max()

    write_examples_batch(layout, 1, settings, file_index=1)
    second = cycle(settings, "run-2")
    assert second["finetune"]["kind"] == "incremental" and second["finetune"]["parent"] == "v000001"
    assert second["finetune"]["batch_ids"] == [1]  # only what v000001 has not seen
    assert second["finetune"]["pending_holdout_examples"] == first["finetune"]["held_out_examples"]
    assert second["gate"]["production_version"] == "v000001"
    v2 = Registry(layout.registry).version("v000002")
    assert v2.metadata["anchor"] == "v000001" and v2.metadata["batch_ids"] == [1]
    assert v2.metadata["gate"]["production"] is not None  # both models were scored on the same slice


def test_nan_in_training_data_rejects_the_candidate_and_keeps_production(tidal_env):
    settings = tidal_env()
    layout = StorageLayout(settings.home).ensure()
    write_examples_batch(layout, 0, settings, file_index=0)
    assert cycle(settings, "run-1")["promote"]["version"] == "v000001"
    production_bytes = Registry(layout.registry).production().model_path.read_bytes()

    poisoned = write_examples_batch(layout, 1, settings, file_index=1)
    poisoned.loc[:, "event_weight"] = np.nan  # a corrupt weight column: the loss goes NaN
    poisoned.to_parquet(layout.examples_batch(1) / "part-0.parquet", index=False)
    result = cycle(settings, "run-2")

    assert result["finetune"]["status"] == "rejected_non_finite" and result["finetune"]["finite"] is False
    assert result["gate"]["passed"] is False and "not finite" in result["gate"]["reason"]
    assert result["promote"]["promoted"] is False and result["promote"]["production_version"] == "v000001"
    registry = Registry(layout.registry)
    assert registry.production().model_path.read_bytes() == production_bytes
    assert [v.version for v in registry.versions()] == ["v000001"]
    assert not (registry.candidate_dir("run-2") / "model.pt").exists()  # nothing promotable was written
    assert registry.events()[-1]["action"] == "reject"


def test_a_failed_gate_leaves_production_and_the_next_cycle_retrains_on_the_rejected_batches(tidal_env):
    settings = tidal_env()
    layout = StorageLayout(settings.home).ensure()
    write_examples_batch(layout, 0, settings, file_index=0)
    cycle(settings, "run-1")
    write_examples_batch(layout, 1, settings, file_index=1)
    reports = StorageLayout(settings.home).run_reports("run-2")
    run_finetune(settings, "run-2", reports)
    # The gate's summary is the contract between gate and promote; this one is a failing verdict.
    failed_gate = {"status": "evaluated", "passed": False, "reason": "candidate recall_at_10 trails production"}
    promote = run_promote(settings, "run-2", failed_gate, reports)
    assert promote["promoted"] is False and promote["production_version"] == "v000001"
    registry = Registry(layout.registry)
    assert registry.events()[-1] == {**registry.events()[-1], "action": "reject", "run_id": "run-2"}
    assert (registry.candidate_dir("run-2") / "model.pt").exists()  # kept for inspection, never served
    # The next cycle still starts from v000001 and covers batch 1 again: nothing is lost to a rejection.
    write_examples_batch(layout, 2, settings, file_index=2)
    next_run = run_finetune(settings, "run-3", reports)
    assert next_run["parent"] == "v000001" and next_run["batch_ids"] == [1, 2]


def test_too_few_new_examples_skip_training(tidal_env):
    settings = tidal_env({"finetune": {"min_examples": 10_000}})
    layout = StorageLayout(settings.home).ensure()
    write_examples_batch(layout, 0, settings, file_index=0)
    result = cycle(settings, "run-1")
    assert result["finetune"]["status"] == "skipped" and "min_examples" in result["finetune"]["reason"]
    assert result["gate"]["status"] == "skipped" and result["promote"]["promoted"] is False
    assert json.loads((StorageLayout(settings.home).run_reports("run-1") / "promote.json").read_text())["promoted"] is False


# ---- the drift reference stored with each version: every configured drift feature, under the feature store's name

def test_a_fine_tunes_reference_keeps_event_weight_and_drift_tests_it_on_both_sides(tidal_env):
    from jobs.drift.run import run_drift
    from tidal.registry import REFERENCE_FILE

    settings = tidal_env({"gate": {"recall_tolerance": 1.0}})
    layout = StorageLayout(settings.home).ensure()
    first_batch = write_examples_batch(layout, 0, settings, file_index=0)
    first = cycle(settings, "run-1")  # no production yet: run_finetune trains from scratch and samples a reference
    registry = Registry(layout.registry)
    reference = pd.read_parquet(registry.version("v000001").path / REFERENCE_FILE)
    drift = settings.params.drift
    assert list(reference.columns) == list(drift.reference_columns)
    assert list(drift.reference_columns) == ["value", "event_weight", "event_type", "item_id"]
    assert len(reference) == first["finetune"]["trained_examples"]
    weights = first_batch.set_index("event_id")["event_weight"]
    assert reference["event_weight"].notna().all() and set(reference["event_weight"]) <= set(weights)

    second_batch = write_examples_batch(layout, 1, settings, file_index=1)
    summary = run_drift(settings, "run-2", [1], layout.run_reports("run-2"))
    event_weight = {r["feature"]: r for r in summary["features"]}["event_weight"]
    assert (event_weight["reference_n"], event_weight["current_n"]) == (len(reference), len(second_batch))
    assert 0.0 <= event_weight["statistic"] <= 1.0 and 0.0 <= event_weight["p_value"] <= 1.0
    assert "note" not in event_weight

    # An incremental candidate carries its parent's reference unchanged (the anchor's training sample).
    cycle(settings, "run-2")
    assert pd.read_parquet(registry.version("v000002").path / REFERENCE_FILE).equals(reference)


def test_a_full_retrains_reference_keeps_event_weight(tidal_env, tmp_path):
    """train_from_scratch reads the Spark-built set through load_training_set (event_weight -> weight), as the
    fine-tune reads load_examples; the reference must still hold event_weight."""
    from jobs.training.full_retrain import train_from_scratch
    from tidal.registry import REFERENCE_FILE

    settings = tidal_env()
    layout = StorageLayout(settings.home).ensure()
    built_examples = pd.concat([write_examples_batch(layout, b, settings, file_index=b).assign(batch_id=b)
                                for b in (0, 1)], ignore_index=True)
    path = tmp_path / "retrain-examples"
    path.mkdir()
    built_examples.to_parquet(path / "part-0.parquet", index=False)
    built = {"examples_path": str(path), "batch_ids": [0, 1], "event_time_range": None}
    request = {"history_days": None, "epochs": 1, "reason": "test", "trigger": "cli", "promote": "auto"}

    trained = train_from_scratch(settings, "retrain-1", built, request)
    reference = pd.read_parquet(Registry(layout.registry).candidate_dir("retrain-1") / REFERENCE_FILE)
    assert list(reference.columns) == list(settings.params.drift.reference_columns)
    assert len(reference) == trained["trained_examples"]
    assert sorted(reference["event_weight"].unique()) == sorted(built_examples["event_weight"].unique())


def test_a_drift_feature_missing_from_the_training_set_refuses_the_reference(tidal_env):
    from jobs.drift.reference import MissingDriftFeature, drift_reference_sample

    settings = tidal_env({"drift": {"features": ["value", "dwell_seconds"]}})
    layout = StorageLayout(settings.home).ensure()
    examples = write_examples_batch(layout, 0, settings, file_index=0)
    with pytest.raises(MissingDriftFeature, match=r"'dwell_seconds' .* not a column of the training examples; its "
                                                  r"columns are \['event_id', 'event_time', 'event_type', "):
        drift_reference_sample(examples, settings.params.drift.reference_columns, 100, 1)
    with pytest.raises(MissingDriftFeature, match="'dwell_seconds'"):
        run_finetune(settings, "run-1")
    assert not Registry(layout.registry).candidate_dir("run-1").exists()  # refused before training


def test_a_fine_tune_from_a_parent_with_an_old_reference_is_refused(tidal_env):
    """A parent whose reference predates event_weight (written before the fix) is not copied into a new version."""
    from jobs.drift.reference import MissingDriftFeature
    from tidal.registry import REFERENCE_FILE

    settings = tidal_env()
    layout = StorageLayout(settings.home).ensure()
    write_examples_batch(layout, 0, settings, file_index=0)
    cycle(settings, "run-1")
    old = Registry(layout.registry).version("v000001").path / REFERENCE_FILE
    pd.read_parquet(old).drop(columns=["event_weight"]).to_parquet(old, index=False)
    write_examples_batch(layout, 1, settings, file_index=1)
    with pytest.raises(MissingDriftFeature,
                       match=r"'event_weight' .* reference of production v000001 .*`tidal retrain --reason"):
        run_finetune(settings, "run-2")


def test_a_fine_tune_scores_the_unseen_examples_first_so_the_weights_of_its_score_learn_online(tidal_env):
    """Production runs the incremental strategy as the prequential benchmark measures it: test, then train."""
    from models.recommender import Checkpoint

    settings = tidal_env({"gate": {"recall_tolerance": 1.0}})
    layout = StorageLayout(settings.home).ensure()
    registry = Registry(layout.registry)
    write_examples_batch(layout, 0, settings, file_index=0)
    cycle(settings, "run-1")
    assert Checkpoint.load(registry.version("v000001").model_path).selection is None  # a first model saw no test

    write_examples_batch(layout, 1, settings, file_index=1)
    assert cycle(settings, "run-2")["promote"]["version"] == "v000002"
    evidence = Checkpoint.load(registry.version("v000002").model_path).selection
    assert evidence is not None and float(evidence.sum()) > 0  # recall of each choice of weights on batch 1
