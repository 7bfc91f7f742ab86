"""promote: a passing gate moves the production alias, a failing or skipped one leaves it and says why, and an
incremental candidate whose parent no longer serves is rejected as stale (on a real registry)."""

from __future__ import annotations

import json

from jobs.release.promote import run_promote
from tidal.registry import METADATA_FILE, MODEL_FILE, Registry
from tidal.storage import StorageLayout, read_json


PASSED = {"passed": True, "reason": "recall 0.31 >= production 0.30 - tolerance"}
FAILED = {"passed": False, "reason": "recall 0.10 < production 0.30 - tolerance"}


def stage(registry: Registry, run_id: str, kind: str, parent: str | None = None) -> None:
    path = registry.new_candidate_dir(run_id)
    (path / MODEL_FILE).write_bytes(f"weights of {run_id}".encode())
    (path / METADATA_FILE).write_text(json.dumps({"run_id": run_id, "kind": kind, "parent": parent,
                                                  "anchor": None, "last_batch_id": 0}))


def test_a_passing_gate_promotes_and_a_failing_one_is_recorded(tidal_env, tmp_path):
    settings = tidal_env()
    registry = Registry(StorageLayout(settings.home).ensure().registry)
    stage(registry, "run-1", "full")
    first = run_promote(settings, "run-1", PASSED, tmp_path)
    assert (first["promoted"], first["version"], first["production_version"]) == (True, "v000001", "v000001")
    assert read_json(tmp_path / "promote.json") == first

    stage(registry, "run-2", "incremental", parent="v000001")
    rejected = run_promote(settings, "run-2", FAILED)
    assert (rejected["promoted"], rejected["production_version"]) == (False, "v000001")
    event = registry.events()[-1]
    assert (event["action"], event["run_id"], event["reason"]) == ("reject", "run-2", FAILED["reason"])

    skipped = run_promote(settings, "run-3", {"status": "skipped", "reason": "no candidate"})
    assert skipped == {"run_id": "run-3", "promoted": False, "reason": "no candidate", "production_version": "v000001"}


def test_an_incremental_candidate_of_a_replaced_model_is_stale(tidal_env):
    settings = tidal_env()
    registry = Registry(StorageLayout(settings.home).ensure().registry)
    stage(registry, "run-1", "full")
    run_promote(settings, "run-1", PASSED)
    stage(registry, "run-2", "incremental", parent="v000001")
    stage(registry, "retrain", "full")
    assert run_promote(settings, "retrain", PASSED)["version"] == "v000002"  # a retrain replaced v000001 meanwhile

    stale = run_promote(settings, "run-2", PASSED)
    assert stale["promoted"] is False and stale["stale"] is True and stale["production_version"] == "v000002"
    assert registry.production().version == "v000002" and registry.events()[-1]["action"] == "reject"
