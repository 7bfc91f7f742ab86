"""validate: run the Great Expectations suite on a cycle's new training examples and build Data Docs.

The suite is data (expectations/<suite>.json). The bad-row share is (quarantined records + example rows that
break a row-level expectation) / landed records. Above `validation.max_bad_row_share` the step raises
`ValidationFailed` with the top reasons and the Data Docs path, so the Airflow run fails and nothing is trained.

Run: `tidal validate --run-id RUN --batch-ids 3 4`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from jobs.datasets import load_examples
from jobs.features import read_batch_manifests, summarize_batches
from tidal.config import REPO_ROOT, Settings, load_settings
from tidal.storage import StorageLayout, write_step_summary

EXPECTATIONS_DIR = REPO_ROOT / "expectations"


class ValidationFailed(RuntimeError):
    """The batch is too dirty to train on; the message says what broke and where the report is."""


def load_suite_json(name: str) -> dict[str, Any]:
    path = EXPECTATIONS_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"expectation suite {path} not found; validation.suite names a file in expectations/")
    return json.loads(path.read_text())


def validate_examples(examples: pd.DataFrame, suite_json: dict[str, Any], docs_dir: Path) -> dict[str, Any]:
    """Run one suite on one DataFrame with an ephemeral GX context; Data Docs are built into docs_dir."""
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
    suite = context.suites.add(gx.ExpectationSuite(**suite_json))
    batch = context.data_sources.add_pandas("tidal").add_dataframe_asset("examples").add_batch_definition_whole_dataframe("batch")
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=suite.name, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="tidal", validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["tidal"])],
        result_format={"result_format": "COMPLETE"}))
    result = checkpoint.run(batch_parameters={"dataframe": examples.reset_index(drop=True)})
    failing_rows: set[int] = set()
    failed: list[dict[str, Any]] = []
    for validation in result.run_results.values():
        for r in validation.results:
            if r.success:
                continue
            column = r.expectation_config.kwargs.get("column")
            rows = r.result.get("unexpected_index_list") or []
            failing_rows.update(int(i) for i in rows)
            failed.append({"expectation": r.expectation_config.type, "column": column,
                           "unexpected_count": r.result.get("unexpected_count"),
                           "observed_value": r.result.get("observed_value")})
    return {"success": bool(result.success), "failed_expectations": failed, "failing_rows": len(failing_rows),
            "data_docs": str(docs_dir / "index.html")}


def run_validate(settings: Settings, run_id: str, batch_ids: list[int], reports_dir: Path) -> dict[str, Any]:
    layout = StorageLayout(settings.home)
    if not batch_ids:
        summary = {"run_id": run_id, "status": "skipped", "reason": "no new micro-batches"}
        write_step_summary(reports_dir, "validate", summary)
        return summary
    counts = summarize_batches(read_batch_manifests(layout, batch_ids), 0.0)
    examples = load_examples(layout, batch_ids)
    report = validate_examples(examples, load_suite_json(settings.params.validation.suite), reports_dir / "data_docs")
    bad = counts["quarantined"] + report["failing_rows"]
    share = bad / counts["landed"] if counts["landed"] else 0.0
    threshold = settings.params.validation.max_bad_row_share
    summary = {"run_id": run_id, "status": "passed" if share <= threshold else "failed", "batch_ids": batch_ids,
               "examples": len(examples), "landed": counts["landed"], "quarantined": counts["quarantined"],
               "failing_example_rows": report["failing_rows"], "bad_row_share": round(share, 6),
               "max_bad_row_share": threshold, "failed_expectations": report["failed_expectations"],
               "quarantine_reasons": counts["quarantine_reasons"], "data_docs": report["data_docs"]}
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
    parser = argparse.ArgumentParser(prog="tidal validate", description="Validate new examples with Great Expectations.")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--batch-ids", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    settings = load_settings()
    summary = run_validate(settings, args.run_id, args.batch_ids, StorageLayout(settings.home).run_reports(args.run_id))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
