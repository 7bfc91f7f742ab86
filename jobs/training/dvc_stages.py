"""The full retrain as `dvc repro` runs it: the retrain pipeline's stages at fixed paths, run id "dvc".

dvc.yaml is generated from tidal/pipelines.py (`tidal pipelines dvc-yaml`); each stage calls
`python -m jobs.cli dvc-stage NAME`, which lands here. Data stays under TIDAL_HOME; metrics and plots go to the DVC
project's metrics/ (small, committed to git, so `dvc metrics diff` and `dvc plots diff` can compare commits).
Promotion stays an operator's step, so this never moves the production alias.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from jobs.training.build import build_training_set, retrain_dir
from jobs.training.full_retrain import train_from_scratch, validate_training_set
from jobs.training.request import check_request
from tidal.config import Settings, load_settings
from tidal.datasets import load_training_set
from tidal.registry import HOLDOUT_FILE, METADATA_FILE, MODEL_FILE, Registry
from tidal.storage import StorageLayout, atomic_write_json, read_json


DVC_RUN_ID = "dvc"
STAGES = ("build_training_set", "validate", "train", "evaluate")  # as dvc.yaml names them


def dvc_paths(settings: Settings, metrics_dir: Path = Path("metrics")) -> dict[str, Path]:
    """Data under TIDAL_HOME; metrics and plots under the DVC project's metrics/ (small, committed to git, so that
    `dvc metrics diff` and `dvc plots diff` can compare commits)."""
    layout = StorageLayout(settings.home)
    return {"build": retrain_dir(layout, DVC_RUN_ID) / "build.json", "reports": metrics_dir,
            "docs": layout.reports / "retrain", "metrics": metrics_dir / "retrain.json",
            "losses": metrics_dir / "losses.csv", "quality": metrics_dir / "quality.csv"}


def evaluate_candidate(settings: Settings, run_id: str) -> dict[str, Any]:
    """Reproducible scores of a retrain candidate: its held-out slice against its own training set as history."""
    from models.metrics import evaluate_window
    from models.recommender import Checkpoint

    registry = Registry(StorageLayout(settings.home).registry)
    candidate_dir = registry.candidate_dir(run_id)
    metadata = read_json(candidate_dir / METADATA_FILE)
    holdout = pd.read_parquet(candidate_dir / HOLDOUT_FILE)
    built = read_json(dvc_paths(settings)["build"]) if run_id == DVC_RUN_ID else None
    examples = load_training_set(built["examples_path"]) if built else None
    history = examples[~examples["event_id"].isin(holdout["event_id"])] if examples is not None else holdout.iloc[:0]
    metrics = evaluate_window(Checkpoint.load(candidate_dir / MODEL_FILE), history, holdout, k=settings.params.gate.k)
    return {**metrics, "trained_examples": metadata["rows"]["trained"], "held_out_examples": len(holdout),
            "final_loss": metadata["losses"][-1] if metadata["losses"] else None, "epochs": len(metadata["losses"])}


def run_stage(settings: Settings, stage: str) -> dict[str, Any]:
    paths = dvc_paths(settings)
    paths["reports"].mkdir(parents=True, exist_ok=True)
    request = check_request(settings, {"reason": "dvc repro", "trigger": "dvc",
                                       "history_days": settings.params.retrain.history_days})
    if stage == "build_training_set":
        built = build_training_set(settings, DVC_RUN_ID, request["history_days"])
        atomic_write_json(paths["build"], built)
        return built
    built = read_json(paths["build"])
    if stage == "validate":
        summary = validate_training_set(settings, DVC_RUN_ID, built, paths["docs"])
        metrics = {k: summary[k] for k in ("examples", "failing_example_rows", "bad_row_share")}
        atomic_write_json(paths["reports"] / "validate.json", metrics)
        return summary
    if stage == "train":
        trained = train_from_scratch(settings, DVC_RUN_ID, built, request)
        rows = "\n".join(f"{i + 1},{loss}" for i, loss in enumerate(trained["losses"]))
        paths["losses"].write_text(f"epoch,loss\n{rows}\n")
        return trained
    if stage == "evaluate":
        metrics = evaluate_candidate(settings, DVC_RUN_ID)
        atomic_write_json(paths["metrics"], metrics)
        # Quality over versions: every registry version's gate metrics, then this candidate.
        key_r, key_n = f"recall_at_{settings.params.gate.k}", f"ndcg_at_{settings.params.gate.k}"
        lines = ["version,kind,recall,ndcg"]
        for mv in Registry(StorageLayout(settings.home).registry).versions():
            m = mv.metadata.get("metrics") or {}
            if key_r in m:
                lines.append(f"{mv.version},{mv.metadata['kind']},{m[key_r]},{m[key_n]}")
        lines.append(f"candidate,full,{metrics[key_r]},{metrics[key_n]}")
        paths["quality"].write_text("\n".join(lines) + "\n")
        return metrics
    raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal dvc-stage", description="Run one stage of dvc.yaml (dvc repro does).")
    parser.add_argument("stage", choices=STAGES)
    args = parser.parse_args(argv)
    print(json.dumps(run_stage(load_settings(), args.stage), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
