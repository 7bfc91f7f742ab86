"""A landing file starts tidal_incremental by itself, under the real scheduler and triggerer: a private stack
(`scripts/stack.sh up all` on free ports) with a one-day fallback tick, so only the landing watcher
(tidal/landing_watch.py) can start a run after the first tick at unpause. Nobody triggers a run.

- The tick's first run at unpause finds nothing landed and is idle. (The watcher is live from the DAG's first parse
  after the unpause.)
- One file lands: an asset-triggered run starts within seconds, its asset event names the file, and the run
  trains and promotes the first model on it.
- While that run is busy, two more files land: the run does not take them, no second run starts beside it
  (max_active_runs=1), and one asset-triggered run after it takes both.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from tests.dags.test_retrain_scheduler import Api
from tests.scripts.stack_run import free_ports, stack, stack_dir_env

pytestmark = [pytest.mark.slow, pytest.mark.stack]

DAG = "tidal_incremental"


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def wait(check, timeout_s: float, what: str, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def asset_runs(api: Api) -> list[dict]:
    return sorted((r for r in api.runs(DAG) if r["run_type"] == "asset_triggered"), key=lambda r: r["run_after"])


def finished(api: Api, run_id: str) -> dict | None:
    run = next(r for r in api.runs(DAG) if r["dag_run_id"] == run_id)
    return run if run["state"] in ("success", "failed") else None


def features_files(stack_dir, run_id: str) -> int:
    from tidal.storage import StorageLayout

    return json.loads((StorageLayout(stack_dir / "home").run_reports(run_id) / "features.json").read_text())["files"]


@pytest.fixture
def event_driven_stack(tmp_path):
    from tests.conftest import write_params

    stack_dir = tmp_path / "stack"
    params = write_params(tmp_path / "params.yaml", {"gate": {"recall_tolerance": 1.0}})
    env = stack_dir_env(stack_dir, **free_ports(), TIDAL_PARAMS=str(params), TIDAL_INCREMENTAL_EVERY_MINUTES="1440",
                        TIDAL_LANDING_POLL_S="1")
    up = stack("up", "all", env=env, timeout=600)
    try:
        assert up.returncode == 0, up.stderr[-4000:]
        secrets = dict(line.split("=", 1) for line in (stack_dir / "secrets.env").read_text().split())
        yield stack_dir, Api(f"http://127.0.0.1:{env['TIDAL_AIRFLOW_PORT']}", secrets["TIDAL_AIRFLOW_USER"],
                             secrets["TIDAL_AIRFLOW_PASSWORD"])
    finally:
        stopped = stack("down", env=env, timeout=300)
        assert stopped.returncode == 0, stopped.stderr


def land(stack_dir, files: int) -> list[float]:
    """Files as the producer writes them (devtools.generate: hidden name, then rename); their landing times."""
    import os

    from devtools.generate import generate_stream
    from tidal.config import load_settings
    from tidal.storage import StorageLayout

    os.environ["TIDAL_HOME"] = str(stack_dir / "home")
    try:
        settings = load_settings()
        written = generate_stream(StorageLayout(settings.home).ensure(), settings.params.generate, seed=5,
                                  files=files, event_types=settings.params.base.event_types)
    finally:
        del os.environ["TIDAL_HOME"]
    return [w.path.stat().st_mtime for w in written]


def test_a_landing_file_starts_a_run_within_seconds_and_files_landing_meanwhile_queue_one_run(event_driven_stack):
    stack_dir, api = event_driven_stack
    # The tick's run at unpause: nothing landed, so it is idle.
    tick = wait(lambda: next((r for r in api.runs(DAG) if r["run_type"] == "scheduled" and r["state"] == "success"),
                             None), 300, "the idle tick run at unpause", every_s=3)
    states = api.task_states(DAG, tick["dag_run_id"])
    assert states.pop("check_landing") == "success" and set(states.values()) == {"skipped"}

    # Airflow registers an asset's watcher when it parses the DAG unpaused: the parse after the stack's unpause.
    wait(lambda: epoch(api.call("GET", f"/api/v2/dags/{DAG}/details")["last_parsed_time"]) > epoch(tick["start_date"]),
         120, "a parse of the unpaused DAG", every_s=2)
    time.sleep(3)  # the triggerer loads new triggers once a second

    [landed] = land(stack_dir, 1)
    [first] = wait(lambda: asset_runs(api), 60, "an asset-triggered run after a file landed")
    assert epoch(first["run_after"]) - landed < 15  # the watcher polls every second; the rest is the scheduler
    # Airflow 3.3's /assets/events answers 500 while a run it created is still queued: its DagRunAssetReference
    # requires a start_date. So list the events once the run has started.
    wait(lambda: next(r for r in api.runs(DAG) if r["dag_run_id"] == first["dag_run_id"])["start_date"], 120,
         "the first asset-triggered run to start")
    events = api.call("GET", "/api/v2/assets/events?limit=10")["asset_events"]
    landing_events = [e for e in events if e["uri"] == "tidal://landing/events"]
    assert [e["extra"]["payload"] for e in landing_events] == [{"landing_files": ["events-000000.jsonl"], "pending": 1}]

    # Two more files while the first run is busy (after its features step took the first file).
    wait(lambda: api.task_states(DAG, first["dag_run_id"]).get("features") == "success", 300, "the first features")
    land(stack_dir, 2)
    done = wait(lambda: finished(api, first["dag_run_id"]), 600, "the first asset-triggered run", every_s=3)
    assert done["state"] == "success", api.task_states(DAG, first["dag_run_id"])
    assert features_files(stack_dir, first["dag_run_id"]) == 1
    second = wait(lambda: asset_runs(api)[1:] and asset_runs(api)[1], 120, "one more asset-triggered run")
    done2 = wait(lambda: finished(api, second["dag_run_id"]), 600, "the second asset-triggered run", every_s=3)
    assert done2["state"] == "success", api.task_states(DAG, second["dag_run_id"])
    assert features_files(stack_dir, second["dag_run_id"]) == 2  # both files, one run
    assert epoch(done2["start_date"]) >= epoch(done["end_date"])  # never beside the first
    assert len(asset_runs(api)) == 2

    from tidal.registry import Registry

    registry = Registry(stack_dir / "home" / "registry")
    assert [v.metadata["run_id"] for v in registry.versions()] == [first["dag_run_id"], second["dag_run_id"]]
    assert registry.production().metadata["run_id"] == second["dag_run_id"]
