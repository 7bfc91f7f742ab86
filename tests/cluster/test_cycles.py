"""Two incremental cycles and one full retrain through the cluster profile: the real scheduler, the CeleryExecutor
with two workers, PostgreSQL as the metadata DB, and the Spark standalone cluster for the Spark steps. The same
DAGs and jobs as the embedded stack; only configuration differs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster.cluster_run import Airflow, celery_workers_by_task, spark_master_state


pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RUN_TIMEOUT_S = 1500


def summaries(home: Path, run_id: str) -> dict:
    from tidal.storage import StorageLayout

    reports = StorageLayout(home).run_reports(run_id)
    return {p.stem: json.loads(p.read_text()) for p in reports.glob("*.json")}


def land(env: dict[str, str], files: int) -> int:
    """Generate FILES landing files into the profile's home; returns the records landed."""
    from devtools.generate import generate_stream
    from tidal.config import load_params
    from tidal.storage import StorageLayout

    params = load_params(env["TIDAL_PARAMS"])
    layout = StorageLayout(Path(env["TIDAL_HOME"])).ensure()
    generate_stream(layout, params.generate, seed=7, files=files, event_types=params.base.event_types)
    return files * params.generate.events_per_file


def run_to_success(airflow: Airflow, dag_id: str, conf: dict | None = None) -> str:
    run_id = airflow.trigger(dag_id, conf)
    run = airflow.wait(dag_id, run_id, RUN_TIMEOUT_S)
    states = {t: ti["state"] for t, ti in airflow.task_instances(dag_id, run_id).items()}
    assert run["state"] == "success", states
    return run_id


def record_step_seconds(env: dict[str, str], airflow: Airflow, runs: list[tuple[str, str]]) -> None:
    """Each run's task durations, beside the profile's directory (step_seconds.json), for the closing note."""
    table = {f"{dag_id} {run_id}": {task: ti["duration"] for task, ti in airflow.task_instances(dag_id, run_id).items()}
             for dag_id, run_id in runs}
    (Path(env["TIDAL_CLUSTER_DIR"]).parent / "step_seconds.json").write_text(json.dumps(table, indent=1))


def test_two_cycles_and_a_full_retrain_run_on_both_celery_workers_and_the_spark_cluster(cluster_profile):
    env = cluster_profile
    home = Path(env["TIDAL_HOME"])
    airflow = Airflow(env)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    airflow.wait_idle("tidal_incremental", 600)  # the run the unpause scheduled must not take our files

    landed = land(env, files=2)
    first_id = run_to_success(airflow, "tidal_incremental")
    first = summaries(home, first_id)
    assert first["features"]["landed"] == landed
    assert first["features"]["landed"] == first["features"]["accepted"] + first["features"]["quarantined"] \
        + first["features"]["duplicates"]
    assert first["promote"]["version"] == "v000001"

    landed = land(env, files=1)
    second_id = run_to_success(airflow, "tidal_incremental")
    second = summaries(home, second_id)
    assert second["features"]["landed"] == landed
    assert second["finetune"]["kind"] == "incremental" and second["finetune"]["parent"] == "v000001"
    assert "version" in second["promote"] or "decision" in second["promote"]

    # register: a version without serving it, so the run does not depend on the gate's verdict against production
    # (with promote=auto a rejected retrain fails the run by design).
    retrain_id = run_to_success(airflow, "tidal_full_retrain", {"reason": "cluster profile test", "promote": "register"})
    record_step_seconds(env, airflow, [("tidal_incremental", first_id), ("tidal_incremental", second_id),
                                       ("tidal_full_retrain", retrain_id)])
    retrain_tis = airflow.task_instances("tidal_full_retrain", retrain_id)
    assert retrain_tis["train"]["state"] == "success" and retrain_tis["build_training_set"]["state"] == "success"
    # The profile's retrain ran over 2 torch.distributed processes (retrain.processes from cluster.sh) inside the
    # Celery task, and left an ordinary finite candidate.
    from tidal.registry import Registry
    from tidal.storage import StorageLayout

    steps = summaries(home, retrain_id)
    assert steps["retrain_train"]["status"] == "trained" and steps["promote"]["registered"] is True
    registered = Registry(StorageLayout(home).registry).version(steps["promote"]["version"])
    assert env["TIDAL_RETRAIN_PROCESSES"] == "2" and registered.metadata["params"]["retrain"]["processes"] == 2
    assert registered.metadata["finite"] is True and registered.metadata["kind"] == "full"

    # Every task instance ran through Celery, and both workers took some.
    ran = celery_workers_by_task(env)
    by_worker = Counter(worker for *_, worker in ran)
    assert set(by_worker) == {"celery-worker-1", "celery-worker-2"}, by_worker
    assert {run for dag, run, *_ in ran if dag == "tidal_incremental"} >= {second_id}
    assert any(dag == "tidal_full_retrain" and task == "train" for dag, _, task, *_ in ran)
    for dag_id, run_id in (("tidal_incremental", second_id), ("tidal_full_retrain", retrain_id)):
        for task_id, ti in airflow.task_instances(dag_id, run_id).items():
            assert ti["executor"] in (None, "CeleryExecutor") and ti["queue"] == "default", (task_id, ti)
    # Each worker imported the steps' libraries once, before its pool forked (tidal/celery_config.py), so its tasks
    # did not import them again.
    from tidal.warm_executor import WARM_IMPORTS

    assert env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] == "tidal.celery_config.CELERY_CONFIG"
    for worker in by_worker:
        log = (Path(env["TIDAL_CLUSTER_DIR"]) / "logs" / f"{worker}.log").read_text()
        assert f"tidal: pre-imported {len(WARM_IMPORTS)} libraries for this worker's tasks" in log, log[-3000:]

    # The Spark steps (features twice, the training-set build once) were applications of the standalone master,
    # each with the cluster's two 1-core workers.
    master = spark_master_state(env)
    assert master["status"] == "ALIVE" and len(master["workers"]) == 2
    assert all(w["cores"] == 1 and w["state"] == "ALIVE" for w in master["workers"])
    finished = [app for app in master["completedapps"] if app["state"] == "FINISHED"]
    assert len(finished) >= 3, master["completedapps"]
