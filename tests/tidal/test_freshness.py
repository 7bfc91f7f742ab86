"""tidal/freshness.py: landing file -> online store and -> served, from the manifests, the registry and the swap
log, with exact figures on a hand-built home."""

from __future__ import annotations

import json
import os
import shutil

from tidal.freshness import file_freshness, freshness_report, percentiles
from tidal.manifests import batch_manifest_path
from tidal.registry import Registry
from tidal.storage import StorageLayout, atomic_write_json

T0 = 1_790_000_000.0  # an epoch second


def iso(epoch_s: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).isoformat()


def make_version(layout: StorageLayout, run_id: str, batch_ids: list[int]) -> str:
    registry = Registry(layout.registry)
    staged = registry.new_candidate_dir(run_id)
    (staged / "model.pt").write_bytes(run_id.encode())
    atomic_write_json(staged / "metadata.json", {"run_id": run_id, "kind": "incremental", "batch_ids": batch_ids})
    return registry.promote_candidate(run_id, reason="test").version


def test_each_file_is_timed_from_landing_to_the_store_and_to_the_first_model_trained_on_it(tmp_path):
    layout = StorageLayout(tmp_path / "home").ensure()
    # Three files, landed at T0, T0+30, T0+60; batches 0 (files 0-1) and 1 (file 2).
    for j in range(3):
        path = layout.landing_events / f"events-{j:06d}.jsonl"
        path.write_text("{}\n")
        os.utime(path, (T0 + 30 * j, T0 + 30 * j))
    for batch_id, files, written in ((0, [0, 1], T0 + 40), (1, [2], T0 + 75)):
        path = batch_manifest_path(layout, batch_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"batch_id": batch_id, "files": [f"file://{layout.landing_events}/events-{f:06d}.jsonl"
                                                                 for f in files],
                                 "online_store": {"status": "written", "written_at": iso(written)}})
    assert make_version(layout, "run-0", [0]) == "v000001"
    assert make_version(layout, "run-1", [1]) == "v000002"
    layout.serving_swaps.parent.mkdir(parents=True)
    # v000001 servable at T0+70; serving was down while v000002 existed and came back at T0+200 on v000002.
    layout.serving_swaps.write_text("\n".join(json.dumps({"version": v, "servable_at": iso(t)})
                                              for v, t in (("v000001", T0 + 70), ("v000002", T0 + 200))) + "\n")

    rows = {r["file"]: r for r in file_freshness(layout)}
    assert {f: (r["landed_to_online_s"], r["landed_to_served_s"]) for f, r in rows.items()} == {
        "events-000000.jsonl": (40.0, 70.0), "events-000001.jsonl": (10.0, 40.0), "events-000002.jsonl": (15.0, 140.0)}
    report = freshness_report(layout, since_s=T0 + 1)
    assert [r["file"] for r in report["files"]] == ["events-000001.jsonl", "events-000002.jsonl"]
    assert report["landed_to_online_s"] == {"n": 2, "p50": 12.5, "p95": 14.8, "max": 15.0}
    assert report["not_served_yet"] == []


def test_a_file_no_served_model_has_learned_from_yet_is_named(tmp_path):
    layout = StorageLayout(tmp_path / "home").ensure()
    path = layout.landing_events / "events-000000.jsonl"
    path.write_text("{}\n")
    manifest = batch_manifest_path(layout, 0)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, {"batch_id": 0, "files": [str(path)], "online_store": {"status": "unreachable"}})
    report = freshness_report(layout)
    assert report["not_served_yet"] == ["events-000000.jsonl"]
    assert report["landed_to_online_s"]["n"] == 0 and report["landed_to_served_s"]["p50"] is None
    shutil.rmtree(layout.root / "landing")
    assert freshness_report(layout)["files"] == []  # files no longer on disk are left out, not guessed


def test_percentiles():
    assert percentiles([1.0, 2.0, 3.0, 4.0, 5.0]) == {"n": 5, "p50": 3.0, "p95": 4.8, "max": 5.0}
    assert percentiles([]) == {"n": 0, "p50": None, "p95": None, "max": None}
