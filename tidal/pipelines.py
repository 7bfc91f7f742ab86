"""tidal's pipelines, declared once: each step's name, the function that runs it, and what it takes from which step.

This is the only place the step order is written. The DAG files build their tasks from these declarations
(tidal/dag_tasks.py), `tidal cycle` and `tidal retrain` run them in process (`run_pipeline`), dvc.yaml is
generated from the retrain's DVC stages (`tidal pipelines dvc-yaml`), and the DAG-shape tests compare the DAGs
with them.

A step's function is named as "module:function" and imported only when the step runs: parsing a DAG file never
imports a job (nor Spark, torch or GX), and this plumbing package never imports the jobs it names. It takes any of `settings`, `run_id` and `reports_dir` by name, plus one
parameter per entry of `inputs`: "step" hands over that step's whole summary, "step.key" one value of it, and
"run.name" a value the runner supplies (a retrain's raw request). Inputs are the edges that carry data; `after`
orders steps that hand data over through storage instead (drift writes the state fine-tune reads).
"""

from __future__ import annotations

import importlib
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tidal.config import Settings


RUN_INPUT = "run."
CONTEXT_PARAMETERS = ("settings", "run_id", "reports_dir")


def resolve(dotted: str) -> Callable[..., Any]:
    """"package.module:function" -> the function."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class DvcStage:
    """How a step appears in dvc.yaml: `tidal dvc-stage NAME` with its dependencies and outputs."""

    name: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...] = ()
    uncached_outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Step:
    """One step: its name (the Airflow task id and the report file), its function, and where its inputs come from."""

    name: str
    function: str
    inputs: dict[str, str] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    # Runs in the one-slot model pool, so no two model-changing steps of any DAG overlap.
    model_pool: bool = False
    # None: the DAG's default. 0 where a retry cannot help (a dirty batch stays dirty) or would record twice.
    retries: int | None = None
    # "module:function" of the step's summary -> a message, or None. A message fails the run after the step has
    # recorded its outcome (a rejected full retrain is a red run; a rejected fine-tune is routine).
    fail_when: str | None = None
    dvc: DvcStage | None = None

    def sources(self) -> tuple[str, ...]:
        """The steps whose summaries this one takes."""
        return tuple(dict.fromkeys(ref.split(".")[0] for ref in self.inputs.values() if not ref.startswith(RUN_INPUT)))

    def upstream(self) -> tuple[str, ...]:
        """The steps this one waits for: those it takes data from, then those it runs after."""
        return tuple(dict.fromkeys([*self.sources(), *self.after]))

    def call(self, settings: Settings, run_id: str, reports_dir: Path, results: dict[str, dict[str, Any]],
             run_inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the step's function with the context it asks for and the inputs taken from earlier `results`."""
        function = resolve(self.function)
        context = {"settings": settings, "run_id": run_id, "reports_dir": reports_dir}
        wanted = inspect.signature(function).parameters
        kwargs = {name: value for name, value in context.items() if name in wanted}
        for parameter, ref in self.inputs.items():
            kwargs[parameter] = input_value(ref, results, run_inputs or {})
        return function(**kwargs)

    def failure(self, summary: dict[str, Any]) -> str | None:
        return resolve(self.fail_when)(summary) if self.fail_when else None


def input_value(ref: str, results: dict[str, dict[str, Any]], run_inputs: dict[str, Any]) -> Any:
    if ref.startswith(RUN_INPUT):
        return run_inputs[ref.removeprefix(RUN_INPUT)]
    step, _, key = ref.partition(".")
    return results[step][key] if key else results[step]


@dataclass(frozen=True)
class Pipeline:
    """Steps in the order they run, and an optional guard that can make a run idle before any step."""

    name: str
    steps: tuple[Step, ...]
    # "module:function" of the settings -> {"idle": bool, ...}: when idle, no step runs (an idle run, not a cycle).
    guard: str | None = None
    guard_name: str = "check_landing"

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.steps)

    def step(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)

    def edges(self) -> set[tuple[str, str]]:
        return {(up, step.name) for step in self.steps for up in step.upstream()}


INCREMENTAL = Pipeline(
    name="incremental",
    guard="tidal.landing:check_landing",
    steps=(
        Step("features", "jobs.features.stream:run_features"),
        Step("validate", "jobs.validation.validate:run_validate", inputs={"batch_ids": "features.batch_ids"}, retries=0),
        Step("drift", "jobs.drift.run:run_drift", inputs={"batch_ids": "features.batch_ids"}, after=("validate",)),
        # Reads the drift state drift writes (train harder after mild drift), and trains only on validated batches.
        Step("finetune", "jobs.training.finetune:run_finetune", after=("drift",), model_pool=True),
        Step("gate", "jobs.release.gate:run_gate", after=("finetune",), model_pool=True),
        Step("promote", "jobs.release.promote:run_promote", inputs={"gate_summary": "gate"}, model_pool=True),
        Step("version", "jobs.release.version:run_version", after=("promote",)),
    ),
)

_RETRAIN_DATA = "data/features/retrain/dvc"
FULL_RETRAIN = Pipeline(
    name="full_retrain",
    steps=(
        Step("check_request", "jobs.training.request:check_request", inputs={"raw": "run.request"}, retries=0),
        Step("build_training_set", "jobs.training.build:build_training_set",
             inputs={"history_days": "check_request.history_days"}, model_pool=True,
             dvc=DvcStage("build_training_set",
                          deps=("data/bronze/events", "jobs/training/build.py", "jobs/features/transforms.py"),
                          params=("retrain.history_days", "retrain.min_examples", "features.event_type_weights",
                                  "features.spark_master", "features.shuffle_partitions"),
                          outs=(f"{_RETRAIN_DATA}/examples",), uncached_outs=(f"{_RETRAIN_DATA}/build.json",))),
        Step("validate", "jobs.training.full_retrain:validate_training_set", inputs={"built": "build_training_set"}, retries=0,
             dvc=DvcStage("validate",
                          deps=(f"{_RETRAIN_DATA}/examples", f"{_RETRAIN_DATA}/build.json", "expectations",
                                "jobs/validation/validate.py"),
                          params=("validation.suite", "validation.max_bad_row_share"),
                          metrics=("metrics/validate.json",))),
        Step("train", "jobs.training.full_retrain:train_from_scratch",
             inputs={"built": "build_training_set", "request": "check_request"}, after=("validate",), model_pool=True,
             dvc=DvcStage("train",
                          deps=(f"{_RETRAIN_DATA}/examples", f"{_RETRAIN_DATA}/build.json", "metrics/validate.json",
                                "jobs/training/full_retrain.py", "models/recommender.py"),
                          params=("base.seed", "train", "retrain.epochs", "gate.holdout_fraction", "drift.features",
                                  "drift.reference_max_rows"),
                          outs=("data/registry/candidates/dvc",),
                          plots=({"metrics/losses.csv": {"cache": False, "x": "epoch", "y": "loss"}},))),
        # In dvc.yaml the gate's place is an offline evaluation: scores on the held-out slice, no production.
        Step("gate", "jobs.release.gate:run_gate", after=("train",), model_pool=True,
             dvc=DvcStage("evaluate",
                          deps=("data/registry/candidates/dvc", f"{_RETRAIN_DATA}/build.json", "models/metrics.py"),
                          params=("gate.k",), metrics=("metrics/retrain.json",),
                          plots=({"metrics/quality.csv": {"cache": False, "x": "version", "y": "recall",
                                                          "template": "bar_horizontal_sorted"}},))),
        Step("promote", "jobs.training.full_retrain:promote_or_register", inputs={"gate_summary": "gate", "request": "check_request"},
             model_pool=True, retries=0, fail_when="jobs.training.request:rejection_message"),
        Step("version", "jobs.release.version:run_version", after=("promote",)),
    ),
)

PIPELINES = {pipeline.name: pipeline for pipeline in (INCREMENTAL, FULL_RETRAIN)}


def describe(pipeline: Pipeline) -> str:
    """The pipeline's steps as a Markdown list: what `tidal pipelines show` prints and the DAGs' docs show."""
    lines = [f"Steps of the `{pipeline.name}` pipeline (tidal/pipelines.py), in order:", ""]
    if pipeline.guard:
        lines.append(f"0. `{pipeline.guard_name}`: `{pipeline.guard}`; when it finds nothing to do, every step is skipped")
    for number, step in enumerate(pipeline.steps, 1):
        takes = ", ".join(f"{parameter} <- {ref}" for parameter, ref in step.inputs.items())
        after = f"; after {', '.join(step.after)}" if step.after else ""
        lines.append(f"{number}. `{step.name}`: `{step.function}`" + (f" ({takes})" if takes else "") + after)
    return "\n".join(lines) + "\n"


def check_guard(pipeline: Pipeline, settings: Settings) -> dict[str, Any] | None:
    """The guard's verdict ({"idle": bool, ...}), or None for a pipeline without one."""
    return resolve(pipeline.guard)(settings) if pipeline.guard else None


def run_pipeline(pipeline: Pipeline, settings: Settings, run_id: str, reports_dir: Path,
                 run_inputs: dict[str, Any] | None = None, log: Callable[[str], None] = print,
                 label: str | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Every step in order, in this process: (summaries by step, wall seconds by step). A step whose `fail_when`
    says no stops the run there, as the DAG's run would stop, with the summaries so far. Progress lines start
    with [label] (the pipeline's name by default)."""
    label = label or pipeline.name
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for step in pipeline.steps:
        log(f"[{label}] {step.name} ...")
        started = time.monotonic()
        results[step.name] = step.call(settings, run_id, reports_dir, results, run_inputs)
        seconds[step.name] = round(time.monotonic() - started, 2)
        log(f"[{label}] {step.name} done in {seconds[step.name]} s")
        if message := step.failure(results[step.name]):
            log(f"[{label}] {step.name}: {message}")
            break
    return results, seconds


def dvc_yaml(pipeline: Pipeline = FULL_RETRAIN) -> str:
    """dvc.yaml for the pipeline's DVC stages, in the pipeline's order."""
    import yaml

    stages: dict[str, Any] = {}
    for step in pipeline.steps:
        if step.dvc is None:
            continue
        stage = step.dvc
        spec: dict[str, Any] = {
            "cmd": f"TIDAL_HOME=data TIDAL_PARAMS=params.yaml python -m jobs.cli dvc-stage {stage.name}",
            "deps": list(stage.deps), "params": list(stage.params)}
        outs = [*stage.outs, *({path: {"cache": False}} for path in stage.uncached_outs)]
        if outs:
            spec["outs"] = outs
        if stage.metrics:
            spec["metrics"] = [{path: {"cache": False}} for path in stage.metrics]
        if stage.plots:
            spec["plots"] = list(stage.plots)
        stages[stage.name] = spec
    return DVC_YAML_HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)


DVC_YAML_HEADER = """\
# Generated from tidal/pipelines.py (FULL_RETRAIN) by `tidal pipelines dvc-yaml > dvc.yaml`; edit the declaration.
# `dvc repro` rebuilds the training set from bronze with Spark (batch), validates it, trains from scratch and scores
# it; `dvc metrics show|diff` and `dvc plots show|diff` compare runs. Promotion stays an operator's step (the DAG or
# `tidal retrain`), so this pipeline never moves the production alias. Data paths are under data/ (the default
# TIDAL_HOME); metrics and plots go to metrics/, small files committed to git so `dvc metrics diff` can compare
# commits. Each stage lists exactly the params.yaml keys it reads; params.yaml is the only hyperparameter source.
# Once per checkout: `dvc init` (the stages run `python`: activate .venv first).
"""


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="tidal pipelines", description="Show the pipelines' steps, or dvc.yaml.")
    parser.add_argument("what", choices=["show", "dvc-yaml"])
    args = parser.parse_args(argv)
    if args.what == "dvc-yaml":
        print(dvc_yaml(), end="")
        return 0
    print("\n".join(describe(pipeline) for pipeline in PIPELINES.values()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
