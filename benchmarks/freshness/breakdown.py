"""The freshness benchmark's figures, read back from a stack's home and its Airflow runs: per file, landed -> run
started -> promoted -> served; per cycle, each task's duration and the gap before it; and their percentiles.

A cycle is a tidal_incremental run whose features task consumed landing files; an idle run (check_landing found
nothing) is counted, not broken down. Times are epoch seconds.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tidal.freshness import file_freshness, first_version_per_batch, percentiles
from tidal.pipelines import INCREMENTAL
from tidal.registry import Registry, parse_utc
from tidal.storage import StorageLayout, safe_name

# The chain a file waits for, in order: the guard, then the seven steps (tidal/pipelines.py).
CHAIN = (INCREMENTAL.guard_name, *INCREMENTAL.step_names)


def epoch(stamp: str | None) -> float | None:
    return None if not stamp else datetime.fromisoformat(stamp).timestamp()


def run_of_batch(layout: StorageLayout) -> dict[int, str]:
    """batch id -> the run whose features step made it (reports/runs/<run>/features.json)."""
    found: dict[int, str] = {}
    for path in (layout.reports / "runs").glob("*/features.json"):
        summary = json.loads(path.read_text())
        for batch_id in summary.get("batch_ids") or []:
            found[int(batch_id)] = summary.get("run_id") or path.parent.name
    return found


def file_rows(home: Path, since: float) -> list[dict[str, Any]]:
    """tidal.freshness's rows for the files landed since `since`, plus promoted_at and the run that took the file."""
    layout = StorageLayout(home)
    registry = Registry(layout.registry)
    promoted = {int(mv.version[1:]): parse_utc(mv.metadata["promoted_at"]).timestamp()
                for mv in registry.versions() if mv.metadata.get("promoted_at")}
    first_version, runs = first_version_per_batch(registry), run_of_batch(layout)
    rows = []
    for row in file_freshness(layout):
        if row["landed_at"] < since:
            continue
        version = first_version.get(row["batch_id"])
        # The first version trained on the batch, or a later one if that one was never promoted.
        at = min((t for n, t in promoted.items() if version is not None and n >= version), default=None)
        rows.append({**row, "run_id": runs.get(row["batch_id"]), "promoted_at": at,
                     "landed_to_promoted_s": None if at is None else at - row["landed_at"]})
    return rows


def task_timeline(task_instances: list[dict]) -> list[dict[str, Any]]:
    """The chain's tasks in order, each with its duration and the gap since the previous task ended."""
    by_id = {ti["task_id"]: ti for ti in task_instances}
    timeline, previous_end = [], None
    for task_id in CHAIN:
        ti = by_id.get(task_id) or {}
        start, end = epoch(ti.get("start_date")), epoch(ti.get("end_date"))
        timeline.append({"task": task_id, "state": ti.get("state"), "start": start, "end": end,
                         "duration_s": None if start is None or end is None else end - start,
                         "gap_s": None if start is None or previous_end is None else start - previous_end})
        previous_end = end if end is not None else previous_end
    return timeline


def cycle_breakdown(home: Path, runs: list[dict], task_instances: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """One entry per run: its type, when it was queued and started, and (for a cycle) the task timeline."""
    layout = StorageLayout(home)
    cycles = []
    for run in runs:
        features = layout.run_reports(run["dag_run_id"]) / "features.json"
        files = json.loads(features.read_text()).get("files", 0) if features.exists() else 0
        entry = {"run_id": run["dag_run_id"], "run_type": run["run_type"], "state": run["state"], "files": files,
                 "queued_at": epoch(run.get("queued_at")), "start": epoch(run.get("start_date")),
                 "end": epoch(run.get("end_date")), "idle": files == 0}
        if files:
            timeline = task_timeline(task_instances.get(run["dag_run_id"], []))
            first = timeline[0]
            if first["start"] is not None and entry["start"] is not None:
                first["gap_s"] = first["start"] - entry["start"]  # run started -> its first task started
            entry["tasks"] = timeline
            promote_end = next(t["end"] for t in timeline if t["task"] == "promote")
            entry["start_to_promoted_s"] = None if promote_end is None or entry["start"] is None \
                else promote_end - entry["start"]
        cycles.append(entry)
    return cycles


def median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.median(kept)), 2) if kept else None


def summary(rows: list[dict[str, Any]], cycles: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles per file, medians per task over the cycles, and where a file's wait went."""
    # A file's row names its run as the reports folder does (safe_name of the run id).
    starts = {safe_name(c["run_id"]): c["start"] for c in cycles}
    waits = [starts[r["run_id"]] - r["landed_at"] for r in rows if starts.get(r["run_id"]) is not None]
    busy = [c for c in cycles if not c["idle"]]
    return {
        "landed_to_promoted_s": percentiles([r["landed_to_promoted_s"] for r in rows
                                             if r["landed_to_promoted_s"] is not None]),
        "landed_to_served_s": percentiles([r["landed_to_served_s"] for r in rows if r["landed_to_served_s"] is not None]),
        "landed_to_online_s": percentiles([r["landed_to_online_s"] for r in rows if r["landed_to_online_s"] is not None]),
        "landed_to_run_start_s": percentiles(waits),
        "not_promoted": [r["file"] for r in rows if r["promoted_at"] is None],
        "cycles": len(busy), "idle_runs": len(cycles) - len(busy),
        "run_types": sorted({c["run_type"] for c in busy}),
        "files_per_cycle": median([c["files"] for c in busy]),
        "cycle_start_to_promoted_s": median([c.get("start_to_promoted_s") for c in busy]),
        "cycle_start_to_end_s": median([c["end"] - c["start"] for c in busy if c["end"] and c["start"]]),
        "tasks": {task: {"duration_s": median([t["duration_s"] for c in busy for t in c["tasks"] if t["task"] == task]),
                         "gap_before_s": median([t["gap_s"] for c in busy for t in c["tasks"] if t["task"] == task])}
                  for task in CHAIN},
    }
