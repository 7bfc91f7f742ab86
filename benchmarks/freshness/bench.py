"""Freshness under the real Airflow scheduler, nobody triggering: event file landed -> promoted model trained on it.

Private stacks run one after the other in the same invocation (scripts/stack.sh in a temp folder on free ports, the
shipped params.yaml), one per mode, each a way tidal can be run (MODES below):

  before    what tidal did before issue 13: the fixed tick alone (every 5 minutes), a local Spark (a new JVM) in
            every features task, Airflow's plain LocalExecutor (every task imports its libraries);
  landing   the landing watcher (tidal/landing_watch.py: a new landing file starts a run within seconds, the tick
            stays as the fallback), with the local Spark and the plain executor: the watcher alone;
  after     the shipped default, `scripts/stack.sh up all`: the watcher, the stack's warm Spark (Spark Connect) and
            the warm executor (tidal/warm_executor.py: task processes start with the libraries imported).

Each stack gets one landing file before it starts (the first run at unpause trains the first model: the warm-up,
not counted), then a steady stream: one file of `generate.events_per_file` events every --interval seconds, --files
files, written by devtools.generate as a producer would (hidden name, then rename). The benchmark never triggers a run;
it waits until every file is served (or --drain-s passes), then reads per file landed -> promoted (the first version
trained on its batch, its `promoted_at`) and landed -> served (serving's swaps log), and per cycle the Airflow task
durations and the gaps between tasks from Airflow's REST API. Writes results.json and RESULTS.md next to this file.

Run (heavy, about 15 minutes a mode; `flock -o` so the stack's servers do not keep the lock):
    flock -o /tmp/tidal-heavy.lock .venv/bin/python benchmarks/freshness/bench.py [--files 20] [--interval 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import tests.conftest  # noqa: E402,F401  (a private Airflow home; no user TIDAL_HOME leaks in)
from benchmarks.freshness.breakdown import cycle_breakdown, epoch, file_rows, summary  # noqa: E402
from benchmarks.freshness.report import markdown  # noqa: E402
from tests.scripts.stack_run import free_ports, stack, stack_dir_env  # noqa: E402


@dataclass(frozen=True)
class Mode:
    what: str
    trigger: str  # TIDAL_INCREMENTAL_TRIGGER
    warm_spark: bool  # the stack's Spark Connect server; else every features task starts a local Spark
    executor: str  # TIDAL_AIRFLOW_EXECUTOR

    def components(self) -> list[str]:
        """What `scripts/stack.sh up` is called with, in order: `all`, or every component but the Spark server."""
        return ["all"] if self.warm_spark else ["s3", "valkey", "serving", "airflow"]


MODES = {
    "before": Mode("the 5-minute tick alone, a local Spark per features task, the plain LocalExecutor (before issue 13)",
                   "schedule", False, "LocalExecutor"),
    "landing": Mode("the landing watcher plus the tick, a local Spark per features task, the plain LocalExecutor",
                    "landing", False, "LocalExecutor"),
    "after": Mode("the landing watcher plus the tick, the stack's warm Spark (Spark Connect), the warm executor "
                  "(the shipped default)", "landing", True, "tidal.warm_executor.WarmLocalExecutor"),
}
DAG = "tidal_incremental"


class Airflow:
    """The private stack's REST API, logged in with its generated credentials."""

    def __init__(self, stack_dir: Path, port: str):
        secrets = dict(line.split("=", 1) for line in (stack_dir / "secrets.env").read_text().split())
        self.base = f"http://127.0.0.1:{port}"
        self.token = self.call("POST", "/auth/token", {"username": secrets["TIDAL_AIRFLOW_USER"],
                                                       "password": secrets["TIDAL_AIRFLOW_PASSWORD"]})["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def runs(self) -> list[dict]:
        return self.call("GET", f"/api/v2/dags/{DAG}/dagRuns?limit=100&order_by=start_date")["dag_runs"]

    def task_instances(self, run_id: str) -> list[dict]:
        quoted = urllib.request.quote(run_id, safe="")
        return self.call("GET", f"/api/v2/dags/{DAG}/dagRuns/{quoted}/taskInstances?limit=100")["task_instances"]


def land_file(settings, seed: int) -> float:
    """One landing file, as the producer writes it; returns its landing time (the file's mtime)."""
    from devtools.generate import generate_stream
    from tidal.storage import StorageLayout

    [written] = generate_stream(StorageLayout(settings.home).ensure(), settings.params.generate, seed=seed, files=1,
                                event_types=settings.params.base.event_types)
    return written.path.stat().st_mtime


def served_versions(home: Path) -> int:
    from tidal.freshness import read_swaps
    from tidal.storage import StorageLayout

    return len(read_swaps(StorageLayout(home).serving_swaps))


def wait_for(check, timeout_s: float, every_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)


def wait_until(check, timeout_s: float, what: str) -> None:
    if not wait_for(check, timeout_s):
        raise SystemExit(f"[freshness] {what} did not happen within {timeout_s:.0f} s")


def all_served(home: Path, since: float, landed: int) -> bool:
    rows = file_rows(home, since=since)
    return len(rows) >= landed and all(r["served_at"] for r in rows)


def stream(settings, args) -> list[float]:
    """--files files, one every --interval seconds on a fixed clock (a slow write does not shift the next one)."""
    start, landed = time.monotonic(), []
    for n in range(args.files):
        time.sleep(max(0.0, start + n * args.interval - time.monotonic()))
        landed.append(land_file(settings, args.seed))
        print(f"[freshness] landed file {n + 1}/{args.files}", flush=True)
    return landed


def stack_up(mode: Mode, env: dict[str, str]) -> str | None:
    """Start the mode's components; the failing call's stderr tail, or None when all started."""
    for component in mode.components():
        up = stack("up", component, env=env, timeout=600)
        if up.returncode != 0:
            return f"up {component}:\n{up.stderr[-3000:]}"
    return None


def run_mode(name: str, args, folder: Path) -> dict[str, Any]:
    """One private stack started the given way: warm-up, the stream, the drain; the figures read back."""
    from tidal.config import load_settings

    mode = MODES[name]
    stack_dir = folder / name
    stack_dir.mkdir(parents=True)
    env = stack_dir_env(stack_dir, **free_ports(), TIDAL_INCREMENTAL_TRIGGER=mode.trigger,
                        TIDAL_AIRFLOW_EXECUTOR=mode.executor, TIDAL_INCREMENTAL_EVERY_MINUTES=str(args.every_minutes))
    os.environ["TIDAL_HOME"] = env["TIDAL_HOME"]
    settings = load_settings()
    land_file(settings, args.seed)  # the warm-up file: the run at unpause trains the first model on it
    failed = stack_up(mode, env)
    try:
        if failed:
            raise SystemExit(f"[freshness] {name}: stack up failed: {failed}")
        airflow = Airflow(stack_dir, env["TIDAL_AIRFLOW_PORT"])
        wait_until(lambda: served_versions(settings.home) >= 1, 900, f"{name}: the warm-up model being served")
        load_before, began = os.getloadavg(), time.time()
        landed = stream(settings, args)
        drained = wait_for(lambda: all_served(settings.home, began, len(landed)), args.drain_s, every_s=5)
        print(f"[freshness] {name}: {'every file served' if drained else 'drain timed out'}", flush=True)
        runs = [r for r in airflow.runs() if r["start_date"] and epoch(r["start_date"]) >= began - 1]
        cycles = cycle_breakdown(settings.home, runs, {r["dag_run_id"]: airflow.task_instances(r["dag_run_id"])
                                                       for r in runs})
        rows = file_rows(settings.home, since=began)
        return {"mode": name, "what": mode.what, "files_landed": len(landed), "rows": rows, "cycles": cycles,
                "summary": summary(rows, cycles), "load_average_before": load_before,
                "load_average_after": os.getloadavg()}
    finally:
        down = stack("down", env=env, timeout=300)
        if down.returncode != 0:
            print(f"[freshness] {name}: stack down failed:\n{down.stderr[-2000:]}", file=sys.stderr)


def iso(epoch_s: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20, help="streamed files per mode (at least 1; default 20)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between two files (5..600; default 30)")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["before", "after"],
                        help="which modes, in this order (default: before after; `landing` isolates the watcher)")
    parser.add_argument("--every-minutes", type=int, default=5, help="the tick (1..60; default 5)")
    parser.add_argument("--drain-s", type=float, default=480.0,
                        help="after the last file, how long to wait for every file to be served (0..1800; default 480)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--from-json", type=Path, help="recompute the figures of a saved results.json; run nothing")
    args = parser.parse_args(argv)
    problems = [message for bad, message in [
        (args.files < 1, "--files must be at least 1"), (not 5 <= args.interval <= 600, "--interval must be 5..600 s"),
        (not 1 <= args.every_minutes <= 60, "--every-minutes must be 1..60"),
        (not 0 <= args.drain_s <= 1800, "--drain-s must be 0..1800"),
        (args.from_json is not None and not args.from_json.is_file(), f"--from-json {args.from_json}: no such file")]
        if bad]
    if problems:
        parser.error("; ".join(problems))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:  # the figures again from a run's saved rows and cycles, without running anything
        report = json.loads(args.from_json.read_text())
        for mode in report["modes"].values():
            mode["summary"] = summary(mode["rows"], mode["cycles"])
    else:
        folder = Path(tempfile.mkdtemp(prefix="tidal-freshness-"))
        started = time.time()
        results = {mode: run_mode(mode, args, folder) for mode in args.modes}
        report = {"files_per_mode": args.files, "interval_s": args.interval, "every_minutes": args.every_minutes,
                  "cpus": os.cpu_count(), "started_at": iso(started), "wall_s": round(time.time() - started, 1),
                  "modes": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
