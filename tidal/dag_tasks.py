"""The Airflow side of a pipeline declaration: one TaskFlow task per step, wired as tidal/pipelines.py says.

A step that takes another's summary gets it as an XCom argument, so the edge follows the data; `after` adds the
edges that carry no data. Each task runs the step's function inside the task (nothing heavy is imported when a DAG
file is parsed), with the settings, the run id and that run's reports folder. A step with `fail_when` fails its
task, without a retry, when the check says so, after the step has recorded its outcome.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from tidal.config import load_settings
from tidal.pipelines import RUN_INPUT, Pipeline, Step, check_guard
from tidal.task_context import MODEL_POOL, current_task_run


def step_task(step: Step, run_inputs: dict[str, Callable[[], Any]]):
    """The TaskFlow task of one step; `run_inputs` supply, inside the task, the values the runner hands over."""
    from airflow.sdk import task

    upstream_steps = step.sources()
    wanted = {ref.removeprefix(RUN_INPUT) for ref in step.inputs.values() if ref.startswith(RUN_INPUT)}

    def run_step(**upstream: dict[str, Any]) -> dict[str, Any]:
        run = current_task_run()
        supplied = {name: supply() for name, supply in run_inputs.items() if name in wanted}
        summary = step.call(run.settings, run.run_id, run.reports_dir, upstream, supplied)
        if message := step.failure(summary):
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(message)
        return summary

    # TaskFlow reads the parameters from the signature: one per step whose summary this step takes.
    run_step.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY) for name in upstream_steps])
    run_step.__name__ = step.name
    run_step.__doc__ = f"Runs {step.function} (tidal/pipelines.py)."
    options: dict[str, Any] = {"task_id": step.name}
    if step.model_pool:
        options["pool"] = MODEL_POOL
    if step.retries is not None:
        options["retries"] = step.retries
    return task(**options)(run_step), upstream_steps


def pipeline_tasks(pipeline: Pipeline, run_inputs: dict[str, Callable[[], Any]] | None = None) -> dict[str, Any]:
    """Every step of the pipeline as a task, and its guard (a short-circuit task that skips every step when there is
    nothing to do) ahead of the steps that wait for no other. Returns the tasks' outputs by name."""
    from airflow.sdk import task

    outputs: dict[str, Any] = {}
    for step in pipeline.steps:
        make, takes = step_task(step, run_inputs or {})
        outputs[step.name] = make(**{name: outputs[name] for name in takes})
        for name in step.after:
            if name not in takes:
                outputs[name] >> outputs[step.name]
    if pipeline.guard:
        @task.short_circuit(task_id=pipeline.guard_name)
        def guard() -> bool:
            return not check_guard(pipeline, load_settings())["idle"]

        outputs[pipeline.guard_name] = guard()
        for step in pipeline.steps:
            if not step.upstream():
                outputs[pipeline.guard_name] >> outputs[step.name]
    return outputs
