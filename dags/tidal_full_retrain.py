"""Full retrains: rebuild the training set over a history window and train from scratch. Two DAGs, one task chain:
the steps of the full-retrain pipeline, declared in tidal/pipelines.py (FULL_RETRAIN; listed below, and by
`tidal pipelines show`).

- `tidal_full_retrain`: by hand, from the UI's trigger form or the REST API. Its Params form requires a reason, and
  the form, the API and `check_request` refuse the same things (one pattern, tidal.task_context.REASON_PATTERN), so
  a bad request never creates a run.
- `tidal_scheduled_retrain`: the periodic reset, weekly (Sunday 03:00 UTC, `TIDAL_RETRAIN_CRON` moves it) or when
  a `tidal_incremental` run finds severe drift and emits the `tidal://drift/severe` asset. Its reason says which
  (the drift run is named in it); no form, params.yaml `retrain:` sets the window and epochs. It takes no manual
  runs (Airflow refuses them): a retrain by hand is `tidal_full_retrain`, with a reason.

Two DAGs because Airflow validates every run's Params against the same schema: one DAG could not both require an
operator's reason and start without one on a schedule. The result becomes the anchor of a new fine-tune chain and the
new drift reference. A candidate the gate rejects fails the `promote` task (the run is red, with the reason); the
rejection is in registry/events.jsonl with the request that asked for it.

Non-overlap with `tidal_incremental`: the model-changing tasks of every DAG run in the one-slot pool `tidal_model`
(created by scripts/stack.sh), and promotion is a compare-and-set in the registry: an incremental candidate trained
from the model a retrain replaced is rejected as stale. Wiring only: each task imports its job inside the task.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context

from tidal.dag_tasks import pipeline_tasks
from tidal.pipelines import FULL_RETRAIN, describe
from tidal.task_context import REASON_MAX_LENGTH, REASON_PATTERN, SEVERE_DRIFT_URI, drift_events_of


SEVERE_DRIFT = Asset(SEVERE_DRIFT_URI)
# Read from the environment, not params.yaml: no YAML parsing at DAG-parse time.
RETRAIN_CRON = os.environ.get("TIDAL_RETRAIN_CRON", "0 3 * * 0")

MANUAL_PARAMS = {
    "reason": Param(
        type="string", minLength=1, maxLength=REASON_MAX_LENGTH, pattern=REASON_PATTERN,
        title="Reason (required)",
        description="Why retrain now; recorded with the version and in the registry's events. A sentence, not a "
                    "path: '/', '\\', '..' and a leading '~' are refused.",
    ),
    "history_days": Param(
        "all", type=["integer", "string"], minimum=1, pattern="^all$",
        title="History window (days)",
        description="Train on this many days of events before the newest one, or 'all' for the whole of bronze.",
    ),
    "epochs": Param(
        None, type=["null", "integer"], minimum=1, maximum=1000,
        title="Epochs",
        description="Training epochs from scratch, 1 to 1000; empty uses params.yaml train.epochs.",
    ),
    "promote": Param(
        "auto", type="string", enum=["auto", "register"],
        title="Promote",
        description="auto: serve the new model if it passes the gate against production. register: make it a "
                    "version without serving it (serve it later with `tidal rollback --to V`).",
    ),
}


def retrain_chain(manual: bool) -> None:
    """The full-retrain pipeline's tasks (tidal/pipelines.py); `manual` says where the request comes from: the
    form (tidal_full_retrain) or what triggered the run (tidal_scheduled_retrain)."""

    def request() -> dict:
        from jobs.training.request import request_for_run

        context = get_current_context()
        drift_events = drift_events_of(context["triggering_asset_events"].get(SEVERE_DRIFT, []))
        return request_for_run(context["dag_run"].run_type, dict(context["params"]), drift_events, manual=manual)

    pipeline_tasks(FULL_RETRAIN, run_inputs={"request": request})


COMMON = dict(catchup=False, max_active_runs=1, dagrun_timeout=timedelta(hours=6),
              default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
              doc_md=__doc__ + "\n" + describe(FULL_RETRAIN))


# allowed_run_types: Airflow itself refuses a manual run of the scheduled DAG (it has no reason) and a scheduled
# or asset run of the manual one, so each DAG's request rule holds for every run it gets.
@dag(dag_id="tidal_full_retrain", schedule=None, params=MANUAL_PARAMS, allowed_run_types=["manual", "operator_triggered"],
     tags=["tidal", "retrain", "manual"], **COMMON)
def tidal_full_retrain():
    retrain_chain(manual=True)


# No start_date: with one, an unpaused DAG would start the most recent missed weekly run at once (catchup=False
# still runs the latest slot); without one the first run waits for the next Sunday.
@dag(dag_id="tidal_scheduled_retrain",
     schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(RETRAIN_CRON, timezone="UTC"), assets=[SEVERE_DRIFT]),
     allowed_run_types=["scheduled", "asset_triggered", "backfill"], tags=["tidal", "retrain", "scheduled"], **COMMON)
def tidal_scheduled_retrain():
    retrain_chain(manual=False)


tidal_full_retrain_dag = tidal_full_retrain()
tidal_scheduled_retrain_dag = tidal_scheduled_retrain()
