"""A real Airflow standalone started by scripts/stack.sh in a copy of the repository (its own dags/, .stack/ and
moved ports): `up` unpauses the shipped DAGs once parsed and names one that does not import; a second `up` changes
nothing that runs; every port Airflow opens is in the port table; `down` stops the whole tree, a task's child in
its own session included, and leaves no run marked running. One Airflow start (1-2 minutes) for all four tests.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO_ROOT
from tests.scripts.stack_run import clean_env, free_ports, process_tree, stack, still_alive


pytestmark = [pytest.mark.slow, pytest.mark.stack]
SHIPPED = ("tidal_incremental", "tidal_full_retrain", "tidal_scheduled_retrain", "tidal_rollback")
BROKEN = 'raise RuntimeError("tidal test: this DAG file is broken on purpose")\n'
# A task whose child sits in its own session, as the Spark JVM of a features task did when `make down` missed it.
HOLD_DAG = '''
import subprocess
import time

import pendulum
from airflow.sdk import dag, task


@dag(dag_id="tidal_test_hold", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def tidal_test_hold():
    @task
    def hold():
        subprocess.Popen(["sleep", "600"], start_new_session=True)
        time.sleep(600)

    hold()


tidal_test_hold()
'''


class Airflow:
    """The copied repository's stack, and its REST API with the login from its .stack/secrets.env."""

    def __init__(self, repo: Path):
        self.repo, self.stack_dir = repo, repo / ".stack"
        self.script = repo / "scripts" / "stack.sh"
        self.ports = free_ports()
        self.env = clean_env(**self.ports)
        self.first_up = None
        self.token = None

    def run(self, *args: str, timeout: float = 600):
        return stack(*args, env=self.env, script=self.script, timeout=timeout)

    def api(self, method: str, path: str, body: dict | None = None):
        if self.token is None:
            secrets = dict(line.split("=", 1) for line in (self.stack_dir / "secrets.env").read_text().split())
            self.token = self._call("POST", "/auth/token", {"username": secrets["TIDAL_AIRFLOW_USER"],
                                                            "password": secrets["TIDAL_AIRFLOW_PASSWORD"]})["access_token"]
        return self._call(method, path, body, {"Authorization": f"Bearer {self.token}"})

    def _call(self, method, path, body=None, headers=None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports['TIDAL_AIRFLOW_PORT']}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", **(headers or {})})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read() or b"null")

    def paused(self) -> dict[str, bool]:
        dags = self.api("GET", "/api/v2/dags?limit=100")["dags"]
        return {d["dag_id"]: d["is_paused"] for d in dags}

    def root_pid(self) -> int:
        return int((self.stack_dir / "pids" / "airflow.pid").read_text())


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return []


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(2)
    raise AssertionError(f"{what} not within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO_ROOT / "dags", repo / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "scripts").mkdir()
    shutil.copy2(REPO_ROOT / "scripts" / "stack.sh", repo / "scripts" / "stack.sh")
    rollback = repo / "dags" / "tidal_rollback.py"
    rollback.write_text(rollback.read_text() + BROKEN)
    (repo / "dags" / "tidal_test_hold.py").write_text(HOLD_DAG)
    stack_ = Airflow(repo)
    try:
        stack_.first_up = stack_.run("up", "airflow")
        yield stack_
    finally:
        stopped = stack_.run("down", timeout=300)
        assert stopped.returncode == 0, stopped.stderr


def test_up_unpauses_what_parsed_and_names_the_dag_that_does_not_import(airflow):
    up = airflow.first_up
    assert up.returncode == 1, up.stderr
    assert "tidal_incremental: unpaused" in up.stderr and "tidal_full_retrain: unpaused" in up.stderr
    assert "tidal_scheduled_retrain: unpaused" in up.stderr  # a second DAG of tidal_full_retrain.py
    assert "DAG tidal_rollback: tidal_rollback.py does not import:" in up.stderr
    assert "RuntimeError: tidal test: this DAG file is broken on purpose" in up.stderr
    paused = airflow.paused()
    assert paused["tidal_incremental"] is False and paused["tidal_full_retrain"] is False
    assert paused["tidal_scheduled_retrain"] is False
    assert paused["tidal_test_hold"] is True  # only what the stack ships is unpaused


def test_a_second_up_unpauses_the_repaired_dag_and_leaves_the_others_as_they_are(airflow):
    rollback = airflow.repo / "dags" / "tidal_rollback.py"
    rollback.write_text(rollback.read_text().replace(BROKEN, ""))
    wait_until(lambda: not airflow.api("GET", "/api/v2/importErrors")["import_errors"]
               and "tidal_rollback" in airflow.paused(), 180, "the repaired tidal_rollback parsed")

    again = airflow.run("up", "airflow")

    assert again.returncode == 0, again.stderr
    assert f"airflow already running (pid {airflow.root_pid()})" in again.stderr
    for line in ("tidal_incremental: already unpaused", "tidal_full_retrain: already unpaused",
                 "tidal_scheduled_retrain: already unpaused", "tidal_rollback: unpaused"):
        assert line in again.stderr
    assert {d: airflow.paused()[d] for d in SHIPPED} == dict.fromkeys(SHIPPED, False)


def test_every_port_airflow_opens_is_in_the_port_table(airflow):
    # Airflow's own servers share the process group setsid gave standalone; tasks (and their Spark ports) leave it.
    servers = {p for p in process_tree(airflow.root_pid()) if os.getpgid(p) == airflow.root_pid()}
    opened = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
              if c.status == psutil.CONN_LISTEN and c.pid in servers}
    listed = {int(line.split()[0]): line.split()[1] for line in airflow.run("ports").stdout.splitlines()
              if " airflow " in line}
    assert {port for _ip, port in opened} == set(listed)
    for ip, port in opened:
        assert ip in ({"0.0.0.0", "::"} if listed[port] == "all" else {listed[port]}), (ip, port)


def test_down_stops_a_task_child_in_its_own_session_and_fails_the_run_it_killed(airflow):
    airflow.api("PATCH", "/api/v2/dags/tidal_test_hold", {"is_paused": False})
    run_id = airflow.api("POST", "/api/v2/dags/tidal_test_hold/dagRuns", {"logical_date": None})["dag_run_id"]

    def held_sleep():
        return [p for p in process_tree(airflow.root_pid()) if cmdline(p) == ["sleep", "600"] and os.getsid(p) == p]

    wait_until(held_sleep, 240, "the task's child in its own session")
    recorded = process_tree(airflow.root_pid())

    down = airflow.run("down", timeout=300)

    assert down.returncode == 0, down.stderr
    assert still_alive(recorded) == []
    assert f"tidal_test_hold {run_id}: was running when the stack stopped; marked failed" in down.stderr
    with sqlite3.connect(airflow.stack_dir / "airflow" / "airflow.db") as db:
        assert db.execute("select count(*) from dag_run where state = 'running'").fetchone() == (0,)
        assert db.execute("select count(*) from task_instance where state = 'running'").fetchone() == (0,)
        assert db.execute("select state from dag_run where run_id = ?", (run_id,)).fetchone() == ("failed",)
        assert db.execute("select state from task_instance where run_id = ? and task_id = 'hold'",
                          (run_id,)).fetchone() == ("failed",)
        assert db.execute("select content from dag_run_note join dag_run on dag_run.id = dag_run_note.dag_run_id "
                          "where run_id = ?", (run_id,)).fetchone() == ("stopped by scripts/stack.sh down while it ran",)
