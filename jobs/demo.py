"""The main job behind `make demo`: feed the stream, drive `tidal_incremental` under the scheduler, summarize.

It talks to the running stack only through Airflow's authenticated REST API (the same one the UI uses):
unpauses the DAG, and for each cycle appends new landing files, triggers a run and waits for it. A cycle
counts once a run that processed new events has succeeded (a scheduled run may take the new files first;
then that run is the cycle). At the end it prints the UI address and login, the model versions with their
metrics, the rows each cycle processed and the time each step took.

Run: `make demo` (which starts the stack first), or `python -m jobs.demo --cycles 3` against a running stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from jobs.cycle import STEP_ORDER
from jobs.generate import generate_stream
from tidal.config import load_settings
from tidal.registry import Registry
from tidal.storage import StorageLayout, read_json

DAG_ID = "tidal_incremental"


class AirflowClient:
    """The few Airflow 3 REST calls the demo needs, with a JWT from /auth/token."""

    def __init__(self, base_url: str, username: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.username, self.password = username, password
        self.token: str | None = None

    def _request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            if self.token is None:
                self.login()
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def login(self) -> None:
        try:
            reply = self._request("POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False)
        except urllib.error.HTTPError as err:
            raise SystemExit(f"Airflow refused the login for {self.username!r} ({err.code}); the credentials are in "
                             f".stack/secrets.env (TIDAL_AIRFLOW_USER / TIDAL_AIRFLOW_PASSWORD).") from None
        self.token = reply["access_token"]

    def anonymous_status(self) -> int:
        """HTTP status of an unauthenticated API call: the UI and API must demand a login (401/403)."""
        try:
            self._request("GET", f"/api/v2/dags/{DAG_ID}", auth=False)
            return 200
        except urllib.error.HTTPError as err:
            return err.code

    def wait_for_dag(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._request("GET", f"/api/v2/dags/{DAG_ID}")
            except urllib.error.HTTPError as err:
                if err.code != 404 or time.monotonic() > deadline:
                    raise SystemExit(f"DAG {DAG_ID} not available ({err.code}); check "
                                     f".stack/logs/airflow.log for import errors") from None
            time.sleep(3)

    def unpause(self) -> None:
        self._request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})

    def trigger(self, note: str) -> str:
        reply = self._request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "note": note})
        return reply["dag_run_id"]

    def runs(self) -> list[dict]:
        return self._request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=50")["dag_runs"]

    def run(self, run_id: str) -> dict:
        return self._request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.request.quote(run_id, safe='')}")

    def task_durations(self, run_id: str) -> dict[str, float]:
        reply = self._request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.request.quote(run_id, safe='')}/taskInstances")
        return {ti["task_id"]: round(ti["duration"] or 0.0, 2) for ti in reply["task_instances"]}


def wait_until_idle(client: AirflowClient, timeout_s: float) -> None:
    """Wait for every queued or running run (max_active_runs=1 would queue ours behind it anyway)."""
    deadline = time.monotonic() + timeout_s
    while any(r["state"] in ("queued", "running") for r in client.runs()):
        if time.monotonic() > deadline:
            raise SystemExit(f"runs of {DAG_ID} still active after {timeout_s:.0f} s; see the Airflow UI")
        time.sleep(3)


def wait_for_new_run(client: AirflowClient, seen: set[str], timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fresh = [r["dag_run_id"] for r in client.runs() if r["dag_run_id"] not in seen]
        if fresh:
            return fresh[0]
        time.sleep(2)
    return None


def wait_for_run(client: AirflowClient, run_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    while True:
        run = client.run(run_id)
        if run["state"] in ("success", "failed"):
            return run
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} still {run['state']} after {timeout_s:.0f} s; see the Airflow UI")
        print(f"  ... {run_id}: {run['state']} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        time.sleep(5)


def cycle_report(layout: StorageLayout, run_id: str) -> dict[str, Any]:
    reports = layout.run_reports(run_id)
    return {step: read_json(reports / f"{step}.json") for step in STEP_ORDER if (reports / f"{step}.json").exists()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3, help="successful cycles with new events to wait for")
    parser.add_argument("--first-files", type=int, default=3, help="landing files before the first cycle")
    parser.add_argument("--files-per-cycle", type=int, default=1)
    parser.add_argument("--bad-fraction", type=float, default=0.01, help="share of malformed lines fed in")
    parser.add_argument("--run-timeout-s", type=float, default=900)
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.first_files < 1 or args.files_per_cycle < 1:
        parser.error("--cycles, --first-files and --files-per-cycle must be at least 1")

    demo_started = time.monotonic()
    settings = load_settings()
    layout = StorageLayout(settings.home).ensure()
    client = AirflowClient(os.environ["TIDAL_AIRFLOW_URL"], os.environ["TIDAL_AIRFLOW_USER"],
                           os.environ["TIDAL_AIRFLOW_PASSWORD"])
    anonymous = client.anonymous_status()
    if anonymous not in (401, 403):
        raise SystemExit(f"Airflow answered an anonymous API call with {anonymous}: the UI must require a login; "
                         f"check AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_* in .stack/stack.env")
    print(f"[demo] Airflow refuses anonymous calls ({anonymous}); logging in as {client.username}", flush=True)
    print(f"[demo] waiting for Airflow to parse {DAG_ID} ...", flush=True)
    was_paused = client.wait_for_dag(timeout_s=180)["is_paused"]
    wait_until_idle(client, args.run_timeout_s)
    seen = {r["dag_run_id"] for r in client.runs()}
    cycles: list[dict[str, Any]] = []
    files = args.first_files
    unpaused = not was_paused
    if unpaused:
        print(f"[demo] {DAG_ID} is already unpaused (a second demo run): triggering each cycle", flush=True)
    while len(cycles) < args.cycles:
        wait_until_idle(client, args.run_timeout_s)
        written = generate_stream(layout, settings.params.generate, seed=settings.params.base.seed, files=files,
                                  event_types=settings.params.base.event_types, bad_fraction=args.bad_fraction)
        print(f"[demo] fed {sum(f.events for f in written)} events in {len(written)} file(s)", flush=True)
        files = args.files_per_cycle
        run_id = None
        if not unpaused:
            # Unpausing makes the scheduler start a run at once (no catchup): that run is the first cycle.
            client.unpause()
            unpaused = True
            print(f"[demo] {DAG_ID} unpaused; it also runs every "
                  f"{settings.params.schedule.incremental_every_minutes} min", flush=True)
            run_id = wait_for_new_run(client, seen, timeout_s=30)
        if run_id is None:
            run_id = client.trigger(note=f"tidal demo cycle {len(cycles) + 1}")
            print(f"[demo] triggered {run_id}", flush=True)
        else:
            print(f"[demo] the scheduler started {run_id}", flush=True)
        wait_for_run(client, run_id, args.run_timeout_s)
        # Every run that finished since the demo began and read new events is a cycle (ours or the scheduler's).
        for run in sorted(client.runs(), key=lambda r: r["run_after"]):
            if run["dag_run_id"] in seen or run["state"] not in ("success", "failed"):
                continue
            seen.add(run["dag_run_id"])
            report = cycle_report(layout, run["dag_run_id"])
            if run["state"] == "failed":
                raise SystemExit(f"run {run['dag_run_id']} failed; open the Airflow UI ({client.base_url}) for the "
                                 f"task log, and {layout.run_reports(run['dag_run_id'])} for the step reports")
            if report.get("features", {}).get("landed", 0) > 0:
                cycles.append({"run_id": run["dag_run_id"], "run_type": run["run_type"], "report": report,
                               "durations": client.task_durations(run["dag_run_id"])})
                print(f"[demo] cycle {len(cycles)} done: {run['dag_run_id']}", flush=True)

    print_summary(cycles[: args.cycles], Registry(layout.registry), client, time.monotonic() - demo_started)
    return 0


def print_summary(cycles: list[dict], registry: Registry, client: AirflowClient, seconds: float) -> None:
    print("\n=== tidal demo ===")
    print(f"Airflow UI: {client.base_url}   login: {client.username} / {client.password}")
    print(f"(credentials live in .stack/secrets.env; `make down` stops the stack)\n")
    print(f"{'run':<48} {'landed':>6} {'accepted':>8} {'quarant.':>8} {'dupes':>5}  model     gate")
    for c in cycles:
        f, p, g = c["report"]["features"], c["report"].get("promote", {}), c["report"].get("gate", {})
        model = p.get("version") if p.get("promoted") else f"kept {p.get('production_version')}"
        recall = (g.get("candidate") or {}).get("recall_at_10")
        gate = "pass" if g.get("passed") else "fail"
        print(f"{c['run_id']:<48} {f['landed']:>6} {f['accepted']:>8} {f['quarantined']:>8} {f['duplicates']:>5}  "
              f"{model:<9} {gate} (recall@10 {recall if recall is None else round(recall, 4)})")
    print("\nseconds per step (Airflow task durations):")
    print(f"{'run':<48} " + " ".join(f"{s[:8]:>8}" for s in STEP_ORDER))
    for c in cycles:
        print(f"{c['run_id']:<48} " + " ".join(f"{c['durations'].get(s, 0.0):>8.1f}" for s in STEP_ORDER))
    print("\nmodel versions:")
    production = registry.production()
    for mv in registry.versions():
        m = mv.metadata
        metrics = m.get("metrics") or {}
        print(f"  {mv.version} {m['kind']:<11} parent={m.get('parent')} anchor={m.get('anchor')} "
              f"recall@10={metrics.get('recall_at_10', float('nan')):.4f} ndcg@10={metrics.get('ndcg_at_10', float('nan')):.4f} "
              f"rows={m['rows']['trained']}{'  <- production' if production and production.version == mv.version else ''}")
    print(f"\ndemo finished in {seconds:.0f} s; step reports under {StorageLayout(registry.root.parent).reports / 'runs'}")


if __name__ == "__main__":
    raise SystemExit(main())
