"""The pipeline declarations: every step names a real function whose parameters match what it is handed, in an
order where each input comes from an earlier step; dvc.yaml is what the declaration generates; and run_pipeline
hands summaries from step to step, honours `after` and stops where `fail_when` says so."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tidal.pipelines import (CONTEXT_PARAMETERS, FULL_RETRAIN, INCREMENTAL, PIPELINES, RUN_INPUT, Pipeline, Step,
                             describe, dvc_yaml, resolve, run_pipeline)


@pytest.mark.parametrize("pipeline", PIPELINES.values(), ids=PIPELINES)
def test_each_step_takes_exactly_what_it_is_handed(pipeline):
    for step in pipeline.steps:
        parameters = inspect.signature(resolve(step.function)).parameters
        required = {name for name, p in parameters.items() if p.default is inspect.Parameter.empty}
        assert set(step.inputs) <= set(parameters), (step.name, sorted(parameters))
        assert required <= set(step.inputs) | set(CONTEXT_PARAMETERS), (step.name, sorted(required))


@pytest.mark.parametrize("pipeline", PIPELINES.values(), ids=PIPELINES)
def test_every_input_and_after_names_an_earlier_step(pipeline):
    seen: set[str] = set()
    for step in pipeline.steps:
        assert set(step.upstream()) <= seen, (step.name, step.upstream(), seen)
        seen.add(step.name)
    assert len(seen) == len(pipeline.steps)  # names are unique


def test_the_step_orders():
    assert INCREMENTAL.step_names == ("features", "validate", "drift", "finetune", "gate", "promote", "version")
    assert FULL_RETRAIN.step_names == ("check_request", "build_training_set", "validate", "train", "gate", "promote",
                                       "version")
    assert INCREMENTAL.edges() == {("features", "validate"), ("features", "drift"), ("validate", "drift"),
                                   ("drift", "finetune"), ("finetune", "gate"), ("gate", "promote"),
                                   ("promote", "version")}


def test_dvc_yaml_is_the_one_the_declaration_generates():
    committed = (REPO_ROOT / "dvc.yaml").read_text()
    assert committed == dvc_yaml(), "dvc.yaml is stale: run `tidal pipelines dvc-yaml > dvc.yaml`"
    stages = yaml.safe_load(committed)["stages"]
    assert list(stages) == ["build_training_set", "validate", "train", "evaluate"]
    for name, stage in stages.items():
        assert stage["cmd"].endswith(f"python -m jobs.cli dvc-stage {name}")
        for dep in stage["deps"]:
            if not dep.startswith(("data/", "metrics/")):
                assert (REPO_ROOT / dep).exists(), f"stage {name} depends on missing {dep}"


def test_describe_lists_the_steps_in_order():
    text = describe(INCREMENTAL)
    positions = [text.index(f"`{name}`") for name in ("check_landing", *INCREMENTAL.step_names)]
    assert positions == sorted(positions)


# Real functions for a small pipeline of the runner's own: what they return is what the next one must receive.
def produce(run_id: str) -> dict:
    return {"run_id": run_id, "values": [1, 2, 3]}


def total(values: list[int], reports_dir: Path) -> dict:
    (reports_dir / "total.txt").write_text(str(sum(values)))
    return {"total": sum(values)}


def refuse_big(summary: dict) -> str | None:
    return f"total {summary['total']} is too big" if summary["total"] > 5 else None


def check_order(reports_dir: Path, offset: int) -> dict:
    return {"seen_total": int((reports_dir / "total.txt").read_text()) + offset}


def test_run_pipeline_hands_summaries_and_run_inputs_over_and_stops_on_failure(tmp_path, tidal_env):
    here = "tests.tidal.test_pipelines"
    pipeline = Pipeline("demo", (
        Step("produce", f"{here}:produce"),
        Step("total", f"{here}:total", inputs={"values": "produce.values"}),
        Step("after_total", f"{here}:check_order", inputs={"offset": f"{RUN_INPUT}offset"}, after=("total",)),
    ))
    lines: list[str] = []
    results, seconds = run_pipeline(pipeline, tidal_env(), "run-7", tmp_path, {"offset": 10}, log=lines.append)
    assert results == {"produce": {"run_id": "run-7", "values": [1, 2, 3]}, "total": {"total": 6},
                       "after_total": {"seen_total": 16}}
    assert set(seconds) == {"produce", "total", "after_total"} and lines[0] == "[demo] produce ..."

    failing = Pipeline("demo", (*pipeline.steps[:1],
                                Step("total", f"{here}:total", inputs={"values": "produce.values"},
                                     fail_when=f"{here}:refuse_big"), pipeline.steps[2]))
    results, _ = run_pipeline(failing, tidal_env(), "run-8", tmp_path, {"offset": 0}, log=lines.append)
    assert list(results) == ["produce", "total"]  # the step after the failing one never ran
    assert lines[-1] == "[demo] total: total 6 is too big"
