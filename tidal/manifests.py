"""The features job's per-batch records, read by validate, compact and the landing check as well as written by it.

Each streaming micro-batch writes a manifest (counts that reconcile, files, quarantine reasons) as its last act,
and fixes its clock (the "now" it judges future timestamps by) at its first attempt, so a replay classifies every
record as the first attempt did. Both live under features/state/ and are plain JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidal.storage import StorageLayout, atomic_write_json, read_json


def manifest_batch_ids(layout: StorageLayout) -> list[int]:
    """Every batch that finished (its manifest is written last), in order."""
    folder = layout.feature_state / "batches"
    return sorted(int(p.stem) for p in folder.glob("*.json")) if folder.exists() else []


def latest_manifest_before(layout: StorageLayout, batch_id: int) -> dict | None:
    """The manifest of the newest finished batch before `batch_id` (what a replay of `batch_id` starts from)."""
    earlier = [b for b in manifest_batch_ids(layout) if b < batch_id]
    return read_json(batch_manifest_path(layout, earlier[-1])) if earlier else None


def latest_manifest(layout: StorageLayout) -> dict | None:
    """The manifest of the newest finished batch."""
    done = manifest_batch_ids(layout)
    return read_json(batch_manifest_path(layout, done[-1])) if done else None


def batch_clock(layout: StorageLayout, batch_id: int, now_epoch_s: float) -> float:
    """The "now" a micro-batch judges future timestamps by, fixed at its first attempt.

    A batch replayed after a crash must classify every record exactly as the first attempt did, or an event near
    the skew limit could be quarantined once and accepted on replay; so the first attempt records its clock under
    features/state/clock/ and every replay reads it back.
    """
    path = batch_clock_path(layout, batch_id)
    if path.exists():
        return float(read_json(path)["now_epoch_s"])
    atomic_write_json(path, {"batch_id": batch_id, "now_epoch_s": now_epoch_s})
    return now_epoch_s


def batch_clock_path(layout: StorageLayout, batch_id: int) -> Path:
    return layout.feature_state / "clock" / f"{batch_id:08d}.json"


def batch_manifest_path(layout: StorageLayout, batch_id: int) -> Path:
    return layout.feature_state / "batches" / f"{batch_id:08d}.json"


def read_batch_manifests(layout: StorageLayout, batch_ids: list[int]) -> list[dict]:
    return [read_json(batch_manifest_path(layout, b)) for b in batch_ids]


def summarize_batches(manifests: list[dict], seconds: float) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for m in manifests:
        for reason, count in m["quarantine_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    summary = {
        "batch_ids": [m["batch_id"] for m in manifests],
        "files": sum(len(m["files"]) for m in manifests),
        "landed": sum(m["landed"] for m in manifests),
        "accepted": sum(m["accepted"] for m in manifests),
        "quarantined": sum(m["quarantined"] for m in manifests),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "duplicates": sum(m["duplicates"] for m in manifests),
        "lines_read_by_line_reader": sum(m.get("lines_read_by_line_reader", 0) for m in manifests),
        "outlier_events_excluded": sum(m.get("outlier_events_excluded", 0) for m in manifests),
        "outlier_users": sorted({u for m in manifests for u in m.get("outlier_users", [])}),
        "seconds": round(seconds, 2),
    }
    # The reconciliation every downstream reader relies on; a mismatch is a bug, never a data problem.
    if summary["landed"] != summary["accepted"] + summary["quarantined"] + summary["duplicates"]:
        raise RuntimeError(f"feature counts do not reconcile: {summary}")
    return summary
