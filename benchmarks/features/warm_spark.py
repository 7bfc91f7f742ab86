"""Per-cycle features task time with the stack's warm Spark (Spark Connect) vs a local Spark started by the task,
side by side in one run.

Not a test. Run (from the repo root):
    PYTHONPATH=. .venv/bin/python benchmarks/features/warm_spark.py [--events 10000] [--rounds 2]

It starts a private Spark Connect server with `scripts/stack.sh up spark` (a stack folder under a temp dir, a free
port), then runs `benchmarks/features/cycle_cost.py` as a task would, each in a fresh process: alternately with
TIDAL_SPARK_REMOTE pointing at the server and without it (a local JVM), `--rounds` times each. Per run: the
process's whole wall time (what the Airflow task pays: Python start, imports, session, the pass, exit), the session
acquire (cycle_cost's spark_start_s: a JVM start locally, a gRPC session on the warm server), the features pass over
the window, and a second pass with nothing new. The 1-minute load average is recorded before and after each run,
since the 2 cores are shared. The server is stopped at the end. Results: warm_spark.json next to this file and a
section appended to RESULTS.md.

`--warm-up-tasks N` first runs N tasks on the server, as the stack's cycles would have before the measured ones
(20 is ten minutes of a cycle every 30 s). A fresh server's JIT is still compiling Spark's own code through its
first dozen tasks: on the 2 cores, C2 compiled for 5.7 s of CPU during the second 10k task and 1.7 s during the
20th, while the pass fell from 8.4 s to 4.4 s (RESULTS.md, "2026-12-05 (afternoon)"). The warm-up passes are
recorded, not counted in the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median


HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack(stack_dir: Path, port: int, *args: str, params: Path | None = None,
          checkout: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """`checkout`'s scripts/stack.sh on a private stack folder and Spark port; `params` (a params.yaml) sets the
    server's master and heap (features.spark_master, features.spark_driver_memory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDAL_", "AIRFLOW_"))}
    env.update(TIDAL_STACK_DIR=str(stack_dir), TIDAL_SPARK_PORT=str(port), TIDAL_VENV_BIN=str(Path(sys.executable).parent))
    if params is not None:
        env["TIDAL_PARAMS"] = str(params)
    return subprocess.run([str(checkout / "scripts" / "stack.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=600)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cycle(events: int, remote: str | None, checkout: Path = REPO_ROOT) -> dict:
    """One features task of `checkout` (its cycle_cost.py) in a new process: on the server at `remote`, or on a
    local JVM when it is None."""
    env = {k: v for k, v in os.environ.items() if k not in ("TIDAL_SPARK_REMOTE", "SPARK_REMOTE", "TIDAL_HOME")}
    env["PYTHONPATH"] = str(checkout)
    if remote:
        env["TIDAL_SPARK_REMOTE"] = remote
    load_before, started = os.getloadavg()[0], time.monotonic()
    done = subprocess.run([sys.executable, "benchmarks/features/cycle_cost.py", "--events", str(events)],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"cycle_cost.py failed ({'connect' if remote else 'local'}, {checkout}):\n"
                         f"{done.stderr[-3000:]}")
    result = json.loads(done.stdout[done.stdout.index("{"):])
    return {"spark": "connect" if remote else "local", "task_wall_s": round(wall, 2), **result,
            "load_1m_before": round(load_before, 2), "load_1m_after": round(os.getloadavg()[0], 2)}


def markdown(record: dict) -> str:
    lines = [f"\n## Warm Spark (Spark Connect) vs a local Spark per task: {record['events']:,}-event cycle, "
             f"{record['date']}\n",
             f"`{record['command']}`; server: `scripts/stack.sh up spark` (local[2], the params' heap), one fresh "
             "process per run as an Airflow task is; runs alternate local/connect.\n",
             "| run | Spark | task wall (s) | session acquire (s) | features pass (s) | empty pass (s) | events | "
             "load 1m before/after |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(record["runs"], 1):
        lines.append(f"| {i} | {r['spark']} | {r['task_wall_s']:.1f} | {r['spark_start_s']:.1f} | "
                     f"{r['features_pass_s']:.1f} | {r['empty_pass_s']:.1f} | {r['events']:,} | "
                     f"{r['load_1m_before']:.2f} / {r['load_1m_after']:.2f} |")
    m = record["medians"]
    lines += ["", f"Medians: task wall {m['local']['task_wall_s']:.1f} s local vs {m['connect']['task_wall_s']:.1f} s "
              f"connect; session acquire {m['local']['spark_start_s']:.1f} s vs {m['connect']['spark_start_s']:.2f} s; "
              f"features pass {m['local']['features_pass_s']:.1f} s vs {m['connect']['features_pass_s']:.1f} s. "
              f"Server start (once per stack life, not per task): {record['server_start_s']:.1f} s. "
              f"Warm-up tasks before the runs: {len(record['warm_up_pass_s'])} (passes "
              f"{', '.join(f'{x:.1f}' for x in record['warm_up_pass_s']) or '-'} s). "
              f"`uptime` at start: {record['uptime_start']}; at end: {record['uptime_end']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warm-up-tasks", type=int, default=0,
                        help="tasks run on the server before the measured ones (not counted)")
    parser.add_argument("--no-write", action="store_true", help="print the JSON only")
    args = parser.parse_args(argv)
    if args.warm_up_tasks < 0:
        parser.error(f"--warm-up-tasks must be 0 or more; got {args.warm_up_tasks}")
    stack_dir, port = Path(tempfile.mkdtemp(prefix="tidal-warm-spark-")) / "stack", free_port()
    record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "events": args.events,
              "command": f"PYTHONPATH=. .venv/bin/python benchmarks/features/warm_spark.py --events {args.events} "
                         f"--rounds {args.rounds} --warm-up-tasks {args.warm_up_tasks}",
              "uptime_start": uptime(), "warm_up_pass_s": [], "runs": []}
    started = time.monotonic()
    up = stack(stack_dir, port, "up", "spark")
    record["server_start_s"] = round(time.monotonic() - started, 2)
    try:
        if up.returncode != 0:
            raise SystemExit(f"scripts/stack.sh up spark failed:\n{up.stderr[-3000:]}")
        remote = f"sc://127.0.0.1:{port}"
        for task_no in range(1, args.warm_up_tasks + 1):
            record["warm_up_pass_s"].append(cycle(args.events, remote)["features_pass_s"])
            print(f"warm-up task {task_no}: pass {record['warm_up_pass_s'][-1]} s", flush=True)
        for _ in range(args.rounds):
            for mode in (None, remote):
                record["runs"].append(cycle(args.events, mode))
                print(json.dumps(record["runs"][-1]), flush=True)
    finally:
        down = stack(stack_dir, port, "down")
        print(down.stderr.strip(), file=sys.stderr)
    record["uptime_end"] = uptime()
    keys = ("task_wall_s", "spark_start_s", "features_pass_s", "empty_pass_s")
    record["medians"] = {mode: {k: round(median(r[k] for r in record["runs"] if r["spark"] == mode), 2) for k in keys}
                         for mode in ("local", "connect")}
    # A fresh server's first task compiles every stage and its JIT keeps warming through the next dozen; without
    # warm-up tasks only the first is left out of the warm medians.
    later = [r for r in record["runs"] if r["spark"] == "connect"][0 if args.warm_up_tasks else 1:]
    if later:
        record["medians"]["connect_warm"] = {k: round(median(r[k] for r in later), 2) for k in keys}
    print(json.dumps(record, indent=2))
    if not args.no_write:
        (HERE / "warm_spark.json").write_text(json.dumps(record, indent=2) + "\n")
        with (HERE / "RESULTS.md").open("a") as results:
            results.write(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
