"""One real Airflow for the plugin's tests: scripts/stack.sh `up airflow` in a private stack folder on moved ports
(tests/scripts/stack_run.py), with this checkout's plugins/ loaded by its API server and its TIDAL_HOME filled by
tests/plugins/registry_state.py. Started once for the package's tests (1-2 minutes), stopped with everything it started.

The three cycle run ids are real Airflow runs of tidal_incremental (created while the DAG is paused, so they stay
queued and run nothing), so the page's links to the run that made a version point at a run Airflow knows.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import private_home
from tests.scripts.stack_run import free_ports, stack, stack_dir_env


CYCLE_RUN_IDS = ["manual__2026-12-01T10:00:00+00:00", "manual__2026-12-01T10:10:00+00:00",
                 "manual__2026-12-01T10:20:00+00:00"]


class TidalAirflow:
    """The private stack's Airflow: raw HTTP (no client-side path normalisation), its login, its registry."""

    def __init__(self, stack_dir: Path, env: dict[str, str], settings):
        self.stack_dir, self.env, self.settings = stack_dir, env, settings
        self.port = int(env["TIDAL_AIRFLOW_PORT"])
        self.serving_url = f"http://127.0.0.1:{env['TIDAL_SERVING_PORT']}"  # what stack.sh gives its Airflow
        self.base = f"http://127.0.0.1:{self.port}"
        secrets = dict(line.split("=", 1) for line in (stack_dir / "secrets.env").read_text().split())
        self.user, self.password = secrets["TIDAL_AIRFLOW_USER"], secrets["TIDAL_AIRFLOW_PASSWORD"]
        self._token = None

    @property
    def token(self) -> str:
        if self._token is None:
            status, body = self.request("POST", "/auth/token", {"username": self.user, "password": self.password},
                                        auth=None)
            assert status in (200, 201), body
            self._token = body["access_token"]
        return self._token

    def request(self, method: str, path: str, body: Any = None, *, auth: str | None = "token",
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """(status, JSON or bytes). `path` goes on the wire exactly as given; auth: "token", None or a raw
        Authorization header value."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        if auth == "token":
            sent["Authorization"] = f"Bearer {self.token}"
        elif auth is not None:
            sent["Authorization"] = auth
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=sent)
            reply = connection.getresponse()
            payload = reply.read()
            kind = reply.getheader("Content-Type") or ""
        finally:
            connection.close()
        return reply.status, (json.loads(payload) if kind.startswith("application/json") and payload else payload)

    def get(self, path: str, **kwargs) -> Any:
        status, body = self.request("GET", path, **kwargs)
        assert status == 200, (path, status, body)
        return body

    def registry(self):
        from tidal.registry import Registry
        from tidal.storage import StorageLayout

        return Registry(StorageLayout(self.settings.home).registry)

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float = 240) -> dict:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.get(path)
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(2)
        raise AssertionError(f"{dag_id} {run_id} did not finish within {timeout_s:.0f} s: {run}")


@pytest.fixture(scope="package")
def tidal_airflow(tmp_path_factory):
    """Airflow with the tidal plugin over a home holding two cycles, a rejected candidate and six quarantined
    records; serving is not running."""
    from tests.plugins.registry_state import two_cycles_and_a_rejection

    stack_dir = tmp_path_factory.mktemp("tidal-ui") / "stack"
    stack_dir.mkdir()
    # TIDAL_HOME = stack_dir/home, as the private stack's; only while the home is built (the rest of the suite
    # must not see it), so the tests name the home through airflow.settings.
    with private_home(stack_dir) as settings:
        two_cycles_and_a_rejection(settings, CYCLE_RUN_IDS)
    # `up airflow` starts no serving: the stack's TIDAL_SERVING_URL (on the moved TIDAL_SERVING_PORT) answers nothing.
    env = stack_dir_env(stack_dir, **free_ports(), TIDAL_PARAMS=str(stack_dir / "params.yaml"),
                        TIDAL_INCREMENTAL_EVERY_MINUTES="1440")
    up = stack("up", "airflow", env=env, timeout=600)
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        airflow = TidalAirflow(stack_dir, env, settings)
        status, body = airflow.request("PATCH", "/api/v2/dags/tidal_incremental", {"is_paused": True})
        assert status == 200, body
        for run_id in CYCLE_RUN_IDS:
            status, body = airflow.request("POST", "/api/v2/dags/tidal_incremental/dagRuns",
                                           {"dag_run_id": run_id, "logical_date": None})
            assert status == 200, body
        yield airflow
    finally:
        stopped = stack("down", env=env, timeout=300)
        assert stopped.returncode == 0, stopped.stderr
