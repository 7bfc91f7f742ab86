"""Prequential (test-then-train) replay: the one way tidal measures recommendation quality
(docs/evaluation.md).

The stream is sorted by time (stable on ties); the first 50% of interactions by count is the warm-up; the rest
is cut into 20 consecutive windows of equal count (sizes differ by at most one). For each window every
strategy is first evaluated (`models.metrics`), then handed the window to learn from.

Strategies (names are the report's keys):
    static                 the warm-up model, never refreshed
    retrain_every_window   a full retrain from scratch on everything seen, before every window
    retrain_every_5        the same, every 5 windows
    incremental            fine-tune on each window from the previous model (anchor: the warm-up model)
    incremental_reset_5    fine-tune on each window, replaced by a full retrain every 5 windows (the
                           platform's default policy; the anchor is the last full retrain)
    popularity_recent      items by their count over the last max(1, floor(0.1 n)) of the n events seen
    blend                  the model's two stream-decayed terms alone, no factorization: z(EASE) + w z(log pop),
                           refit on everything seen before each window

Every model strategy scores z(mf) + a z(EASE) + w z(log pop_h) (models/recommender.py) and chooses (a, h, w)
online, as production does with `models.recommender.observe`: window w is scored with the cell whose
forgetting-weighted recall on the windows before w was best; only then does window w join the evidence.

How the replay is computed (every step is a function below, run as independent tasks on `workers`
processes; the numbers do not depend on the number of processes):
    full_retrain_step(w)    train the full retrain before window w on everything before it, and score its
                            weight grid where a strategy uses it (retrain_every_window at w; retrain_every_5
                            and static on the windows they serve)
    incremental_chain()     from the warm-up model: score window w, fine-tune on it, for every w
    reset_segment(s)        from the full retrain before window 5s: the reset chain over windows 5s .. 5s+4
    popularity_step()       the baseline (it has no seed, so it runs once)
    blend_step()            EASE + popularity (no seed either)
    assemble_seed()         the online choice of weights (`choose_online`), per-strategy means and costs

Full retrains at the same point on the same data are the same model (same seed), so each is trained once and
shared; each strategy is charged the CPU of every training it relies on, the warm-up included.

    result = run_prequential(interactions, items, cfg=TrainConfig(), protocol=Protocol())
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from models.data import event_ages, sort_by_time
from models.ease import DecayedEASE
from models.metrics import WindowTask, evaluate_scores, prepare_window, score_task
from models.recommender import (Checkpoint, TrainConfig, ease_weights, ease_z, grid_metrics, observe_task,
                                popularity_counts, popularity_half_life_shares, popularity_weights, popularity_z,
                                select, train, update_selection)

STRATEGIES = ("static", "retrain_every_window", "retrain_every_5", "incremental", "incremental_reset_5",
              "popularity_recent", "blend")


@dataclass(frozen=True)
class Protocol:
    """The evaluation protocol's fixed numbers, plus how many seeds to run and on how many processes."""

    warmup_fraction: float = 0.5
    windows: int = 20
    k: int = 10
    reset_every: int = 5
    popularity_fraction: float = 0.1
    seeds: tuple[int, ...] = (0, 1, 2)
    workers: int = 2                                               # processes running the replay's tasks
    torch_threads: int = 1                                         # per process


def window_bounds(n: int, warmup_fraction: float, windows: int) -> list[tuple[int, int]]:
    """[start, end) row ranges of the evaluation windows after a warm-up of floor(n * fraction) rows."""
    warm = int(math.floor(n * warmup_fraction))
    edges = [warm + round(j * (n - warm) / windows) for j in range(windows + 1)]
    return [(edges[j], edges[j + 1]) for j in range(windows)]


class RecentPopularity:
    """The baseline: items scored by their count over the last max(1, floor(fraction * n)) seen events."""

    def __init__(self, seen: pd.DataFrame, fraction: float = 0.1):
        recent = seen.iloc[len(seen) - max(1, int(math.floor(fraction * len(seen)))):]
        self.counts = recent["item_id"].value_counts()

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        row = self.counts.reindex(list(item_ids)).fillna(0.0).to_numpy(dtype=float)  # (I,)
        return np.broadcast_to(row, (len(user_ids), len(row))).copy()


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


# ----- the replay's shared state: one per process ---------------------------------------------------------

@dataclass
class Replay:
    """The time-sorted stream, its windows and each window's evaluation set (built once per process)."""

    stream: pd.DataFrame
    items: pd.DataFrame | None
    cfg: TrainConfig
    protocol: Protocol
    bounds: list[tuple[int, int]]
    _tasks: dict[int, WindowTask] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, interactions: pd.DataFrame, items: pd.DataFrame | None, cfg: TrainConfig,
              protocol: Protocol) -> "Replay":
        stream = sort_by_time(interactions)
        return cls(stream, items, cfg, protocol,
                   window_bounds(len(stream), protocol.warmup_fraction, protocol.windows))

    @property
    def n_windows(self) -> int:
        return len(self.bounds)

    def seen(self, w: int) -> pd.DataFrame:
        return self.stream.iloc[:self.bounds[w][0]]

    def window(self, w: int) -> pd.DataFrame:
        return self.stream.iloc[self.bounds[w][0]:self.bounds[w][1]]

    def task(self, w: int) -> WindowTask:
        if w not in self._tasks:
            self._tasks[w] = prepare_window(self.seen(w), self.window(w), self.protocol.k)
        return self._tasks[w]

    def scores(self, model, w: int) -> np.ndarray:
        return score_task(model, self.task(w)) if self.task(w).users else None

    def evaluate(self, model, w: int) -> dict:
        return evaluate_scores(self.scores(model, w), self.task(w))

    def grid(self, model: Checkpoint, w: int) -> dict:
        """Every cell of the model's weight grid scored on window w (`models.recommender.grid_metrics`)."""
        task = self.task(w)
        parts = model.score_parts(task.users, task.candidates) if task.users else None
        return grid_metrics(parts, task, self.cfg)

    def config(self, seed: int) -> TrainConfig:
        return dataclasses.replace(self.cfg, seed=seed)


_REPLAY: Replay | None = None  # set in each worker by _init_worker (and in-process when workers == 1)


def _init_worker(interactions, items, cfg, protocol) -> None:
    global _REPLAY
    torch.set_num_threads(protocol.torch_threads)
    _REPLAY = Replay.build(interactions, items, cfg, protocol)
    _warm_up_process(_REPLAY)


def _warm_up_process(rp: Replay) -> None:
    """One tiny full retrain and fine-tune before anything is timed. The first `train` in a fresh process
    imports what torch and pandas load lazily (about 1.8 CPU s on this machine, more than a fine-tune of a
    small stream): without this, whichever task a process happens to run first is charged for it."""
    head = rp.stream.iloc[: min(len(rp.stream), 400)]
    if len(head) < 2:
        return
    cfg = dataclasses.replace(rp.cfg, epochs=1, finetune_epochs=1)
    split = len(head) // 2
    base = train(head.iloc[:split], cfg=cfg, items=rp.items).checkpoint
    train(head.iloc[split:], cfg=cfg, init_from=base, anchor=base, replay=head.iloc[:split], items=rp.items)


class _Cost:
    """CPU and wall seconds of a piece of work, summed."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    def add_result(self, result) -> None:
        self.cpu += result.train_cpu_s
        self.wall += result.wall_s

    def add_since(self, cpu0: float, wall0: float) -> None:
        self.cpu += time.process_time() - cpu0
        self.wall += time.perf_counter() - wall0

    def as_dict(self) -> dict:
        return {"cpu": self.cpu, "wall": self.wall}


def _accept(result, what: str) -> Checkpoint:
    # The harness applies the platform's rule: a non-finite candidate is rejected. A full retrain has no
    # previous model to fall back on, so that is fatal.
    if not result.finite:
        raise RuntimeError(f"{what}: training produced non-finite loss or weights")
    return result.checkpoint


# ----- the steps --------------------------------------------------------------------------------------------

def full_retrain_step(seed: int, w: int) -> dict:
    """The full retrain before window w, scored (every cell of its weight grid) on every window a strategy
    uses it for. Returns its grids by strategy and window, its training cost, and the checkpoint itself where a
    chain starts from it."""
    rp = _REPLAY
    reset = rp.protocol.reset_every
    result = train(rp.seen(w), cfg=rp.config(seed), items=rp.items)
    model = _accept(result, f"full retrain before window {w}")
    grids: dict[str, dict[int, dict]] = {"retrain_every_window": {w: rp.grid(model, w)}}
    if w % reset == 0:
        grids["retrain_every_5"] = {v: (grids["retrain_every_window"][w] if v == w else rp.grid(model, v))
                                    for v in range(w, min(w + reset, rp.n_windows))}
    if w == 0:
        grids["static"] = {v: (grids["retrain_every_window"][0] if v == 0 else
                               grids["retrain_every_5"].get(v) or rp.grid(model, v))
                           for v in range(rp.n_windows)}
    return {"grids": grids, "cost": {"cpu": result.train_cpu_s, "wall": result.wall_s},
            "checkpoint": model.to_dict() if w % reset == 0 else None}


def incremental_chain(seed: int, warm: dict) -> dict:
    """From the warm-up model: score each window, then fine-tune on it (anchor: the warm-up model). This is the
    production path step by step (`models.recommender.finetune`): the window is scored, the scores become the
    checkpoint's evidence for its weights (`observe_task`), then the model trains on the window. The weights it
    served are returned so `assemble_seed` can check that its own online choice agrees."""
    rp = _REPLAY
    cfg = rp.config(seed)
    anchor = model = Checkpoint.from_dict(warm)
    cost, grids, served, rejected = _Cost(), {}, [], []
    for w in range(rp.n_windows):
        served.append(model.choice)
        model, grids[w] = observe_task(model, rp.task(w))
        if w + 1 == rp.n_windows:
            break  # nothing is evaluated after the last window, so nothing trains on it
        result = train(rp.window(w), cfg=cfg, init_from=model, anchor=anchor, replay=rp.seen(w), items=rp.items)
        cost.add_result(result)
        if result.finite:
            model = result.checkpoint
        else:
            rejected.append(w)
    return {"grids": {"incremental": grids}, "cost": cost.as_dict(), "served": served, "rejected": rejected}


def reset_segment(seed: int, s: int, start_model: dict) -> dict:
    """incremental_reset_5 over the windows of reset segment s (5s .. 5s+4), starting from the full retrain
    before window 5s (its anchor)."""
    rp = _REPLAY
    cfg, reset = rp.config(seed), rp.protocol.reset_every
    anchor = chain = Checkpoint.from_dict(start_model)
    cost, grids = _Cost(), {}
    windows = range(reset * s, min(reset * (s + 1), rp.n_windows))
    for w in windows:
        grids[w] = rp.grid(chain, w)
        if w + 1 == windows.stop or w + 1 == rp.n_windows:
            break  # the next window starts from a full retrain (or there is none)
        result = train(rp.window(w), cfg=cfg, init_from=chain, anchor=anchor, replay=rp.seen(w), items=rp.items)
        cost.add_result(result)
        if result.finite:
            chain = result.checkpoint
    return {"grids": {"incremental_reset_5": grids}, "cost": cost.as_dict()}


def popularity_step() -> dict:
    """The recent-popularity baseline on every window, with its (tiny) cost."""
    rp = _REPLAY
    cost, metrics = _Cost(), {}
    for w in range(rp.n_windows):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        model = RecentPopularity(rp.seen(w), rp.protocol.popularity_fraction)
        cost.add_since(cpu0, wall0)
        metrics[w] = rp.evaluate(model, w)
    return {"metrics": {"popularity_recent": metrics}, "cost": cost.as_dict()}


def blend_step() -> dict:
    """The model's two stream-decayed terms without the factorization: z(EASE) and z(log-popularity), refit
    on everything seen before each window, weights chosen online like every model's. It has no seed."""
    rp = _REPLAY
    cfg = rp.cfg
    cost, grids = _Cost(), {}
    for w in range(rp.n_windows):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        seen, task = rp.seen(w), rp.task(w)
        n = len(seen)
        ease = DecayedEASE.fit(seen, half_life=cfg.ease_half_life_share * n, l2_share=cfg.ease_l2_share,
                               max_items=cfg.ease_max_items)
        vocab = pd.unique(seen["item_id"]).tolist()
        index = {item: j for j, item in enumerate(vocab)}
        counts = popularity_counts(torch.tensor(seen["item_id"].map(index).to_numpy(dtype=np.int64)),
                                   event_ages(seen["timestamp"].to_numpy(dtype=float)), len(vocab), n, cfg)
        zpop, _ = popularity_z(counts)
        cols = torch.tensor([index[i] for i in task.candidates], dtype=torch.long)
        parts = (np.zeros((len(task.users), len(task.candidates))), ease_z(ease, len(vocab), task.users,
                 task.candidates), zpop[:, cols].double().numpy())
        cost.add_since(cpu0, wall0)
        grids[w] = grid_metrics(parts, task, cfg)
    return {"grids": {"blend": grids}, "cost": cost.as_dict()}


def choose_online(grids: dict[int, dict], cfg: TrainConfig) -> tuple[list[dict], list[tuple[int, int, int]]]:
    """A strategy's metrics when its weights are chosen online: window w is scored with the cell that
    `models.recommender.select` picks from the evidence of windows before w (what `observe` accumulates in
    production); then window w's own grid joins the evidence."""
    evidence, rows, choices = None, [], []
    for w in sorted(grids):
        grid = grids[w]
        cell = select(evidence, cfg)
        choices.append(cell)
        rows.append({"recall_at_10": float(grid["recall"][cell]), "ndcg_at_10": float(grid["ndcg"][cell]),
                     "users": grid["users"]})
        if grid["users"]:
            evidence = update_selection(evidence, grid["recall"] * grid["users"], cfg.selection_forgetting)
    return rows, choices


def assemble_seed(parts: list[dict], n_windows: int, protocol: Protocol, cfg: TrainConfig) -> dict:
    """One seed's report from its steps' results: per strategy the window metrics (weights chosen online),
    their means and the training CPU of everything the strategy relies on."""
    reset = protocol.reset_every
    grids: dict[str, dict[int, dict]] = {name: {} for name in STRATEGIES}
    per_window: dict[str, dict[int, dict]] = {}
    retrain_cost: dict[int, dict] = {}
    cost = {name: _Cost() for name in STRATEGIES}
    for part in parts:
        for name, rows in part.get("grids", {}).items():
            grids[name].update(rows)
        for name, rows in part.get("metrics", {}).items():
            per_window[name] = rows
        if "retrain_w" in part:
            retrain_cost[part["retrain_w"]] = part["cost"]
        else:
            for name in list(part.get("grids", {})) + list(part.get("metrics", {})):
                cost[name].cpu += part["cost"]["cpu"]
                cost[name].wall += part["cost"]["wall"]

    def charge(w: int, *names: str) -> None:
        for name in names:
            cost[name].cpu += retrain_cost[w]["cpu"]
            cost[name].wall += retrain_cost[w]["wall"]

    charge(0, "static", "retrain_every_window", "retrain_every_5", "incremental", "incremental_reset_5")
    for w in range(1, n_windows):
        charge(w, "retrain_every_window")
        if w % reset == 0:
            charge(w, "retrain_every_5", "incremental_reset_5")
    choices = {}
    for name in STRATEGIES:
        if name not in per_window:
            rows, choices[name] = choose_online(grids[name], cfg)
            per_window[name] = dict(enumerate(rows))
    served = next(part["served"] for part in parts if "served" in part)
    if [tuple(c) for c in served] != choices["incremental"]:
        raise RuntimeError("the incremental chain's checkpoints served other weights than the replay's online "
                           f"choice: {served} vs {choices['incremental']}")

    out = {}
    for name in STRATEGIES:
        rows = [per_window[name][w] for w in range(n_windows)]
        out[name] = {
            "recall_at_10": _mean([r["recall_at_10"] for r in rows]),
            "ndcg_at_10": _mean([r["ndcg_at_10"] for r in rows]),
            "train_cpu_s": cost[name].cpu,
            "train_wall_s": cost[name].wall,
            "per_window": rows,
        }
        if name in choices:
            out[name]["weights_per_window"] = [_weights_of(cell, cfg) for cell in choices[name]]
    return out


def _weights_of(cell: tuple[int, int, int], cfg: TrainConfig) -> dict:
    a, g, w = cell
    return {"ease": float(ease_weights(cfg)[a]), "pop_half_life_share": float(popularity_half_life_shares(cfg)[g]),
            "pop": float(popularity_weights(cfg)[w])}


# ----- scheduling -------------------------------------------------------------------------------------------

def _run_steps(interactions: pd.DataFrame, items: pd.DataFrame | None, cfg: TrainConfig, protocol: Protocol,
               say: Callable[[str], None]) -> dict[int, dict]:
    """Every step of every seed, on `protocol.workers` processes; returns each seed's assembled report.

    Steps are independent except that the chains start from full retrains, so those retrains go first;
    the rest run longest first, which keeps both processes busy to the end."""
    global _REPLAY
    replay = Replay.build(interactions, items, cfg, protocol)
    n, reset = replay.n_windows, protocol.reset_every
    starts = [b[0] for b in replay.bounds]
    seeds = list(protocol.seeds)
    parts: dict[int, list[dict]] = {s: [] for s in seeds}
    # (priority, label, function, args): higher priority first. A chain's priority is its rough cost in
    # trained examples, like a retrain's, so long steps start early.
    ready: list[tuple[float, str, Callable, tuple]] = []
    ft_size = 2 * (starts[1] - starts[0]) * (cfg.finetune_epochs or cfg.epochs) if n > 1 else 0
    for s in seeds:
        for w in range(n):
            unlocks = w % reset == 0
            ready.append(((1e12 if unlocks else 0) + starts[w] * cfg.epochs, f"seed {s} retrain {w}",
                          full_retrain_step, (s, w)))
    ready.append((-1e12, "popularity", popularity_step, ()))
    ready.append((1e12, "blend (EASE + popularity)", blend_step, ()))
    t0 = time.perf_counter()

    def finished(label: str, fn: Callable, args: tuple, result: dict) -> None:
        if fn in (popularity_step, blend_step):
            for s in seeds:
                parts[s].append(result)
            say(f"{label} done [{time.perf_counter() - t0:.0f}s]")
            return
        seed = args[0]
        if fn is full_retrain_step:
            w = args[1]
            result["retrain_w"] = w
            if result["checkpoint"] is not None:
                ck = result.pop("checkpoint")
                if w == 0:
                    ready.append((ft_size * (n - 1), f"seed {seed} incremental", incremental_chain, (seed, ck)))
                ready.append((ft_size * (reset - 1), f"seed {seed} reset segment {w // reset}", reset_segment,
                              (seed, w // reset, ck)))
            else:
                result.pop("checkpoint")
        parts[seed].append(result)
        say(f"{label} done [{time.perf_counter() - t0:.0f}s]")

    if protocol.workers <= 1:
        previous, _REPLAY = _REPLAY, replay
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(protocol.torch_threads)
        try:
            _warm_up_process(replay)
            while ready:
                ready.sort(key=lambda r: -r[0])
                _, label, fn, args = ready.pop(0)
                finished(label, fn, args, fn(*args))
        finally:
            _REPLAY = previous
            torch.set_num_threads(torch_threads)
    else:
        # spawn, not fork: forking a process that has started torch's thread pools can deadlock.
        with _blas_threads(protocol.torch_threads), ProcessPoolExecutor(
                protocol.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                initargs=(interactions, items, cfg, protocol)) as pool:
            running = {}
            while ready or running:
                ready.sort(key=lambda r: -r[0])
                while ready and len(running) < protocol.workers:
                    _, label, fn, args = ready.pop(0)
                    running[pool.submit(fn, *args)] = (label, fn, args)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    label, fn, args = running.pop(future)
                    finished(label, fn, args, future.result())
    return {s: assemble_seed(parts[s], n, protocol, cfg) for s in seeds}


@contextlib.contextmanager
def _blas_threads(n: int):
    """numpy's BLAS threads in the processes spawned inside, like torch's (`Protocol.torch_threads`): each
    worker is one process per core, and a BLAS pool per worker would only spin on cores another worker uses
    (measured: a third of a fine-tune's process CPU on this 2-core machine). Spawned processes read these
    variables when they import numpy."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(n) for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_seed(interactions: pd.DataFrame, items: pd.DataFrame | None, cfg: TrainConfig, protocol: Protocol,
             progress: Callable[[str], None] | None = None) -> dict:
    """One seed (`cfg.seed`) of the replay. Returns {NAME: {"recall_at_10", "ndcg_at_10", "train_cpu_s",
    "train_wall_s", "per_window": [...], "weights_per_window": [...] (models' online choice)}}."""
    say = progress or (lambda _msg: None)
    protocol = dataclasses.replace(protocol, seeds=(cfg.seed,))
    return _run_steps(interactions, items, cfg, protocol, say)[cfg.seed]


def run_prequential(interactions: pd.DataFrame, items: pd.DataFrame | None = None, *,
                    cfg: TrainConfig = TrainConfig(), protocol: Protocol = Protocol(),
                    dataset: str = "", progress: Callable[[str], None] | None = None) -> dict:
    """All strategies for every seed in `protocol.seeds`; returns the report dict (see `jobs.prequential`).

    Top-level numbers per strategy are means over seeds (per window: mean over seeds); `per_seed` keeps
    each seed's own means so the spread is visible.
    """
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"prequential replay: {len(interactions)} events, {protocol.windows} windows, seeds {list(protocol.seeds)}, "
        f"{protocol.workers} process(es)")
    wall0 = time.perf_counter()
    results = _run_steps(interactions, items, cfg, protocol, say)
    seeds = list(protocol.seeds)

    strategies = {}
    for name in STRATEGIES:
        per_seed = {str(s): {key: results[s][name][key] for key in
                             ("recall_at_10", "ndcg_at_10", "train_cpu_s", "train_wall_s")} for s in seeds}
        n_windows = len(results[seeds[0]][name]["per_window"])
        per_window = []
        for w in range(n_windows):
            rows = [results[s][name]["per_window"][w] for s in seeds]
            per_window.append({"recall_at_10": _mean([r["recall_at_10"] for r in rows]),
                               "ndcg_at_10": _mean([r["ndcg_at_10"] for r in rows]),
                               "users": rows[0]["users"]})
        recalls = [per_seed[str(s)]["recall_at_10"] for s in seeds]
        strategies[name] = {
            "recall_at_10": float(np.mean(recalls)),
            "ndcg_at_10": float(np.mean([per_seed[str(s)]["ndcg_at_10"] for s in seeds])),
            "train_cpu_s": float(np.mean([per_seed[str(s)]["train_cpu_s"] for s in seeds])),
            "train_wall_s": float(np.mean([per_seed[str(s)]["train_wall_s"] for s in seeds])),
            "recall_at_10_std": float(np.std(recalls, ddof=1)) if len(seeds) > 1 else 0.0,
            "per_window": per_window,
            "per_seed": per_seed,
        }
    for name in STRATEGIES:
        if "weights_per_window" in results[seeds[0]][name]:
            strategies[name]["weights_per_seed"] = {str(s): results[s][name]["weights_per_window"] for s in seeds}
    params = {**{k: v for k, v in asdict(cfg).items() if k != "seed"},
              **{f"protocol_{k}": (list(v) if isinstance(v, tuple) else v) for k, v in asdict(protocol).items()}}
    report = {"dataset": dataset, "events": int(len(interactions)), "params": params, "strategies": strategies,
              "replay_wall_s": time.perf_counter() - wall0}
    report["targets"] = targets(strategies)
    return report


MODEL_STRATEGIES = ("retrain_every_window", "retrain_every_5", "incremental", "incremental_reset_5", "blend")


def targets(strategies: dict) -> dict:
    """The targets of issues 3 and 11, evaluated on the seed means."""
    r = {name: strategies[name]["recall_at_10"] for name in STRATEGIES}
    c = {name: strategies[name]["train_cpu_s"] for name in STRATEGIES}
    best = max(MODEL_STRATEGIES, key=lambda n: r[n])
    checks = {
        "incremental_vs_static_recall": (r["incremental"] / r["static"], 1.5, ">="),
        "incremental_vs_retrain_recall": (r["incremental"] / r["retrain_every_window"], 1.0, ">="),
        "incremental_vs_retrain_cpu": (c["incremental"] / c["retrain_every_window"], 0.10, "<="),
        "incremental_reset_5_vs_retrain_recall": (r["incremental_reset_5"] / r["retrain_every_window"], 0.97, ">="),
        "incremental_reset_5_vs_retrain_cpu": (c["incremental_reset_5"] / c["retrain_every_window"], 0.30, "<="),
        f"best_model_({best})_vs_popularity_recall": (r[best] / r["popularity_recent"], 1.15, ">="),
    }
    return {name: {"ratio": float(v), "threshold": t, "met": bool(v >= t if op == ">=" else v <= t)}
            for name, (v, t, op) in checks.items()}
