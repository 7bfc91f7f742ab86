"""tidal.registry: staged candidates become immutable versions; the production alias moves atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tidal.registry import METADATA_FILE, MODEL_FILE, Registry


def stage(registry: Registry, run_id: str, *, kind: str = "incremental", anchor: str | None = None,
          weights: bytes = b"weights", with_model: bool = True) -> Path:
    """A candidate as finetune leaves it: model.pt plus metadata.json in the run's staging folder."""
    path = registry.new_candidate_dir(run_id)
    if with_model:
        (path / MODEL_FILE).write_bytes(weights)
    (path / METADATA_FILE).write_text(json.dumps({"run_id": run_id, "kind": kind, "anchor": anchor,
                                                  "last_batch_id": 0}))
    return path


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


def alias(registry: Registry) -> str:
    return json.loads(registry.alias_path.read_text())["version"]


def test_empty_registry_has_no_production(registry):
    assert registry.production() is None
    assert registry.versions() == [] and registry.events() == []


def test_promote_full_retrain_becomes_v000001_and_its_own_anchor(registry):
    staged = stage(registry, "run-1", kind="full", weights=b"first")
    version = registry.promote_candidate("run-1", reason="first model")
    assert version.version == "v000001"
    assert alias(registry) == "v000001"
    assert registry.production().version == "v000001"
    assert version.metadata["anchor"] == "v000001"
    assert version.metadata["version"] == "v000001" and version.metadata["run_id"] == "run-1"
    assert "promoted_at" in version.metadata
    assert version.model_path.read_bytes() == b"first"
    assert not staged.exists()  # the staging folder was moved, not copied
    alias_doc = json.loads(registry.alias_path.read_text())
    assert (alias_doc["run_id"], alias_doc["reason"]) == ("run-1", "first model")
    events = registry.events()
    assert [(e["action"], e["version"], e["previous"], e["run_id"]) for e in events] == \
        [("promote", "v000001", None, "run-1")]


def test_second_promotion_moves_the_alias_and_keeps_the_anchor(registry):
    stage(registry, "run-1", kind="full")
    registry.promote_candidate("run-1", reason="first")
    stage(registry, "run-2", kind="incremental", anchor="v000001", weights=b"second")
    second = registry.promote_candidate("run-2", reason="better")
    assert second.version == "v000002"
    assert alias(registry) == "v000002"
    assert second.metadata["anchor"] == "v000001"  # an incremental version stays in its anchor's chain
    assert [v.version for v in registry.versions()] == ["v000001", "v000002"]
    assert [(e["version"], e["previous"]) for e in registry.events()] == [("v000001", None), ("v000002", "v000001")]
    assert registry.version_for_run("run-1").version == "v000001"
    assert registry.version_for_run("run-3") is None


def test_promotion_is_idempotent_per_run_id(registry):
    stage(registry, "run-1", kind="full")
    first = registry.promote_candidate("run-1", reason="first")
    again = registry.promote_candidate("run-1", reason="task retry")
    assert again.version == first.version == "v000001"
    assert [v.version for v in registry.versions()] == ["v000001"]
    assert len(registry.events()) == 1
    assert json.loads(registry.alias_path.read_text())["reason"] == "first"


def test_retried_run_never_rewrites_its_promoted_version(registry):
    stage(registry, "run-1", kind="full", weights=b"original")
    version = registry.promote_candidate("run-1", reason="first")
    before = tree_digest(version.path)
    # A retried finetune stages the run afresh with other weights; promotion finds the version it already made.
    stage(registry, "run-1", kind="full", weights=b"retrained")
    assert registry.promote_candidate("run-1", reason="retry").version == "v000001"
    assert tree_digest(version.path) == before
    assert registry.versions()[0].model_path.read_bytes() == b"original"


def test_versions_never_change_after_later_promotions(registry):
    stage(registry, "run-1", kind="full", weights=b"one")
    v1 = registry.promote_candidate("run-1", reason="first")
    before = tree_digest(v1.path)
    for n in (2, 3):
        stage(registry, f"run-{n}", anchor="v000001", weights=f"w{n}".encode())
        registry.promote_candidate(f"run-{n}", reason="next")
    stage(registry, "run-4", kind="full", weights=b"four")
    v4 = registry.promote_candidate("run-4", reason="weekly full retrain")
    assert v4.version == "v000004" and v4.metadata["anchor"] == "v000004"
    assert tree_digest(v1.path) == before
    assert registry.version("v000001").metadata["anchor"] == "v000001"


def test_incomplete_candidate_cannot_be_promoted(registry):
    stage(registry, "run-1", kind="full")
    registry.promote_candidate("run-1", reason="first")
    stage(registry, "run-2", with_model=False)
    with pytest.raises(FileNotFoundError, match="run-2"):
        registry.promote_candidate("run-2", reason="should not happen")
    assert alias(registry) == "v000001"
    assert [v.version for v in registry.versions()] == ["v000001"]
    assert len(registry.events()) == 1
    with pytest.raises(FileNotFoundError):
        registry.promote_candidate("never-staged", reason="nothing there")
    assert alias(registry) == "v000001"


def test_rejection_is_recorded_and_production_untouched(registry):
    stage(registry, "run-1", kind="full")
    registry.promote_candidate("run-1", reason="first")
    alias_before = registry.alias_path.read_bytes()
    staged = stage(registry, "run-2", anchor="v000001")
    registry.record_rejection("run-2", reason="recall trails production", details={"passed": False, "recall": 0.1})
    assert registry.alias_path.read_bytes() == alias_before
    last = registry.events()[-1]
    assert (last["action"], last["run_id"], last["reason"]) == ("reject", "run-2", "recall trails production")
    assert last["details"] == {"passed": False, "recall": 0.1}
    assert "request" not in last  # an incremental cycle's rejection: nobody asked for it
    assert (staged / MODEL_FILE).exists()  # the rejected candidate stays for inspection
    assert registry.candidate_metadata("run-2")["run_id"] == "run-2"
    assert [v.version for v in registry.versions()] == ["v000001"]


def test_run_ids_with_airflow_characters_get_portable_folders(registry):
    run_id = "scheduled__2026-11-01T00:05:00+00:00"
    staged = stage(registry, run_id, kind="full")
    assert ":" not in staged.name and "+" not in staged.name
    assert registry.promote_candidate(run_id, reason="first").metadata["run_id"] == run_id
    assert registry.version_for_run(run_id).version == "v000001"


def test_unknown_version_is_a_key_error(registry):
    with pytest.raises(KeyError, match="v000009"):
        registry.version("v000009")


def test_rejection_records_the_operators_request_in_the_event_log(registry):
    stage(registry, "run-1", kind="full")
    registry.promote_candidate("run-1", reason="first")
    stage(registry, "retrain-2", kind="full")
    request = {"reason": "reset after the catalogue migration", "trigger": "manual", "promote": "auto"}
    registry.record_rejection("retrain-2", reason="candidate recall_at_10 trails production",
                              details={"passed": False}, request=request)
    line = registry.events_path.read_text().splitlines()[-1]
    assert json.loads(line)["request"] == request
    assert '"reason": "reset after the catalogue migration"' in line
    assert registry.events()[-1]["reason"] == "candidate recall_at_10 trails production"
    assert alias(registry) == "v000001"


def test_resolve_names_latest_production_and_version_ids(registry):
    with pytest.raises(LookupError, match="no versions yet"):
        registry.resolve("latest")
    with pytest.raises(LookupError, match="nothing is in production"):
        registry.resolve("production")
    for n in (1, 2):
        stage(registry, f"run-{n}", kind="full", weights=f"w{n}".encode())
    registry.promote_candidate("run-1", reason="first")
    registry.register_candidate("run-2", reason="registered, not served")
    assert registry.resolve("latest").version == "v000002"
    assert registry.resolve("production").version == "v000001"
    assert registry.resolve(" v000002 ").metadata["run_id"] == "run-2"


@pytest.mark.parametrize("ref", ["../x", "v1", "V000001", "versions/v000001", "", "newest"])
def test_resolve_refuses_names_of_no_allowed_form_and_says_what_is_allowed(registry, ref):
    stage(registry, "run-1", kind="full")
    registry.promote_candidate("run-1", reason="first")
    with pytest.raises(ValueError, match=r"vNNNNNN.*`latest`.*`production`"):
        registry.resolve(ref)


def test_resolve_an_unknown_version_names_the_ones_there(registry):
    stage(registry, "run-1", kind="full")
    registry.promote_candidate("run-1", reason="first")
    with pytest.raises(KeyError) as err:
        registry.resolve("v000042")
    assert err.value.args[0].startswith("no version v000042") and "v000001 .. v000001" in err.value.args[0]


def test_version_never_reads_outside_versions(registry, tmp_path):
    stage(registry, "run-1", kind="full")
    registry.promote_candidate("run-1", reason="first")
    # A metadata.json one level up: a path-like name must not reach it.
    (registry.root / METADATA_FILE).write_text(json.dumps({"kind": "full"}))
    with pytest.raises(KeyError, match="not a version id"):
        registry.version("../")
    with pytest.raises(KeyError, match="not a version id"):
        registry.version("../versions/v000001")
