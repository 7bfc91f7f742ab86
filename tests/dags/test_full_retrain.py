"""The retrain DAGs: their shapes, schedules and Params form; bad requests refused when the run is created (the
form and the first task agree); and a full retrain through the real DAG (`dag.test()`: Airflow task runner, Spark
batch, GX, torch, DVC on SeaweedFS) that becomes the anchor of the next incremental run, then a rejected one that
fails the run with the operator's reason in the registry. Scheduled and asset-triggered runs under a real scheduler:
tests/dags/test_retrain_scheduler.py."""

from __future__ import annotations

import re

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
RETRAIN_DAGS = ("tidal_full_retrain", "tidal_scheduled_retrain")


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


@pytest.mark.parametrize("dag_id", RETRAIN_DAGS)
def test_both_retrain_dags_run_the_same_chain_in_the_model_pool(dagbag, dag_id):
    assert dagbag.import_errors == {}
    dag = dagbag.get_dag(dag_id)
    assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == EXPECTED_EDGES
    assert dag.max_active_runs == 1 and dag.catchup is False
    pools = {t.task_id: t.pool for t in dag.tasks}
    assert {k for k, v in pools.items() if v == "tidal_model"} == {"build_training_set", "train", "gate", "promote"}
    assert dag.get_task("promote").retries == 0  # a rejection is recorded once, then fails the run


def test_schedules_and_who_may_start_each_dag(dagbag):
    manual, scheduled = (dagbag.get_dag(d) for d in RETRAIN_DAGS)
    assert type(manual.timetable).__name__ == "NullTimetable"
    assert {t.value for t in manual.allowed_run_types} == {"manual", "operator_triggered"}
    assert scheduled.timetable.timetable.expression == "0 3 * * 0"  # weekly, Sunday 03:00 UTC
    assert [a.uri for a in scheduled.timetable.asset_condition.objects] == ["tidal://drift/severe"]
    assert {t.value for t in scheduled.allowed_run_types} == {"scheduled", "asset_triggered", "backfill"}
    assert dict(scheduled.params) == {}  # no form: params.yaml's retrain section and the trigger set the request
    incremental = {t.task_id: t.pool for t in dagbag.get_dag("tidal_incremental").tasks}
    assert {k for k, v in incremental.items() if v == "tidal_model"} == {"finetune", "gate", "promote"}
    assert dagbag.get_dag("tidal_rollback").get_task("rollback").pool == "tidal_model"


def test_unpausing_the_scheduled_retrain_waits_for_the_next_slot(dagbag):
    """Unpausing must not start the most recent missed weekly run at once (a start_date made it do that)."""
    from airflow.sdk import timezone
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    dag = dagbag.get_dag("tidal_scheduled_retrain")
    assert dag.start_date is None
    timetable = coerce_to_core_timetable(dag.timetable)
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=dag.catchup)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert first.run_after > timezone.utcnow()
    assert first.run_after.weekday() == 6 and (first.run_after.hour, first.run_after.minute) == (3, 0)


def test_every_param_has_a_title_and_description(dagbag):
    params = dagbag.get_dag("tidal_full_retrain").params
    assert set(params.keys()) == {"history_days", "epochs", "reason", "promote"}
    for name in params.keys():
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name


def validate_conf(dagbag, conf: dict) -> None:
    """What Airflow does with a trigger's conf before it creates the run (the UI form and the REST API alike)."""
    import copy

    params = copy.deepcopy(dagbag.get_dag("tidal_full_retrain").params)  # keeps a Param's "no default"
    params.update(conf)
    params.validate()


@pytest.mark.parametrize("conf, message", [
    ({"history_days": -3, "reason": "x"}, "history_days"),
    ({"history_days": "/data/bronze", "reason": "x"}, "history_days"),
    ({"reason": "../../etc/passwd"}, "reason"),
    ({"reason": "x", "promote": "yolo"}, "promote"),
    ({"history_days": 7}, "reason"),  # a manual retrain needs a reason: the form will not submit without one
    ({"reason": ""}, "reason"),
    ({"reason": "   "}, "reason"),
    ({"reason": "a.. b"}, "reason"),
])
def test_bad_params_are_refused_when_the_run_is_created(dagbag, conf, message):
    with pytest.raises(Exception, match=message):
        validate_conf(dagbag, conf)


REASONS = ["weekly reset by hand", "", "   ", "../x", "fix..", "~root", "  ~x", "a~b", "x/y", "x\\y",
           "first line\n..", "two\nlines", "é ünïcode", "x" * 500, "x" * 501, "trailing space "]


@pytest.mark.parametrize("reason", REASONS, ids=[f"r{i}" for i in range(len(REASONS))])
def test_the_form_and_the_first_task_accept_and_refuse_the_same_reasons(dagbag, tidal_env, reason):
    from jobs.training.request import check_request
    from tidal.config import ConfigError

    settings = tidal_env()
    try:
        validate_conf(dagbag, {"reason": reason})
        form_ok = True
    except Exception:
        form_ok = False
    try:
        check_request(settings, {"reason": reason, "trigger": "manual"})
        task_ok = True
    except ConfigError as err:
        task_ok = False
        assert re.search(r"reason", str(err)), err
    assert form_ok == task_ok


def test_a_run_without_a_reason_is_never_created(dagbag, tidal_env):
    from tidal.storage import StorageLayout

    settings = tidal_env()
    with pytest.raises(ValueError, match="reason"):  # Airflow's ParamValidationError
        dagbag.get_dag("tidal_full_retrain").test(run_conf={"history_days": 7, "reason": ""})
    with pytest.raises(ValueError, match="reason"):
        dagbag.get_dag("tidal_full_retrain").test(run_conf={"history_days": 7})
    assert not (StorageLayout(settings.home).root / "features" / "retrain").exists()


@pytest.mark.slow
@pytest.mark.stack
def test_full_retrain_through_the_dag_becomes_the_anchor_of_the_next_incremental(dagbag, tidal_env, s3_env):
    from devtools.generate import generate_stream
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
    from jobs.features.stream import run_features

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

    # A retrain whose candidate the gate rejects (a learning rate that overflows: non-finite weights) is a red run
    # that says why, and its registry entry carries the operator's request.
    tidal_env({"gate": {"recall_tolerance": 1.0}, "retrain": {"min_examples": 50}, "train": {"lr": 1.0e30}})
    rejected = retrain.test(run_conf={"epochs": 1, "reason": "try a hot learning rate", "promote": "auto"})
    states = {ti.task_id: ti.state for ti in rejected.get_task_instances()}
    assert rejected.state == "failed" and states["promote"] == "failed" and states["version"] == "upstream_failed"
    assert registry.production().version == "v000003"
    entry = registry.events()[-1]
    assert (entry["action"], entry["run_id"]) == ("reject", rejected.run_id) and "not finite" in entry["reason"]
    assert entry["request"] == {"reason": "try a hot learning rate", "trigger": "manual", "promote": "auto",
                                "history_days": None, "epochs": 1}


@pytest.mark.parametrize("dag_id", RETRAIN_DAGS)
def test_both_retrain_dags_run_the_declared_pipeline(dagbag, dag_id):
    from tidal.pipelines import FULL_RETRAIN

    dag = dagbag.get_dag(dag_id)
    assert [t.task_id for t in dag.task_group.topological_sort()] == list(FULL_RETRAIN.step_names)
    assert {(t.task_id, down) for t in dag.tasks for down in t.downstream_task_ids} == FULL_RETRAIN.edges()
