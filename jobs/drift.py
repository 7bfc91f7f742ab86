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

import argparse
import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jobs.datasets import load_examples
from tidal.config import DriftParams, Settings, load_settings
from tidal.registry import REFERENCE_FILE, ModelVersion, Registry
from tidal.storage import StorageLayout, atomic_write_json, read_json, write_step_summary

ITEM_BUCKETS_FEATURE = "item_id"
_PSI_EPS = 1e-4  # floor on a bucket's share, so an empty bucket gives a large but finite PSI
HISTOGRAM_MAX_BINS = 30
# The inverse of the rename in jobs.datasets.load_examples and jobs.retrain.load_training_set: training frames call
# the event-type weight `weight`, the feature store and params.yaml's drift features `event_weight`.
_TRAINING_TO_STORE_NAMES = {"weight": "event_weight"}
OLD_REFERENCE_REMEDY = (
    ". A reference stored before tidal kept every drift feature (older versions lack "
    "event_weight) is not rewritten, since a version never changes: run a full retrain (`tidal retrain --reason "
    "\"...\"` or trigger the tidal_full_retrain DAG) so that production stores a complete reference, or remove the "
    "feature from params.yaml drift")

log = logging.getLogger("tidal.drift")


class MissingDriftFeature(ValueError):
    """A feature that params.yaml's drift section names is not a column of one side of the comparison."""


def with_feature_store_names(examples: pd.DataFrame) -> pd.DataFrame:
    """The examples under the feature store's column names, as params.yaml's drift features name them."""
    renames = {old: new for old, new in _TRAINING_TO_STORE_NAMES.items()
               if old in examples.columns and new not in examples.columns}
    return examples.rename(columns=renames)


def require_features(frame: pd.DataFrame, features: tuple[str, ...], side: str, remedy: str = "") -> None:
    """Raise MissingDriftFeature naming every configured feature that `frame` (the `side`) lacks."""
    missing = [f for f in features if f not in frame.columns]
    if not missing:
        return
    names = ", ".join(repr(f) for f in missing)
    what = f"feature {names} (params.yaml drift.features / categorical_features) is not a column" if len(missing) == 1 \
        else f"features {names} (params.yaml drift.features / categorical_features) are not columns"
    raise MissingDriftFeature(f"configured drift {what} of the {side}; its columns are "
                              f"{sorted(map(str, frame.columns))}{remedy}")


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """BH-adjusted p-values (q-values), in the input order: q_(i) = min_{j>=i} p_(j) * m / j, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(m)
    out[order] = adjusted
    return [float(x) for x in out]


def ks_tests(reference: pd.DataFrame, current: pd.DataFrame, features: tuple[str, ...]) -> list[dict[str, Any]]:
    """Raw KS per numeric feature; NaNs (e.g. events without a value) are left out of both samples."""
    from scipy.stats import ks_2samp

    results = []
    for feature in features:
        ref = reference[feature].dropna().to_numpy(dtype=float)
        cur = current[feature].dropna().to_numpy(dtype=float)
        base = {"feature": feature, "test": "ks", "reference_n": len(ref), "current_n": len(cur)}
        if len(ref) == 0 or len(cur) == 0:
            results.append({**base, "statistic": None, "p_value": None, "effect": None, "note": "no data on one side"})
            continue
        test = ks_2samp(ref, cur)
        results.append({**base, "statistic": float(test.statistic), "p_value": float(test.pvalue),
                        "effect": float(test.statistic)})
    return results


def popularity_buckets(reference_items: pd.Series, buckets: int) -> dict[str, str]:
    """item_id -> bucket label: the reference's items by descending count, cut into `buckets` groups of about equal
    event mass (b00 = the head). Items missing from the map fall into "unseen"."""
    counts = reference_items.value_counts(sort=False)
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")  # deterministic on ties
    mass = counts.cumsum().to_numpy() / counts.sum()
    labels = np.minimum((mass * buckets - 1e-9).astype(int), buckets - 1)
    return {item: f"b{b:02d}" for item, b in zip(counts.index, labels)}


def categorical_test(ref_values: pd.Series, cur_values: pd.Series, feature: str) -> dict[str, Any]:
    """Chi-square test of homogeneity on the (reference, current) x category table, plus PSI as the effect size."""
    from scipy.stats import chi2_contingency

    ref_counts = ref_values.value_counts()
    cur_counts = cur_values.value_counts()
    categories = sorted(set(ref_counts.index) | set(cur_counts.index))
    base = {"feature": feature, "test": "chi2+psi", "reference_n": int(ref_counts.sum()), "current_n": int(cur_counts.sum())}
    if not len(ref_values) or not len(cur_values) or len(categories) < 2:
        return {**base, "statistic": None, "p_value": None, "effect": None,
                "note": "no data on one side" if not len(ref_values) or not len(cur_values) else "one category only"}
    table = np.array([[ref_counts.get(c, 0) for c in categories], [cur_counts.get(c, 0) for c in categories]])
    chi2, p_value, _, _ = chi2_contingency(table)
    r = np.maximum(table[0] / table[0].sum(), _PSI_EPS)
    c = np.maximum(table[1] / table[1].sum(), _PSI_EPS)
    psi = float(np.sum((c - r) * np.log(c / r)))
    return {**base, "statistic": float(chi2), "p_value": float(p_value), "effect": psi,
            "reference_shares": {k: round(float(v), 4) for k, v in zip(categories, table[0] / table[0].sum())},
            "current_shares": {k: round(float(v), 4) for k, v in zip(categories, table[1] / table[1].sum())}}


def categorical_tests(reference: pd.DataFrame, current: pd.DataFrame, features: tuple[str, ...],
                      item_buckets: int) -> list[dict[str, Any]]:
    results = []
    for feature in features:
        ref, cur = reference[feature].dropna().astype(str), current[feature].dropna().astype(str)
        if feature == ITEM_BUCKETS_FEATURE:
            # Item ids are too many categories for a table: compare the mass per reference-popularity bucket.
            mapping = popularity_buckets(ref, item_buckets)
            ref, cur = ref.map(mapping), cur.map(mapping)
            # Items the reference never saw are new catalogue (cold start, expected every cycle), not a shift of
            # tastes: they are left out of the test and their share is reported beside it.
            unseen_share = float(cur.isna().mean()) if len(cur) else 0.0
            result = categorical_test(ref, cur.dropna(), feature)
            result.update(test="chi2+psi over popularity buckets", current_unseen_share=round(unseen_share, 4))
        else:
            result = categorical_test(ref, cur, feature)
        results.append(result)
    return results


def decide(results: list[dict[str, Any]], params: DriftParams) -> tuple[list[dict[str, Any]], str]:
    """BH across all tests of the run, then the effect-size gate; returns the results with decisions and the level."""
    tested = [r for r in results if r["p_value"] is not None]
    for r, q in zip(tested, benjamini_hochberg([r["p_value"] for r in tested])):
        r["q_value"] = q
    level = "none"
    for r in results:
        if r["p_value"] is None:
            r.update(q_value=None, drift=False, severity="none")
            continue
        minimum, severe = (params.d_min, params.d_severe) if r["test"] == "ks" else (params.psi_min, params.psi_severe)
        r["min_effect"] = minimum
        r["drift"] = bool(r["q_value"] < params.alpha and r["effect"] >= minimum)
        r["severity"] = "none" if not r["drift"] else ("severe" if r["effect"] >= severe else "mild")
        if r["severity"] == "severe" or (r["severity"] == "mild" and level == "none"):
            level = r["severity"]
    return results, level


def drift_tests(reference: pd.DataFrame, current: pd.DataFrame, params: DriftParams) -> tuple[list[dict[str, Any]], str]:
    """Every test of one run, decided together: (results, level in none | mild | severe)."""
    require_features(reference, params.reference_columns, "reference")
    require_features(current, params.reference_columns, "current window")
    results = ks_tests(reference, current, params.features) + categorical_tests(
        reference, current, params.categorical_features, params.item_popularity_buckets)
    return decide(results, params)


def ks_drift(reference: pd.DataFrame, current: pd.DataFrame, features: tuple[str, ...], alpha: float,
             d_min: float = 0.0) -> list[dict[str, Any]]:
    """KS per numeric feature with the run's decision rule (BH across these features, then KS >= d_min)."""
    params = DriftParams(alpha=alpha, d_min=d_min, d_severe=max(d_min, 1.0), features=features, categorical_features=())
    return decide(ks_tests(reference, current, features), params)[0]


def histogram_bins(reference: np.ndarray, current: np.ndarray, max_bins: int = HISTOGRAM_MAX_BINS) -> np.ndarray:
    """Bin edges for drawing two samples of one numeric feature, whatever its scale or skew.

    At most `max_bins` distinct values (pooled): one bin per value, edges half-way between neighbours. Otherwise the
    pooled quantiles, deduplicated (a point mass becomes one bin): equal-width bins would put the bulk of a
    heavy-tailed feature into one bar and spend the others on its tail.
    """
    pooled = np.concatenate([np.asarray(reference, dtype=float), np.asarray(current, dtype=float)])
    pooled = pooled[np.isfinite(pooled)]
    values = np.unique(pooled)
    if len(values) == 0:
        return values
    if len(values) <= max_bins:
        half_gaps = np.diff(values) / 2 if len(values) > 1 else np.array([0.5])
        return np.concatenate([[values[0] - half_gaps[0]], values[:-1] + half_gaps, [values[-1] + half_gaps[-1]]])
    return np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, max_bins + 1)))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of the finite `values` in each bin (the last bin includes its right edge)."""
    values = np.asarray(values, dtype=float)
    counts = np.histogram(values[np.isfinite(values)], bins=edges)[0]
    return counts / counts.sum() if counts.sum() else counts.astype(float)


def _numeric_panel(ax, reference: pd.Series, current: pd.Series) -> dict[str, list[float]]:
    """Share per bin, side by side; bins of equal width on the axis, labelled by their edges."""
    ref, cur = reference.dropna().to_numpy(dtype=float), current.dropna().to_numpy(dtype=float)
    edges = histogram_bins(ref, cur)
    ref_shares, cur_shares = bin_shares(ref, edges), bin_shares(cur, edges)
    x = np.arange(len(edges) - 1)
    ax.bar(x - 0.2, ref_shares, 0.4, label="reference")
    ax.bar(x + 0.2, cur_shares, 0.4, label="current")
    _label_bins(ax, edges, np.unique(np.concatenate([ref, cur])))
    return {"edges": edges.tolist(), "reference": ref_shares.tolist(), "current": cur_shares.tolist()}


def _label_bins(ax, edges: np.ndarray, values: np.ndarray) -> None:
    """One bin per value: label the values; quantile bins: label some edges (bin i spans i - 0.5 .. i + 0.5)."""
    if len(values) == len(edges) - 1:
        ax.set_xticks(np.arange(len(values)), [f"{v:.3g}" for v in values], rotation=90, fontsize=5)
        return
    ticks = np.unique(np.linspace(0, len(edges) - 1, min(len(edges), 7)).round().astype(int))
    ax.set_xticks(ticks - 0.5, [f"{edges[i]:.3g}" for i in ticks], rotation=90, fontsize=5)
    ax.set_xlabel("bins of equal pooled mass (edges)", fontsize=6)


def _categorical_panel(ax, result: dict[str, Any]) -> None:
    keys = list(result["reference_shares"])
    x = np.arange(len(keys))
    ax.bar(x - 0.2, [result["reference_shares"][k] for k in keys], 0.4, label="reference")
    ax.bar(x + 0.2, [result["current_shares"][k] for k in keys], 0.4, label="current")
    ax.set_xticks(x, keys, rotation=90, fontsize=5)


def _panel_title(result: dict[str, Any]) -> str:
    if result["statistic"] is None:
        return f"{result['feature']}\n{result.get('note', 'no test')}"
    name = "KS" if result["test"] == "ks" else "PSI"
    return f"{result['feature']}\n{name}={result['effect']:.3f} p={result['p_value']:.2g}" + (
        "  DRIFT" if result["drift"] else "")


def plot_drift(reference: pd.DataFrame, current: pd.DataFrame, results: list[dict[str, Any]],
               path: Path) -> dict[str, dict[str, list[float]]]:
    """One panel per test: shares per bin for KS features, shares per category for categorical ones. Returns the
    bin edges and shares drawn for each numeric feature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.0), squeeze=False)
    drawn: dict[str, dict[str, list[float]]] = {}
    for ax, r in zip(axes[0], results):
        if r.get("reference_shares"):
            _categorical_panel(ax, r)
        elif r["statistic"] is not None:
            drawn[r["feature"]] = _numeric_panel(ax, reference[r["feature"]], current[r["feature"]])
        ax.set_title(_panel_title(r), fontsize=8, color="red" if r["drift"] else "black")
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn


def write_html_report(summary: dict[str, Any], plot_path: Path, path: Path) -> None:
    """A self-contained page: the decision, one row per test, and the distributions plot inlined."""
    def cell(x: Any) -> str:
        return "" if x is None else (f"{x:.4g}" if isinstance(x, float) else html.escape(str(x)))

    rows = "".join(
        f"<tr class='{'drift' if r['drift'] else ''}'>" + "".join(f"<td>{cell(r.get(k))}</td>" for k in (
            "feature", "test", "reference_n", "current_n", "statistic", "effect", "min_effect", "p_value", "q_value",
            "severity")) + "</tr>" for r in summary["features"])
    image = base64.b64encode(plot_path.read_bytes()).decode() if plot_path.exists() else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tidal drift {html.escape(summary['run_id'])}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}} tr.drift{{color:#b00}}</style>
</head><body><h1>Drift: {html.escape(summary['response'])}</h1>
<p>run {html.escape(summary['run_id'])}; reference {html.escape(str(summary['reference_version']))}
(anchor {html.escape(str(summary.get('reference_anchor')))}); alpha {summary['alpha']} after Benjamini-Hochberg;
minimum effect: KS {summary['d_min']}, PSI {summary['psi_min']}; severe: KS {summary['d_severe']}, PSI {summary['psi_severe']}</p>
<table><tr><th>feature</th><th>test</th><th>ref n</th><th>cur n</th><th>statistic</th><th>effect</th><th>min effect</th>
<th>p</th><th>BH q</th><th>decision</th></tr>{rows}</table>
<img alt="distributions" src="data:image/png;base64,{image}"></body></html>"""
    path.write_text(page)


def drift_state_path(layout: StorageLayout) -> Path:
    return layout.reports / "drift_state.json"


def read_drift_state(layout: StorageLayout) -> dict[str, Any]:
    """The graded response in force: {"boost": bool, ...}. Fine-tune reads it to train harder after mild drift."""
    path = drift_state_path(layout)
    return read_json(path) if path.exists() else {"boost": False, "level": "none", "run_id": None}


def update_drift_state(layout: StorageLayout, run_id: str, level: str) -> dict[str, Any]:
    """Mild or severe drift switches boost on; a run that sees no drift switches it off."""
    state = {"boost": level != "none", "level": level, "run_id": run_id}
    atomic_write_json(drift_state_path(layout), state)
    return state


def production_reference(production: ModelVersion, params: DriftParams) -> pd.DataFrame:
    """The production version's stored reference sample, refused if it lacks a configured feature."""
    path = production.path / REFERENCE_FILE
    reference = pd.read_parquet(path)
    require_features(reference, params.reference_columns, f"reference of production {production.version} ({path})",
                     OLD_REFERENCE_REMEDY)
    return reference


def current_window(layout: StorageLayout, batch_ids: list[int], params: DriftParams) -> pd.DataFrame:
    current = with_feature_store_names(load_examples(layout, batch_ids))
    if len(current):
        require_features(current, params.reference_columns, f"current window (examples of batches {batch_ids})")
    return current


def verdict_line(result: dict[str, Any]) -> str:
    """One test's verdict as one log line: feature, test, statistic, effect, p, BH q, sample sizes, decision."""
    def number(x: float | None, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    note = f" ({result['note']})" if result.get("note") else ""
    return (f"drift {result['feature']}: {result['test']} statistic={number(result['statistic'], '.4g')} "
            f"effect={number(result['effect'], '.4g')} p={number(result['p_value'], '.3g')} "
            f"q={number(result['q_value'], '.3g')} n ref={result['reference_n']} cur={result['current_n']} "
            f"-> {result['severity']}{note}")


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
    parser = argparse.ArgumentParser(prog="tidal drift", description="Drift tests (KS, chi-square/PSI, BH) of new examples vs the reference.")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--batch-ids", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the verdict lines, as the task log shows them
    settings = load_settings()
    summary = run_drift(settings, args.run_id, args.batch_ids, StorageLayout(settings.home).run_reports(args.run_id))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
