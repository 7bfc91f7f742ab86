"""validate: run the Great Expectations suites on a cycle's new training examples and build Data Docs.

Both suites (validation.suite on the examples, validation.events_suite on the accepted events they came from) run in one GX
context into one Data Docs site, reports/runs/<run>/data_docs/: its index lists both results, each page names the run
and the batches, and loads its CSS/JS from the site's static/ folder, so the site renders styled offline.

Suites are data (expectations/<suite>.json). The bad-row share is (quarantined records + example rows that
break a row-level expectation) / landed records. Above `validation.max_bad_row_share` the step raises
`ValidationFailed` with the top reasons and the Data Docs path, so the Airflow run fails and nothing is trained.

Run: `tidal validate --run-id RUN --batch-ids 3 4`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jobs.validation.data_docs import SiteEntry, docs_page, make_site_offline, write_site_index
from tidal.config import REPO_ROOT, Settings
from tidal.datasets import load_examples
from tidal.manifests import read_batch_manifests, summarize_batches
from tidal.step_cli import run_step_main
from tidal.storage import StorageLayout, read_json, write_step_summary


EXPECTATIONS_DIR = REPO_ROOT / "expectations"


# features.examples' row-count $PARAMETERs for a frame that is not a micro-batch (a full retrain's training set):
# its size is bounded by history, not by recent batches.
UNBOUNDED_EXAMPLE_ROWS = {"examples_min_rows": 1, "examples_max_rows": None}


class ValidationFailed(RuntimeError):
    """The batch is too dirty to train on; the message says what broke and where the report is."""


def load_suite_json(name: str) -> dict[str, Any]:
    path = EXPECTATIONS_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"expectation suite {path} not found; validation.suite names a file in expectations/")
    return json.loads(path.read_text())


def validate_examples(examples: pd.DataFrame, suite_json: dict[str, Any], docs_dir: Path,
                      expectation_parameters: dict[str, Any] | None = None, *, run_name: str | None = None,
                      asset_name: str = "examples") -> dict[str, Any]:
    """One suite on one DataFrame: validate_suites with a single suite."""
    return validate_suites(examples, [suite_json], docs_dir, expectation_parameters, run_name=run_name,
                           asset_name=asset_name)[suite_json["name"]]


def validate_suites(examples: pd.DataFrame, suites: list[dict[str, Any]], docs_dir: Path,
                    expectation_parameters: dict[str, Any] | None = None, *, run_name: str | None = None,
                    asset_name: str = "examples") -> dict[str, dict[str, Any]]:
    """Run several suites on one DataFrame in one ephemeral GX context and build one Data Docs site for all.

    One context, because a site build drops every page whose result is not in the building context's stores: a
    context per suite left only the last suite's pages. The pages name `asset_name` and `run_name` (the Airflow run
    id), and load their CSS/JS from the site itself (see VENDOR_ASSETS), so they render styled offline.

    Returns, per suite name: the failed expectations, the number of failing rows, `row_failures` (row position -> the
    expectations "type(column)" that row broke), `data_docs` (the site's index) and `data_docs_page` (this suite's
    validation page)."""
    names = [s["name"] for s in suites]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"validate_suites needs one or more distinct suites, got {names}")
    context = gx_context(docs_dir)
    checkpoint = add_checkpoint(context, suites, asset_name)
    import great_expectations as gx  # imported by gx_context, with analytics off

    run_id = gx.RunIdentifier(run_name=run_name) if run_name else None
    result = checkpoint.run(batch_parameters={"dataframe": examples.reset_index(drop=True)},
                            expectation_parameters=expectation_parameters or {}, run_id=run_id)
    for key, validation in result.run_results.items():
        # A DataFrame batch records no asset name where the page header reads it ("Data asset: None").
        validation.meta["batch_spec"]["data_asset_name"] = asset_name
        context.validation_results_store.set(key, validation)
    context.build_data_docs(site_names=["tidal"])
    entries = [SiteEntry(key.expectation_suite_identifier.name, docs_page(context, key),
                         docs_page(context, key.expectation_suite_identifier), validation)
               for key, validation in result.run_results.items()]
    make_site_offline(docs_dir)
    write_site_index(docs_dir, entries)
    return {e.suite: {**suite_report(e.validation), "data_docs": str(docs_dir / "index.html"),
                      "data_docs_page": str(e.validation_page)} for e in entries}


def gx_context(docs_dir: Path) -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(site_name="tidal", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return context


def add_checkpoint(context: Any, suites: list[dict[str, Any]], asset_name: str) -> Any:
    """One validation definition per suite, all on the same whole-DataFrame batch; Data Docs are built after."""
    import great_expectations as gx

    asset = context.data_sources.add_pandas("tidal").add_dataframe_asset(asset_name)
    batch = asset.add_batch_definition_whole_dataframe("batch")
    definitions = [context.validation_definitions.add(gx.ValidationDefinition(
        name=s["name"], data=batch, suite=context.suites.add(gx.ExpectationSuite(**s)))) for s in suites]
    return context.checkpoints.add(gx.Checkpoint(name="tidal", validation_definitions=definitions, actions=[],
                                                 result_format={"result_format": "COMPLETE"}))


def suite_report(validation: Any) -> dict[str, Any]:
    failing_rows: set[int] = set()
    row_failures: dict[int, list[str]] = {}
    failed: list[dict[str, Any]] = []
    for r in validation.results:
        if r.success:
            continue
        column = r.expectation_config.kwargs.get("column")
        rows = r.result.get("unexpected_index_list") or []
        failing_rows.update(int(i) for i in rows)
        for i in rows:
            row_failures.setdefault(int(i), []).append(f"{r.expectation_config.type}({column})")
        failed.append({"expectation": r.expectation_config.type, "column": column,
                       "unexpected_count": r.result.get("unexpected_count"),
                       "observed_value": r.result.get("observed_value")})
    return {"success": bool(validation.success), "failed_expectations": failed, "failing_rows": len(failing_rows),
            "row_failures": row_failures}


def suite_parameters(layout: StorageLayout, settings: Settings, batch_ids: list[int]) -> dict[str, Any]:
    """The run-time values of the suites' $PARAMETERs: never `now()`, always what the batches recorded.

    max_timestamp (events.raw): the latest batch clock (the "now" the features job judged those batches by) + the
    allowed skew.
    min_rows/max_rows (events.raw) and examples_min_rows/examples_max_rows (features.examples):
    validation.row_count_bounds x the median accepted records, resp. training examples (accepted minus outliers),
    of up to 10 earlier batches that accepted anything; the upper bound is per batch, times the batches validated
    together. With no history: 1 .. unbounded."""
    from tidal.manifests import batch_clock_path, latest_manifest_before

    clocks = [read_json(batch_clock_path(layout, b))["now_epoch_s"] for b in batch_ids
              if batch_clock_path(layout, b).exists()]
    max_ts = (max(clocks) if clocks else float("inf")) + settings.params.base.max_future_skew_s
    accepted, examples, before = [], [], min(batch_ids)
    while len(accepted) < 10:
        manifest = latest_manifest_before(layout, before)
        if manifest is None:
            break
        if manifest["accepted"]:
            accepted.append(manifest["accepted"])
            examples.append(manifest["accepted"] - manifest.get("outlier_events_excluded", 0))
        before = manifest["batch_id"]
    low, high = settings.params.validation.row_count_bounds

    def bounds(history: list[int]) -> tuple[int, int | None]:
        if not history:
            return 1, None
        median = float(np.median(history))
        return max(1, int(median * low)), int(np.ceil(median * high)) * len(batch_ids)

    (min_rows, max_rows), (ex_min, ex_max) = bounds(accepted), bounds(examples)
    return {"max_timestamp": max_ts, "min_rows": min_rows, "max_rows": max_rows,
            "examples_min_rows": ex_min, "examples_max_rows": ex_max}


def quarantine_failing_rows(layout: StorageLayout, frames: dict[int, pd.DataFrame], examples: pd.DataFrame,
                            row_failures: dict[int, list[str]]) -> int:
    """Row-level quarantine: each failing example goes to quarantine/validation/batch_id=N/ with the expectations it
    broke, and its batch of examples is rewritten without it, so training never sees it and it is never both
    accepted and quarantined. Idempotent: a rerun finds no failing rows left and writes nothing."""
    moved = 0
    failing_ids = {examples.iloc[i]["event_id"]: sorted(set(f)) for i, f in row_failures.items()}
    for batch_id, frame in frames.items():
        bad = frame["event_id"].isin(failing_ids)
        if not bad.any():
            continue
        rows = frame[bad].copy()
        rows["failed_expectations"] = [json.dumps(failing_ids[e]) for e in rows["event_id"]]
        rows["batch_id"] = batch_id
        target = layout.root / "quarantine" / "validation" / f"batch_id={batch_id}"
        target.mkdir(parents=True, exist_ok=True)
        # One file per content, written before the examples are rewritten: a crash in between leaves the same file
        # to be written again, not a second copy.
        digest = hashlib.sha1("".join(sorted(rows["event_id"].astype(str))).encode()).hexdigest()[:12]
        tmp = target / f".part-{digest}.parquet.tmp"
        rows.to_parquet(tmp, index=False)
        os.replace(tmp, target / f"part-{digest}.parquet")
        batch_dir = layout.examples_batch(batch_id)
        staged = batch_dir.with_name(batch_dir.name + ".validated")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        frame[~bad].to_parquet(staged / "part-00000.parquet", index=False)
        (staged / "_SUCCESS").touch()
        old = batch_dir.with_name(batch_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(batch_dir, old)
        os.replace(staged, batch_dir)
        shutil.rmtree(old, ignore_errors=True)
        moved += int(bad.sum())
    return moved


def examples_asset_name(batch_ids: list[int]) -> str:
    """The Data Docs name of the examples validated together: "features.examples batches 3-4" (or "batch 3",
    "batches 1,3")."""
    ids = sorted(batch_ids)
    if len(ids) == 1:
        return f"features.examples batch {ids[0]}"
    contiguous = ids == list(range(ids[0], ids[-1] + 1))
    return f"features.examples batches {f'{ids[0]}-{ids[-1]}' if contiguous else ','.join(map(str, ids))}"


def run_validate(settings: Settings, run_id: str, batch_ids: list[int], reports_dir: Path) -> dict[str, Any]:
    layout = StorageLayout(settings.home)
    if not batch_ids:
        summary = {"run_id": run_id, "status": "skipped", "reason": "no new micro-batches"}
        write_step_summary(reports_dir, "validate", summary)
        return summary
    counts = summarize_batches(read_batch_manifests(layout, batch_ids), 0.0)
    frames = {b: pd.read_parquet(layout.examples_batch(b)) for b in batch_ids if layout.examples_batch(b).exists()}
    examples = (pd.concat(frames.values(), ignore_index=True) if frames else load_examples(layout, batch_ids))
    parameters = suite_parameters(layout, settings, batch_ids)
    suites = [load_suite_json(settings.params.validation.suite), load_suite_json(settings.params.validation.events_suite)]
    reports = validate_suites(examples, suites, reports_dir / "data_docs", parameters, run_name=run_id,
                              asset_name=examples_asset_name(batch_ids))
    report, raw = (reports[s["name"]] for s in suites)
    row_failures = {i: report["row_failures"].get(i, []) + raw["row_failures"].get(i, [])
                    for i in set(report["row_failures"]) | set(raw["row_failures"])}
    report["failed_expectations"] += [{**f, "suite": settings.params.validation.events_suite}
                                      for f in raw["failed_expectations"]]
    report["failing_rows"] = len(row_failures)
    bad = counts["quarantined"] + report["failing_rows"]
    share = bad / counts["landed"] if counts["landed"] else 0.0
    threshold = settings.params.validation.max_bad_row_share
    summary = {"run_id": run_id, "status": "passed" if share <= threshold else "failed", "batch_ids": batch_ids,
               "examples": len(examples), "landed": counts["landed"], "quarantined": counts["quarantined"],
               "failing_example_rows": report["failing_rows"], "bad_row_share": round(share, 6),
               "max_bad_row_share": threshold, "failed_expectations": report["failed_expectations"],
               "quarantine_reasons": counts["quarantine_reasons"], "data_docs": report["data_docs"],
               "data_docs_pages": {name: r["data_docs_page"] for name, r in reports.items()},
               "row_count_bounds": [parameters["min_rows"], parameters["max_rows"]],
               "example_row_count_bounds": [parameters["examples_min_rows"], parameters["examples_max_rows"]]}
    # Failing rows leave the examples whether or not the batch passes: on a pass the rest goes on to training.
    summary["validation_quarantined"] = quarantine_failing_rows(layout, frames, examples, row_failures)
    write_step_summary(reports_dir, "validate", summary)
    print(f"[validate] bad-row share {share:.4f} (limit {threshold}); Data Docs: {report['data_docs']}", flush=True)
    if share > threshold:
        top = sorted(counts["quarantine_reasons"].items(), key=lambda kv: -kv[1])[:5]
        raise ValidationFailed(
            f"batches {batch_ids}: {bad} of {counts['landed']} records are bad ({share:.1%} > limit {threshold * 100:g}%). "
            f"Top quarantine reasons: {top}; failed expectations: "
            f"{[(f['expectation'], f['column'], f['unexpected_count']) for f in report['failed_expectations']]}. "
            f"Open {report['data_docs']} and quarantine/events/ to see the rows; fix the producer, then rerun "
            f"(or raise validation.max_bad_row_share in params.yaml if this is expected).")
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_step_main(argv, prog="tidal validate", batch_ids=True,
                         description="Validate new examples with Great Expectations.",
                         run=lambda settings, args, reports: run_validate(settings, args.run_id, args.batch_ids, reports))


if __name__ == "__main__":
    raise SystemExit(main())
