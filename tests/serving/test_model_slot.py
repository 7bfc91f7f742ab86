"""serving/model_slot.py through a real server: promotions and a rollback under a bounded loopback load with no
failed request, each answer naming a version that was production then; a corrupt version refused; the swap log."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from serving.model_slot import ModelSlot
from tidal.config import ServingParams
from tidal.freshness import read_swaps
from tests.serving.conftest import promote
from tidal.registry import Registry
from tidal.storage import StorageLayout


LOAD_THREADS, LOAD_REQUESTS_PER_THREAD = 3, 400  # bounded: 1,200 requests, each thread one connection


def production_timeline(home: Path) -> list[tuple[float, str]]:
    """(epoch s, version) of every alias move, oldest first, from the registry's event log."""
    from tidal.registry import parse_utc

    return [(parse_utc(move["at"]).timestamp(), move["version"]) for move in Registry(home / "registry").alias_moves()]


def was_production(timeline: list[tuple[float, str]], version: str, start: float, end: float) -> bool:
    """Was `version` the alias's target at some moment of [start, end]?"""
    for j, (at, name) in enumerate(timeline):
        until = timeline[j + 1][0] if j + 1 < len(timeline) else float("inf")
        if name == version and at <= end and until >= start:
            return True
    return False


def test_promotions_and_a_rollback_under_load_fail_no_request(trained, serving_home, start_serving):
    first = promote(serving_home, trained.paths[0], "run-0", trained.newest[0], kind="full")
    server = start_serving()
    server.wait_ready(first)
    answers: list[tuple[float, float, int, str | None]] = []
    lock = threading.Lock()

    def load(user_ids: list[str]) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for j in range(LOAD_REQUESTS_PER_THREAD):
                started = time.time()
                try:
                    reply = client.get(f"/v1/recommendations/{user_ids[j % len(user_ids)]}", params={"k": 10})
                    status, version = reply.status_code, reply.json().get("model_version")
                except httpx.HTTPError as error:
                    status, version = -1, repr(error)
                with lock:
                    answers.append((started, time.time(), status, version))

    threads = [threading.Thread(target=load, args=([f"u{t * 7 + j}" for j in range(7)] + ["nobody"],))
               for t in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    versions = [first]
    for j in (1, 2, 3):  # three promotions, each served before the next
        time.sleep(0.4)
        versions.append(promote(serving_home, trained.paths[j], f"run-{j}", trained.newest[j]))
        server.wait_ready(versions[-1], timeout_s=15)
    Registry(serving_home / "registry").rollback("v000002", reason="test: rollback under load")
    server.wait_ready("v000002", timeout_s=15)
    for thread in threads:
        thread.join(timeout=120)

    assert len(answers) == LOAD_THREADS * LOAD_REQUESTS_PER_THREAD
    failed = [a for a in answers if a[2] != 200]
    assert failed == []
    served = {a[3] for a in answers}
    assert served >= {"v000001", "v000002"} and served <= set(versions)
    # Each answer came from a version that was production at some moment between the alias move serving could
    # have missed (the watch interval plus a load) and the answer.
    timeline = production_timeline(serving_home)
    swaps = read_swaps(StorageLayout(serving_home).serving_swaps)
    lag = max(s["load_s"] for s in swaps) + 1.0
    assert lag < 5.0, swaps
    assert [a for a in answers if not was_production(timeline, a[3], a[0] - lag, a[1])] == []
    # The swap log: one line per version that became servable, with what freshness needs.
    assert [s["version"] for s in swaps] == [first] + versions[1:] + ["v000002"]
    assert all(s["servable_at"] and s["newest_event_time"] for s in swaps)
    model = server.get("/v1/model").json()
    assert model["version"] == "v000002" and model["swaps"] == 4 and model["failed_loads"] == 0


def test_a_corrupt_version_promoted_behind_serving_is_refused_and_the_old_one_keeps_answering(
        trained, serving_home, start_serving):
    import shutil

    from tidal.storage import atomic_write_json

    first = promote(serving_home, trained.paths[0], "run-0", trained.newest[0], kind="full")
    server = start_serving()
    server.wait_ready(first)
    # A version made (checksums recorded) but not served, its file then damaged, then the alias moved onto it.
    registry = Registry(serving_home / "registry")
    staged = registry.new_candidate_dir("run-1")
    shutil.copyfile(trained.paths[1], staged / "model.pt")
    atomic_write_json(staged / "metadata.json", {"run_id": "run-1", "kind": "incremental"})
    bad = registry.register_candidate("run-1", reason="test").version
    (serving_home / "registry" / "versions" / bad / "model.pt").write_bytes(b"\x00not a checkpoint" * 64)
    # The registry's own moves verify checksums first (a rollback would refuse it): the alias is written by hand.
    atomic_write_json(registry.alias_path, {"version": bad, "since": "2026-12-02T00:00:00+00:00",
                                            "run_id": "by-hand", "reason": "behind serving's back"})
    time.sleep(1.5)  # three watch intervals
    model = server.get("/v1/model").json()
    assert model["version"] == first and model["failed_loads"] == 1
    assert model["last_refused"]["version"] == bad and model["last_refused"]["serving"] == first
    assert "do not match the sha256 recorded at promotion" in model["last_refused"]["reason"]
    reply = server.get("/v1/recommendations/u0")
    assert reply.status_code == 200 and reply.json()["model_version"] == first
    assert server.get("/readyz").json()["version"] == first
    assert "tidal_model_failed_loads_total 1" in server.get("/metrics").text
    # It is not retried while the alias stays; a good promotion afterwards is served.
    time.sleep(1.0)
    assert server.get("/v1/model").json()["failed_loads"] == 1
    good = promote(serving_home, trained.paths[2], "run-2", trained.newest[2])
    server.wait_ready(good)


def test_a_version_with_non_finite_weights_is_refused(trained, serving_home, start_serving, tmp_path):
    import torch

    from models.recommender import Checkpoint

    first = promote(serving_home, trained.paths[0], "run-0", trained.newest[0], kind="full")
    server = start_serving()
    server.wait_ready(first)
    broken = Checkpoint.load(trained.paths[1])
    name = next(iter(broken.weights))
    broken.weights[name] = torch.full_like(broken.weights[name], float("nan"))
    broken.save(tmp_path / "nan.pt")
    bad = promote(serving_home, tmp_path / "nan.pt", "run-nan", trained.newest[1])  # checksums match: still refused
    time.sleep(1.5)
    model = server.get("/v1/model").json()
    assert model["version"] == first and model["last_refused"] == {
        **model["last_refused"], "version": bad, "reason": f"{bad}: non-finite weights", "serving": first}


def test_a_swap_is_logged_and_counted_before_it_becomes_visible(trained, serving_home):
    """A reader who sees the new version (as /readyz does, through `current`) must already find its log line."""
    log = serving_home / "serving" / "swaps.jsonl"
    slot = ModelSlot(serving_home / "registry", ServingParams(), log)
    first = promote(serving_home, trained.paths[0], "run-0", trained.newest[0], kind="full")
    slot.check_alias()
    second = promote(serving_home, trained.paths[1], "run-1", trained.newest[1])
    seen_while_logging: list[str | None] = []
    write_line = slot.record_swap

    def record_and_look(previous, served):
        write_line(previous, served)
        seen_while_logging.append(slot.current.version if slot.current else None)

    slot.record_swap = record_and_look
    slot.check_alias()
    assert seen_while_logging == [first]  # the line was written while `first` still served
    assert slot.current.version == second and slot.counters.swaps == 1
    assert [s["version"] for s in read_swaps(log)] == [first, second]


def test_a_swap_log_that_cannot_be_written_does_not_keep_a_verified_model_out(trained, serving_home):
    blocker = serving_home / "not-a-folder"
    blocker.write_text("a file where the log's folder should be")
    slot = ModelSlot(serving_home / "registry", ServingParams(), blocker / "swaps.jsonl")
    first = promote(serving_home, trained.paths[0], "run-0", trained.newest[0], kind="full")
    slot.check_alias()
    assert slot.current.version == first and slot.counters.failed_loads == 0
    assert slot.counters.last_error.startswith(f"swap log {blocker / 'swaps.jsonl'} not written: ")
    assert [entry["version"] for entry in slot.counters.history] == [first]
