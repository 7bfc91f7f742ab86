"""The demo's summary is a pure function of the step summaries: built here from real runs (Spark features, real
fine-tune, gate and promote, and a real idle `tidal_incremental` run through Airflow's `dag.test()`), it prints
each cycle's candidate and production Recall@10 on the same held-out slice, the margin and the gate's decision,
and reports the idle run as idle, never as a cycle."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from devtools.demo import cycle_count, cycle_report, gate_lines, gate_row, run_record, runs_lines, seconds_lines
from tests.conftest import REPO_ROOT, private_home
from tidal.landing import pending_landing_files
from tidal.storage import StorageLayout


TOLERANCE = 0.02


def real_cycle(settings, layout: StorageLayout, run_id: str, files: int, poison: bool = False) -> dict:
    """features -> finetune -> gate -> promote, each writing its summary where the DAG's tasks write theirs."""
    from devtools.generate import generate_stream
    from jobs.features.stream import run_features
    from jobs.release.gate import run_gate
    from jobs.release.promote import run_promote
    from jobs.training.finetune import run_finetune

    generate_stream(layout, settings.params.generate, seed=settings.params.base.seed, files=files,
                    event_types=settings.params.base.event_types, bad_fraction=0.01)
    reports = layout.run_reports(run_id)
    features = run_features(settings, reports)
    if poison:  # a corrupt weight column: the fine-tune's loss goes NaN and the gate must fail it
        for batch_id in features["batch_ids"]:
            for part in layout.examples_batch(batch_id).glob("*.parquet"):
                frame = pd.read_parquet(part)
                frame["event_weight"] = np.nan
                frame.to_parquet(part, index=False)
    run_finetune(settings, run_id, reports)
    run_promote(settings, run_id, run_gate(settings, run_id, reports), reports)
    return run_record({"dag_run_id": run_id, "run_type": "manual", "state": "success"},
                      cycle_report(layout, run_id), {})


def real_idle_run(layout: StorageLayout) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    assert pending_landing_files(layout) == []
    dag_run = DagBag(dag_folder=str(REPO_ROOT / "dags")).get_dag("tidal_incremental").test()
    tasks = {ti.task_id: {"state": ti.state, "duration": ti.duration} for ti in dag_run.get_task_instances()}
    run = {"dag_run_id": dag_run.run_id, "run_type": str(dag_run.run_type), "state": dag_run.state}
    return run_record(run, cycle_report(layout, dag_run.run_id), tasks)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory, airflow_db):
    """A first model, an idle run, a compared cycle that passes, and a poisoned cycle that fails."""

    tmp = tmp_path_factory.mktemp("demo")
    with private_home(tmp, {"gate": {"recall_tolerance": 1.0}}) as settings:
        layout = StorageLayout(settings.home).ensure()
        records = [real_cycle(settings, layout, "demo-cycle-1", files=2), real_idle_run(layout),
                   real_cycle(settings, layout, "demo-cycle-2", files=1),
                   real_cycle(settings, layout, "demo-cycle-3", files=1, poison=True)]
        yield records, layout


def gate_json(layout: StorageLayout, run_id: str) -> dict:
    return json.loads((layout.run_reports(run_id) / "gate.json").read_text())


def test_each_cycle_shows_candidate_and_production_on_the_slice_the_gate_used(demo_runs):
    records, layout = demo_runs
    first, _, second, poisoned = (gate_row(r, k=10) for r in records)

    assert (first["production"], first["production_version"], first["margin"]) == (None, None, None)
    assert (first["decision"], first["model"]) == ("pass", "v000001")
    assert first["candidate"] == gate_json(layout, "demo-cycle-1")["candidate"]["recall_at_10"]

    gate = gate_json(layout, "demo-cycle-2")
    assert second["candidate"] == gate["candidate"]["recall_at_10"]
    assert second["production"] == gate["production"]["recall_at_10"]  # v000001 scored on cycle 2's slice
    assert second["margin"] == pytest.approx(gate["candidate"]["recall_at_10"] - gate["production"]["recall_at_10"])
    assert (second["production_version"], second["held_out"]) == ("v000001", gate["held_out_examples"])
    assert (second["decision"], second["model"]) == ("pass", "v000002")

    gate = gate_json(layout, "demo-cycle-3")
    assert gate["passed"] is False and gate["candidate"] is None
    assert (poisoned["decision"], poisoned["model"], poisoned["margin"]) == ("fail", "kept v000002", None)
    assert poisoned["production"] == gate["production"]["recall_at_10"]
    assert poisoned["reason"] == "candidate weights or loss are not finite"


def test_the_gate_table_prints_those_values(demo_runs):
    records, layout = demo_runs
    lines = gate_lines(records, k=10, tolerance=TOLERANCE)
    assert "the gate passes when margin >= -0.02" in lines[1]
    rows = {line.split()[0]: line for line in lines[3:]}
    assert list(rows) == ["demo-cycle-1", "demo-cycle-2", "demo-cycle-3"]  # the idle run is no gate row
    gate = gate_json(layout, "demo-cycle-2")
    cand, prod = gate["candidate"]["recall_at_10"], gate["production"]["recall_at_10"]
    assert rows["demo-cycle-2"].split()[1:8] == [str(gate["held_out_examples"]), f"{cand:.4f}", f"{prod:.4f}",
                                                 "(v000001)", f"{cand - prod:+.4f}", "pass", "v000002"]
    assert rows["demo-cycle-1"].split()[2:8] == [f"{records[0]['report']['gate']['candidate']['recall_at_10']:.4f}",
                                                 "-", "(None)", "-", "pass", "v000001"]
    prod3 = gate_json(layout, "demo-cycle-3")["production"]["recall_at_10"]
    assert rows["demo-cycle-3"].split()[2:9] == ["-", f"{prod3:.4f}", "(v000002)", "-", "fail", "kept", "v000002"]
    assert rows["demo-cycle-3"].endswith("candidate weights or loss are not finite")


def test_an_idle_run_is_reported_idle_and_is_not_a_cycle(demo_runs):
    records, _ = demo_runs
    idle = records[1]
    assert idle["idle"] is True and idle["report"] == {}
    assert [r["idle"] for r in records] == [False, True, False, False] and cycle_count(records) == 3
    skipped = sum(t["state"] == "skipped" for t in idle["tasks"].values())
    assert idle["tasks"]["check_landing"]["state"] == "success" and skipped == len(idle["tasks"]) - 1
    lines = runs_lines(records)
    assert lines[2] == (f"{idle['run_id']:<48} idle  no new landing files: check_landing skipped the other "
                        f"{skipped} task(s)")
    f = records[2]["report"]["features"]
    assert lines[3].split() == ["demo-cycle-2", "cycle", str(f["landed"]), str(f["accepted"]), str(f["quarantined"]),
                                str(f["duplicates"])]
    seconds = seconds_lines(records)[2].split()
    assert seconds[0] == idle["run_id"]
    assert float(seconds[1]) == pytest.approx(idle["tasks"]["check_landing"]["duration"], abs=0.06)
    assert seconds[2:] == ["skip"] * 7
