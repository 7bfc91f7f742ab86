"""What every tidal task inside Airflow starts from: the settings, its run id and that run's reports folder.

Kept out of the DAG files so they stay wiring; imported inside tasks, where an Airflow task context exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from tidal.config import Settings, load_settings
from tidal.storage import StorageLayout


# The one-slot Airflow pool (scripts/stack.sh creates it) that every model-changing task of every DAG runs in, so
# an incremental fine-tune/gate/promote, a full retrain and a rollback never overlap.
MODEL_POOL = "tidal_model"


class TaskRun(NamedTuple):
    """What a step needs from the Airflow task it runs in."""

    settings: Settings
    run_id: str
    reports_dir: Path  # reports/runs/<run id>/


def current_task_run() -> TaskRun:
    """The settings, the run id and the run's reports folder, for the Airflow task that calls it."""
    from airflow.sdk import get_current_context

    settings = load_settings()
    run_id = get_current_context()["run_id"]
    return TaskRun(settings, run_id, StorageLayout(settings.home).ensure().run_reports(run_id))

# The asset a drift task emits when drift is severe; tidal_scheduled_retrain is scheduled on it (and weekly).
SEVERE_DRIFT_URI = "tidal://drift/severe"


def severe_drift_event(run_id: str, drift_summary: dict) -> dict:
    """The severe-drift asset event's extra; the scheduled retrain reads `reason` (see drift_events_of)."""
    return {"reason": f"severe drift seen by tidal_incremental run {run_id}",
            "features": [r["feature"] for r in drift_summary.get("features", []) if r.get("severity") == "severe"],
            "reference_version": drift_summary.get("reference_version")}


def drift_events_of(asset_events: list) -> list[dict]:
    """The severe-drift asset events that triggered a retrain run, as plain dicts (extra, source dag and run)."""
    return [{"extra": dict(e.extra or {}), "source_dag_id": e.source_dag_id, "source_run_id": e.source_run_id}
            for e in asset_events]

# What a retrain's reason may be, as one JSON-schema pattern shared by the Params form (the UI and the REST API
# refuse a run that breaks it) and jobs.retrain's check: not blank, no path separators, no '..', no leading '~'.
# [\s\S] instead of '.', so a '..' after a line break is caught too.
REASON_PATTERN = r"^(?!\s*~)(?![\s\S]*\.\.)[^/\\]*[^/\\\s][^/\\]*$"
REASON_MAX_LENGTH = 500

# What looks like a path in free text or a param: a separator, a leading '~' or a '..' anywhere. Refused in a
# history window, and replaced by spaces in a reason built from an asset event's text.
PATH_LIKE = re.compile(r"[/\\]|^~|\.\.")
