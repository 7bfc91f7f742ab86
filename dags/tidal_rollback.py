"""tidal_rollback: point production back at an earlier version from the Airflow UI.

One task, `rollback`, calls the same `jobs.release.rollback.run_rollback` as `tidal rollback`. The Params form asks for the
target version (empty = the version that served before the current one), a reason (required) and who asks. The
move is atomic and logged in registry/events.jsonl; the next incremental run fine-tunes from the target.
Manual only (no schedule). Wiring only.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from tidal.task_context import MODEL_POOL


PARAMS = {
    "to": Param(
        "", type="string", pattern=r"^(v\d{6})?$",
        title="Roll back to version",
        description="A version id such as v000003 (see `tidal registry list`); empty = the version that served "
                    "before the current one.",
    ),
    "reason": Param(
        "", type="string", minLength=1, maxLength=500, pattern=r"^[^/\\~]*\S[^/\\~]*$",
        title="Reason (required)",
        description="Why production is moved back. Recorded with the alias move. Free text, not a path.",
    ),
    "by": Param(
        "", type="string", maxLength=100, pattern=r"^[\w.@ -]*$",
        title="Requested by",
        description="Who asks for the rollback; empty records the Airflow run's owner or $USER of the worker.",
    ),
}


@dag(
    dag_id="tidal_rollback",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["tidal", "operations"],
    doc_md=__doc__,
)
def tidal_rollback():
    # No retry: a rollback that failed (unknown version, corrupt target) needs a human, not a second try.
    @task(retries=0, pool=MODEL_POOL)
    def rollback() -> dict:
        from jobs.release.rollback import run_rollback
        from tidal.config import load_settings

        params = get_current_context()["params"]
        return run_rollback(load_settings(), params["to"] or None, params["reason"], params["by"] or None)

    rollback()


tidal_rollback_dag = tidal_rollback()
