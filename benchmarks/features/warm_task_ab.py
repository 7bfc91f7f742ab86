"""The per-cycle features task on the stack's warm Spark, compared between checkouts (an A/B of a change).

Not a test. Run (from the repo root), with a worktree of the commit to compare against:
    git worktree add /tmp/wt_base <commit>
    PYTHONPATH=. .venv/bin/python benchmarks/features/warm_task_ab.py /tmp/wt_base . [--rounds 2] [--tasks 4]

For each checkout in turn (the order reversed every round, so neither always runs first on the shared cores): that
checkout's `scripts/stack.sh up spark` starts a fresh Spark Connect server on a private stack folder and port, then
`--tasks` runs of that checkout's `benchmarks/features/cycle_cost.py --events N` go to it, each a new process as an
Airflow task is, and the server is stopped. Each run reports the features pass over the window and the second pass
with nothing new. The first task on a fresh server also compiles every stage and warms the JIT (once per stack
life), so the medians are over the later tasks. Prints one line per run and a JSON summary; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.features.warm_spark import cycle, free_port, stack  # noqa: E402  (after the path is set)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="repo roots to compare (a worktree per commit)")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4, help="tasks per fresh server (the first warms it)")
    args = parser.parse_args(argv)
    if args.tasks < 2:
        parser.error("--tasks must be at least 2: the first task on a fresh server is left out of the medians")
    checkouts = [c.resolve() for c in args.checkouts]
    runs: dict[str, list[dict]] = {str(c): [] for c in checkouts}
    for round_no in range(args.rounds):
        for checkout in checkouts if round_no % 2 == 0 else checkouts[::-1]:
            stack_dir, port = Path(tempfile.mkdtemp(prefix="tidal-ab-")) / "stack", free_port()
            up = stack(stack_dir, port, "up", "spark", checkout=checkout)
            try:
                if up.returncode != 0:
                    raise SystemExit(f"scripts/stack.sh up spark failed in {checkout}:\n{up.stderr[-3000:]}")
                for task_no in range(1, args.tasks + 1):
                    run = {"round": round_no, "task": task_no,
                           **cycle(args.events, f"sc://127.0.0.1:{port}", checkout=checkout)}
                    runs[str(checkout)].append(run)
                    print(f"{checkout} round {round_no} task {task_no}: pass {run['features_pass_s']} s, "
                          f"nothing new {run['empty_pass_s']} s, load {run['load_1m_after']}", flush=True)
            finally:
                stack(stack_dir, port, "down", checkout=checkout)
    summary = {}
    for checkout, rows in runs.items():
        later = [r for r in rows if r["task"] > 1]
        summary[checkout] = {"features_pass_s": median(r["features_pass_s"] for r in later),
                             "empty_pass_s": median(r["empty_pass_s"] for r in later),
                             "task_wall_s": median(r["task_wall_s"] for r in later),
                             "first_task_pass_s": [r["features_pass_s"] for r in rows if r["task"] == 1]}
    print(json.dumps({"events": args.events, "rounds": args.rounds, "tasks": args.tasks,
                      "medians_after_first_task": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
