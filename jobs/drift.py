"""drift: two-sample Kolmogorov-Smirnov test per numeric feature, new window against the production reference.

The reference is the sample of training features stored with the production model (its anchor's, the last full
retrain's). Each feature gets the KS statistic, its p-value and a decision (p < drift.alpha). The result goes to
<run reports>/drift.json and a plot of the distributions to drift.png; the task log prints the table.

Run: `tidal drift --run-id RUN --batch-ids 3 4`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jobs.datasets import load_examples
from tidal.config import Settings, load_settings
from tidal.registry import REFERENCE_FILE, Registry
from tidal.storage import StorageLayout, write_step_summary


def ks_drift(reference: pd.DataFrame, current: pd.DataFrame, features: tuple[str, ...], alpha: float) -> list[dict[str, Any]]:
    """KS test per feature; NaNs (e.g. events without a value) are left out of both samples."""
    from scipy.stats import ks_2samp

    results = []
    for feature in features:
        ref = reference[feature].dropna().to_numpy(dtype=float) if feature in reference else np.array([])
        cur = current[feature].dropna().to_numpy(dtype=float) if feature in current else np.array([])
        if len(ref) == 0 or len(cur) == 0:
            results.append({"feature": feature, "statistic": None, "p_value": None, "drift": False,
                            "reference_n": len(ref), "current_n": len(cur), "note": "no data on one side"})
            continue
        test = ks_2samp(ref, cur)
        results.append({"feature": feature, "statistic": float(test.statistic), "p_value": float(test.pvalue),
                        "drift": bool(test.pvalue < alpha), "reference_n": len(ref), "current_n": len(cur)})
    return results


def plot_drift(reference: pd.DataFrame, current: pd.DataFrame, results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 2.8), squeeze=False)
    for ax, r in zip(axes[0], results):
        f = r["feature"]
        for frame, label in ((reference, "reference"), (current, "current")):
            if f in frame and frame[f].notna().any():
                ax.hist(frame[f].dropna(), bins=30, density=True, alpha=0.5, label=label)
        title = f if r["statistic"] is None else f"{f}\nKS={r['statistic']:.3f} p={r['p_value']:.2g}"
        ax.set_title(title + ("  DRIFT" if r["drift"] else ""), fontsize=8, color="red" if r["drift"] else "black")
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_drift(settings: Settings, run_id: str, batch_ids: list[int], reports_dir: Path) -> dict[str, Any]:
    layout = StorageLayout(settings.home)
    production = Registry(layout.registry).production()
    if not batch_ids or production is None or not (production.path / REFERENCE_FILE).exists():
        reason = "no new micro-batches" if not batch_ids else "no production model yet, so no reference"
        summary = {"run_id": run_id, "status": "skipped", "reason": reason, "drift": False}
        write_step_summary(reports_dir, "drift", summary)
        return summary
    params = settings.params.drift
    reference = pd.read_parquet(production.path / REFERENCE_FILE)
    current = load_examples(layout, batch_ids)
    results = ks_drift(reference, current, params.features, params.alpha)
    plot_path = reports_dir / "drift.png"
    plot_drift(reference, current, results, plot_path)
    summary = {"run_id": run_id, "status": "tested", "reference_version": production.version,
               "drift": any(r["drift"] for r in results), "alpha": params.alpha, "features": results,
               "plot": str(plot_path)}
    write_step_summary(reports_dir, "drift", summary)
    for r in results:
        stat = "   n/a" if r["statistic"] is None else f"{r['statistic']:.4f}"
        p = "   n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
        print(f"[drift] {r['feature']:<20} KS={stat} p={p} {'DRIFT' if r['drift'] else 'ok'}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal drift", description="KS drift test of new examples vs the reference.")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--batch-ids", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    settings = load_settings()
    summary = run_drift(settings, args.run_id, args.batch_ids, StorageLayout(settings.home).run_reports(args.run_id))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
