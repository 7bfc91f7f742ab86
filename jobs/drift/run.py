"""drift: is the new window drawn from the same distribution as the production model's reference?

Statistics, per run:
- numeric features: two-sample Kolmogorov-Smirnov (scipy `ks_2samp`);
- categorical features (`event_type`, and `item_id` grouped into popularity buckets of the reference, so a new head
  of the catalogue shows up): chi-square test of homogeneity on the 2 x K table, with the population stability
  index (PSI) as the effect size;
- the p-values of all tests of a run are adjusted together with Benjamini-Hochberg (false discovery rate at
  `drift.alpha`); a test flags drift only when its adjusted p-value is under alpha AND its effect is at least the
  configured minimum (KS statistic >= `drift.d_min`, PSI >= `drift.psi_min`). The p-value alone flags trivial
  shifts on big windows; the effect size alone flags noise on tiny ones.

Response: `none` (carry on), `mild` (some test flags drift below the severe effect), `severe` (an effect at or
above `drift.d_severe` / `drift.psi_severe`). Mild drift switches on the "train harder" mode that fine-tune reads
(reports/drift_state.json) and the DAG triggers the next incremental run at once; the mode lasts until a run sees
no drift. On severe drift the DAG emits the `tidal://drift/severe` asset, which starts `tidal_scheduled_retrain`.

Reference policy: the reference is the sample of training examples stored with the production model, which an
incremental candidate copies from its parent, so it is always the anchor's (the last full retrain's) training
sample, capped at `drift.reference_max_rows`; it changes only when a full retrain is promoted.

Every configured feature must be a column of both the reference and the new window: a missing one is an error
(MissingDriftFeature, naming the feature, the side and the columns there), never a silent "no drift". The
fine-tune and the full retrain read examples with the event-type weight renamed to `weight` (the model's name);
drift compares under the feature store's names (`event_weight`), on both sides. A reference stored before it kept
event_weight is refused with the remedy: a full retrain stores a complete one (versions never change in place).

Each run logs one line per test to the `tidal.drift` logger (the task's main log under Airflow) and writes
<run reports>/drift.json, drift.png (distributions on bins of equal pooled mass, so a skewed feature does not
collapse into one bar) and drift.html (the table, the decisions and the plot).
Run: `tidal drift --run-id RUN --batch-ids 3 4`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jobs.drift.reference import current_window, production_reference
from jobs.drift.report import plot_drift, verdict_line, write_html_report
from jobs.drift.statistics import drift_tests
from tidal.config import Settings
from tidal.drift_state import read_drift_state, update_drift_state
from tidal.registry import REFERENCE_FILE, Registry
from tidal.step_cli import run_step_main
from tidal.storage import StorageLayout, write_step_summary


log = logging.getLogger("tidal.drift")


def skip_drift(layout: StorageLayout, run_id: str, reason: str, reports_dir: Path) -> dict[str, Any]:
    # No evidence either way: leave the response in force as it is.
    summary = {"run_id": run_id, "status": "skipped", "reason": reason, "drift": False, "response": "none",
               "boost": read_drift_state(layout)["boost"]}
    write_step_summary(reports_dir, "drift", summary)
    log.info("drift skipped: %s", reason)
    return summary


def run_drift(settings: Settings, run_id: str, batch_ids: list[int], reports_dir: Path) -> dict[str, Any]:
    layout = StorageLayout(settings.home)
    production = Registry(layout.registry).production()
    if not batch_ids or production is None or not (production.path / REFERENCE_FILE).exists():
        reason = "no new micro-batches" if not batch_ids else "no production model yet, so no reference"
        return skip_drift(layout, run_id, reason, reports_dir)
    params = settings.params.drift
    reference = production_reference(production, params)
    current = current_window(layout, batch_ids, params)
    if not len(current):
        return skip_drift(layout, run_id, f"no examples in micro-batches {batch_ids}", reports_dir)
    results, level = drift_tests(reference, current, params)
    plot_path = reports_dir / "drift.png"
    plot_drift(reference, current, results, plot_path)
    state = update_drift_state(layout, run_id, level)
    summary = {"run_id": run_id, "status": "tested", "reference_version": production.version,
               "reference_anchor": production.metadata.get("anchor"), "reference_rows": len(reference),
               "current_rows": len(current), "drift": level != "none", "response": level, "boost": state["boost"],
               "alpha": params.alpha, "d_min": params.d_min, "d_severe": params.d_severe, "psi_min": params.psi_min,
               "psi_severe": params.psi_severe, "features": results, "plot": str(plot_path),
               "html": str(reports_dir / "drift.html")}
    write_html_report(summary, plot_path, reports_dir / "drift.html")
    write_step_summary(reports_dir, "drift", summary)
    for r in results:
        log.info("%s", verdict_line(r))
    log.info("drift response: %s (reference %s); report: %s", level, production.version, summary["html"])
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_step_main(argv, prog="tidal drift", batch_ids=True,
                         description="Drift tests (KS, chi-square/PSI, BH) of new examples vs the reference.",
                         run=lambda settings, args, reports: run_drift(settings, args.run_id, args.batch_ids, reports))


if __name__ == "__main__":
    raise SystemExit(main())
