"""gate: score the candidate and production on the freshest held-out slice and decide whether to promote.

The candidate passes when its weights are finite and its Recall@k is no worse than production's beyond
`gate.recall_tolerance`. With no production model yet, a finite candidate passes (it is the first model).
The decision and both sets of metrics are written into the candidate's metadata and the step summary.

Run: `tidal gate --run-id RUN`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from tidal.config import Settings
from tidal.datasets import recent_history
from tidal.registry import HOLDOUT_FILE, METADATA_FILE, MODEL_FILE, Registry
from tidal.step_cli import run_step_main
from tidal.storage import StorageLayout, atomic_write_json, record_summary


def gate_decision(candidate: dict | None, production: dict | None, *, finite: bool, recall_tolerance: float,
                  k: int, production_unreadable: str | None = None) -> tuple[bool, str]:
    """Pure decision rule, given the two metric dicts (None for a model that does not exist, or that this code
    cannot read: `production_unreadable` says why, and only a full retrain can get that far)."""
    key = f"recall_at_{k}"
    if not finite:
        return False, "candidate weights or loss are not finite"
    if candidate is None:
        return False, "no candidate metrics"
    if production is None and production_unreadable:
        return True, f"production cannot be scored ({production_unreadable}): the full retrain replaces it on its own"
    if production is None:
        return True, "first model: no production to compare with"
    if math.isnan(candidate[key]) or math.isnan(production[key]):
        # No user of the held-out slice could be evaluated: no evidence, so fail closed. The next cycle trains on
        # these examples again (from production), so nothing is lost.
        return False, "no evaluable users in the held-out slice (metric is NaN); production kept"
    if candidate[key] + recall_tolerance < production[key]:
        return False, (f"candidate {key} {candidate[key]:.4f} trails production {production[key]:.4f} "
                       f"by more than {recall_tolerance}")
    return True, f"candidate {key} {candidate[key]:.4f} vs production {production[key]:.4f} (tolerance {recall_tolerance})"


def run_gate(settings: Settings, run_id: str, reports_dir: Path | None = None) -> dict[str, Any]:
    from models.metrics import evaluate_window
    from models.recommender import Checkpoint, UnsupportedCheckpointFormat

    layout = StorageLayout(settings.home)
    registry = Registry(layout.registry)
    k = settings.params.gate.k
    candidate_dir = registry.candidate_dir(run_id)
    metadata = registry.candidate_metadata(run_id)
    if metadata is None:
        return record_summary(reports_dir, "gate", {"run_id": run_id, "status": "skipped", "passed": False,
                                                    "reason": "no candidate for this run (nothing new to train on)"})

    finite = bool(metadata["finite"]) and (candidate_dir / MODEL_FILE).exists()
    holdout = pd.read_parquet(candidate_dir / HOLDOUT_FILE)
    # History for the exclusion and "seen before" rules: the newest examples before the held-out slice.
    history = recent_history(layout, before_batch=metadata["last_batch_id"] + 1,
                             max_rows=settings.params.finetune.replay_max_rows + metadata["rows"]["trained"])
    history = history[~history["event_id"].isin(holdout["event_id"])]
    candidate_metrics = production_metrics = None
    if finite:
        candidate = Checkpoint.load(candidate_dir / MODEL_FILE)
        finite = candidate.weights_finite()
        candidate_metrics = evaluate_window(candidate, history, holdout, k=k) if finite else None
    production, unreadable = registry.production(), None
    if production is not None:
        try:
            production_model = Checkpoint.load(production.model_path)
        except UnsupportedCheckpointFormat as old_format:
            if metadata["kind"] != "full":
                raise
            unreadable = f"{production.version}: {old_format}"
        else:
            production_metrics = evaluate_window(production_model, history, holdout, k=k)
    passed, reason = gate_decision(candidate_metrics, production_metrics, finite=finite,
                                   recall_tolerance=settings.params.gate.recall_tolerance, k=k,
                                   production_unreadable=unreadable)
    metadata["gate"] = {"passed": passed, "reason": reason, "candidate": candidate_metrics,
                        "production": production_metrics, "production_version": production.version if production else None,
                        "held_out_examples": len(holdout)}
    metadata["metrics"] = candidate_metrics
    atomic_write_json(candidate_dir / METADATA_FILE, metadata)
    print(f"[gate] {'PASS' if passed else 'FAIL'}: {reason}", flush=True)
    summary = {"run_id": run_id, "status": "evaluated", "passed": passed, "reason": reason, "finite": finite,
               "candidate": candidate_metrics, "production": production_metrics,
               "production_version": production.version if production else None, "held_out_examples": len(holdout)}
    return record_summary(reports_dir, "gate", summary)



def main(argv: list[str] | None = None) -> int:
    return run_step_main(argv, prog="tidal gate", description="Gate a run's candidate against production.",
                         run=lambda settings, args, reports: run_gate(settings, args.run_id, reports))


if __name__ == "__main__":
    raise SystemExit(main())
