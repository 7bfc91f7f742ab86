"""The incremental DAG's shape: it imports cleanly and cheaply, wires the seven steps in order behind a cheap
landing check, emits the severe-drift asset on the severe branch only, and an idle run ends skipped in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.conftest import REPO_ROOT

EXPECTED_EDGES = {
    "check_landing": {"features"},
    "features": {"validate", "drift"},
    "validate": {"drift"},
    "drift": {"finetune", "drift_response", "signal_severe_drift"},
    "drift_response": {"trigger_incremental_now", "signal_severe_drift"},
    "trigger_incremental_now": set(),
    "signal_severe_drift": set(),
    "finetune": {"gate"},
    "gate": {"promote"},
    "promote": {"version"},
    "version": set(),
}
HEAVY_MODULES = ("pyspark", "torch", "great_expectations", "dvc", "scipy", "pandas", "models", "jobs")


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO_ROOT / "dags"))


def test_dag_files_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "tidal_incremental" in dagbag.dag_ids


def test_tasks_and_edges(dagbag):
    dag = dagbag.get_dag("tidal_incremental")
    edges = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert edges == EXPECTED_EDGES


def test_schedule_and_run_policy(dagbag):
    dag = dagbag.get_dag("tidal_incremental")
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    # By default a landing file starts a run (the landing asset's watcher), and a 5-minute tick is the fallback.
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert dag.timetable.timetable.delta == timedelta(minutes=5)
    [landing] = dag.timetable.asset_condition.objects
    assert landing.uri == "tidal://landing/events"
    [watcher] = landing.watchers
    assert watcher.trigger.serialize() == ("tidal.landing_watch.LandingFilesTrigger", {"poll_interval_s": 2.0})
    retries = {t.task_id: t.retries for t in dag.tasks}
    assert retries["validate"] == 0  # a dirty batch stays dirty: no pointless retry
    assert all(r >= 1 for task_id, r in retries.items() if task_id != "validate")


def parse_with(monkeypatch, **env: str):
    from airflow.dag_processing.dagbag import DagBag

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return DagBag(dag_folder=str(REPO_ROOT / "dags" / "tidal_incremental.py"))


def test_the_tick_alone_when_asked(airflow_db, monkeypatch):
    """TIDAL_INCREMENTAL_TRIGGER=schedule: what tidal did before the landing watcher (the benchmark's baseline)."""
    bag = parse_with(monkeypatch, TIDAL_INCREMENTAL_TRIGGER="schedule", TIDAL_INCREMENTAL_EVERY_MINUTES="7",
                     TIDAL_LANDING_POLL_S="1")
    assert bag.import_errors == {}
    timetable = bag.get_dag("tidal_incremental").timetable
    assert type(timetable).__name__ == "DeltaTriggerTimetable" and timetable.delta == timedelta(minutes=7)


def test_a_bad_schedule_setting_is_an_import_error_that_says_what_is_allowed(airflow_db, monkeypatch):
    bag = parse_with(monkeypatch, TIDAL_INCREMENTAL_TRIGGER="cron")
    [error] = bag.import_errors.values()
    assert "TIDAL_INCREMENTAL_TRIGGER='cron': give one of landing, schedule" in error
    assert "tidal_incremental" not in bag.dag_ids


def test_parsing_the_dag_imports_nothing_heavy():
    """Parse the DAG file in a fresh interpreter and list which heavy modules got imported."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(REPO_ROOT / 'dags' / 'tidal_incremental.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_only_the_severe_branch_emits_the_severe_drift_asset(dagbag):
    dag = dagbag.get_dag("tidal_incremental")
    emitting = {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets}
    assert emitting == {"signal_severe_drift": ["tidal://drift/severe"]}
    # The asset it emits is the one the scheduled retrain waits for.
    retrain = dagbag.get_dag("tidal_scheduled_retrain")
    assert [a.uri for a in retrain.timetable.asset_condition.objects] == emitting["signal_severe_drift"]


def test_a_run_with_nothing_landed_is_idle_and_skips_every_later_task(dagbag, tidal_env):
    """No Spark start, no fine-tune: check_landing says idle and every other task ends skipped."""
    from tidal.storage import StorageLayout

    settings = tidal_env()
    dag_run = dagbag.get_dag("tidal_incremental").test()
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states.pop("check_landing") == "success"
    assert set(states.values()) == {"skipped"} and set(states) == set(EXPECTED_EDGES) - {"check_landing"}
    layout = StorageLayout(settings.home)
    assert not any(layout.stream_checkpoint.glob("*")), "the features job ran"
    assert not (layout.reports / "runs").exists() or not any((layout.reports / "runs").rglob("features.json"))


def test_the_dag_runs_the_declared_pipeline(dagbag):
    """Every step of tidal/pipelines.py's INCREMENTAL is a task, wired as declared, behind the guard."""
    from tidal.pipelines import INCREMENTAL

    dag = dagbag.get_dag("tidal_incremental")
    steps = set(INCREMENTAL.step_names)
    edges = {(t.task_id, down) for t in dag.tasks for down in t.downstream_task_ids if t.task_id in steps and down in steps}
    assert edges == INCREMENTAL.edges()
    assert dag.get_task(INCREMENTAL.guard_name).downstream_task_ids == {s.name for s in INCREMENTAL.steps if not s.upstream()}
    for step in INCREMENTAL.steps:
        task = dag.get_task(step.name)
        assert (task.pool == "tidal_model") is step.model_pool
        if step.retries is not None:
            assert task.retries == step.retries
