"""The robustness table of the prequential benchmark: one row per (dataset, strategy) from the replays' JSON.

    python benchmarks/prequential/table.py DIR [DIR ...] > benchmarks/prequential/variants.md

Each DIR holds a `prequential.json` written by `tidal evaluate prequential`; the dataset is named by the
folder. Columns: Recall@10 and NDCG@10 (means over seeds), train CPU s, and the ratios to recent popularity
and to a retrain every window (Recall; CPU for the ratio to retrain).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

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


def main(argv: list[str]) -> int:
    print("| dataset | strategy | Recall@10 | sd (seeds) | NDCG@10 | train CPU s | Recall vs popularity | "
          "Recall vs retrain | CPU vs retrain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in map(Path, argv):
        report = json.loads((folder / "prequential.json").read_text())
        print("\n".join(rows(report, folder.name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
