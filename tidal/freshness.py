"""Freshness, measured where it matters: from an event file landing to the online store, and to a model trained
on it answering requests.

Per landing file:
- `landed_at`: the file's modification time (producers rename a finished file into landing/events/, so that is
  when it arrived);
- `online_at`: when the features micro-batch that took the file wrote the online store (its manifest's
  `online_store.written_at`);
- `served_at`: when serving first answered with a version trained on that batch: the earliest swap (serving's
  swaps log, `servable_at`) to the first version whose `batch_ids` hold the batch, or to any later version (each
  later version descends from it or retrained over it).

`freshness_report` gives every file's figures and the p50/p95 of both delays, in seconds.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tidal.manifests import manifest_batch_ids, read_batch_manifests
from tidal.registry import Registry, parse_utc
from tidal.storage import StorageLayout


def read_swaps(swaps_log: Path) -> list[dict[str, Any]]:
    """Every swap serving recorded, oldest first (a missing log: none)."""
    if not swaps_log.exists():
        return []
    return [json.loads(line) for line in swaps_log.read_text().splitlines() if line.strip()]


def first_version_per_batch(registry: Registry) -> dict[int, int]:
    """batch id -> the number of the first version trained on it."""
    first: dict[int, int] = {}
    for mv in registry.versions():
        for batch_id in mv.metadata.get("batch_ids") or []:
            first.setdefault(int(batch_id), int(mv.version[1:]))
    return first


def file_freshness(layout: StorageLayout) -> list[dict[str, Any]]:
    """One row per landing file a micro-batch took: landed_at, online_at, served_at (epoch s or None), delays."""
    manifests = read_batch_manifests(layout, manifest_batch_ids(layout))
    first_version = first_version_per_batch(Registry(layout.registry))
    swaps = [(int(s["version"][1:]), parse_utc(s["servable_at"]).timestamp()) for s in read_swaps(layout.serving_swaps)]
    rows = []
    for manifest in manifests:
        batch_id = manifest["batch_id"]
        written = (manifest.get("online_store") or {}).get("written_at")
        online_at = parse_utc(written).timestamp() if written else None
        version = first_version.get(batch_id)
        served = [at for number, at in swaps if version is not None and number >= version]
        served_at = min(served) if served else None
        for name in manifest["files"]:
            path = layout.landing_events / Path(name.removeprefix("file:")).name
            if not path.exists():
                continue
            landed_at = path.stat().st_mtime
            rows.append({"file": path.name, "batch_id": batch_id, "landed_at": landed_at, "online_at": online_at,
                         "served_at": served_at,
                         "landed_to_online_s": None if online_at is None else online_at - landed_at,
                         "landed_to_served_s": None if served_at is None else served_at - landed_at})
    return rows


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    data = np.asarray(values, dtype=float)
    return {"n": len(values), "p50": round(float(np.percentile(data, 50)), 1),
            "p95": round(float(np.percentile(data, 95)), 1), "max": round(float(data.max()), 1)}


def freshness_report(layout: StorageLayout, since_s: float | None = None) -> dict[str, Any]:
    """The files landed since `since_s` (all when None): each one's figures, and p50/p95 of both delays."""
    rows = [r for r in file_freshness(layout) if since_s is None or r["landed_at"] >= since_s]
    return {"files": rows,
            "landed_to_online_s": percentiles([r["landed_to_online_s"] for r in rows
                                               if r["landed_to_online_s"] is not None]),
            "landed_to_served_s": percentiles([r["landed_to_served_s"] for r in rows
                                               if r["landed_to_served_s"] is not None]),
            "not_served_yet": [r["file"] for r in rows if r["served_at"] is None],
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
