"""Ranking metrics and the per-window evaluation rule of the prequential protocol (docs/evaluation.md).

`evaluate_window` is the single implementation of the protocol's candidate, exclusion and truth rules; the
harness (`models.prequential`) and the platform's gate both call it, so their numbers compare.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import pandas as pd


class Scorer(Protocol):
    """Anything that scores users against items: a `Checkpoint`, the popularity baseline, a blend."""

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray: ...


def recall_at_k(ranked: Sequence[str], truth: set[str], k: int = 10) -> float:
    """Hits in the top k over |truth| (not over min(k, |truth|): the protocol's definition)."""
    if not truth:
        raise ValueError("truth is empty; the protocol skips such users")
    hits = sum(1 for item in ranked[:k] if item in truth)
    return hits / len(truth)


def ndcg_at_k(ranked: Sequence[str], truth: set[str], k: int = 10) -> float:
    """Binary NDCG: DCG of the top k over the ideal DCG of min(k, |truth|) hits at the top."""
    if not truth:
        raise ValueError("truth is empty; the protocol skips such users")
    dcg = sum(1.0 / math.log2(rank + 2) for rank, item in enumerate(ranked[:k]) if item in truth)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(truth))))
    return dcg / ideal


def _top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best columns per row, best first; ties keep candidate order (stable sort).

    (U, I) -> (U, min(k, I)). Equal to `np.argsort(-scores, axis=1, kind="stable")[:, :k]`, without sorting
    whole rows: everything at least as good as the row's k-th best value is sorted, stably, and cut to k.
    -inf (excluded) sorts last."""
    neg = -scores
    k = min(k, scores.shape[1])
    if k == 0 or scores.shape[1] <= 4 * k:
        return np.argsort(neg, axis=1, kind="stable")[:, :k]
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1:k]                    # (U, 1)
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for row in range(scores.shape[0]):
        pool = np.flatnonzero(neg[row] <= kth[row, 0])                     # ascending: candidate order
        out[row] = pool[np.argsort(neg[row, pool], kind="stable")[:k]]
    return out


@dataclass(frozen=True)
class WindowTask:
    """One window's evaluation set under the protocol's rules, computed once and shared by every scorer.

    users: evaluated users; candidates: items seen before the window, in order of first appearance;
    excluded: for each user, the candidate positions of their earlier items; truths: each user's new distinct
    items in the window (unreachable ones included)."""

    users: list[str]
    candidates: list[str]
    excluded: list[np.ndarray]
    truths: list[set[str]]
    k: int = 10


def prepare_window(history: pd.DataFrame, window: pd.DataFrame, k: int = 10) -> WindowTask:
    """The protocol's candidate, exclusion and truth rules for one window (see `evaluate_window`)."""
    hist_items_by_user = history.groupby("user_id", sort=False)["item_id"].agg(set)
    win_items_by_user = window.groupby("user_id", sort=False)["item_id"].agg(set)
    # Candidates in order of first appearance: deterministic, and independent of id spelling.
    candidates = pd.unique(history["item_id"]).tolist()
    cand_index = {item: j for j, item in enumerate(candidates)}
    users, truths, excluded = [], [], []
    for user, win_items in win_items_by_user.items():
        seen = hist_items_by_user.get(user)
        if seen is None:
            continue
        truth = win_items - seen
        if truth:
            users.append(user)
            truths.append(truth)
            excluded.append(np.fromiter((cand_index[i] for i in seen), dtype=np.int64, count=len(seen)))
    return WindowTask(users=users, candidates=candidates, excluded=excluded, truths=truths, k=k)


def _task_masks(task: WindowTask) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per task, once: excluded (U, I) bool, truth on the candidates (U, I) bool, |truth| (U,) and the ideal
    DCG (U,)."""
    cached = getattr(task, "_masks", None)
    if cached is None:
        n_u, n_i = len(task.users), len(task.candidates)
        excluded = np.zeros((n_u, n_i), dtype=bool)
        truth = np.zeros((n_u, n_i), dtype=bool)
        index = {item: j for j, item in enumerate(task.candidates)}
        for row, (ex, items) in enumerate(zip(task.excluded, task.truths)):
            excluded[row, ex] = True
            truth[row, [index[i] for i in items if i in index]] = True
        sizes = np.array([len(t) for t in task.truths], dtype=float)
        discounts = 1.0 / np.log2(np.arange(task.k) + 2.0)
        ideal = np.array([discounts[: min(task.k, len(t))].sum() for t in task.truths])
        cached = (excluded, truth, sizes, ideal)
        object.__setattr__(task, "_masks", cached)
    return cached


def evaluate_scores_fast(scores: np.ndarray, task: WindowTask) -> dict:
    """`evaluate_scores` vectorized over users, for scoring many weightings of the same terms; agrees with it
    up to floating-point summation order (tests/models/test_metrics.py)."""
    k = task.k
    if not task.users:
        return {f"recall_at_{k}": float("nan"), f"ndcg_at_{k}": float("nan"), "users": 0}
    excluded, truth, sizes, ideal = _task_masks(task)
    scores = np.where(np.isfinite(scores) & ~excluded, scores, -np.inf)
    top = _top_k_rows(scores, k)                                                  # (U, k)
    rows = np.arange(len(task.users))[:, None]
    hits = truth[rows, top] & np.isfinite(scores[rows, top])                      # (U, k)
    recall = hits.sum(1) / sizes
    ndcg = (hits / np.log2(np.arange(top.shape[1]) + 2.0)).sum(1) / ideal
    return {f"recall_at_{k}": float(recall.mean()), f"ndcg_at_{k}": float(ndcg.mean()), "users": len(task.users)}


def evaluate_scores(scores: np.ndarray, task: WindowTask) -> dict:
    """Metrics of a precomputed (U, I) score matrix over `task.users` x `task.candidates`."""
    k = task.k
    if not task.users:
        return {f"recall_at_{k}": float("nan"), f"ndcg_at_{k}": float("nan"), "users": 0}
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(task.users), len(task.candidates)):
        raise ValueError(f"score() returned {scores.shape}, expected {(len(task.users), len(task.candidates))}")
    scores = np.where(np.isfinite(scores), scores, -np.inf)  # a broken score never ranks first (a copy)
    for row, excluded in enumerate(task.excluded):
        scores[row, excluded] = -np.inf
    top = _top_k_rows(scores, k)  # (U, k)
    recalls: list[float] = []
    ndcgs: list[float] = []
    for row, truth in enumerate(task.truths):
        ranked = [task.candidates[j] for j in top[row] if np.isfinite(scores[row, j])]
        recalls.append(recall_at_k(ranked, truth, k))
        ndcgs.append(ndcg_at_k(ranked, truth, k))
    return {f"recall_at_{k}": float(np.mean(recalls)), f"ndcg_at_{k}": float(np.mean(ndcgs)), "users": len(task.users)}


def score_task(checkpoint: Scorer, task: WindowTask) -> np.ndarray:
    """The scorer's (U, I) matrix for a task, in chunks of 256 users (bounds memory for large catalogs)."""
    chunk = 256
    parts = [np.asarray(checkpoint.score(task.users[s:s + chunk], task.candidates), dtype=np.float64)
             for s in range(0, len(task.users), chunk)]
    return np.concatenate(parts, 0) if parts else np.zeros((0, len(task.candidates)))


def evaluate_window(checkpoint: Scorer, history: pd.DataFrame, window: pd.DataFrame, k: int = 10) -> dict:
    """Evaluate `checkpoint` on one window, given everything seen before it (`history`).

    Rules (the evaluation protocol, docs/evaluation.md):
    - evaluated users: at least one interaction in `window` and one in `history`;
    - candidates: every item in `history`;
    - each user's `history` items are excluded from their ranking;
    - truth: the user's distinct items in `window` not in their history, including items never seen in
      `history` (unreachable, but they count in |truth|); a user with empty truth is skipped;
    - metrics: mean over users of Recall@k and binary NDCG@k.
    Returns {"recall_at_<k>": float, "ndcg_at_<k>": float, "users": int}; k is 10 in the protocol.
    """
    task = prepare_window(history, window, k)
    return evaluate_scores(score_task(checkpoint, task), task) if task.users else evaluate_scores(None, task)
