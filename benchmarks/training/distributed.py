"""The full retrain over 2 processes (torch.distributed, gloo) vs one process: throughput and held-out metrics.

Not a test. Run (from the repo root):
    PYTHONPATH=. .venv/bin/python benchmarks/training/distributed.py [--events 100000] [--repeats 2]

On the same generated interactions (benchmarks/training/loop.py's generator) and the production TrainConfig, in
turn `--repeats` times: `train` in this process with 1 thread, with 2 threads, and `train_distributed` over 2
processes of 1 thread. Reports, per variant, the median wall of the call, samples/s (examples x epochs / wall),
for the distributed run also the ranks' own training wall (without torchrun's start and the inputs' round trip),
and Recall@10 / NDCG@10 on the next `--held-out` events (models.metrics, the prequential protocol's rules).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def measure(events: int, held_out: int, users: int, items: int, repeats: int, seed: int) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from loop import interactions

    from models.distributed import train_distributed
    from models.metrics import evaluate_window
    from models.recommender import TrainConfig, train

    cfg = TrainConfig(seed=seed)
    data = interactions(events + held_out, users, items, 1.8e9, seed)
    history, future = data.iloc[:events], data.iloc[events:]
    runs: dict[str, list[dict[str, Any]]] = {"1 process, 1 thread": [], "1 process, 2 threads": [],
                                             "2 processes (DDP), 1 thread each": []}
    for _ in range(repeats):
        for name in runs:
            if name.startswith("2 processes"):
                lines: list[str] = []
                with tempfile.TemporaryDirectory() as work:
                    result = train_distributed(history, cfg=cfg, processes=2, workdir=work, progress=lines.append)
                ranks_s = float(next(line for line in lines if "trained in" in line).split("trained in ")[1].split()[0])
            else:
                torch.set_num_threads(2 if "2 threads" in name else 1)
                result, ranks_s = train(history, cfg=cfg), None
            metrics = evaluate_window(result.checkpoint, history, future)
            runs[name].append({"wall_s": result.wall_s, "ranks_train_s": ranks_s, "train_cpu_s": result.train_cpu_s,
                               "recall_at_10": metrics["recall_at_10"], "ndcg_at_10": metrics["ndcg_at_10"],
                               "final_loss": result.losses[-1]})
    samples = len(history) * cfg.epochs
    out: dict[str, Any] = {"events": events, "held_out": held_out, "epochs": cfg.epochs, "dim": cfg.dim,
                           "batch_size": cfg.batch_size, "repeats": repeats, "variants": {}}
    for name, rows in runs.items():
        wall = statistics.median(r["wall_s"] for r in rows)
        ranks = [r["ranks_train_s"] for r in rows if r["ranks_train_s"] is not None]
        out["variants"][name] = {
            "wall_s": round(wall, 2), "samples_per_s": round(samples / wall),
            "ranks_train_s": round(statistics.median(ranks), 2) if ranks else None,
            "ranks_samples_per_s": round(samples / statistics.median(ranks)) if ranks else None,
            "train_cpu_s": round(statistics.median(r["train_cpu_s"] for r in rows), 2),
            "recall_at_10": round(rows[0]["recall_at_10"], 5), "ndcg_at_10": round(rows[0]["ndcg_at_10"], 5),
            "final_loss": round(rows[0]["final_loss"], 5), "runs": rows}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--held-out", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    print(json.dumps(measure(args.events, args.held_out, args.users, args.items, args.repeats, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
