"""The full retrain's own steps: validate the rebuilt training set, train from scratch, then promote or register.

The model is trained with `init_from=None` through the same `models.recommender.train` the fine-tune uses; its
freshest `gate.holdout_fraction` is held out for the gate and carried into the next incremental cycle, like a
fine-tune's. Once promoted it is its own anchor (the registry sets it) and its drift reference is a sample of its
own training set. The whole pipeline (request, build, these, gate, version) is declared in tidal/pipelines.py.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from jobs.drift.reference import drift_reference_sample
from jobs.training.candidate import candidate_metadata, split_holdout, train_config, write_candidate
from tidal.config import RetrainParams, Settings
from tidal.datasets import TRAINING_COLUMNS, load_item_metadata, load_training_set
from tidal.registry import ModelVersion, Registry
from tidal.storage import StorageLayout, record_summary, write_step_summary


def validate_training_set(settings: Settings, run_id: str, built: dict[str, Any], reports_dir: Path) -> dict[str, Any]:
    from jobs.validation.validate import UNBOUNDED_EXAMPLE_ROWS, load_suite_json, validate_examples

    examples = pd.read_parquet(built["examples_path"]).drop(columns=["batch_id"])
    # The suite's row-count bounds are per micro-batch; a training set over days of history is not one.
    report = validate_examples(examples, load_suite_json(settings.params.validation.suite), reports_dir / "data_docs",
                               UNBOUNDED_EXAMPLE_ROWS, run_name=run_id,
                               asset_name=f"features.examples retrain training set, batches {built['batch_ids'][0]}-"
                                          f"{built['batch_ids'][-1]}" if built["batch_ids"] else "features.examples retrain training set")
    share = report["failing_rows"] / len(examples) if len(examples) else 0.0
    limit = settings.params.validation.max_bad_row_share
    summary = {"run_id": run_id, "status": "passed" if share <= limit else "failed", "examples": len(examples),
               "failing_example_rows": report["failing_rows"], "bad_row_share": round(share, 6),
               "failed_expectations": report["failed_expectations"], "data_docs": report["data_docs"]}
    write_step_summary(reports_dir, "retrain_validate", summary)
    if share > limit:
        raise RuntimeError(f"retrain training set fails validation: {share:.1%} bad rows > {limit:.0%}; "
                           f"see {report['data_docs']}")
    return summary


def production_selection(production: ModelVersion | None):
    """Production's evidence for the weights of its score, or None (no production, or one of an older format)."""
    from models.recommender import Checkpoint, UnsupportedCheckpointFormat

    if production is None:
        return None
    try:
        return Checkpoint.load(production.model_path).selection
    except UnsupportedCheckpointFormat as old_format:
        print(f"[retrain] production {production.version} is not readable ({old_format}); this retrain replaces it "
              "without its evidence", flush=True)
        return None


def train_from_scratch(settings: Settings, run_id: str, built: dict[str, Any], request: dict[str, Any],
                       reports_dir: Path | None = None) -> dict[str, Any]:
    layout = StorageLayout(settings.home)
    registry = Registry(layout.registry)
    params = settings.params
    cfg = train_config(settings)
    if request.get("epochs"):
        cfg = dataclasses.replace(cfg, epochs=int(request["epochs"]))
    training, holdout = split_holdout(load_training_set(built["examples_path"]), params.gate.holdout_fraction)
    production = registry.production()
    # A reset relearns the model, not what the stream has shown about the weights of its score: keep production's
    # (unless production is in a format this code cannot read: this retrain is the upgrade).
    selection = production_selection(production)
    result = _train(params.retrain, training[TRAINING_COLUMNS], cfg, load_item_metadata(layout), selection)
    # The new drift reference: a sample of what this model learned from, under the feature store's names.
    reference = drift_reference_sample(training, params.drift.reference_columns, params.drift.reference_max_rows,
                                       params.base.seed)
    candidate_dir, metadata = write_candidate(registry, run_id, result, holdout.drop(columns=["batch_id"]), reference,
                                              lambda finite: candidate_metadata(
        run_id, "full", parent=None, anchor=None, batch_ids=built["batch_ids"],
        rows={"trained": len(training), "held_out": len(holdout), "replay": 0},
        time_range=built["event_time_range"], trained_on=training, result=result, finite=finite, cfg=cfg,
        extra_params={"retrain": {"history_days": request["history_days"], "epochs": cfg.epochs,
                                  "processes": params.retrain.processes}},
        replaces=production.version if production else None,
        retrain={"reason": request["reason"], "trigger": request["trigger"], "promote": request["promote"]}))
    finite = metadata["finite"]
    summary = {"run_id": run_id, "status": "trained" if finite else "rejected_non_finite", "kind": "full",
               "trained_examples": len(training), "held_out_examples": len(holdout), "finite": finite,
               "epochs": cfg.epochs, "losses": metadata["losses"], "train_cpu_s": metadata["train_cpu_s"],
               "replaces": metadata["replaces"], "candidate": str(candidate_dir)}
    return record_summary(reports_dir, "retrain_train", summary)


def _train(retrain: RetrainParams, training: pd.DataFrame, cfg, items: pd.DataFrame | None, selection):
    """The retrain itself: in this process, or over `retrain.processes` processes (models/distributed.py)."""
    def say(msg: str) -> None:
        print(f"[retrain] {msg}", flush=True)

    if retrain.processes == 1:
        import torch

        from models.recommender import train

        torch.set_num_threads(retrain.threads_per_process)

        return train(training, cfg=cfg, init_from=None, anchor=None, replay=None, items=items, selection=selection,
                     progress=say)
    from models.distributed import train_distributed

    with tempfile.TemporaryDirectory(prefix="tidal-distributed-retrain-") as work:
        return train_distributed(training, cfg=cfg, processes=retrain.processes, workdir=work, items=items,
                                 selection=selection, threads_per_process=retrain.threads_per_process, progress=say)


def promote_or_register(settings: Settings, run_id: str, gate_summary: dict[str, Any], request: dict[str, Any],
                        reports_dir: Path | None = None) -> dict[str, Any]:
    from jobs.release.promote import run_promote

    # The operator's request goes into a rejection's registry entry: who asked for this retrain, and why.
    asked = {k: request[k] for k in ("reason", "trigger", "promote", "history_days", "epochs")}
    if request["promote"] == "auto":
        return run_promote(settings, run_id, gate_summary, reports_dir, request=asked)
    registry = Registry(StorageLayout(settings.home).registry)
    if not gate_summary.get("finite", False):
        registry.record_rejection(run_id, reason="register-only retrain produced non-finite weights",
                                  details=gate_summary, request=asked)
        summary = {"run_id": run_id, "promoted": False, "registered": False, "reason": "non-finite weights"}
    else:
        version = registry.register_candidate(run_id, reason=f"register only: {request['reason']}")
        summary = {"run_id": run_id, "promoted": False, "registered": True, "version": version.version,
                   "kind": "full", "reason": f"registered only (gate said: {gate_summary['reason']}); serve it with "
                                             f"`tidal rollback --to {version.version} --reason ...`"}
    production = registry.production()
    summary["production_version"] = production.version if production else None
    return record_summary(reports_dir, "promote", summary)
