"""Full retrains: rebuild the training set over a history window and train from scratch. Two DAGs, one task chain:

check_request -> build_training_set -> validate -> train -> gate -> promote -> version

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

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

from tidal.task_context import MODEL_POOL, REASON_MAX_LENGTH, REASON_PATTERN, SEVERE_DRIFT_URI, settings_and_reports

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
    """The seven tasks of a full retrain; `manual` says where the request comes from (the form or the trigger)."""

    @task(retries=0)
    def check_request() -> dict:
        from jobs.retrain import check_request as check, request_for_run

        settings, _, _ = settings_and_reports()
        context = get_current_context()
        drift_events = [{"extra": dict(e.extra or {}), "source_dag_id": e.source_dag_id,
                         "source_run_id": e.source_run_id}
                        for e in context["triggering_asset_events"].get(SEVERE_DRIFT, [])]
        raw = request_for_run(context["dag_run"].run_type, dict(context["params"]), drift_events, manual=manual)
        return check(settings, raw)

    @task(pool=MODEL_POOL)
    def build_training_set(request: dict) -> dict:
        from jobs.retrain import build_training_set as build

        settings, run_id, _ = settings_and_reports()
        return build(settings, run_id, request["history_days"])

    @task(retries=0)
    def validate(built: dict) -> dict:
        from jobs.retrain import validate_training_set

        settings, run_id, reports = settings_and_reports()
        return validate_training_set(settings, run_id, built, reports)

    @task(pool=MODEL_POOL)
    def train(built: dict, request: dict) -> dict:
        from jobs.retrain import train_from_scratch

        settings, run_id, reports = settings_and_reports()
        return train_from_scratch(settings, run_id, built, request, reports)

    @task(pool=MODEL_POOL)
    def gate() -> dict:
        from jobs.gate import run_gate

        settings, run_id, reports = settings_and_reports()
        return run_gate(settings, run_id, reports)

    # A rejection is recorded first, then fails the task without a retry (a retry would record it twice).
    @task(pool=MODEL_POOL, retries=0)
    def promote(gate_summary: dict, request: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from jobs.retrain import promote_or_register, rejection_message

        settings, run_id, reports = settings_and_reports()
        summary = promote_or_register(settings, run_id, gate_summary, request, reports)
        if message := rejection_message(summary):
            raise AirflowFailException(message)
        return summary

    @task
    def version() -> dict:
        from jobs.version import run_version

        settings, run_id, reports = settings_and_reports()
        return run_version(settings, run_id, reports)

    request = check_request()
    built = build_training_set(request)
    validated = validate(built)
    trained = train(built, request)
    gate_summary = gate()
    validated >> trained >> gate_summary
    promote(gate_summary, request) >> version()


COMMON = dict(catchup=False, max_active_runs=1, dagrun_timeout=timedelta(hours=6),
              default_args={"retries": 1, "retry_delay": timedelta(minutes=1)}, doc_md=__doc__)


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
