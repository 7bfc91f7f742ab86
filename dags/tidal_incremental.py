"""tidal_incremental: every few minutes, turn the new landing files into a fresher production model.

check_landing -> features -> validate -> drift -> finetune -> gate -> promote -> version
                                          drift -> drift_response -> trigger_incremental_now (mild)
                                                                   | signal_severe_drift (severe)

`check_landing` looks for landing files the stream has not consumed (no Spark): when there are none the run is
idle, and every later task is skipped within seconds, so the grid shows an idle run as skipped, not as a green cycle.
`signal_severe_drift` emits the `tidal://drift/severe` asset, which starts `tidal_scheduled_retrain`.

Wiring only: each task imports its job inside the task and calls the same function `tidal cycle` calls. XCom
carries the small step summaries (batch ids, counts, metrics), never data. Every step is keyed on the run id or
the streaming batch id, so a retried task redoes its own work and nothing else.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, dag, task

from tidal.task_context import MODEL_POOL, SEVERE_DRIFT_URI, settings_and_reports

SEVERE_DRIFT = Asset(SEVERE_DRIFT_URI)

# The schedule is read from the environment (no params.yaml parsing at DAG-parse time); default 5 minutes.
EVERY_MINUTES = int(os.environ.get("TIDAL_INCREMENTAL_EVERY_MINUTES", "5"))

DOC = __doc__ + """
Each run writes its step summaries to `$TIDAL_HOME/reports/runs/<run id>/`: `features.json`, `validate.json`
(with the Data Docs path), `drift.json` and `drift.png`, `finetune.json`, `gate.json`, `promote.json`,
`version.json`. A failed gate leaves production untouched and is recorded in `registry/events.jsonl`.
"""


@dag(
    dag_id="tidal_incremental",
    schedule=timedelta(minutes=EVERY_MINUTES),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args={"retries": 1, "retry_delay": timedelta(seconds=20)},
    tags=["tidal", "incremental"],
    doc_md=DOC,
)
def tidal_incremental():
    # False (no new landing file, no batch to replay) skips every downstream task: an idle run.
    @task.short_circuit
    def check_landing() -> bool:
        from tidal.config import load_settings
        from tidal.landing import landing_work, log_landing_work
        from tidal.storage import StorageLayout

        return not log_landing_work(landing_work(StorageLayout(load_settings().home)))["idle"]

    @task
    def features() -> dict:
        from jobs.features import run_features

        settings, _, reports = settings_and_reports()
        return run_features(settings, reports)

    # A dirty batch stays dirty on retry: fail at once with the report path.
    @task(retries=0)
    def validate(features_summary: dict) -> dict:
        from jobs.validate import run_validate

        settings, run_id, reports = settings_and_reports()
        return run_validate(settings, run_id, features_summary["batch_ids"], reports)

    @task
    def drift(features_summary: dict) -> dict:
        from jobs.drift import run_drift

        settings, run_id, reports = settings_and_reports()
        return run_drift(settings, run_id, features_summary["batch_ids"], reports)

    # The graded drift response (jobs.drift decides the level; this only routes it): none -> nothing; mild -> the
    # next incremental run is queued now instead of at the next tick (max_active_runs=1 starts it when this one
    # ends), and fine-tune trains harder until a run sees no drift; severe -> a full retrain, through the asset.
    @task.branch
    def drift_response(drift_summary: dict) -> list[str]:
        return {"mild": ["trigger_incremental_now"], "severe": ["signal_severe_drift"]}.get(
            drift_summary.get("response", "none"), [])

    trigger_incremental_now = TriggerDagRunOperator(
        task_id="trigger_incremental_now", trigger_dag_id="tidal_incremental", wait_for_completion=False,
        conf={"reason": "mild drift seen by run {{ run_id }}"})

    # Runs only on the severe branch, so the asset event (and the retrain it schedules) means severe drift.
    @task(outlets=[SEVERE_DRIFT])
    def signal_severe_drift(drift_summary: dict) -> dict:
        from airflow.sdk import get_current_context

        context = get_current_context()
        outlet_events, run_id = context["outlet_events"], context["run_id"]
        extra = {"reason": f"severe drift seen by tidal_incremental run {run_id}",
                 "features": [r["feature"] for r in drift_summary.get("features", []) if r.get("severity") == "severe"],
                 "reference_version": drift_summary.get("reference_version")}
        outlet_events[SEVERE_DRIFT].extra = extra
        return extra

    @task(pool=MODEL_POOL)  # one slot, shared with the retrain DAGs and rollback: they never overlap
    def finetune() -> dict:
        from jobs.finetune import run_finetune

        settings, run_id, reports = settings_and_reports()
        return run_finetune(settings, run_id, reports)

    @task(pool=MODEL_POOL)
    def gate() -> dict:
        from jobs.gate import run_gate

        settings, run_id, reports = settings_and_reports()
        return run_gate(settings, run_id, reports)

    @task(pool=MODEL_POOL)
    def promote(gate_summary: dict) -> dict:
        from jobs.promote import run_promote

        settings, run_id, reports = settings_and_reports()
        return run_promote(settings, run_id, gate_summary, reports)

    @task
    def version() -> dict:
        from jobs.version import run_version

        settings, run_id, reports = settings_and_reports()
        return run_version(settings, run_id, reports)

    features_summary = features()
    check_landing() >> features_summary
    validated = validate(features_summary)
    drift_summary = drift(features_summary)
    trained = finetune()
    gate_summary = gate()
    promoted = promote(gate_summary)
    validated >> drift_summary >> trained >> gate_summary
    drift_response(drift_summary) >> [trigger_incremental_now, signal_severe_drift(drift_summary)]
    promoted >> version()


tidal_incremental_dag = tidal_incremental()
