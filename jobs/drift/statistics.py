"""The drift statistics: pure functions of a reference and a current frame, no I/O.

Numeric features: two-sample Kolmogorov-Smirnov; categorical features (and item ids grouped into popularity
buckets of the reference): chi-square test of homogeneity with the population stability index (PSI) as the
effect size; all p-values of a run adjusted together with Benjamini-Hochberg. A test flags drift only when its
adjusted p-value is under alpha and its effect reaches the configured minimum; `decide` grades the run
none | mild | severe.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from jobs.drift.reference import require_features
from tidal.config import DriftParams


ITEM_BUCKETS_FEATURE = "item_id"


_PSI_EPS = 1e-4  # floor on a bucket's share, so an empty bucket gives a large but finite PSI


HISTOGRAM_MAX_BINS = 30


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
