"""The scheduled retrain under a real scheduler: a private stack (`scripts/stack.sh up all`: SeaweedFS and Airflow
standalone on moved ports) whose scheduler starts tidal_scheduled_retrain on its cron, then again on a
`tidal://drift/severe` asset event posted through Airflow's REST API. Both runs must succeed and record why they ran
(before the fix every such run was refused: "a full retrain needs a reason"). The same stack shows an idle
tidal_incremental run: nothing new landed, so everything after check_landing is skipped.

`dag.test()` only makes manual runs, so this is the one place the scheduled and asset-triggered run types are real.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import write_params
from tests.scripts.stack_run import TEST_PORTS, stack, stack_dir_env

pytestmark = [pytest.mark.slow, pytest.mark.stack]


class Api:
    """Airflow's REST API with the private stack's login (JWT from /auth/token)."""

    def __init__(self, base_url: str, username: str, password: str):
        self.base_url = base_url
        self.token = self.call("POST", "/auth/token", {"username": username, "password": password},
                               auth=False)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        request = urllib.request.Request(self.base_url + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.token}"} if auth else {})})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=50")["dag_runs"]

    def wait_for(self, dag_id: str, run_type: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = [r for r in self.runs(dag_id) if r["run_type"] == run_type and r["state"] in ("success", "failed")]
            if done:
                return done[0]
            time.sleep(5)
        raise AssertionError(f"no finished {run_type} run of {dag_id} within {timeout_s:.0f}s: {self.runs(dag_id)}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}


def next_minute_cron(lead_s: int) -> tuple[str, datetime]:
    """A cron that fires once today, at the first whole minute at least `lead_s` seconds from now."""
    at = (datetime.now(timezone.utc) + timedelta(seconds=lead_s + 60)).replace(second=0, microsecond=0)
    return f"{at.minute} {at.hour} * * *", at


@pytest.fixture
def bronze_home(tmp_path):
    """A TIDAL_HOME whose landing files the features job has already consumed (so retrains have bronze)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    stack_dir = tmp_path / "stack"
    params = write_params(tmp_path / "params.yaml", {"gate": {"recall_tolerance": 1.0},
                                                     "retrain": {"min_examples": 50}})
    env = {**os.environ, "TIDAL_HOME": str(stack_dir / "home"), "TIDAL_PARAMS": str(params)}
    for argv in (["generate", "--files", "2"], ["features"]):
        proc = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    yield stack_dir, params
    stopped = stack("down", env=stack_dir_env(stack_dir), timeout=180)
    assert stopped.returncode == 0, stopped.stderr


def test_scheduled_and_asset_triggered_retrains_run_and_say_why(bronze_home):
    from tidal.registry import Registry

    stack_dir, params = bronze_home
    cron, fires_at = next_minute_cron(lead_s=150)  # after Airflow is up and has parsed the DAGs
    env = stack_dir_env(stack_dir, TIDAL_PARAMS=str(params), TIDAL_RETRAIN_CRON=cron, **TEST_PORTS)
    up = stack("up", "all", env=env, timeout=400)
    assert up.returncode == 0, up.stderr[-4000:]
    secrets = dict(line.split("=", 1) for line in (stack_dir / "secrets.env").read_text().split())
    api = Api(f"http://127.0.0.1:{TEST_PORTS['TIDAL_AIRFLOW_PORT']}", secrets["TIDAL_AIRFLOW_USER"],
              secrets["TIDAL_AIRFLOW_PASSWORD"])
    assert not api.call("GET", "/api/v2/dags/tidal_scheduled_retrain")["is_paused"]  # the stack unpaused it

    # Unpaused with nothing new in landing/: the incremental run the scheduler starts is idle.
    idle = api.wait_for("tidal_incremental", "scheduled", timeout_s=300)
    states = api.task_states("tidal_incremental", idle["dag_run_id"])
    assert idle["state"] == "success" and states.pop("check_landing") == "success"
    assert set(states.values()) == {"skipped"}

    scheduled = api.wait_for("tidal_scheduled_retrain", "scheduled",
                             timeout_s=(fires_at - datetime.now(timezone.utc)).total_seconds() + 600)
    assert scheduled["state"] == "success", api.task_states("tidal_scheduled_retrain", scheduled["dag_run_id"])

    asset = api.call("GET", "/api/v2/assets?uri_pattern=tidal://drift/severe")["assets"][0]
    api.call("POST", "/api/v2/assets/events", {"asset_id": asset["id"], "extra": {
        "reason": "severe drift seen by tidal_incremental run manual__drill"}})
    drift = api.wait_for("tidal_scheduled_retrain", "asset_triggered", timeout_s=600)
    assert drift["state"] == "success", api.task_states("tidal_scheduled_retrain", drift["dag_run_id"])

    registry = Registry(stack_dir / "home" / "registry")
    by_run = {v.metadata["run_id"]: v.metadata for v in registry.versions()}
    assert by_run[scheduled["dag_run_id"]]["retrain"] == {
        "reason": "scheduled full retrain (periodic reset)", "trigger": "schedule", "promote": "auto"}
    assert by_run[drift["dag_run_id"]]["retrain"] == {
        "reason": "severe drift seen by tidal_incremental run manual__drill", "trigger": "drift", "promote": "auto"}
    assert registry.production().metadata["run_id"] == drift["dag_run_id"]
