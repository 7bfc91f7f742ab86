"""features through Spark Connect: exactly once across SIGKILL of the task. On Connect, killing the job's process (an
Airflow task timing out, a worker dying) kills the client only: the streaming query and its foreachBatch callback go
on in the server. The rerun starts the same query (same checkpoint, same query id) and Spark stops the orphaned run
first (spark.sql.streaming.stopActiveRunOnRestart, on by default), so the two never write at once; whatever the
orphan left uncommitted is replayed. The final state must equal an uninterrupted local run's on the same files."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.jobs.features.test_stream_exactly_once import (assert_same_as_uninterrupted, kill_when, make_home,
                                                           manifests, online_server, reference_run, start_job)
from tests.scripts.stack_run import free_ports, stack, stack_dir_env

__all__ = ["online_server", "reference_run"]  # the fixtures this module shares with the local SIGKILL test


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    """The stack's Spark Connect server, private (its own stack folder, free ports), stopped afterwards."""
    stack_dir = tmp_path_factory.mktemp("connect") / "stack"
    ports = free_ports()
    env = stack_dir_env(stack_dir, **ports)
    started = stack("up", "spark", env=env, timeout=300)
    assert started.returncode == 0, started.stderr
    yield f"sc://127.0.0.1:{ports['TIDAL_SPARK_PORT']}"
    stopped = stack("down", env=env, timeout=180)
    assert stopped.returncode == 0, stopped.stderr


@pytest.mark.stack
def test_sigkill_of_a_connect_client_then_rerun_matches_an_uninterrupted_run(reference_run, online_server, connect_url,
                                                                              tmp_path):
    ref_home, _ = reference_run
    env = {**make_home(tmp_path, online_server.url, "killed-connect"), "TIDAL_SPARK_REMOTE": connect_url}
    home = Path(env["TIDAL_HOME"])
    # 1: the client dies right after batch 0's manifest, before the server commits the batch.
    assert kill_when(start_job(env), lambda: 0 in manifests(home), timeout_s=300)
    # 2: a rerun at once, while the orphaned query may still be running, killed after a random (seeded) delay.
    proc = start_job(env)
    delay, started = random.Random(4).uniform(3.0, 15.0), time.monotonic()
    kill_when(proc, lambda: time.monotonic() - started > delay, timeout_s=300)
    final = start_job(env)
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, out.decode()[-3000:]
    assert_same_as_uninterrupted(home, ref_home, online_server.url, "killed-connect")
