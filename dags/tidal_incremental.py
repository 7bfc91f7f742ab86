"""tidal_incremental: as soon as an event file lands, turn the new landing files into a fresher production model.

A new landing file starts a run within seconds: the run is scheduled on the `tidal://landing/events` asset, whose
watcher (tidal/landing_watch.py, in Airflow's triggerer) emits an asset event for every file the stream has not
consumed. Files that land while a run is active wait in Airflow's asset queue and start one run when it ends
(max_active_runs=1). A fallback tick every few minutes (TIDAL_INCREMENTAL_EVERY_MINUTES, default 5) still runs for
quiet periods and replays; TIDAL_INCREMENTAL_TRIGGER=schedule keeps the tick alone (the freshness benchmark's
baseline).

The tasks are the incremental pipeline's steps (tidal/pipelines.py, INCREMENTAL; listed below and by `tidal
pipelines show`), plus the drift routing only Airflow does:
drift -> drift_response -> trigger_incremental_now (mild) | signal_severe_drift (severe).

`check_landing` looks for landing files the stream has not consumed (no Spark): when there are none the run is
idle, and every later task is skipped within seconds, so the grid shows an idle run as skipped, not as a green cycle.
`signal_severe_drift` emits the `tidal://drift/severe` asset, which starts `tidal_scheduled_retrain`.

Wiring only: the steps and their order come from tidal/pipelines.py (INCREMENTAL), the declaration `tidal cycle`
runs too; each task imports its job inside the task and calls the same function `tidal cycle` calls. XCom
carries the small step summaries (batch ids, counts, metrics), never data. Every step is keyed on the run id or
the streaming batch id, so a retried task redoes its own work and nothing else.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, DeltaTriggerTimetable, dag, task

from tidal.dag_tasks import pipeline_tasks
from tidal.landing_watch import LANDING_URI, LandingFilesTrigger, incremental_schedule
from tidal.pipelines import INCREMENTAL, describe
from tidal.task_context import SEVERE_DRIFT_URI, severe_drift_event


SEVERE_DRIFT = Asset(SEVERE_DRIFT_URI)

# Read from the environment (no params.yaml parsing at DAG-parse time), checked: a bad value is an import error
# that names what is allowed.
SCHEDULE = incremental_schedule()
TICK = timedelta(minutes=SCHEDULE.every_minutes)
LANDING = Asset(LANDING_URI, watchers=[AssetWatcher(
    name="tidal_landing_events", trigger=LandingFilesTrigger(poll_interval_s=SCHEDULE.poll_interval_s))])

DOC = __doc__ + "\n" + describe(INCREMENTAL) + """
Each run writes its step summaries to `$TIDAL_HOME/reports/runs/<run id>/`: `features.json`, `validate.json`
(with the Data Docs path), `drift.json` and `drift.png`, `finetune.json`, `gate.json`, `promote.json`,
`version.json`. A failed gate leaves production untouched and is recorded in `registry/events.jsonl`.
"""


@dag(
    dag_id="tidal_incremental",
    schedule=(AssetOrTimeSchedule(timetable=DeltaTriggerTimetable(TICK), assets=[LANDING])
              if SCHEDULE.event_driven else TICK),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args={"retries": 1, "retry_delay": timedelta(seconds=20)},
    tags=["tidal", "incremental"],
    doc_md=DOC,
)
def tidal_incremental():
    # check_landing (the pipeline's guard) and the seven steps, as tidal/pipelines.py declares them.
    steps = pipeline_tasks(INCREMENTAL)

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
        extra = severe_drift_event(context["run_id"], drift_summary)
        context["outlet_events"][SEVERE_DRIFT].extra = extra
        return extra

    drift_response(steps["drift"]) >> [trigger_incremental_now, signal_severe_drift(steps["drift"])]


tidal_incremental_dag = tidal_incremental()
