"""Running scripts/cluster.sh as a user would, on a private directory and a free block of ports, and talking to
what it started: Airflow's REST API, the PostgreSQL metadata DB, the Spark master's status page."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.scripts.stack_run import clean_env


CLUSTER = REPO_ROOT / "scripts" / "cluster.sh"


def cluster_env(cluster_dir: Path, base: int, **settings: str) -> dict[str, str]:
    """A shell with none of the caller's TIDAL_/AIRFLOW_/AWS_ settings, pointed at a private profile."""
    return clean_env(TIDAL_CLUSTER_DIR=str(cluster_dir), TIDAL_CLUSTER_PORT_BASE=str(base), **settings)


def cluster(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_base() -> int:
    """A base whose every derived port (base+32..base+94, base+1033..+1094 and their +10000) is free now; clear of
    the embedded defaults and of the 20000..38099 blocks the stack tests take."""
    offsets = [*range(32, 95), *range(1033, 1095), *range(10033, 10095), *range(11033, 11095)]
    for base in random.sample(range(38200, 52000, 200), 30):
        if all(_free(base + offset) for offset in offsets):
            return base
    raise AssertionError("no free block of ports for a private cluster profile")


def sourced(env: dict[str, str]) -> dict[str, str]:
    """Every variable a shell gets from `source "$(scripts/cluster.sh env)"`."""
    out = subprocess.run(["bash", "-c", f'set -a; source "$("{CLUSTER}" env)"; set +a; env -0'], env=env,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


class Airflow:
    """The few Airflow 3 REST calls the tests need, logged in with the profile's generated credentials."""

    def __init__(self, env: dict[str, str]):
        self.base = env["AIRFLOW__API__BASE_URL"]
        body = {"username": env["TIDAL_AIRFLOW_USER"], "password": env["TIDAL_AIRFLOW_PASSWORD"]}
        self.token = self.call("POST", "/auth/token", body, auth=False)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.token}"} if auth else {})}
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(self.base + path, data, headers, method=method), timeout=60) as r:
            return json.loads(r.read() or b"null")

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def wait_idle(self, dag_id: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(r["state"] in ("queued", "running") for r in self.runs(dag_id)):
            assert time.monotonic() < deadline, f"{dag_id} still has active runs after {timeout_s} s"
            time.sleep(3)

    def wait(self, dag_id: str, run_id: str, timeout_s: float) -> dict:
        deadline, quoted = time.monotonic() + timeout_s, urllib.parse.quote(run_id, safe="")
        while True:
            run = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")
            if run["state"] in ("success", "failed"):
                return run
            assert time.monotonic() < deadline, f"{dag_id} {run_id} still {run['state']} after {timeout_s} s"
            time.sleep(5)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        quoted = urllib.parse.quote(run_id, safe="")
        reply = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=100")
        return {ti["task_id"]: ti for ti in reply["task_instances"]}


def celery_workers_by_task(env: dict[str, str]) -> list[tuple[str, str, str, int, str]]:
    """(dag_id, run_id, task_id, try_number, Celery worker) of every workload the Celery workers ran, read from the
    result backend in PostgreSQL (result_extended keeps each task's worker and arguments)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    rows = []
    with engine.connect() as db:
        for worker, args in db.execute(text("select worker, args from celery_taskmeta where worker is not null")):
            workload = json.loads(json.loads(bytes(args).decode())[0])
            ti = workload["ti"]
            rows.append((ti["dag_id"], ti["run_id"], ti["task_id"], ti["try_number"], worker.split("@")[0]))
    engine.dispose()
    return rows


def spark_master_state(env: dict[str, str]) -> dict:
    """The standalone master's own view: its workers and the applications it ran (its /json status page)."""
    port = int(env["TIDAL_CLUSTER_PORT_BASE"]) + 78
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=30) as reply:
        return json.loads(reply.read())


def component_pid(env: dict[str, str], name: str) -> int:
    """The pid scripts/cluster.sh recorded for one component (celery-worker-1, spark-worker-2, postgres, ...)."""
    return int((Path(env["TIDAL_CLUSTER_DIR"]) / "pids" / f"{name}.pid").read_text())


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and every descendant at once, as a machine losing power would: no cleanup runs."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    return [p.pid for p in procs]


def celery_task_started(env: dict[str, str], dag_id: str, run_id: str, task_id: str, timeout_s: float) -> str:
    """The Celery worker that started TASK_ID of RUN_ID (the STARTED row task_track_started writes), once it has."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for dag, run, task, _, worker in celery_workers_by_task(env):
            if (dag, run, task) == (dag_id, run_id, task_id):
                return worker
        time.sleep(1)
    raise AssertionError(f"{dag_id} {run_id} {task_id} not started on any Celery worker within {timeout_s} s")
