"""What every training run leaves for the gate: a candidate folder in the registry, written the same way by the
fine-tune and the full retrain.

A candidate holds the model (only if its loss and weights are finite: a NaN/Inf model is never written where
promotion could pick it up), the held-out slice the gate scores it on, the drift reference, and its metadata
(lineage, rows, losses, hyperparameters, code version), which is written last.
"""

from __future__ import annotations

import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from tidal.config import ConfigError, Settings
from tidal.registry import HOLDOUT_FILE, METADATA_FILE, MODEL_FILE, REFERENCE_FILE, Registry
from tidal.storage import atomic_write_json


def train_config(settings: Settings):
    """params.yaml's `train` section as the model's TrainConfig; unknown or mistyped keys are refused."""
    from models.recommender import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings.params.train) - known)
    if unknown:
        raise ConfigError(f"params.yaml train: unknown keys {unknown}; valid keys are {sorted(known)}")
    return TrainConfig(**{**settings.params.train, "seed": settings.params.base.seed})


def code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def split_holdout(examples: pd.DataFrame, holdout_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time-ordered split: the freshest share is the gate's held-out slice."""
    cut = int(round(len(examples) * (1.0 - holdout_fraction)))
    return examples.iloc[:cut].reset_index(drop=True), examples.iloc[cut:].reset_index(drop=True)


def event_time_range(examples: pd.DataFrame) -> list[str] | None:
    if not len(examples):
        return None
    times = pd.to_datetime(examples["timestamp"], unit="s", utc=True)
    return [times.min().isoformat(), times.max().isoformat()]


def newest_event_time(trained_on: pd.DataFrame) -> str | None:
    """The newest event the model learned from (not the held-out slice it was gated on): where freshness is
    measured from, up to the moment serving answers with this model."""
    span = event_time_range(trained_on)
    return span[1] if span else None


def candidate_metadata(run_id: str, kind: str, *, parent: str | None, anchor: str | None, batch_ids: list[int],
                       rows: dict[str, int], time_range: list[str] | None, trained_on: pd.DataFrame, result: Any,
                       finite: bool, cfg: Any, extra_params: dict[str, Any] | None = None, **extra: Any
                       ) -> dict[str, Any]:
    """The metadata of a new version, for both kinds of training run; `extra` (and `extra_params`, beside the
    train section) hold what only one kind records."""
    return {
        "run_id": run_id,
        "kind": kind,
        "parent": parent,
        "anchor": anchor,  # a full retrain anchors its own chain: promotion fills in its version
        "batch_ids": batch_ids,
        "last_batch_id": batch_ids[-1],
        "rows": rows,
        "event_time_range": time_range,
        "newest_event_time": newest_event_time(trained_on),
        "finite": finite,
        "losses": [float(x) for x in result.losses],
        "train_cpu_s": round(result.train_cpu_s, 3),
        **extra,
        "params": {"train": {f.name: getattr(cfg, f.name) for f in fields(cfg)}, **(extra_params or {})},
        "code_version": code_version(),
    }


def write_candidate(registry: Registry, run_id: str, result: Any, holdout: pd.DataFrame, reference: pd.DataFrame,
                    metadata_of: Any) -> tuple[Path, dict[str, Any]]:
    """A fresh candidate folder for the run: the model if finite, the held-out slice, the drift reference, then
    the metadata (`metadata_of(finite)`), last. Returns the folder and the metadata."""
    candidate_dir = registry.new_candidate_dir(run_id)
    finite = bool(result.finite and result.checkpoint.weights_finite())
    if finite:
        result.checkpoint.save(candidate_dir / MODEL_FILE)
    holdout.to_parquet(candidate_dir / HOLDOUT_FILE, index=False)
    reference.to_parquet(candidate_dir / REFERENCE_FILE, index=False)
    metadata = metadata_of(finite)
    atomic_write_json(candidate_dir / METADATA_FILE, metadata)
    return candidate_dir, metadata
