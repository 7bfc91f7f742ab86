"""What every tidal task inside Airflow starts from: the settings, its run id and that run's reports folder.

Kept out of the DAG files so they stay wiring; imported inside tasks, where an Airflow task context exists.
"""

from __future__ import annotations

from pathlib import Path

from tidal.config import Settings, load_settings
from tidal.storage import StorageLayout

# The one-slot Airflow pool (scripts/stack.sh creates it) that every model-changing task of every DAG runs in, so
# an incremental fine-tune/gate/promote, a full retrain and a rollback never overlap.
MODEL_POOL = "tidal_model"


def settings_and_reports() -> tuple[Settings, str, Path]:
    """(settings, run id, reports/runs/<run id>/) for the Airflow task that calls it."""
    from airflow.sdk import get_current_context

    settings = load_settings()
    run_id = get_current_context()["run_id"]
    return settings, run_id, StorageLayout(settings.home).ensure().run_reports(run_id)

# The asset a drift task emits when drift is severe; tidal_scheduled_retrain is scheduled on it (and weekly).
SEVERE_DRIFT_URI = "tidal://drift/severe"

# What a retrain's reason may be, as one JSON-schema pattern shared by the Params form (the UI and the REST API
# refuse a run that breaks it) and jobs.retrain's check: not blank, no path separators, no '..', no leading '~'.
# [\s\S] instead of '.', so a '..' after a line break is caught too.
REASON_PATTERN = r"^(?!\s*~)(?![\s\S]*\.\.)[^/\\]*[^/\\\s][^/\\]*$"
REASON_MAX_LENGTH = 500
