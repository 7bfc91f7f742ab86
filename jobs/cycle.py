"""One incremental cycle without Airflow: the steps of the incremental pipeline (tidal/pipelines.py), in process.

Each step writes its summary to <TIDAL_HOME>/reports/runs/<run id>/<step>.json; the cycle returns all of them plus
each step's wall time. Like the DAG's `check_landing`, a cycle with no new landing file (and no batch to replay) is
idle: it runs no step and says so.

Run: `tidal cycle [--json]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any, Callable

from jobs.training.candidate import train_config
from tidal.config import Settings, load_settings
from tidal.pipelines import INCREMENTAL, check_guard, run_pipeline
from tidal.storage import StorageLayout, write_step_summary


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("cycle__%Y%m%dT%H%M%S%fZ")


def run_cycle(settings: Settings, run_id: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    train_config(settings)  # refuse bad hyperparameters before any work starts
    run_id = run_id or new_run_id()
    layout = StorageLayout(settings.home).ensure()
    reports = layout.run_reports(run_id)
    work = check_guard(INCREMENTAL, settings)
    if work["idle"]:
        log(f"[cycle] idle: no new landing files in {layout.landing_events}; nothing to do")
        return {"run_id": run_id, "idle": True, "landing": work, "steps": {}, "seconds": {}, "reports": str(reports)}
    steps, seconds = run_pipeline(INCREMENTAL, settings, run_id, reports, log=log, label="cycle")
    result = {"run_id": run_id, "idle": False, "landing": work, "steps": steps, "seconds": seconds,
              "reports": str(reports)}
    write_step_summary(reports, "cycle", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal cycle", description="Run one incremental cycle without Airflow.")
    parser.add_argument("--json", action="store_true", help="print all step summaries as one JSON object on stdout")
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args(argv)
    settings = load_settings()
    # With --json, stdout carries only the JSON; progress goes to stderr.
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print
    if args.json:
        real_stdout, sys.stdout = sys.stdout, sys.stderr
        try:
            result = run_cycle(settings, args.run_id, log=log)
        finally:
            sys.stdout = real_stdout
        print(json.dumps(result, indent=2, default=str))
    else:
        result = run_cycle(settings, args.run_id, log=log)
        for step, seconds in result["seconds"].items():
            print(f"{step:<10} {seconds:>7.2f} s")
        print(f"reports: {result['reports']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
