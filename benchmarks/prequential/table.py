"""The robustness table of the prequential benchmark: one row per (dataset, strategy) from the replays' JSON.

    python benchmarks/prequential/table.py [NAME=]DIR ... > benchmarks/prequential/variants.md

Each DIR holds a `prequential.json` written by `tidal evaluate prequential`; the dataset is NAME, or the
folder's name. Columns: Recall@10 and NDCG@10 (means over seeds), train CPU s, and the ratios to recent popularity
and to a retrain every window (Recall; CPU for the ratio to retrain). The targets table adds a 90% interval for
incremental vs retrain: a paired bootstrap over the windows, since a window of a small stream holds only a handful
of returning users, and one hit more or less moves its recall by a tenth.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from models.prequential import MODEL_STRATEGIES, STRATEGIES


def rows(report: dict, name: str) -> list[str]:
    s = report["strategies"]
    pop, retrain = s["popularity_recent"], s["retrain_every_window"]
    best = max(MODEL_STRATEGIES, key=lambda n: s[n]["recall_at_10"])
    out = []
    for strategy in STRATEGIES:
        row = s[strategy]
        mark = "**" if strategy == best else ""
        out.append(f"| {name} | {mark}{strategy}{mark} | {row['recall_at_10']:.4f} | {row['recall_at_10_std']:.4f} | "
                   f"{row['ndcg_at_10']:.4f} | {row['train_cpu_s']:.1f} | "
                   f"{row['recall_at_10'] / pop['recall_at_10']:.2f}x | "
                   f"{row['recall_at_10'] / retrain['recall_at_10']:.2f}x | "
                   f"{row['train_cpu_s'] / retrain['train_cpu_s']:.1%} |")
    return out


def ratio_interval(numerator: list[dict], denominator: list[dict], level: float = 0.9, draws: int = 4000
                   ) -> tuple[float, float]:
    """Paired bootstrap over windows of mean(numerator recall) / mean(denominator recall): the `level`
    interval. Windows without returning users (NaN) are left out; the draws are seeded, so the table is stable."""
    a = np.array([w["recall_at_10"] for w in numerator], dtype=float)
    b = np.array([w["recall_at_10"] for w in denominator], dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    picks = np.random.default_rng(0).integers(0, len(a), size=(draws, len(a)))
    ratios = a[picks].mean(1) / np.maximum(b[picks].mean(1), 1e-12)
    tail = (1 - level) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def target_row(report: dict, name: str) -> str:
    """Issue 11's targets on one dataset: best model strategy >= 1.15x recent popularity; incremental >= 1.0x a
    retrain every window at <= 10% of its CPU."""
    s = report["strategies"]
    r = {k: v["recall_at_10"] for k, v in s.items()}
    best = max(MODEL_STRATEGIES, key=lambda n: r[n])
    vs_pop = r[best] / r["popularity_recent"]
    vs_retrain = r["incremental"] / r["retrain_every_window"]
    cpu = s["incremental"]["train_cpu_s"] / s["retrain_every_window"]["train_cpu_s"]
    inc, ret = s["incremental"]["per_seed"], s["retrain_every_window"]["per_seed"]
    per_seed = [inc[x]["recall_at_10"] / ret[x]["recall_at_10"] for x in inc]
    cpu_per_seed = [inc[x]["train_cpu_s"] / ret[x]["train_cpu_s"] for x in inc]
    low, high = ratio_interval(s["incremental"]["per_window"], s["retrain_every_window"]["per_window"])

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    return (f"| {name} | {best} {vs_pop:.2f}x ({met(vs_pop >= 1.15)}) | {vs_retrain:.2f}x "
            f"(per seed {', '.join(f'{x:.2f}' for x in per_seed)}; {met(vs_retrain >= 1.0)}) | "
            f"{low:.2f}-{high:.2f} | "
            f"{cpu:.1%} (per seed {', '.join(f'{x:.1%}' for x in cpu_per_seed)}; {met(cpu <= 0.10)}) |")


def main(argv: list[str]) -> int:
    print("| dataset | strategy | Recall@10 | sd (seeds) | NDCG@10 | train CPU s | Recall vs popularity | "
          "Recall vs retrain | CPU vs retrain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arg in argv:
        name, _, folder = arg.rpartition("=")
        report = json.loads((Path(folder) / "prequential.json").read_text())
        print("\n".join(rows(report, name or Path(folder).name)))
    print("\n| dataset | best model vs popularity (>= 1.15x) | incremental vs retrain every window (>= 1.0x) | "
          "its 90% interval (windows) | incremental CPU vs retrain (<= 10%) |")
    print("|---|---|---|---|---|")
    for arg in argv:
        name, _, folder = arg.rpartition("=")
        print(target_row(json.loads((Path(folder) / "prequential.json").read_text()), name or Path(folder).name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
