"""Faults on the cluster profile: a Celery worker SIGKILLed in the middle of a task, a Spark worker SIGKILLed in the
middle of a batch, PostgreSQL restarted between cycles. Each time the run finishes, and the batch's rows are
accounted for exactly once. `scripts/cluster.sh up` then restarts what was killed (it starts only what is down)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.cluster.cluster_run import (Airflow, celery_task_started, celery_workers_by_task, cluster, component_pid,
                                       kill_tree, spark_master_state)
from tests.cluster.test_cycles import RUN_TIMEOUT_S, land, summaries


pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              # Opt-in until they have run green once (each costs a cycle): TIDAL_CLUSTER_FAULTS=1 make test-cluster.
              pytest.mark.skipif(os.environ.get("TIDAL_CLUSTER_FAULTS") != "1",
                                 reason="fault tests not yet verified green; TIDAL_CLUSTER_FAULTS=1 runs them")]


def assert_batch_exactly_once(home: Path, features: dict) -> None:
    """Every accepted event of the run is in bronze once; no event id is there twice, from this run or any other."""
    from tidal.storage import StorageLayout

    assert features["landed"] == features["accepted"] + features["quarantined"] + features["duplicates"]
    import pyarrow.parquet as pq

    files = sorted(StorageLayout(home).bronze_events.rglob("*.parquet"))
    bronze = pd.concat([pq.read_table(f, columns=["event_id", "ingest_batch_id"]).to_pandas() for f in files])
    assert not bronze["event_id"].duplicated().any(), bronze[bronze["event_id"].duplicated()].head()
    assert int(bronze["ingest_batch_id"].isin(features["batch_ids"]).sum()) == features["accepted"]


def finished_exactly_once(env: dict[str, str], airflow: Airflow, run_id: str) -> tuple[dict, dict]:
    """Waits for the run; asserts it succeeded and its batch is in bronze exactly once. Returns (its task
    instances, its features summary)."""
    run = airflow.wait("tidal_incremental", run_id, RUN_TIMEOUT_S)
    tis = airflow.task_instances("tidal_incremental", run_id)
    assert run["state"] == "success", {t: ti["state"] for t, ti in tis.items()}
    features = summaries(Path(env["TIDAL_HOME"]), run_id)["features"]
    assert_batch_exactly_once(Path(env["TIDAL_HOME"]), features)
    return tis, features


def restart_what_died(env: dict[str, str]) -> None:
    started = cluster("up", env=env)
    assert started.returncode == 0, started.stderr[-4000:]


def test_a_celery_worker_killed_mid_task_is_retried_on_the_other_one(cluster_profile):
    env, airflow = cluster_profile, Airflow(cluster_profile)
    airflow.wait_idle("tidal_incremental", 600)
    land(env, files=1)
    run_id = airflow.trigger("tidal_incremental")
    victim = celery_task_started(env, "tidal_incremental", run_id, "features", 600)
    time.sleep(20)  # in the middle of the Spark batch
    killed = kill_tree(component_pid(env, victim))
    assert len(killed) >= 3  # the worker, its pool process, the task's supervisor and what it runs

    tis, _ = finished_exactly_once(env, airflow, run_id)
    assert tis["features"]["try_number"] == 2
    tries = {tr: w for dag, run, task, tr, w in celery_workers_by_task(env) if (run, task) == (run_id, "features")}
    assert tries[1] == victim and tries[2] != victim, tries
    restart_what_died(env)


def test_a_spark_worker_killed_mid_batch_leaves_the_batch_to_the_other_one(cluster_profile):
    env, airflow = cluster_profile, Airflow(cluster_profile)
    airflow.wait_idle("tidal_incremental", 600)
    landed = land(env, files=1)
    run_id = airflow.trigger("tidal_incremental")
    celery_task_started(env, "tidal_incremental", run_id, "features", 600)
    deadline = time.monotonic() + 300
    while not spark_master_state(env)["activeapps"]:  # the features job's application has its executors
        assert time.monotonic() < deadline, "the features job never reached the Spark master"
        time.sleep(1)
    time.sleep(15)
    kill_tree(component_pid(env, "spark-worker-2"))

    _, features = finished_exactly_once(env, airflow, run_id)
    assert features["landed"] == landed
    restart_what_died(env)
    alive = [w for w in spark_master_state(env)["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 2


def test_postgres_restarted_between_cycles_the_next_cycle_runs(cluster_profile):
    env, airflow = cluster_profile, Airflow(cluster_profile)
    airflow.wait_idle("tidal_incremental", 600)
    import psutil

    postgres = psutil.Process(component_pid(env, "postgres"))
    postgres.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
    postgres.wait(60)
    restart_what_died(env)  # starts PostgreSQL again, and any Airflow component that lost it and exited

    landed = land(env, files=1)
    airflow = Airflow(env)
    run_id = airflow.trigger("tidal_incremental")
    _, features = finished_exactly_once(env, airflow, run_id)
    assert features["landed"] == landed
