"""finetune: train a candidate from the production checkpoint on the examples it has not seen yet.

With no production model yet, the same entry point trains the first model from scratch (a full retrain). The
freshest `gate.holdout_fraction` of the new examples is held out for the gate and saved with the candidate; the
next cycle trains on it, so no example is lost to evaluation. Examples of a rejected cycle are not lost either:
training always covers every batch after the production model's last one.

Run: `tidal finetune --batch-ids 3 4` (normally the DAG or `tidal cycle` calls `run_finetune`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from jobs.datasets import TRAINING_COLUMNS, example_batch_ids, load_examples, load_item_metadata, recent_history
from tidal.config import ConfigError, Settings, load_settings
from tidal.registry import HOLDOUT_FILE, METADATA_FILE, MODEL_FILE, REFERENCE_FILE, Registry
from tidal.storage import StorageLayout, atomic_write_json, write_step_summary


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


def boosted_for_drift(cfg, layout: StorageLayout, drift_params) -> tuple[Any, bool]:
    """While mild drift lasts (jobs.drift's state file), fine-tune harder: more epochs and/or a larger lr."""
    from dataclasses import replace

    from jobs.drift import read_drift_state

    if not read_drift_state(layout)["boost"]:
        return cfg, False
    lr = cfg.finetune_lr if cfg.finetune_lr is not None else cfg.lr
    epochs = cfg.finetune_epochs if cfg.finetune_epochs is not None else cfg.epochs
    return replace(cfg, finetune_epochs=max(1, round(epochs * drift_params.boost_epochs_factor)),
                   finetune_lr=lr * drift_params.boost_lr_factor), True


def drift_reference_sample(examples: pd.DataFrame, features: tuple[str, ...], max_rows: int, seed: int) -> pd.DataFrame:
    """The drift reference stored with a model: its training examples' drift features, under the feature store's
    names (the training frames call event_weight `weight`), at most `max_rows` of them. Every feature must be there:
    a reference without one would make every later drift run of the chain skip that feature."""
    from jobs.drift import require_features, with_feature_store_names

    examples = with_feature_store_names(examples)
    require_features(examples, features, "training examples")
    sample = examples[list(features)]
    return sample.sample(n=max_rows, random_state=seed) if len(sample) > max_rows else sample


def drift_reference_for(production, training: pd.DataFrame, drift_params, seed: int) -> pd.DataFrame:
    """An incremental candidate carries its parent's reference (the anchor's training sample), checked complete so
    a reference from before a feature was kept is not copied into new versions; a first model samples its own."""
    from jobs.drift import production_reference

    if production is not None:
        return production_reference(production, drift_params)
    return drift_reference_sample(training, drift_params.reference_columns, drift_params.reference_max_rows, seed)


def stage_candidate(registry: Registry, run_id: str, result) -> tuple[Path, bool]:
    """A fresh candidate folder for the run, with the model saved only if its loss and weights are finite: a
    NaN/Inf model is never written where promotion could pick it up. Shared by fine-tune and full retrain."""
    candidate_dir = registry.new_candidate_dir(run_id)
    finite = bool(result.finite and result.checkpoint.weights_finite())
    if finite:
        result.checkpoint.save(candidate_dir / MODEL_FILE)
    return candidate_dir, finite


def run_finetune(settings: Settings, run_id: str, reports_dir: Path | None = None) -> dict[str, Any]:
    from models.recommender import Checkpoint, train

    layout = StorageLayout(settings.home).ensure()
    registry = Registry(layout.registry)
    params = settings.params
    cfg = train_config(settings)
    production = registry.production()

    after_batch = production.metadata["last_batch_id"] if production else -1
    batch_ids = [b for b in example_batch_ids(layout) if b > after_batch]
    new = load_examples(layout, batch_ids)
    pending = (pd.read_parquet(production.path / HOLDOUT_FILE)
               if production and (production.path / HOLDOUT_FILE).exists() else new.iloc[:0])
    summary: dict[str, Any] = {"run_id": run_id, "batch_ids": batch_ids, "new_examples": len(new),
                               "pending_holdout_examples": len(pending)}
    if len(new) < params.finetune.min_examples:
        summary.update(status="skipped", reason=f"{len(new)} new examples < finetune.min_examples "
                                                f"({params.finetune.min_examples})")
        return _finish(summary, reports_dir)

    train_part, holdout = split_holdout(new, params.gate.holdout_fraction)
    training = pd.concat([pending, train_part], ignore_index=True)
    # Before training, so a configured drift feature the data lacks fails the run in seconds, not after the epochs.
    reference = drift_reference_for(production, training, params.drift, params.base.seed)
    init_from = Checkpoint.load(production.model_path) if production else None
    if production:
        cfg, summary["drift_boost"] = boosted_for_drift(cfg, layout, params.drift)
    anchor = None
    if production:
        anchor_version = production.metadata["anchor"]
        anchor = init_from if anchor_version == production.version else Checkpoint.load(
            registry.version(anchor_version).model_path)
    replay = (recent_history(layout, before_batch=batch_ids[0], max_rows=params.finetune.replay_max_rows)
              if production else None)
    kind = "incremental" if production else "full"
    print(f"[finetune] {kind}: {len(training)} examples ({len(pending)} carried over), "
          f"{0 if replay is None else len(replay)} replay rows, {len(holdout)} held out", flush=True)
    result = train(training[TRAINING_COLUMNS], cfg=cfg, init_from=init_from, anchor=anchor, replay=replay,
                   items=load_item_metadata(layout), progress=lambda msg: print(f"[finetune] {msg}", flush=True))

    candidate_dir, finite = stage_candidate(registry, run_id, result)
    holdout.to_parquet(candidate_dir / HOLDOUT_FILE, index=False)
    reference.to_parquet(candidate_dir / REFERENCE_FILE, index=False)
    times = pd.to_datetime(new["timestamp"], unit="s", utc=True)
    metadata = {
        "run_id": run_id,
        "kind": kind,
        "parent": production.version if production else None,
        # A full retrain anchors its own chain; promotion fills in its version.
        "anchor": production.metadata["anchor"] if production else None,
        "batch_ids": batch_ids,
        "last_batch_id": batch_ids[-1],
        "rows": {"trained": len(training), "held_out": len(holdout), "replay": 0 if replay is None else len(replay)},
        "event_time_range": [times.min().isoformat(), times.max().isoformat()],
        "finite": finite,
        "losses": [float(x) for x in result.losses],
        "train_cpu_s": round(result.train_cpu_s, 3),
        "params": {"train": {f.name: getattr(cfg, f.name) for f in fields(cfg)}},
        "code_version": code_version(),
    }
    atomic_write_json(candidate_dir / METADATA_FILE, metadata)
    summary.update(status="trained" if finite else "rejected_non_finite", kind=kind, parent=metadata["parent"],
                   trained_examples=len(training), held_out_examples=len(holdout), finite=finite,
                   losses=metadata["losses"], train_cpu_s=metadata["train_cpu_s"], candidate=str(candidate_dir))
    return _finish(summary, reports_dir)


def _finish(summary: dict[str, Any], reports_dir: Path | None) -> dict[str, Any]:
    if reports_dir is not None:
        write_step_summary(reports_dir, "finetune", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal finetune", description="Fine-tune a candidate on unseen examples.")
    parser.add_argument("--run-id", required=True, help="names the candidate and the report folder")
    args = parser.parse_args(argv)
    settings = load_settings()
    summary = run_finetune(settings, args.run_id, StorageLayout(settings.home).run_reports(args.run_id))
    print(json.dumps(summary, indent=2))
    return 0 if summary["status"] != "rejected_non_finite" else 1


if __name__ == "__main__":
    raise SystemExit(main())
