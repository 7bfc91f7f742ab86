"""`tidal retrain`: a full retrain from scratch over a history window, run in this process; the result anchors a new
fine-tune chain.

The steps are the full-retrain pipeline's (tidal/pipelines.py), the same the tidal_full_retrain (by hand) and
tidal_scheduled_retrain (weekly, severe drift) DAGs run; `dvc repro` runs its DVC stages (dvc.yaml).

Run: `tidal retrain --reason "why" [--days N|all] [--epochs N] [--promote auto|register]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from jobs.training.request import check_request
from tidal.config import ConfigError, Settings, load_settings
from tidal.pipelines import FULL_RETRAIN, run_pipeline
from tidal.storage import StorageLayout, write_step_summary


def run_retrain(settings: Settings, run_id: str, raw_request: dict[str, Any]) -> dict[str, Any]:
    """The full-retrain pipeline's steps in order, in this process (`tidal retrain`): as the DAG runs them."""
    check_request(settings, raw_request)  # refused before any work, and before a report folder exists
    reports = StorageLayout(settings.home).ensure().run_reports(run_id)
    steps, _ = run_pipeline(FULL_RETRAIN, settings, run_id, reports, {"request": raw_request}, label="retrain")
    result = {"run_id": run_id, "request": steps["check_request"], **steps}
    write_step_summary(reports, "retrain", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal retrain", description="Full retrain from scratch over a window.")
    parser.add_argument("--reason", required=True, help="why retrain now (recorded with the version)")
    parser.add_argument("--days", default=None, help="history window in days before the newest event, or 'all'")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--promote", choices=["auto", "register"], default=None)
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args(argv)
    settings = load_settings()
    raw = {"reason": args.reason, "epochs": args.epochs, "trigger": "cli",
           **({"history_days": args.days} if args.days is not None else {}),
           **({"promote": args.promote} if args.promote else {})}
    try:
        check_request(settings, raw)
    except ConfigError as err:
        print(f"tidal retrain: {err}", file=sys.stderr)
        return 2
    run_id = args.run_id or datetime.now(timezone.utc).strftime("retrain__%Y%m%dT%H%M%S")
    result = run_retrain(settings, run_id, raw)
    print(json.dumps({k: result[k] for k in ("run_id", "request", "promote")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
