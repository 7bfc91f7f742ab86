"""What a drift run shows a person: one log line per test, a plot of the distributions, an HTML page.

The plot bins numeric features on the pooled quantiles of both sides (`histogram_bins` in statistics), so a
skewed feature does not collapse into one bar.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jobs.drift.statistics import bin_shares, histogram_bins


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


def verdict_line(result: dict[str, Any]) -> str:
    """One test's verdict as one log line: feature, test, statistic, effect, p, BH q, sample sizes, decision."""
    def number(x: float | None, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    note = f" ({result['note']})" if result.get("note") else ""
    return (f"drift {result['feature']}: {result['test']} statistic={number(result['statistic'], '.4g')} "
            f"effect={number(result['effect'], '.4g')} p={number(result['p_value'], '.3g')} "
            f"q={number(result['q_value'], '.3g')} n ref={result['reference_n']} cur={result['current_n']} "
            f"-> {result['severity']}{note}")
