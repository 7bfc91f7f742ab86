"""The fine-tune's training loop vs a bare PyTorch loop: same model, same batch size, same optimizer, same data.

Not a test. Run (from the repo root):
    PYTHONPATH=. .venv/bin/python benchmarks/training/loop.py [--events 100000]

It builds a production model by a full retrain on generated interactions, then times, on the next window of new
interactions:
  1. the fine-tune as production runs it (`models.recommender.train` with `init_from`): samples/s = training examples
     x epochs / seconds of the whole call, and of its `_fit` loop alone (timed by wrapping it, nothing changed);
  2. a bare loop over the same `_Net` (built from the same checkpoint), the same examples, batch size, negatives and
     Adam: forward, loss, backward, step, nothing else (no L2, anchor, gradient clipping, finiteness checks).
Ratio = fine-tune samples/s / bare samples/s (target >= 0.8). The two are timed in turn `--repeats` times
(fine-tune, bare, fine-tune, bare, ...) and the ratio reported is the median of the pairs', so a load spike on a
shared machine hits one pair, not the figure. models/ is only read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


REPO_ROOT = Path(__file__).resolve().parents[2]


def interactions(n: int, users: int, items: int, start_s: float, seed: int) -> pd.DataFrame:
    """Zipf-ish generated interactions: user_id, item_id, timestamp (one second apart), weight."""
    rng = np.random.default_rng(seed)
    item_p = 1.0 / np.arange(1, items + 1) ** 0.8
    return pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, users, n)],
                         "item_id": [f"i{i}" for i in rng.choice(items, n, p=item_p / item_p.sum())],
                         "timestamp": start_s + np.arange(n, dtype=float),
                         "weight": rng.choice([1.0, 2.0, 5.0], n)})


def bare_loop(net, examples, epochs: int, batch_size: int, negatives: int, lr: float, seed: int) -> float:
    """Seconds of a plain sampled-softmax loop over `examples` (users, items, weights tensors) with Adam."""
    import torch

    u_all, i_all, w_all = examples
    n_items = net.item.shape[0]
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(u_all), generator=gen)
        for start in range(0, len(u_all), batch_size):
            b = order[start:start + batch_size]
            _, loss = net(u_all[b], i_all[b], torch.randint(0, n_items, (negatives,), generator=gen), w_all[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def measure(events: int, users: int, items: int, threads: int, seed: int, repeats: int = 3) -> dict[str, Any]:
    """Full retrain -> production; then the fine-tune and the bare loop on the next window, timed in turn."""
    import torch

    from models import recommender as rec

    torch.set_num_threads(threads)
    cfg = rec.TrainConfig(seed=seed)
    history = interactions(events, users, items, 1.8e9, seed)
    production = rec.train(history, cfg=rec.TrainConfig(seed=seed, epochs=1)).checkpoint
    new = interactions(events // 2, users, items, 1.8e9 + events, seed + 1)

    fit_s: list[float] = []
    examples_seen: list[Any] = []
    original_fit = rec._fit

    def timed_fit(net, optimizer, examples, *args, **kwargs):
        examples_seen.append((net, examples))
        started = time.perf_counter()
        try:
            return original_fit(net, optimizer, examples, *args, **kwargs)
        finally:
            fit_s.append(time.perf_counter() - started)

    epochs = cfg.finetune_epochs or cfg.epochs
    pairs = []
    for _ in range(repeats):
        rec._fit = timed_fit
        try:
            result = rec.train(new, cfg=cfg, init_from=production, anchor=production, replay=history)
        finally:
            rec._fit = original_fit
        _, examples = examples_seen[-1]
        bare_net = rec._build_net(result.checkpoint)  # a fresh copy of the same model and vocabulary
        bare_s = bare_loop(bare_net, examples, epochs, cfg.batch_size, cfg.negatives, cfg.finetune_lr or cfg.lr, seed)
        pairs.append({"finetune_s": round(result.wall_s, 3), "finetune_fit_s": round(fit_s[-1], 3),
                      "bare_s": round(bare_s, 3), "ratio": round(bare_s / result.wall_s, 3),
                      "fit_ratio": round(bare_s / fit_s[-1], 3)})
    middle = sorted(pairs, key=lambda p: p["ratio"])[len(pairs) // 2]
    samples = result.examples * epochs
    return {"examples": result.examples, "epochs": epochs, "batch_size": cfg.batch_size, "negatives": cfg.negatives,
            "dim": cfg.dim, "threads": threads, "users": len(result.checkpoint.user_ids),
            "items": len(result.checkpoint.item_ids), "repeats": repeats, **middle,
            "finetune_samples_per_s": round(samples / middle["finetune_s"]),
            "fit_samples_per_s": round(samples / middle["finetune_fit_s"]),
            "bare_samples_per_s": round(samples / middle["bare_s"]), "pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="history size; the new window is half")
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="fine-tune/bare pairs timed in turn; median reported")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    print(json.dumps(measure(args.events, args.users, args.items, args.threads, args.seed, args.repeats)),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
