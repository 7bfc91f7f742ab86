"""tidal_full_retrain: its shape and Params form, bad Params refused before any work, and a full retrain through the
real DAG (`dag.test()`: Airflow task runner, Spark batch, GX, torch, DVC on SeaweedFS) that becomes the anchor the
next incremental run fine-tunes from."""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT
from tests.dags.test_incremental_e2e import summaries

EXPECTED_EDGES = {
    "check_request": {"build_training_set", "train", "promote"},
    "build_training_set": {"validate", "train"},
    "validate": {"train"},
    "train": {"gate"},
    "gate": {"promote"},
    "promote": {"version"},
    "version": set(),
}


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_shape_schedule_and_pool(dagbag):
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag("tidal_full_retrain")
    assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == EXPECTED_EDGES
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.timetable.timetable.expression == "0 3 * * 0"  # weekly, Sunday 03:00 UTC
    assert [a.uri for a in dag.timetable.asset_condition.objects] == ["tidal://drift/severe"]  # drift triggers it
    pools = {t.task_id: t.pool for t in dag.tasks}
    assert {k for k, v in pools.items() if v == "tidal_model"} == {"build_training_set", "train", "gate", "promote"}
    incremental = {t.task_id: t.pool for t in dagbag.get_dag("tidal_incremental").tasks}
    assert {k for k, v in incremental.items() if v == "tidal_model"} == {"finetune", "gate", "promote"}
    assert dagbag.get_dag("tidal_rollback").get_task("rollback").pool == "tidal_model"


def test_every_param_has_a_title_and_description(dagbag):
    params = dagbag.get_dag("tidal_full_retrain").params
    assert set(params.keys()) == {"history_days", "epochs", "reason", "promote"}
    for name in params.keys():
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name


@pytest.mark.parametrize("conf, message", [
    ({"history_days": -3, "reason": "x"}, "history_days"),
    ({"history_days": "/data/bronze", "reason": "x"}, "history_days"),
    ({"reason": "../../etc/passwd"}, "reason"),
    ({"reason": "x", "promote": "yolo"}, "promote"),
])
def test_bad_params_are_refused_when_the_run_is_created(dagbag, conf, message):
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dagbag.get_dag("tidal_full_retrain").params)
    with pytest.raises(Exception, match=message):
        params.update(conf)
        params.validate()


def test_missing_reason_fails_the_first_task_before_any_work(dagbag, tidal_env):
    from tidal.storage import StorageLayout

    settings = tidal_env()
    dag_run = dagbag.get_dag("tidal_full_retrain").test(run_conf={"history_days": 7})
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states["check_request"] == "failed"
    assert states["build_training_set"] in ("upstream_failed", None) and states["train"] in ("upstream_failed", None)
    assert not (StorageLayout(settings.home).root / "features" / "retrain").exists()


@pytest.mark.slow
@pytest.mark.stack
def test_full_retrain_through_the_dag_becomes_the_anchor_of_the_next_incremental(dagbag, tidal_env, s3_env):
    from jobs.generate import generate_stream
    from tidal.registry import REFERENCE_FILE, Registry
    from tidal.storage import StorageLayout

    settings = tidal_env({"gate": {"recall_tolerance": 1.0}, "retrain": {"min_examples": 50}})
    layout = StorageLayout(settings.home).ensure()
    incremental, retrain = dagbag.get_dag("tidal_incremental"), dagbag.get_dag("tidal_full_retrain")
    gen = dict(seed=11, event_types=settings.params.base.event_types)
    generate_stream(layout, settings.params.generate, files=2, **gen)
    first = incremental.test()
    assert first.state == "success"
    registry = Registry(layout.registry)
    assert registry.production().version == "v000001"

    # New events reach the feature store (batch 1) but no incremental run has trained on them yet.
    from jobs.features import run_features

    generate_stream(layout, settings.params.generate, files=1, **gen)
    pending_batches = run_features(settings)["batch_ids"]

    run = retrain.test(run_conf={"history_days": "all", "epochs": 2, "reason": "weekly reset in test",
                                 "promote": "auto"})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    steps = summaries(settings, run.run_id)
    assert steps["retrain_train"]["epochs"] == 2 and steps["retrain_train"]["replaces"] == "v000001"
    assert steps["promote"]["version"] == "v000002" and steps["version"]["status"] == "pushed"
    v2 = registry.version("v000002")
    assert (v2.metadata["kind"], v2.metadata["parent"], v2.metadata["anchor"]) == ("full", None, "v000002")
    assert v2.metadata["retrain"] == {"reason": "weekly reset in test", "trigger": "manual", "promote": "auto"}
    # It saw all of history (v000001's batches and the new one), from scratch.
    assert v2.metadata["batch_ids"] == registry.version("v000001").metadata["batch_ids"] + pending_batches
    assert v2.metadata["rows"]["replay"] == 0 and len(v2.metadata["losses"]) == 2
    # Its drift reference is a sample of its own (larger) training set, not v000001's.
    import pandas as pd

    assert len(pd.read_parquet(v2.path / REFERENCE_FILE)) == v2.metadata["rows"]["trained"]
    assert len(pd.read_parquet(v2.path / REFERENCE_FILE)) > len(pd.read_parquet(registry.version("v000001").path / REFERENCE_FILE))

    generate_stream(layout, settings.params.generate, files=1, **gen)
    nxt = incremental.test()
    assert nxt.state == "success"
    after = summaries(settings, nxt.run_id)
    assert after["drift"]["reference_version"] == "v000002"
    assert after["finetune"]["kind"] == "incremental" and after["finetune"]["parent"] == "v000002"
    assert after["finetune"]["batch_ids"] == [pending_batches[-1] + 1]  # only what the retrain has not seen
    v3 = registry.version(after["promote"]["version"])
    assert (v3.version, v3.metadata["parent"], v3.metadata["anchor"]) == ("v000003", "v000002", "v000002")
