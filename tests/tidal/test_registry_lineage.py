"""Registry lineage: served intervals, retired_at, served_at(ts), rollback (atomic, audited), checksums, and the
compare-and-set that keeps a stale fine-tune from replacing a newer production model."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tidal.registry import (METADATA_FILE, MODEL_FILE, ChecksumMismatch, Registry, StaleCandidate, parse_utc,
                            verify_version_dir)


def stage(registry: Registry, run_id: str, *, kind: str = "incremental", parent: str | None = None,
          weights: bytes = b"weights") -> None:
    path = registry.new_candidate_dir(run_id)
    (path / MODEL_FILE).write_bytes(weights)
    (path / METADATA_FILE).write_text(json.dumps({"run_id": run_id, "kind": kind, "parent": parent,
                                                  "anchor": None, "last_batch_id": 0}))


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


def promote_chain(registry: Registry, n: int) -> list[str]:
    stage(registry, "run-0", kind="full", weights=b"w0")
    versions = [registry.promote_candidate("run-0", reason="first").version]
    for i in range(1, n):
        stage(registry, f"run-{i}", parent=versions[-1], weights=f"w{i}".encode())
        versions.append(registry.promote_candidate(f"run-{i}", reason=f"cycle {i}").version)
        time.sleep(0.002)  # distinct timestamps even on a coarse clock
    return versions


def test_promotion_records_checksums_and_verification_catches_a_changed_file(registry):
    v1 = promote_chain(registry, 1)[0]
    mv = registry.version(v1)
    assert set(mv.metadata["checksums"]) == {MODEL_FILE}
    verify_version_dir(mv.path)  # intact: no error
    (mv.path / MODEL_FILE).write_bytes(b"w0 but truncated")
    with pytest.raises(ChecksumMismatch, match="model.pt"):
        verify_version_dir(mv.path)


def test_served_at_answers_across_several_promotions_and_a_rollback(registry):
    assert registry.served_at("2026-01-01T00:00Z") is None
    versions = promote_chain(registry, 3)
    moves = registry.alias_moves()
    assert [m["version"] for m in moves] == versions
    for move in moves:
        assert registry.served_at(move["at"]) == move["version"]  # the instant of the move belongs to the new one
    # Between two moves, the earlier one serves.
    between = parse_utc(moves[0]["at"]) + (parse_utc(moves[1]["at"]) - parse_utc(moves[0]["at"])) / 2
    assert registry.served_at(between) == versions[0]
    assert registry.served_at("2999-01-01T00:00Z") == versions[-1]

    rolled = registry.rollback(reason="v3 recommends stale items", by="alice")
    assert (rolled["from"], rolled["to"], rolled["by"]) == (versions[2], versions[1], "alice")
    assert registry.served_at("2999-01-01T00:00Z") == versions[1]
    assert registry.served_at(moves[2]["at"]) == versions[2]  # history does not change
    with pytest.raises(ValueError, match="ISO 8601"):
        registry.served_at("yesterday")


def test_retired_at_and_served_intervals(registry):
    v1, v2, v3 = promote_chain(registry, 3)
    moves = registry.alias_moves()
    assert registry.retired_at(v1) == moves[1]["at"]
    assert registry.retired_at(v2) == moves[2]["at"]
    assert registry.retired_at(v3) is None
    registry.rollback(to=v1, reason="back to the anchor", by="bob")
    assert registry.retired_at(v3) == registry.alias_moves()[-1]["at"]
    lineage = registry.lineage(v1)
    assert lineage["serving"] is True and lineage["retired_at"] is None
    assert [(i["how"], i["by"]) for i in lineage["served"]] == [("promote", None), ("rollback", "bob")]
    assert lineage["served"][0]["until"] == moves[1]["at"]


def test_rollback_records_who_and_why_and_round_trips(registry, monkeypatch):
    v1, v2 = promote_chain(registry, 2)
    monkeypatch.setenv("USER", "carol")
    back = registry.rollback(reason="bad recall on the dashboard")
    assert back["to"] == v1 and back["by"] == "carol"
    alias = json.loads(registry.alias_path.read_text())
    assert alias["version"] == v1 and alias["by"] == "carol" and alias["reason"] == "bad recall on the dashboard"
    last = registry.events()[-1]
    assert (last["action"], last["version"], last["previous"], last["by"]) == ("rollback", v1, v2, "carol")
    # Round trip: rolling back again (default target = the previous server) returns to v2.
    forth = registry.rollback(reason="false alarm", by="carol")
    assert forth["to"] == v2 and registry.production().version == v2
    assert [m["action"] for m in registry.alias_moves()] == ["promote", "promote", "rollback", "rollback"]


def test_bad_rollbacks_leave_production_untouched(registry):
    v1, v2 = promote_chain(registry, 2)
    before = registry.alias_path.read_bytes()
    with pytest.raises(KeyError, match="v000009"):
        registry.rollback(to="v000009", reason="typo")
    with pytest.raises(ValueError, match="not a version id"):
        registry.rollback(to="../v000001", reason="path")
    with pytest.raises(ValueError, match="already in production"):
        registry.rollback(to=v2, reason="noop")
    with pytest.raises(ValueError, match="reason"):
        registry.rollback(to=v1, reason="  ")
    (registry.version(v1).path / MODEL_FILE).write_bytes(b"corrupted")
    with pytest.raises(ChecksumMismatch):
        registry.rollback(to=v1, reason="to a corrupt copy")
    assert registry.alias_path.read_bytes() == before
    assert [e["action"] for e in registry.events()] == ["promote", "promote"]


def test_rollback_with_nothing_to_roll_back_to(registry):
    with pytest.raises(ValueError, match="nothing is in production"):
        registry.rollback(reason="empty")
    promote_chain(registry, 1)
    with pytest.raises(ValueError, match="only version"):
        registry.rollback(reason="only one")


def test_readers_never_see_a_missing_or_partial_alias_during_rollbacks(registry):
    v1, v2 = promote_chain(registry, 2)
    seen: set[str] = set()
    errors: list[Exception] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add(registry.production().version)
            except Exception as err:  # a missing or half-written alias would land here
                errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(60):
        registry.rollback(reason=f"flip {i}", by="load-test")
    stop.set()
    thread.join()
    assert errors == [] and seen <= {v1, v2} and len(seen) == 2


def test_stale_incremental_candidate_cannot_replace_a_newer_production(registry):
    v1 = promote_chain(registry, 1)[0]
    stage(registry, "incremental-run", parent=v1, weights=b"fine-tuned from v1")
    stage(registry, "retrain-run", kind="full", weights=b"retrained")
    v2 = registry.promote_candidate("retrain-run", reason="weekly retrain").version
    with pytest.raises(StaleCandidate, match=f"production is now {v2}"):
        registry.promote_candidate("incremental-run", reason="gate passed", expect_production=v1)
    assert registry.production().version == v2 and len(registry.versions()) == 2


def test_register_makes_a_version_without_serving_it(registry):
    v1 = promote_chain(registry, 1)[0]
    stage(registry, "retrain-run", kind="full", weights=b"retrained")
    registered = registry.register_candidate("retrain-run", reason="register only")
    assert registered.version == "v000002" and registered.metadata["anchor"] == "v000002"
    assert registry.production().version == v1 and registry.served_intervals("v000002") == []
    assert registry.register_candidate("retrain-run", reason="retry").version == "v000002"  # idempotent
    assert [e["action"] for e in registry.events()] == ["promote", "register"]
    registry.rollback(to="v000002", reason="serve the registered retrain", by="dana")
    assert registry.production().version == "v000002"


KILL_SCRIPT = r"""
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tidal.registry import Registry
point, nth = sys.argv[1], int(sys.argv[2])
calls = {{"n": 0}}
def killer(real):
    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks: a real crash
        return real(*a, **k)
    return wrapped
if point == "replace":
    os.replace = killer(os.replace)
elif point == "fsync":
    os.fsync = killer(os.fsync)
elif point == "rename":
    Path.rename = killer(Path.rename)
Registry(Path(sys.argv[3])).promote_candidate("run-new", reason="killed test")
print("completed")
"""


@pytest.mark.parametrize("point, nth", [
    ("fsync", 1),    # half-written metadata temp file
    ("replace", 1),  # before the candidate's metadata is replaced
    ("rename", 1),   # before the folder moves into versions/
    ("fsync", 2),    # half-written alias temp file (after the version exists)
    ("replace", 2),  # before the alias is replaced
])
def test_kill_during_promotion_never_leaves_the_alias_on_a_missing_or_partial_model(registry, point, nth, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    v1 = promote_chain(registry, 1)[0]
    stage(registry, "run-new", parent=v1, weights=b"x" * 4_000_000)
    script = tmp_path / "promote_and_die.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO_ROOT)))
    proc = subprocess.run([sys.executable, str(script), point, str(nth), str(registry.root)], capture_output=True,
                          text=True)
    assert proc.returncode == -9 and "completed" not in proc.stdout, proc.stderr

    serving = registry.production()  # the alias parses and names a version that exists
    assert serving.version == v1
    assert serving.model_path.read_bytes() == b"w0"
    verify_version_dir(serving.path)
    assert [p.name for p in registry.versions_dir.iterdir() if not p.name.startswith("v")] == []

    # The retried task finishes the job exactly once.
    promoted = registry.promote_candidate("run-new", reason="retry after crash")
    assert promoted.version == "v000002" and registry.production().version == "v000002"
    assert promoted.model_path.read_bytes() == b"x" * 4_000_000
    verify_version_dir(promoted.path)
    assert [v.version for v in registry.versions()] == ["v000001", "v000002"]


def test_serving_says_which_version_serves_since_when_and_how(registry):
    assert registry.serving() is None
    v1, v2, v3 = promote_chain(registry, 3)
    serving = registry.serving()
    assert (serving["version"], serving["how"], serving["by"]) == (v3, "promote", None)
    assert serving["since"] == registry.alias_moves()[-1]["at"]
    registry.rollback(to=v1, reason="v3 regressed", by="carol")
    serving = registry.serving()
    assert serving == {"version": v1, "since": registry.alias_moves()[-1]["at"], "how": "rollback", "by": "carol",
                       "reason": "v3 regressed"}


def test_served_at_now_is_the_version_serving_now(registry):
    assert registry.served_at("now") is None
    v1, v2 = promote_chain(registry, 2)
    assert registry.served_at("now") == v2
    assert registry.served_at(" NOW ") == v2
    registry.rollback(reason="drill", by="dan")
    assert registry.served_at("now") == v1
    with pytest.raises(ValueError, match="`now` or an ISO 8601 time"):
        registry.served_at("2026-13-01")
