"""The same two incremental cycles on one profile, timed per Airflow task: for the side-by-side table in
docs/cluster.md. Not a test (nothing is asserted but that each run succeeds); a measurement to rerun.

Run (from the repo root, one profile at a time, under the machine's heavy-run lock):
    flock -o /tmp/tidal-heavy.lock .venv/bin/python -m tests.cluster.cycle_seconds embedded
    flock -o /tmp/tidal-heavy.lock .venv/bin/python -m tests.cluster.cycle_seconds cluster

Each starts a private profile on free ports in a temporary directory (`scripts/stack.sh up s3|valkey|airflow` for
the embedded one: Airflow standalone, SQLite, LocalExecutor, Spark local[2] in each task; `scripts/cluster.sh up`
for the cluster one: PostgreSQL, CeleryExecutor with two workers, Spark standalone with two 1-core workers), lands
the same files as tests/cluster/test_cycles.py (devtools.generate, seed 7: two files, then one more), triggers
tidal_incremental for each through the REST API, and prints one JSON object: every task's duration per cycle, each
run's queued-to-end seconds, the 1-minute load average sampled through the runs, and how long `up` took. The profile
is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from tests.cluster.cluster_run import Airflow, cluster, cluster_env, free_port_base, sourced
from tests.cluster.test_cycles import land
from tests.scripts.stack_run import free_ports, stack, stack_dir_env
from tests.scripts.stack_run import sourced as stack_sourced


def seconds(start: str | None, end: str | None) -> float | None:
    return None if not (start and end) else round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


def timed_cycle(airflow: Airflow, env: dict[str, str], files: int, timeout_s: float) -> dict:
    landed = land(env, files)
    run_id = airflow.trigger("tidal_incremental")
    run = airflow.wait("tidal_incremental", run_id, timeout_s)
    tis = airflow.task_instances("tidal_incremental", run_id)
    assert run["state"] == "success", {t: ti["state"] for t, ti in tis.items()}
    order = sorted(tis.values(), key=lambda ti: ti["start_date"] or "")
    return {"run_id": run_id, "landed": landed,
            # queued_when to end: what a user waits, scheduler and executor hand-offs included
            "run_s": seconds(run["queued_at"], run["end_date"]),
            "tasks_s": {ti["task_id"]: round(ti["duration"], 1) if ti["duration"] is not None else None for ti in order},
            "hostnames": sorted({ti["hostname"] for ti in order if ti["hostname"]})}


class LoadSampler(threading.Thread):
    """The 1-minute load average every 5 s while the cycles run: the machine's two cores are shared."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(5):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> "LoadSampler":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(s), 2), "mean": round(sum(s) / len(s), 2), "max": round(max(s), 2)}


def embedded(workdir: Path) -> tuple[dict[str, str], callable]:
    stack_dir = workdir / "stack"
    env = stack_dir_env(stack_dir, **free_ports(), TIDAL_INCREMENTAL_EVERY_MINUTES="1440",
                        TIDAL_INCREMENTAL_TRIGGER="schedule")
    stop = lambda: stack("down", env=env, timeout=300)  # noqa: E731
    # What the cluster profile also runs (S3, Valkey, Airflow), and not the stack's Spark Connect server: each
    # task starts its own local[2] Spark, the embedded profile as docs/cluster.md compares it.
    for component in ("s3", "valkey", "airflow"):
        started = stack("up", component, env=env, timeout=900)
        if started.returncode != 0:
            stop()
            raise SystemExit(started.stderr[-4000:])
    names = ("AIRFLOW__API__BASE_URL", "TIDAL_AIRFLOW_USER", "TIDAL_AIRFLOW_PASSWORD", "TIDAL_HOME", "TIDAL_PARAMS")
    view = {**env, **stack_sourced(env, *names)}
    # stack.env leaves TIDAL_PARAMS empty when the default params.yaml is used; land() loads it either way.
    view["TIDAL_PARAMS"] = view.get("TIDAL_PARAMS") or str(Path(__file__).resolve().parents[2] / "params.yaml")
    return view, stop


def cluster_profile(workdir: Path) -> tuple[dict[str, str], callable]:
    cluster_dir = workdir / "cluster"
    cluster_dir.mkdir()
    env = cluster_env(cluster_dir, free_port_base(), TIDAL_INCREMENTAL_EVERY_MINUTES="1440",
                      TIDAL_INCREMENTAL_TRIGGER="schedule")
    started = cluster("up", env=env)
    stop = lambda: cluster("down", env=env, timeout=300)  # noqa: E731
    if started.returncode != 0:
        stop()
        raise SystemExit(started.stderr[-4000:])
    return {**env, **sourced(env)}, stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", choices=("embedded", "cluster"))
    parser.add_argument("--timeout-s", type=float, default=1500, help="per run")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)

    # Not under a 0700 temp root: as root, the cluster profile's PostgreSQL runs as an unprivileged user.
    workdir = Path(tempfile.mkdtemp(prefix=f"tidal-cycle-{args.profile}-"))
    workdir.chmod(0o755)
    load, stop = LoadSampler(), None
    try:
        up_started = time.monotonic()
        env, stop = (embedded if args.profile == "embedded" else cluster_profile)(workdir)
        up_s = round(time.monotonic() - up_started, 1)
        airflow = Airflow(env)
        airflow.wait_idle("tidal_incremental", 600)  # the run the unpause scheduled must not take the files
        load.start()
        cycles = [timed_cycle(airflow, env, files, args.timeout_s) for files in (2, 1)]
        load.stopped.set()
        result = {"profile": args.profile, "up_s": up_s, "cycles": cycles, "load_avg_1m": load.summary(),
                  "cores": os.cpu_count(), "command": " ".join(["python -m tests.cluster.cycle_seconds", *sys.argv[1:]])}
    finally:
        load.stopped.set()
        if stop is not None:
            stopped = stop()
            if stopped.returncode != 0:
                print(stopped.stderr[-4000:], file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
