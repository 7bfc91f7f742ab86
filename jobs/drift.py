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
no drift. Severe drift makes the DAG trigger `tidal_full_retrain`.

Reference policy: the reference is the sample of training examples stored with the production model, which an
incremental candidate copies from its parent, so it is always the anchor's (the last full retrain's) training
sample, capped at `drift.reference_max_rows`; it changes only when a full retrain is promoted.

Each run writes <run reports>/drift.json, drift.png (distributions) and drift.html (the table, the decisions and
the plot). Run: `tidal drift --run-id RUN --batch-ids 3 4`.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jobs.datasets import load_examples
from tidal.config import DriftParams, Settings, load_settings
from tidal.registry import REFERENCE_FILE, Registry
from tidal.storage import StorageLayout, atomic_write_json, read_json, write_step_summary

ITEM_BUCKETS_FEATURE = "item_id"
_PSI_EPS = 1e-4  # floor on a bucket's share, so an empty bucket gives a large but finite PSI


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
        ref = reference[feature].dropna().to_numpy(dtype=float) if feature in reference else np.array([])
        cur = current[feature].dropna().to_numpy(dtype=float) if feature in current else np.array([])
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
        if feature not in reference or feature not in current:
            results.append({"feature": feature, "test": "chi2+psi", "statistic": None, "p_value": None, "effect": None,
                            "reference_n": int(feature in reference and reference[feature].notna().sum()),
                            "current_n": int(feature in current and current[feature].notna().sum()),
                            "note": "no data on one side"})
            continue
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
    results = ks_tests(reference, current, params.features) + categorical_tests(
        reference, current, params.categorical_features, params.item_popularity_buckets)
    return decide(results, params)


def ks_drift(reference: pd.DataFrame, current: pd.DataFrame, features: tuple[str, ...], alpha: float,
             d_min: float = 0.0) -> list[dict[str, Any]]:
    """KS per numeric feature with the run's decision rule (BH across these features, then KS >= d_min)."""
    params = DriftParams(alpha=alpha, d_min=d_min, d_severe=max(d_min, 1.0), features=features, categorical_features=())
    return decide(ks_tests(reference, current, features), params)[0]


def plot_drift(reference: pd.DataFrame, current: pd.DataFrame, results: list[dict[str, Any]], path: Path) -> None:
    """One panel per test: overlaid histograms for KS features, side-by-side shares for categorical ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 2.8), squeeze=False)
    for ax, r in zip(axes[0], results):
        f = r["feature"]
        if r.get("reference_shares"):
            keys = list(r["reference_shares"])
            x = np.arange(len(keys))
            ax.bar(x - 0.2, [r["reference_shares"][k] for k in keys], 0.4, label="reference")
            ax.bar(x + 0.2, [r["current_shares"][k] for k in keys], 0.4, label="current")
            ax.set_xticks(x, keys, rotation=90, fontsize=5)
        else:
            for frame, label in ((reference, "reference"), (current, "current")):
                if f in frame and pd.api.types.is_numeric_dtype(frame[f]) and frame[f].notna().any():
                    ax.hist(frame[f].dropna(), bins=30, density=True, alpha=0.5, label=label)
        title = f if r["statistic"] is None else f"{f}\n{'KS' if r.get('test', 'ks') == 'ks' else 'PSI'}=" \
            f"{r['effect'] if r.get('effect') is not None else r['statistic']:.3f} p={r['p_value']:.2g}"
        ax.set_title(title + ("  DRIFT" if r["drift"] else ""), fontsize=8, color="red" if r["drift"] else "black")
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


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


def run_drift(settings: Settings, run_id: str, batch_ids: list[int], reports_dir: Path) -> dict[str, Any]:
    layout = StorageLayout(settings.home)
    production = Registry(layout.registry).production()
    if not batch_ids or production is None or not (production.path / REFERENCE_FILE).exists():
        reason = "no new micro-batches" if not batch_ids else "no production model yet, so no reference"
        # No evidence either way: leave the response in force as it is.
        summary = {"run_id": run_id, "status": "skipped", "reason": reason, "drift": False, "response": "none",
                   "boost": read_drift_state(layout)["boost"]}
        write_step_summary(reports_dir, "drift", summary)
        return summary
    params = settings.params.drift
    reference = pd.read_parquet(production.path / REFERENCE_FILE)
    current = load_examples(layout, batch_ids)
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
        stat = "   n/a" if r["effect"] is None else f"{r['effect']:.4f}"
        q = "   n/a" if r["q_value"] is None else f"{r['q_value']:.3g}"
        print(f"[drift] {r['feature']:<20} {r['test']:<8} effect={stat} q={q} {r['severity']}", flush=True)
    print(f"[drift] response: {level}; report: {summary['html']}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal drift", description="Drift tests (KS, chi-square/PSI, BH) of new examples vs the reference.")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--batch-ids", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    settings = load_settings()
    summary = run_drift(settings, args.run_id, args.batch_ids, StorageLayout(settings.home).run_reports(args.run_id))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
