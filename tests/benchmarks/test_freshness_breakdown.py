"""The freshness benchmark's arithmetic (benchmarks/freshness/breakdown.py, report.py) on Airflow task instances as
the REST API returns them: each task's duration and the gap since the previous one, the first gap from the run's
start, idle runs counted apart, and the after/before ratios of the report."""

from __future__ import annotations

from benchmarks.freshness.breakdown import CHAIN, summary, task_timeline
from benchmarks.freshness.report import markdown


def task_instances(start_s: int) -> list[dict]:
    """The chain's tasks, each starting 2 s after the previous ended and running 3 s (times as the API writes them)."""
    tis, at = [], start_s
    for task_id in CHAIN:
        tis.append({"task_id": task_id, "state": "success", "start_date": f"2026-12-03T07:{at // 60:02d}:{at % 60:02d}Z",
                    "end_date": f"2026-12-03T07:{(at + 3) // 60:02d}:{(at + 3) % 60:02d}.500000Z"})
        at += 5
    return tis


def test_each_task_has_its_duration_and_the_gap_since_the_previous_one():
    timeline = task_timeline(task_instances(0) + [{"task_id": "drift_response", "start_date": None}])
    assert [t["task"] for t in timeline] == list(CHAIN)
    assert [t["duration_s"] for t in timeline] == [3.5] * len(CHAIN)
    assert [t["gap_s"] for t in timeline] == [None] + [1.5] * (len(CHAIN) - 1)


def test_the_summary_counts_idle_runs_apart_and_takes_medians_over_cycles():
    timeline = task_timeline(task_instances(0))
    cycle = {"run_id": "a", "run_type": "asset_triggered", "files": 2, "start": timeline[0]["start"] - 1.0,
             "end": timeline[-1]["end"], "idle": False, "tasks": timeline, "start_to_promoted_s": 33.5}
    idle = {"run_id": "t", "run_type": "scheduled", "files": 0, "start": 0.0, "end": 1.0, "idle": True}
    rows = [{"file": f"events-{n:06d}.jsonl", "batch_id": n, "run_id": "a", "landed_at": cycle["start"] - wait,
             "promoted_at": 1.0, "served_at": 1.0, "landed_to_online_s": 10.0, "landed_to_served_s": 40.0 + wait,
             "landed_to_promoted_s": 35.0 + wait} for n, wait in enumerate([2.0, 4.0])]
    result = summary(rows, [cycle, idle])
    assert (result["cycles"], result["idle_runs"], result["run_types"]) == (1, 1, ["asset_triggered"])
    assert result["landed_to_run_start_s"] == {"n": 2, "p50": 3.0, "p95": 3.9, "max": 4.0}
    assert result["landed_to_promoted_s"]["p50"] == 38.0 and result["not_promoted"] == []
    assert result["tasks"]["validate"] == {"duration_s": 3.5, "gap_before_s": 1.5}

    def mode(name: str, factor: float) -> dict:
        scaled = {**result, "landed_to_promoted_s": {**result["landed_to_promoted_s"],
                                                     "p50": result["landed_to_promoted_s"]["p50"] * factor}}
        return {"mode": name, "what": name, "rows": rows, "cycles": [cycle, idle], "summary": scaled,
                "load_average_before": (1.0, 1.0, 1.0), "load_average_after": (2.0, 2.0, 2.0)}

    text = markdown({"files_per_mode": 2, "interval_s": 30, "every_minutes": 5, "cpus": 2, "started_at": "then",
                     "wall_s": 60, "modes": {"schedule": mode("schedule", 4.0), "landing": mode("landing", 1.0)}})
    promoted = next(line for line in text.splitlines() if line.startswith("| **landed -> promoted**"))
    assert promoted.split(" | ")[1:3] == ["2 / 152.0 / 38.9 / 39.0", "2 / 38.0 / 38.9 / 39.0"]
    assert promoted.split(" | ")[3] == "0.25"  # p50 after / before
