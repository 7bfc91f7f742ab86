"""tidal_full_retrain: rebuild the training set over a history window and train from scratch.

check_request -> build_training_set -> validate -> train -> gate -> promote -> version

Triggers: weekly; an `tidal://drift/severe` asset event (a drift task that finds severe drift lists it as an outlet);
or by hand from the UI with the Params form below. The Params are validated when the run is created and again by
`check_request` (the first task), so a bad request fails before Spark or torch start. The result becomes the anchor
of a new fine-tune chain and the new drift reference.

Non-overlap with `tidal_incremental`: the model-changing tasks of both DAGs run in the one-slot pool
`tidal_model` (created by scripts/stack.sh), and promotion is a compare-and-set in the registry: an incremental
candidate trained from the model a retrain replaced is rejected as stale, and the next incremental run fine-tunes
from the retrained model. Wiring only: each task imports its job inside the task.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

from tidal.task_context import MODEL_POOL, settings_and_reports

SEVERE_DRIFT = Asset("tidal://drift/severe")
NO_PATH = r"^[^/\\~]*$"

PARAMS = {
    "history_days": Param(
        "all", type=["integer", "string"], minimum=1, pattern="^all$",
        title="History window (days)",
        description="Train on this many days of events before the newest one, or 'all' for the whole of bronze.",
    ),
    "epochs": Param(
        None, type=["null", "integer"], minimum=1, maximum=1000,
        title="Epochs",
        description="Training epochs from scratch; empty uses params.yaml train.epochs.",
    ),
    "reason": Param(
        "", type="string", maxLength=500, pattern=NO_PATH,
        title="Reason (required for a manual run)",
        description="Why retrain now. Recorded with the version and in the registry's events. Free text, not a path.",
    ),
    "promote": Param(
        "auto", type="string", enum=["auto", "register"],
        title="Promote",
        description="auto: serve the new model if it passes the gate against production. register: make it a "
                    "version without serving it (serve it later with `tidal rollback --to V`).",
    ),
}


@dag(
    dag_id="tidal_full_retrain",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC"), assets=[SEVERE_DRIFT]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    params=PARAMS,
    tags=["tidal", "retrain"],
    doc_md=__doc__,
)
def tidal_full_retrain():
    @task(retries=0)
    def check_request() -> dict:
        from jobs.retrain import check_request as check

        settings, _, _ = settings_and_reports()
        context = get_current_context()
        params, run_type = context["params"], str(context["dag_run"].run_type)
        trigger = "schedule" if "scheduled" in run_type else "drift" if "asset" in run_type else "manual"
        reason = params.get("reason") or {"schedule": "weekly full retrain", "drift": "severe drift"}.get(trigger, "")
        return check(settings, {"history_days": params["history_days"], "epochs": params.get("epochs"),
                                "reason": reason, "promote": params["promote"], "trigger": trigger})

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

    @task(pool=MODEL_POOL)
    def promote(gate_summary: dict, request: dict) -> dict:
        from jobs.retrain import promote_or_register

        settings, run_id, reports = settings_and_reports()
        return promote_or_register(settings, run_id, gate_summary, request, reports)

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


tidal_full_retrain_dag = tidal_full_retrain()
