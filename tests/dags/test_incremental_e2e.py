"""Two incremental cycles through the real DAG (`dag.test()`: real Airflow task runner, Spark, GX, torch, DVC and
the SeaweedFS that `make test` starts)."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


pytestmark = [pytest.mark.slow, pytest.mark.stack]

GOOD = {"event_id": "bad-file-good-{n}", "user_id": "u000001", "item_id": "i000002", "event_type": "click",
        "value": None, "event_time": "2026-11-01T00:01:00Z"}
BAD_LINES = {
    "malformed_json": '{"event_id": "x1", "user_id": "u1", ',
    "missing_user_id": json.dumps({"event_id": "x2", "item_id": "i1", "event_type": "view", "event_time": "2026-11-01T00:00:00Z"}),
    "wrong_type_value": json.dumps({"event_id": "x3", "user_id": "u1", "item_id": "i1", "event_type": "view",
                                    "value": "lots", "event_time": "2026-11-01T00:00:00Z"}),
    "unknown_event_type": json.dumps({"event_id": "x4", "user_id": "u1", "item_id": "i1", "event_type": "teleport",
                                      "event_time": "2026-11-01T00:00:00Z"}),
    "future_event_time": json.dumps({"event_id": "x5", "user_id": "u1", "item_id": "i1", "event_type": "view",
                                     "event_time": "2999-01-01T00:00:00Z"}),
}


def write_bad_input(landing: Path) -> None:
    lines = []
    for n, bad in enumerate(BAD_LINES.values()):
        lines += [json.dumps({**GOOD, "event_id": GOOD["event_id"].format(n=n)}), bad]
    (landing / "mixed-bad.jsonl").write_text("\n".join(lines) + "\n")
    (landing / "empty.jsonl").write_bytes(b"")


def run_dag():
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO_ROOT / "dags")).get_dag("tidal_incremental")
    dag_run = dag.test()
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success", states
    return dag_run.run_id


def summaries(settings, run_id: str) -> dict:
    from tidal.storage import StorageLayout

    reports = StorageLayout(settings.home).run_reports(run_id)
    return {p.stem: json.loads(p.read_text()) for p in reports.glob("*.json")}


def dvc_pull_into_fresh_project(tmp: Path, dvc_file: Path, settings) -> Path:
    """A second DVC project that shares nothing with TIDAL_HOME but the remote: what it pulls came from S3."""
    from jobs.release.dvc import dvc, ensure_dvc_project

    tmp.mkdir()
    ensure_dvc_project(tmp, settings)
    shutil.copy(dvc_file, tmp / dvc_file.name)
    dvc(tmp, "pull", "-q", dvc_file.name)
    return tmp / dvc_file.name.removesuffix(".dvc")


def test_two_cycles_fine_tune_from_the_first_and_round_trip_through_s3(tidal_env, s3_env, airflow_db, tmp_path):
    from devtools.generate import generate_stream
    from tidal.registry import Registry
    from tidal.storage import StorageLayout

    # A generous gate tolerance: this test is about the chain of checkpoints, not about the gate's threshold.
    settings = tidal_env({"gate": {"recall_tolerance": 1.0}})
    layout = StorageLayout(settings.home).ensure()
    generate_stream(layout, settings.params.generate, seed=7, files=2, event_types=settings.params.base.event_types)
    write_bad_input(layout.landing_events)

    # ---- cycle 1: the first model is trained from scratch; bad input is quarantined and the run goes on ----
    first = summaries(settings, run_dag())
    features = first["features"]
    assert features["files"] == 4
    assert features["landed"] == 2 * 400 + 2 * len(BAD_LINES) + 1  # + 1 record for the empty file
    assert features["landed"] == features["accepted"] + features["quarantined"] + features["duplicates"]
    assert features["accepted"] == 2 * 400 + len(BAD_LINES)
    assert features["quarantine_reasons"] == {**{reason: 1 for reason in BAD_LINES}, "empty_file": 1}
    assert first["validate"]["status"] == "passed"
    assert first["drift"]["status"] == "skipped"  # no production model, so no reference yet
    assert first["finetune"]["kind"] == "full" and first["finetune"]["finite"] is True
    assert first["gate"]["passed"] is True and first["promote"]["version"] == "v000001"
    assert first["version"]["status"] == "pushed"

    # ---- cycle 2: only the new file is read, and the model is fine-tuned from cycle 1's checkpoint ----
    generate_stream(layout, settings.params.generate, seed=7, files=1, event_types=settings.params.base.event_types)
    second = summaries(settings, run_dag())
    features2 = second["features"]
    assert features2["files"] == 1 and features2["landed"] == 400
    assert set(features2["batch_ids"]).isdisjoint(features["batch_ids"])
    assert features2["landed"] == features2["accepted"] + features2["quarantined"] + features2["duplicates"]
    assert second["drift"]["status"] == "tested" and second["drift"]["reference_version"] == "v000001"
    assert {r["feature"] for r in second["drift"]["features"]} == \
        set(settings.params.drift.features) | set(settings.params.drift.categorical_features)
    assert second["finetune"]["kind"] == "incremental" and second["finetune"]["parent"] == "v000001"
    # It trained on cycle 1's held-out slice plus the new examples, not on the whole history again.
    assert second["finetune"]["pending_holdout_examples"] == first["finetune"]["held_out_examples"]
    # Every accepted event is a new example, except those of flagged outliers (the synthetic stream's heaviest user
    # makes most of a 400-event file) and rows validation moved to quarantine.
    assert second["finetune"]["new_examples"] == features2["accepted"] - features2["outlier_events_excluded"] \
        - second["validate"]["validation_quarantined"]
    assert second["gate"]["production_version"] == "v000001"
    assert second["promote"]["version"] == "v000002"

    registry = Registry(layout.registry)
    v2 = registry.version("v000002")
    assert v2.metadata["parent"] == "v000001" and v2.metadata["anchor"] == "v000001"
    assert registry.production().version == "v000002"
    from models.recommender import Checkpoint

    v1_model = Checkpoint.load(registry.version("v000001").model_path)
    v2_model = Checkpoint.load(v2.model_path)
    # The fine-tune grew the tables: every id v1 knew keeps its place, new ids are appended.
    assert list(v2_model.item_ids[: len(v1_model.item_ids)]) == list(v1_model.item_ids)
    assert len(v2_model.user_ids) > len(v1_model.user_ids)

    # ---- the promoted version comes back from SeaweedFS byte for byte ----
    pulled = dvc_pull_into_fresh_project(tmp_path / "pull", Path(second["version"]["dvc_file"]), settings)
    names = sorted(p.name for p in v2.path.iterdir())
    assert names == sorted(p.name for p in pulled.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(v2.path, pulled, names, shallow=False)
    assert mismatch == [] and errors == [] and sorted(match) == names
