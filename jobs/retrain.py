"""retrain: a full retrain from scratch over a history window; the result anchors a new fine-tune chain.

    check_request -> build_training_set (Spark batch over bronze) -> validate (GX) -> train (from scratch)
    -> gate (vs production) -> promote (auto) or register -> version (DVC)

The training set is rebuilt from bronze/events with Spark in batch mode: the window is `history_days` before the
newest event (not before now, so a rerun of the same data gives the same set), or all of bronze. Examples get the
same columns as the streaming features job, with the per-micro-batch counts recomputed per batch id, so the drift
reference stored with the new model compares like with like. The model is trained with `init_from=None` through the
same `models.recommender.train` the fine-tune uses; its freshest `gate.holdout_fraction` is held out for the gate and
carried into the next incremental cycle, like a fine-tune's. Once promoted it is its own anchor (the registry sets
it) and its drift reference is a sample of its own training set.

Run: `tidal retrain --reason "why" [--days N|all] [--epochs N] [--promote auto|register]`, the
`tidal_full_retrain` (by hand) and `tidal_scheduled_retrain` (weekly, severe drift) DAGs, or `dvc repro` (the
stages call `python -m jobs.retrain --stage ...`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tidal.config import ConfigError, Settings, load_settings
from tidal.registry import HOLDOUT_FILE, METADATA_FILE, MODEL_FILE, REFERENCE_FILE, Registry
from tidal.storage import StorageLayout, atomic_write_json, read_json, safe_name, write_step_summary
from tidal.task_context import REASON_MAX_LENGTH, REASON_PATTERN

_PATH_LIKE = re.compile(r"[/\\]|^~|\.\.")


class RetrainRequest(BaseModel):
    """One retrain's run-time switches (the DAG's Params). Anything else lives in params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    history_days: int | None = Field(None, ge=1, description="days before the newest event; None = all history")
    epochs: int | None = Field(None, ge=1, le=1000)
    reason: str = Field(min_length=1, max_length=REASON_MAX_LENGTH)
    promote: Literal["auto", "register"] = "auto"
    trigger: Literal["manual", "schedule", "drift", "cli", "dvc"] = "manual"

    @field_validator("history_days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
            return None
        if isinstance(value, str):
            if _PATH_LIKE.search(value):
                raise ValueError(f"history window {value!r} looks like a path; give a number of days or 'all'")
            if not value.strip().isdigit():
                raise ValueError(f"history window {value!r} is not a whole number of days or 'all'")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"history window {value!r} is not a whole number of days")
        return value

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a full retrain needs a reason (free text: why retrain now)")
        if not re.search(REASON_PATTERN, value):  # the pattern the Params form checks, so both refuse the same
            raise ValueError(f"reason {value!r} looks like a path; write a sentence ('/', '\\\\', '..' and a "
                             "leading '~' are refused)")
        return value.strip()


# Airflow run types -> the trigger a retrain records. The task SDK hands run_type over as an enum whose str() is
# 'DagRunType.SCHEDULED', so compare values, never str().
TRIGGER_OF_RUN_TYPE = {"scheduled": "schedule", "backfill": "schedule", "asset_triggered": "drift",
                       "manual": "manual", "operator_triggered": "manual", "asset_materialization": "manual"}


def request_for_run(run_type: Any, params: dict[str, Any], drift_events: list[dict[str, Any]], *,
                    manual: bool) -> dict[str, Any]:
    """The raw request of a retrain DAG run, before check_request.

    `manual` (tidal_full_retrain): the Params form's values; the reason is the operator's. Otherwise
    (tidal_scheduled_retrain): params.yaml's window and epochs, and a reason that says what started the run: the
    schedule, or the severe-drift asset events (naming the runs that emitted them).
    """
    value = getattr(run_type, "value", run_type)
    if value not in TRIGGER_OF_RUN_TYPE:
        raise ConfigError(f"unknown Airflow run type {value!r}; known: {sorted(TRIGGER_OF_RUN_TYPE)}")
    trigger = TRIGGER_OF_RUN_TYPE[value]
    if manual:
        return {"history_days": params.get("history_days"), "epochs": params.get("epochs"),
                "reason": params.get("reason"), "promote": params.get("promote"), "trigger": "manual"}
    if trigger == "manual":
        raise ConfigError("the scheduled retrain takes no manual runs; trigger tidal_full_retrain with a reason")
    if trigger == "drift":
        sources = sorted({str(e.get("extra", {}).get("reason") or f"severe drift in {e.get('source_run_id')}")
                          for e in drift_events}) or ["severe drift (asset event without a source)"]
        reason = "; ".join(sources)[:REASON_MAX_LENGTH]
    else:
        reason = "scheduled full retrain (periodic reset)"
    # Free text from an asset event must still pass the reason rule; a path-like character becomes a space.
    return {"reason": re.sub(r"[/\\~]|\.\.", " ", reason), "trigger": trigger}


def rejection_message(promote_summary: dict[str, Any]) -> str | None:
    """Why a retrain that was asked to serve its model does not serve it (None when it serves or was registered)."""
    if promote_summary.get("promoted") or promote_summary.get("registered"):
        return None
    hint = ("" if "registered" in promote_summary else " To keep it as a version anyway, retrain with "
            "promote=register; serve that version later with `tidal rollback --to <version>`.")
    return (f"the full retrain's candidate was not promoted: {promote_summary.get('reason')}. Production stays "
            f"{promote_summary.get('production_version')}; the rejection is in registry/events.jsonl.{hint}")


def check_request(settings: Settings, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a request against params.yaml's defaults; raise ConfigError with every problem, before any work."""
    defaults = settings.params.retrain
    merged = {"history_days": defaults.history_days, "epochs": defaults.epochs, "promote": defaults.promote,
              **{k: v for k, v in raw.items() if v is not None or k == "history_days"}}
    try:
        return RetrainRequest.model_validate(merged).model_dump()
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in err.errors())
        raise ConfigError(f"full retrain refused before any work: {problems}") from None


def retrain_dir(layout: StorageLayout, run_id: str) -> Path:
    return layout.root / "features" / "retrain" / safe_name(run_id)


def build_training_set(settings: Settings, run_id: str, history_days: int | None) -> dict[str, Any]:
    """Spark batch: bronze events in the window -> examples (the streaming job's columns) under features/retrain/."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from jobs.features import spark_for, training_examples

    layout = StorageLayout(settings.home).ensure()
    if not any(layout.bronze_events.glob("event_date=*")):
        raise RuntimeError(f"no bronze events under {layout.bronze_events}; run the features job first")
    spark = spark_for(settings)
    # mergeSchema: bronze written before ingest_batch_id existed lacks the column.
    bronze = spark.read.option("mergeSchema", "true").parquet(str(layout.bronze_events))
    if "ingest_batch_id" in bronze.columns:  # the accepting micro-batch; the batch_id folder may be a compaction's
        bronze = bronze.withColumn("batch_id", F.coalesce(F.col("ingest_batch_id"), F.col("batch_id")))
    newest = bronze.agg(F.max("event_time")).first()[0]
    window = bronze
    if history_days is not None:
        window = bronze.filter(F.col("event_time") >= F.lit(newest) - F.expr(f"INTERVAL {int(history_days)} DAYS"))
    examples = training_examples(window, settings.params.features.event_type_weights).drop(
        "user_batch_events", "item_batch_events").join(window.select("event_id", "batch_id"), "event_id")
    # The drift features count events per micro-batch, as the streaming job does (not over the whole window).
    examples = (examples
                .withColumn("user_batch_events", F.count("*").over(Window.partitionBy("batch_id", "user_id")))
                .withColumn("item_batch_events", F.count("*").over(Window.partitionBy("batch_id", "item_id"))))
    out = retrain_dir(layout, run_id) / "examples"
    examples.coalesce(1).write.mode("overwrite").parquet(str(out))
    frame = pd.read_parquet(out)
    times = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    summary = {"run_id": run_id, "examples_path": str(out), "rows": len(frame), "history_days": history_days,
               "batch_ids": sorted(int(b) for b in frame["batch_id"].unique()),
               "event_time_range": [times.min().isoformat(), times.max().isoformat()] if len(frame) else None}
    print(f"[retrain] training set: {len(frame)} examples from batches {summary['batch_ids']} "
          f"({'all history' if history_days is None else f'{history_days} days'})", flush=True)
    if len(frame) < settings.params.retrain.min_examples:
        raise RuntimeError(f"only {len(frame)} examples in the window < retrain.min_examples "
                           f"({settings.params.retrain.min_examples}); widen the history window")
    return summary


def load_training_set(path: str | Path) -> pd.DataFrame:
    """The examples as load_examples returns them: `weight` column, time-ordered, stable on ties."""
    frame = pd.read_parquet(path).rename(columns={"event_weight": "weight"})
    return frame.sort_values(["timestamp", "event_id"], kind="stable").reset_index(drop=True)


def validate_training_set(settings: Settings, run_id: str, built: dict[str, Any], reports_dir: Path) -> dict[str, Any]:
    from jobs.validate import UNBOUNDED_EXAMPLE_ROWS, load_suite_json, validate_examples

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


def train_from_scratch(settings: Settings, run_id: str, built: dict[str, Any], request: dict[str, Any],
                       reports_dir: Path | None = None) -> dict[str, Any]:
    from jobs.datasets import TRAINING_COLUMNS, load_item_metadata
    from jobs.finetune import code_version, drift_reference_sample, split_holdout, stage_candidate, train_config
    from models.recommender import train

    layout = StorageLayout(settings.home)
    registry = Registry(layout.registry)
    params = settings.params
    cfg = train_config(settings)
    if request.get("epochs"):
        cfg = dataclasses.replace(cfg, epochs=int(request["epochs"]))
    examples = load_training_set(built["examples_path"])
    training, holdout = split_holdout(examples, params.gate.holdout_fraction)
    production = registry.production()
    result = train(training[TRAINING_COLUMNS], cfg=cfg, init_from=None, anchor=None, replay=None,
                   items=load_item_metadata(layout), progress=lambda msg: print(f"[retrain] {msg}", flush=True))
    candidate_dir, finite = stage_candidate(registry, run_id, result)
    holdout.drop(columns=["batch_id"]).to_parquet(candidate_dir / HOLDOUT_FILE, index=False)
    # The new drift reference: a sample of what this model learned from.
    # Every column the drift tests read, under the feature store's names; a missing one is an error.
    drift_reference_sample(training, params.drift.reference_columns, params.drift.reference_max_rows,
                           params.base.seed).to_parquet(candidate_dir / REFERENCE_FILE, index=False)
    metadata = {
        "run_id": run_id,
        "kind": "full",
        "parent": None,
        "anchor": None,  # promotion makes a full retrain its own anchor
        "replaces": production.version if production else None,
        "batch_ids": built["batch_ids"],
        "last_batch_id": built["batch_ids"][-1],
        "rows": {"trained": len(training), "held_out": len(holdout), "replay": 0},
        "event_time_range": built["event_time_range"],
        "finite": finite,
        "losses": [float(x) for x in result.losses],
        "train_cpu_s": round(result.train_cpu_s, 3),
        "params": {"train": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
                   "retrain": {"history_days": request["history_days"], "epochs": cfg.epochs}},
        "retrain": {"reason": request["reason"], "trigger": request["trigger"], "promote": request["promote"]},
        "code_version": code_version(),
    }
    atomic_write_json(candidate_dir / METADATA_FILE, metadata)
    summary = {"run_id": run_id, "status": "trained" if finite else "rejected_non_finite", "kind": "full",
               "trained_examples": len(training), "held_out_examples": len(holdout), "finite": finite,
               "epochs": cfg.epochs, "losses": metadata["losses"], "train_cpu_s": metadata["train_cpu_s"],
               "replaces": metadata["replaces"], "candidate": str(candidate_dir)}
    if reports_dir is not None:
        write_step_summary(reports_dir, "retrain_train", summary)
    return summary


def promote_or_register(settings: Settings, run_id: str, gate_summary: dict[str, Any], request: dict[str, Any],
                        reports_dir: Path | None = None) -> dict[str, Any]:
    from jobs.promote import run_promote

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
    if reports_dir is not None:
        write_step_summary(reports_dir, "promote", summary)
    return summary


def run_retrain(settings: Settings, run_id: str, raw_request: dict[str, Any]) -> dict[str, Any]:
    """Every step in order, as the DAG runs them (the CLI and dvc use this)."""
    from jobs.gate import run_gate
    from jobs.version import run_version

    request = check_request(settings, raw_request)
    reports = StorageLayout(settings.home).ensure().run_reports(run_id)
    built = build_training_set(settings, run_id, request["history_days"])
    validated = validate_training_set(settings, run_id, built, reports)
    trained = train_from_scratch(settings, run_id, built, request, reports)
    gate = run_gate(settings, run_id, reports)
    promoted = promote_or_register(settings, run_id, gate, request, reports)
    versioned = run_version(settings, run_id, reports)
    result = {"run_id": run_id, "request": request, "build": built, "validate": validated, "train": trained,
              "gate": gate, "promote": promoted, "version": versioned}
    write_step_summary(reports, "retrain", result)
    return result


# ---- dvc.yaml stages: the same functions, at fixed paths under TIDAL_HOME, run id "dvc" -------------------------
DVC_RUN_ID = "dvc"


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
    if stage == "build":
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
    raise ValueError(f"unknown stage {stage!r}; one of build, validate, train, evaluate")


def main(argv: list[str] | None = None) -> int:
    from datetime import datetime, timezone

    if argv is None:
        argv = __import__("sys").argv[1:]
    if argv[:1] == ["--stage"] and len(argv) == 2:  # dvc.yaml's stages
        print(json.dumps(run_stage(load_settings(), argv[1]), indent=2, default=str))
        return 0

    parser = argparse.ArgumentParser(prog="tidal retrain", description="Full retrain from scratch over a window.")
    parser.add_argument("--reason", required=True, help="why retrain now (recorded with the version)")
    parser.add_argument("--days", default=None, help="history window in days before the newest event, or 'all'")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--promote", choices=["auto", "register"], default=None)
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args(argv)
    settings = load_settings()
    raw = {"reason": args.reason, "epochs": args.epochs, "trigger": "cli",
           **({"history_days": args.days} if args.days is not None else {}),
           **({"promote": args.promote} if args.promote else {})}
    try:
        check_request(settings, raw)
    except ConfigError as err:
        print(f"tidal retrain: {err}", file=__import__("sys").stderr)
        return 2
    run_id = args.run_id or datetime.now(timezone.utc).strftime("retrain__%Y%m%dT%H%M%S")
    result = run_retrain(settings, run_id, raw)
    print(json.dumps({k: result[k] for k in ("run_id", "request", "promote")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
