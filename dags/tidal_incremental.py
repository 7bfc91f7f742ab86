"""tidal_incremental: every few minutes, turn the new landing files into a fresher production model.

features -> validate -> drift -> finetune -> gate -> promote -> version
                            drift -> drift_response -> trigger_incremental_now (mild) | trigger_full_retrain (severe)

Wiring only: each task imports its job inside the task and calls the same function `tidal cycle` calls. XCom
carries the small step summaries (batch ids, counts, metrics), never data. Every step is keyed on the run id or
the streaming batch id, so a retried task redoes its own work and nothing else.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from tidal.task_context import MODEL_POOL, settings_and_reports

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
    # ends), and fine-tune trains harder until a run sees no drift; severe -> a full retrain.
    @task.branch
    def drift_response(drift_summary: dict) -> list[str]:
        return {"mild": ["trigger_incremental_now"], "severe": ["trigger_full_retrain"]}.get(
            drift_summary.get("response", "none"), [])

    trigger_incremental_now = TriggerDagRunOperator(
        task_id="trigger_incremental_now", trigger_dag_id="tidal_incremental", wait_for_completion=False,
        conf={"reason": "mild drift seen by run {{ run_id }}"})
    trigger_full_retrain = TriggerDagRunOperator(
        task_id="trigger_full_retrain", trigger_dag_id="tidal_full_retrain", wait_for_completion=False,
        conf={"reason": "severe drift seen by tidal_incremental run {{ run_id }}"})

    @task(pool=MODEL_POOL)  # one slot, shared with tidal_full_retrain: they never overlap
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
    validated = validate(features_summary)
    drift_summary = drift(features_summary)
    trained = finetune()
    gate_summary = gate()
    promoted = promote(gate_summary)
    validated >> drift_summary >> trained >> gate_summary
    drift_response(drift_summary) >> [trigger_incremental_now, trigger_full_retrain]
    promoted >> version()


tidal_incremental_dag = tidal_incremental()
