"""finetune: train a candidate from the production checkpoint on the examples it has not seen yet.

With no production model yet, the same entry point trains the first model from scratch (a full retrain). The
freshest `gate.holdout_fraction` of the new examples is held out for the gate and saved with the candidate; the
next cycle trains on it, so no example is lost to evaluation. Examples of a rejected cycle are not lost either:
training always covers every batch after the production model's last one.

Run: `tidal finetune --run-id RUN` (normally the DAG or `tidal cycle` calls `run_finetune`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from jobs.drift.reference import drift_reference_sample, production_reference
from jobs.training.candidate import candidate_metadata, event_time_range, split_holdout, train_config, write_candidate
from tidal.config import DriftParams, Settings
from tidal.datasets import TRAINING_COLUMNS, example_batch_ids, load_examples, load_item_metadata, recent_history
from tidal.drift_state import read_drift_state
from tidal.registry import HOLDOUT_FILE, ModelVersion, Registry
from tidal.step_cli import run_step_main
from tidal.storage import StorageLayout, record_summary


@dataclass(frozen=True)
class UnseenExamples:
    """What a fine-tune learns from: the batches after production's last one, plus production's held-out slice."""

    batch_ids: list[int]
    new: pd.DataFrame       # the unseen batches' examples
    pending: pd.DataFrame   # production's held-out slice, which no model has trained on yet
    holdout: pd.DataFrame   # the freshest share of `new`, for this candidate's gate
    training: pd.DataFrame  # pending + the rest of `new`


@dataclass(frozen=True)
class StartingPoint:
    """Where training starts: the production weights and the anchor (None for a first model), and the config."""

    cfg: Any
    init_from: Any
    anchor: Any
    replay: pd.DataFrame | None
    drift_boost: bool


def unseen_examples(layout: StorageLayout, production: ModelVersion | None, holdout_fraction: float) -> UnseenExamples:
    after_batch = production.metadata["last_batch_id"] if production else -1
    batch_ids = [b for b in example_batch_ids(layout) if b > after_batch]
    new = load_examples(layout, batch_ids)
    pending = (pd.read_parquet(production.path / HOLDOUT_FILE)
               if production and (production.path / HOLDOUT_FILE).exists() else new.iloc[:0])
    train_part, holdout = split_holdout(new, holdout_fraction)
    return UnseenExamples(batch_ids, new, pending, holdout, pd.concat([pending, train_part], ignore_index=True))


def boosted_for_drift(cfg, layout: StorageLayout, drift_params) -> tuple[Any, bool]:
    """While mild drift lasts (tidal.drift_state), fine-tune harder: more epochs and/or a larger lr."""
    if not read_drift_state(layout)["boost"]:
        return cfg, False
    lr = cfg.finetune_lr if cfg.finetune_lr is not None else cfg.lr
    epochs = cfg.finetune_epochs if cfg.finetune_epochs is not None else cfg.epochs
    return replace(cfg, finetune_epochs=max(1, round(epochs * drift_params.boost_epochs_factor)),
                   finetune_lr=lr * drift_params.boost_lr_factor), True


def drift_reference_for(production, training: pd.DataFrame, drift_params: DriftParams, seed: int) -> pd.DataFrame:
    """An incremental candidate carries its parent's reference (the anchor's training sample), checked complete so
    a reference from before a feature was kept is not copied into new versions; a first model samples its own."""
    if production is not None:
        return production_reference(production, drift_params)
    return drift_reference_sample(training, drift_params.reference_columns, drift_params.reference_max_rows, seed)


def starting_point(settings: Settings, layout: StorageLayout, registry: Registry, production: ModelVersion | None,
                   first_batch: int) -> StartingPoint:
    from models.recommender import Checkpoint

    cfg = train_config(settings)
    if production is None:
        return StartingPoint(cfg, None, None, None, False)
    cfg, boost = boosted_for_drift(cfg, layout, settings.params.drift)
    init_from = Checkpoint.load(production.model_path)
    anchor_version = production.metadata["anchor"]
    anchor = init_from if anchor_version == production.version else Checkpoint.load(
        registry.version(anchor_version).model_path)
    replay = recent_history(layout, before_batch=first_batch, max_rows=settings.params.finetune.replay_max_rows)
    return StartingPoint(cfg, init_from, anchor, replay, boost)


def train_candidate(settings: Settings, layout: StorageLayout, start: StartingPoint, data: UnseenExamples):
    """The first model from scratch; then the incremental strategy exactly as the prequential benchmark measures it
    (models.recommender.finetune): production first scores the unseen examples against the history before them,
    so the weights of its score learn from them (test, then train), and is then fine-tuned on them."""
    import torch

    from models.recommender import finetune, train

    torch.set_num_threads(settings.params.finetune.torch_threads)
    items = load_item_metadata(layout)
    new_events = data.training[TRAINING_COLUMNS]
    progress = lambda msg: print(f"[finetune] {msg}", flush=True)  # noqa: E731
    if start.init_from is None:
        return train(new_events, cfg=start.cfg, items=items, progress=progress)
    # The replay pool may still hold production's held-out slice, which is part of what is learned now.
    history = start.replay[~start.replay["event_id"].isin(data.training["event_id"])]
    return finetune(start.init_from, new_events, cfg=start.cfg, anchor=start.anchor, history=history, items=items,
                    k=settings.params.gate.k, progress=progress)


def run_finetune(settings: Settings, run_id: str, reports_dir: Path | None = None) -> dict[str, Any]:
    layout = StorageLayout(settings.home).ensure()
    registry = Registry(layout.registry)
    params = settings.params
    train_config(settings)  # refuse bad hyperparameters before reading any data
    production = registry.production()
    data = unseen_examples(layout, production, params.gate.holdout_fraction)
    summary: dict[str, Any] = {"run_id": run_id, "batch_ids": data.batch_ids, "new_examples": len(data.new),
                               "pending_holdout_examples": len(data.pending)}
    if len(data.new) < params.finetune.min_examples:
        summary.update(status="skipped", reason=f"{len(data.new)} new examples < finetune.min_examples "
                                                f"({params.finetune.min_examples})")
        return record_summary(reports_dir, "finetune", summary)

    # Before training, so a configured drift feature the data lacks fails the run in seconds, not after the epochs.
    reference = drift_reference_for(production, data.training, params.drift, params.base.seed)
    start = starting_point(settings, layout, registry, production, data.batch_ids[0])
    if production:
        summary["drift_boost"] = start.drift_boost
    kind = "incremental" if production else "full"
    replay_rows = 0 if start.replay is None else len(start.replay)
    print(f"[finetune] {kind}: {len(data.training)} examples ({len(data.pending)} carried over), "
          f"{replay_rows} replay rows, {len(data.holdout)} held out", flush=True)
    result = train_candidate(settings, layout, start, data)

    candidate_dir, metadata = write_candidate(registry, run_id, result, data.holdout, reference, lambda finite: (
        candidate_metadata(
            run_id, kind, parent=production.version if production else None,
            anchor=production.metadata["anchor"] if production else None, batch_ids=data.batch_ids,
            rows={"trained": len(data.training), "held_out": len(data.holdout), "replay": replay_rows},
            time_range=event_time_range(data.new), trained_on=data.training, result=result, finite=finite,
            cfg=start.cfg)))
    finite = metadata["finite"]
    summary.update(status="trained" if finite else "rejected_non_finite", kind=kind, parent=metadata["parent"],
                   trained_examples=len(data.training), held_out_examples=len(data.holdout), finite=finite,
                   losses=metadata["losses"], train_cpu_s=metadata["train_cpu_s"], candidate=str(candidate_dir))
    return record_summary(reports_dir, "finetune", summary)



def main(argv: list[str] | None = None) -> int:
    return run_step_main(argv, prog="tidal finetune", description="Fine-tune a candidate on unseen examples.",
                         run=lambda settings, args, reports: run_finetune(settings, args.run_id, reports),
                         exit_code=lambda summary: 1 if summary["status"] == "rejected_non_finite" else 0)


if __name__ == "__main__":
    raise SystemExit(main())
