"""One incremental cycle without Airflow: the same step functions the DAG tasks call, in the same order.

features -> validate -> drift -> finetune -> gate -> promote -> version. Each step writes its summary to
<TIDAL_HOME>/reports/runs/<run id>/<step>.json; the cycle returns all of them plus each step's wall time. Like the
DAG's `check_landing`, a cycle with no new landing file (and no batch to replay) is idle: it runs no step and says so.

Run: `tidal cycle [--json]`.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

from tidal.config import Settings
from tidal.landing import landing_work, log_landing_work
from tidal.storage import StorageLayout, write_step_summary

STEP_ORDER = ("features", "validate", "drift", "finetune", "gate", "promote", "version")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("cycle__%Y%m%dT%H%M%S%fZ")


def run_cycle(settings: Settings, run_id: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    from jobs.drift import run_drift
    from jobs.features import run_features
    from jobs.finetune import run_finetune, train_config
    from jobs.gate import run_gate
    from jobs.promote import run_promote
    from jobs.validate import run_validate
    from jobs.version import run_version

    train_config(settings)  # refuse bad hyperparameters before any work starts
    run_id = run_id or new_run_id()
    layout = StorageLayout(settings.home).ensure()
    reports = layout.run_reports(run_id)
    work = log_landing_work(landing_work(layout))
    if work["idle"]:
        log(f"[cycle] idle: no new landing files in {layout.landing_events}; nothing to do")
        return {"run_id": run_id, "idle": True, "landing": work, "steps": {}, "seconds": {}, "reports": str(reports)}
    steps: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        log(f"[cycle] {name} ...")
        started = time.monotonic()
        steps[name] = fn()
        seconds[name] = round(time.monotonic() - started, 2)
        log(f"[cycle] {name} done in {seconds[name]} s")
        return steps[name]

    features = timed("features", lambda: run_features(settings, reports))
    batch_ids = features["batch_ids"]
    timed("validate", lambda: run_validate(settings, run_id, batch_ids, reports))
    timed("drift", lambda: run_drift(settings, run_id, batch_ids, reports))
    timed("finetune", lambda: run_finetune(settings, run_id, reports))
    gate = timed("gate", lambda: run_gate(settings, run_id, reports))
    timed("promote", lambda: run_promote(settings, run_id, gate, reports))
    timed("version", lambda: run_version(settings, run_id, reports))
    result = {"run_id": run_id, "idle": False, "landing": work, "steps": steps, "seconds": seconds, "reports": str(reports)}
    write_step_summary(reports, "cycle", result)
    return result
