"""The main job behind `make demo`: feed the stream, drive `tidal_incremental` under the scheduler, summarize.

It talks to the running stack only through Airflow's authenticated REST API (the same one the UI uses). It unpauses
the DAG if it is paused (`scripts/stack.sh up` normally has), then repeats: wait until no run is active, take in
every run that finished since the demo began, and if the stream has no pending landing file append new ones, else
trigger a run and wait for it. A run counts as a cycle when its features step processed new events; a run whose
`check_landing` found nothing (the scheduler's, or ours when a scheduled run took the files first) is idle and is
reported as idle, never waited for as a cycle. The demo never triggers a run with nothing pending.

At the end it prints the UI address and login; per run, the rows it processed; per cycle, the candidate's and
production's Recall@10 on the same held-out slice as the gate compared them, the margin and the gate's decision;
the time each task took; the model versions; a real request to serving before and after the cycles (the version
that answers changes) and one for a user who first appeared in the last cycle's events; and the freshness figures
(landed -> online store, landed -> served by a model trained on it).

Run: `make demo` (which starts the stack first), or `python -m devtools.demo --cycles 3` against a running stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from devtools.demo_serving import ask, freshness_lines, newcomer, serving_lines, users_of, wait_until_serving
from devtools.generate import generate_stream
from jobs.release.registry_cli import gate_margin
from tidal.config import load_settings
from tidal.freshness import freshness_report
from tidal.landing import pending_landing_files
from tidal.pipelines import INCREMENTAL
from tidal.registry import Registry
from tidal.storage import StorageLayout, read_json


DAG_ID = "tidal_incremental"
STEP_ORDER = INCREMENTAL.step_names
TASK_COLUMNS = (INCREMENTAL.guard_name, *STEP_ORDER)
# A triggered run that yields no cycle although files were pending happens once when a scheduled run takes them
# first; twice in a row means the runs do not consume what the demo feeds, and waiting longer would never end.
MAX_RUNS_WITHOUT_A_CYCLE = 2


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

    def task_instances(self, run_id: str) -> dict[str, dict]:
        """task id -> {state, duration} of one run (skipped tasks of an idle run included)."""
        reply = self._request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.request.quote(run_id, safe='')}/taskInstances")
        return {ti["task_id"]: {"state": ti["state"], "duration": ti["duration"]} for ti in reply["task_instances"]}


def wait_until_idle(client: AirflowClient, timeout_s: float) -> None:
    """Wait for every queued or running run (max_active_runs=1 would queue ours behind it anyway)."""
    deadline = time.monotonic() + timeout_s
    while any(r["state"] in ("queued", "running") for r in client.runs()):
        if time.monotonic() > deadline:
            raise SystemExit(f"runs of {DAG_ID} still active after {timeout_s:.0f} s; see the Airflow UI")
        time.sleep(3)


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


def run_record(run: dict, report: dict[str, Any], task_instances: dict[str, dict]) -> dict[str, Any]:
    """One finished run as the summary shows it. Idle: its features step did not run or found no new events."""
    features = report.get("features")
    return {"run_id": run["dag_run_id"], "run_type": run["run_type"], "state": run["state"],
            "idle": features is None or features.get("landed", 0) == 0, "report": report,
            "tasks": task_instances}


def take_finished_runs(client: AirflowClient, layout: StorageLayout, seen: set[str]) -> list[dict[str, Any]]:
    """Records of the runs that finished since the last look, oldest first; a failed run ends the demo."""
    records = []
    for run in sorted(client.runs(), key=lambda r: r["run_after"]):
        if run["dag_run_id"] in seen or run["state"] not in ("success", "failed"):
            continue
        seen.add(run["dag_run_id"])
        if run["state"] == "failed":
            raise SystemExit(f"run {run['dag_run_id']} failed; open the Airflow UI ({client.base_url}) for the "
                             f"task log, and {layout.run_reports(run['dag_run_id'])} for the step reports")
        record = run_record(run, cycle_report(layout, run["dag_run_id"]), client.task_instances(run["dag_run_id"]))
        print(f"[demo] {run['dag_run_id']}: {'idle (no new landing files)' if record['idle'] else 'cycle'}",
              flush=True)
        records.append(record)
    return records


def cycle_count(records: list[dict[str, Any]]) -> int:
    return sum(not r["idle"] for r in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.splitlines()[0])
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
    paused = client.wait_for_dag(timeout_s=180)["is_paused"]
    wait_until_idle(client, args.run_timeout_s)
    seen = {r["dag_run_id"] for r in client.runs()}  # before unpausing: the run that starts then is the demo's
    if paused:
        client.unpause()
        print(f"[demo] {DAG_ID} unpaused; it also runs every {settings.params.schedule.incremental_every_minutes} min",
              flush=True)
    serving_url = os.environ.get("TIDAL_SERVING_URL", "http://127.0.0.1:18400")
    landed_since, fed = time.time(), []
    records, first_answer = drive_cycles(client, layout, settings, args, seen, fed,
                                         lambda user: ask(serving_url, user))
    cycles = [r for r in records if not r["idle"]][: args.cycles]
    shown = [r for r in records if r["idle"] or r in cycles]
    registry = Registry(layout.registry)
    production = registry.production()
    wait_until_serving(serving_url, production.version if production else None)
    new_user = newcomer(fed)
    print("\n".join(summary_lines(shown, registry, client, k=settings.params.gate.k,
                                  tolerance=settings.params.gate.recall_tolerance,
                                  seconds=time.monotonic() - demo_started)))
    print("\n".join(serving_lines(serving_url, first_answer, ask(serving_url, first_answer[0]),
                                  (new_user, ask(serving_url, new_user)) if new_user else None)))
    print("\n".join(["", *freshness_lines(freshness_report(layout, since_s=landed_since - 1))]))
    return 0


def drive_cycles(client: AirflowClient, layout: StorageLayout, settings, args, seen: set[str],
                 fed: list[list[Path]], probe: Callable[[str], dict]) -> tuple[list[dict], tuple[str, dict]]:
    """Feed and trigger until enough cycles finished; every finished run since the demo began is recorded, and
    every batch of files fed is appended to `fed`. Right after the first feed, before any cycle has taken it,
    serving is asked for the most active user of those files: the "before" of the summary's serving lines."""
    records: list[dict[str, Any]] = []
    first_answer: tuple[str, dict] | None = None
    files, runs_without_a_cycle = args.first_files, 0
    while True:
        wait_until_idle(client, args.run_timeout_s)
        before = cycle_count(records)
        records += take_finished_runs(client, layout, seen)
        runs_without_a_cycle = 0 if cycle_count(records) > before else runs_without_a_cycle
        if cycle_count(records) >= args.cycles:
            return records, first_answer
        pending = pending_landing_files(layout)
        if not pending:
            written = generate_stream(layout, settings.params.generate, seed=settings.params.base.seed, files=files,
                                      event_types=settings.params.base.event_types, bad_fraction=args.bad_fraction)
            print(f"[demo] fed {sum(f.events for f in written)} events in {len(written)} file(s)", flush=True)
            fed.append([f.path for f in written])
            if first_answer is None:
                user = users_of(fed[0]).most_common(1)[0][0]
                first_answer = (user, probe(user))
            files = args.files_per_cycle
            continue  # a scheduled run may take them before we trigger; the next look sees it
        if runs_without_a_cycle >= MAX_RUNS_WITHOUT_A_CYCLE:
            raise SystemExit(f"{runs_without_a_cycle} runs finished without consuming the pending landing files "
                             f"{[p.name for p in pending[:5]]}; see the check_landing and features task logs")
        run_id = client.trigger(note=f"tidal demo cycle {cycle_count(records) + 1}")
        print(f"[demo] {len(pending)} landing file(s) pending; triggered {run_id}", flush=True)
        wait_for_run(client, run_id, args.run_timeout_s)
        runs_without_a_cycle += 1


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def gate_row(record: dict[str, Any], k: int) -> dict[str, Any]:
    """The gate's comparison for one cycle, read from its gate.json: both models on the run's held-out slice."""
    gate, promote = record["report"].get("gate") or {}, record["report"].get("promote") or {}
    key = f"recall_at_{k}"
    candidate = (gate.get("candidate") or {}).get(key)
    production = (gate.get("production") or {}).get(key)
    if gate.get("status") == "skipped" or not gate:
        decision = "skipped"
    else:
        decision = "pass" if gate.get("passed") else "fail"
    return {"run_id": record["run_id"], "held_out": gate.get("held_out_examples"), "candidate": candidate,
            "production": production, "production_version": gate.get("production_version"),
            "margin": None if candidate is None or production is None else candidate - production,
            "decision": decision, "reason": gate.get("reason", "no gate summary"),
            "model": promote.get("version") if promote.get("promoted") else f"kept {promote.get('production_version')}"}


def idle_note(record: dict[str, Any]) -> str:
    if "features" in record["report"]:
        return "features ran and found no new events"
    skipped = sum(t.get("state") == "skipped" for t in record["tasks"].values())
    return f"no new landing files: check_landing skipped the other {skipped} task(s)"


def runs_lines(records: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'run':<48} {'':<5} {'landed':>6} {'accepted':>8} {'quarant.':>8} {'dupes':>5}"]
    for r in records:
        if r["idle"]:
            lines.append(f"{r['run_id']:<48} idle  {idle_note(r)}")
            continue
        f = r["report"]["features"]
        lines.append(f"{r['run_id']:<48} cycle {f['landed']:>6} {f['accepted']:>8} {f['quarantined']:>8} "
                     f"{f['duplicates']:>5}")
    return lines


def gate_lines(records: list[dict[str, Any]], k: int, tolerance: float) -> list[str]:
    lines = [f"Recall@{k} of the candidate and of production on the same held-out slice (the run's freshest "
             f"examples), as the gate compared them;",
             f"margin = candidate - production; the gate passes when margin >= -{tolerance}:",
             f"{'run':<48} {'held out':>8} {'candidate':>9} {'production':>10} {'(version)':<10} {'margin':>8}  "
             f"{'gate':<7} model"]
    for r in records:
        if r["idle"]:
            continue
        row = gate_row(r, k)
        lines.append(f"{row['run_id']:<48} {fmt(row['held_out'], 'd'):>8} {fmt(row['candidate']):>9} "
                     f"{fmt(row['production']):>10} {'(' + str(row['production_version']) + ')':<10} "
                     f"{fmt(row['margin'], '+.4f'):>8}  {row['decision']:<7} {row['model']:<14} {row['reason']}")
    return lines


def seconds_lines(records: list[dict[str, Any]]) -> list[str]:
    def cell(task: dict | None) -> str:
        if task is None or task.get("state") in (None, "skipped"):
            return f"{'skip':>8}" if task is not None else f"{'-':>8}"
        return f"{task.get('duration') or 0.0:>8.1f}"

    lines = [f"{'run':<48} " + " ".join(f"{s[:8]:>8}" for s in TASK_COLUMNS)]
    for r in records:
        lines.append(f"{r['run_id']:<48} " + " ".join(cell(r["tasks"].get(s)) for s in TASK_COLUMNS))
    return lines


def version_lines(registry: Registry) -> list[str]:
    production = registry.production()
    lines = []
    for mv in registry.versions():
        m = mv.metadata
        lines.append(f"  {mv.version} {m['kind']:<11} parent={m.get('parent')} anchor={m.get('anchor')} "
                     f"gate margin={gate_margin(m)} rows={m['rows']['trained']}"
                     f"{'  <- production' if production and production.version == mv.version else ''}")
    return lines


def summary_lines(records: list[dict[str, Any]], registry: Registry, client: AirflowClient, *, k: int,
                  tolerance: float, seconds: float) -> list[str]:
    return ["", "=== tidal demo ===",
            f"Airflow UI: {client.base_url}   login: {client.username} / {client.password}",
            "(credentials live in .stack/secrets.env; `make down` stops the stack)", "",
            *runs_lines(records), "", *gate_lines(records, k, tolerance), "",
            "seconds per task (Airflow task durations; skip = skipped):", *seconds_lines(records), "",
            "model versions (`tidal registry list` for each one's lineage):", *version_lines(registry), "",
            f"demo finished in {seconds:.0f} s; step reports under {StorageLayout(registry.root.parent).reports / 'runs'}"]


if __name__ == "__main__":
    raise SystemExit(main())
