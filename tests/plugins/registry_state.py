"""A tidal home as two incremental cycles and one rejected candidate leave it, built with the real functions the
pipeline's steps end with (Registry.new_candidate_dir + jobs.release.promote.run_promote for the gate's decision,
jobs.drift statistics/report for the drift page, jobs.validation.validate for the Data Docs, write_step_summary for
the summaries) instead of Spark and torch: a cycle through the DAG takes minutes, these take seconds.

Also `many_versions(settings, n)` for the page-load benchmark (benchmarks/ui/page_load.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from tidal.registry import Registry
from tidal.storage import StorageLayout, atomic_write_json, write_step_summary


QUARANTINE = {"malformed_json": 3, "missing_user_id": 2, "future_event_time": 1}
START = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def stage_candidate(registry: Registry, run_id: str, n: int, *, kind: str, parent: str | None,
                    anchor: str | None, recall: float) -> dict[str, Any]:
    """A candidate folder as the fine-tune and the gate leave it; returns the gate's summary."""
    staged = registry.new_candidate_dir(run_id)
    (staged / "model.pt").write_bytes(f"weights of {run_id}".encode())
    metrics = {"recall_at_10": recall, "ndcg_at_10": round(recall * 0.6, 4)}
    production = registry.production()
    production_metrics = (production.metadata.get("metrics") if production else None)
    passed = production_metrics is None or recall >= production_metrics["recall_at_10"] - 0.02
    reason = ("first model: no production to compare with" if production is None else
              f"recall@10 {recall:.4f} vs production {production_metrics['recall_at_10']:.4f} "
              f"({'within' if passed else 'below'} the 0.02 tolerance)")
    gate = {"passed": passed, "reason": reason, "candidate": metrics, "production": production_metrics,
            "production_version": production.version if production else None, "held_out_examples": 40}
    newest = START + timedelta(minutes=10 * n)
    atomic_write_json(staged / "metadata.json", {
        "run_id": run_id, "kind": kind, "parent": parent, "anchor": anchor, "batch_ids": [2 * n, 2 * n + 1],
        "last_batch_id": 2 * n + 1, "rows": {"trained": 400 + n, "held_out": 40},
        "event_time_range": [iso(newest - timedelta(minutes=9)), iso(newest)], "newest_event_time": iso(newest),
        "finite": True, "metrics": metrics, "gate": gate})
    return {"run_id": run_id, "status": "evaluated", **gate}


def write_cycle_reports(reports: Path, run_id: str, n: int, *, drift: bool, data_docs: bool) -> None:
    """The features, validate and drift summaries of one cycle, with the drift page and the Data Docs site."""
    from tests.jobs.validation.test_validate import clean_examples

    reports.mkdir(parents=True, exist_ok=True)
    quarantined = sum(QUARANTINE.values()) if n == 0 else 1
    write_step_summary(reports, "features", {
        "run_id": run_id, "files": 2, "landed": 400 + quarantined + 10 * n, "accepted": 400 + 10 * n,
        "quarantined": quarantined, "duplicates": 0,
        "quarantine_reasons": QUARANTINE if n == 0 else {"malformed_json": 1}})
    examples = clean_examples(60 + n)
    if data_docs:
        from jobs.validation.validate import UNBOUNDED_EXAMPLE_ROWS, load_suite_json, validate_examples

        report = validate_examples(examples, load_suite_json("features.examples"), reports / "data_docs",
                                   UNBOUNDED_EXAMPLE_ROWS, run_name=run_id)
        write_step_summary(reports, "validate", {"run_id": run_id, "status": "passed", **report})
    if drift:
        write_drift(reports, run_id, examples)
    else:
        write_step_summary(reports, "drift", {"run_id": run_id, "status": "skipped",
                                              "reason": "no production model yet, so no reference"})


def write_drift(reports: Path, run_id: str, reference: pd.DataFrame) -> dict[str, Any]:
    """The drift step's outputs, with the step's own functions: a shifted current window against the reference."""
    from jobs.drift.report import plot_drift, write_html_report
    from jobs.drift.statistics import drift_tests
    from tidal.config import load_settings

    params = load_settings().params.drift
    current = reference.copy()
    current["event_weight"] = current["event_weight"] * 1.8  # drift in one numeric feature
    results, level = drift_tests(reference, current, params)
    plot_drift(reference, current, results, reports / "drift.png")
    summary = {"run_id": run_id, "status": "tested", "reference_version": "v000001", "reference_anchor": "v000001",
               "reference_rows": len(reference), "current_rows": len(current), "drift": level != "none",
               "response": level, "boost": False, "alpha": params.alpha, "d_min": params.d_min,
               "d_severe": params.d_severe, "psi_min": params.psi_min, "psi_severe": params.psi_severe,
               "features": results, "plot": str(reports / "drift.png"), "html": str(reports / "drift.html")}
    write_html_report(summary, reports / "drift.png", reports / "drift.html")
    write_step_summary(reports, "drift", summary)
    return summary


def write_quarantine(layout: StorageLayout) -> None:
    """Quarantined records as the features job writes them (one batch, with its _SUCCESS marker)."""
    from jobs.features.quarantine import COLUMNS

    rows = [{"source_file": "landing/events/mixed.jsonl", "line_number": i + 1, "quarantine_reason": reason,
             "raw_record": f'{{"broken": {i}'} for i, reason in
            enumerate(r for r, count in QUARANTINE.items() for _ in range(count))]
    folder = layout.quarantine_events / "batch_id=0"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows)[[c for c in COLUMNS if c != "batch_id"]].to_parquet(folder / "part-0.parquet")
    (folder / "_SUCCESS").write_text("")


def two_cycles_and_a_rejection(settings, run_ids: list[str]) -> dict[str, Any]:
    """Cycle 1 (a full model, v000001), cycle 2 (its fine-tune, v000002, with drift) and cycle 3 (a candidate the
    gate rejects); run_ids names the three runs (Airflow run ids, so the page links to them)."""
    from jobs.release.promote import run_promote

    layout = StorageLayout(settings.home).ensure()
    registry = Registry(layout.registry)
    write_quarantine(layout)
    plan = [("full", None, None, 0.31), ("incremental", "v000001", "v000001", 0.33),
            ("incremental", "v000002", "v000001", 0.20)]
    for n, (run_id, (kind, parent, anchor, recall)) in enumerate(zip(run_ids, plan)):
        reports = layout.run_reports(run_id)
        write_cycle_reports(reports, run_id, n, drift=n > 0, data_docs=n < 2)
        gate = stage_candidate(registry, run_id, n, kind=kind, parent=parent, anchor=anchor, recall=recall)
        write_step_summary(reports, "gate", gate)
        run_promote(settings, run_id, gate, reports)
    return {"layout": layout, "registry": registry, "run_ids": run_ids}


def many_versions(settings, n: int) -> Registry:
    """n promoted versions (a full one, then fine-tunes) and a run report folder for each: the benchmark's home."""
    from jobs.release.promote import run_promote

    layout = StorageLayout(settings.home).ensure()
    registry = Registry(layout.registry)
    for i in range(n):
        run_id = f"cycle-{i:04d}"
        parent = registry.production().version if i else None
        gate = stage_candidate(registry, run_id, i, kind="incremental" if i else "full", parent=parent,
                               anchor="v000001" if i else None, recall=0.30 + 0.0005 * i)
        reports = layout.run_reports(run_id)
        reports.mkdir(parents=True, exist_ok=True)
        write_step_summary(reports, "features", {"run_id": run_id, "landed": 400, "accepted": 398,
                                                 "quarantined": 2, "duplicates": 0})
        write_step_summary(reports, "gate", gate)
        run_promote(settings, run_id, gate, reports)
    return registry
