"""Ranking metrics and the per-window evaluation rule of the prequential protocol (DESIGN.md).

`evaluate_window` is the single implementation of the protocol's candidate, exclusion and truth rules; the
harness (`models.prequential`) and the platform's gate both call it, so their numbers compare.
"""
from __future__ import annotations

import math
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
    """Indices of the k best columns per row, best first; ties keep candidate order (stable sort)."""
    # (U, I) -> (U, k). A stable argsort of the negated scores keeps the earlier candidate on ties, so a
    # constant scorer is deterministic. -inf (excluded) sorts last.
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def evaluate_window(checkpoint: Scorer, history: pd.DataFrame, window: pd.DataFrame, k: int = 10) -> dict:
    """Evaluate `checkpoint` on one window, given everything seen before it (`history`).

    Rules (DESIGN.md, Evaluation protocol):
    - evaluated users: at least one interaction in `window` and one in `history`;
    - candidates: every item in `history`;
    - each user's `history` items are excluded from their ranking;
    - truth: the user's distinct items in `window` not in their history, including items never seen in
      `history` (unreachable, but they count in |truth|); a user with empty truth is skipped;
    - metrics: mean over users of Recall@k and binary NDCG@k.
    Returns {"recall_at_<k>": float, "ndcg_at_<k>": float, "users": int}; k is 10 in the protocol.
    """
    hist_items_by_user = history.groupby("user_id", sort=False)["item_id"].agg(set)
    win_items_by_user = window.groupby("user_id", sort=False)["item_id"].agg(set)
    # Candidates in order of first appearance: deterministic, and independent of id spelling.
    candidates = pd.unique(history["item_id"]).tolist()
    cand_index = {item: j for j, item in enumerate(candidates)}

    users: list[str] = []
    truths: list[set[str]] = []
    for user, win_items in win_items_by_user.items():
        seen = hist_items_by_user.get(user)
        if seen is None:
            continue
        truth = win_items - seen
        if truth:
            users.append(user)
            truths.append(truth)
    if not users:
        return {f"recall_at_{k}": float("nan"), f"ndcg_at_{k}": float("nan"), "users": 0}

    recalls: list[float] = []
    ndcgs: list[float] = []
    chunk = 256  # bounds memory at (256, I) floats for large catalogs
    for start in range(0, len(users), chunk):
        batch_users = users[start:start + chunk]
        scores = np.asarray(checkpoint.score(batch_users, candidates), dtype=np.float64)  # (U, I)
        if scores.shape != (len(batch_users), len(candidates)):
            raise ValueError(f"score() returned {scores.shape}, expected {(len(batch_users), len(candidates))}")
        scores = np.where(np.isfinite(scores), scores, -np.inf)  # a broken score never ranks first
        for row, user in enumerate(batch_users):
            excluded = [cand_index[i] for i in hist_items_by_user[user]]
            scores[row, excluded] = -np.inf
        top = _top_k_rows(scores, k)  # (U, k)
        for row, user in enumerate(batch_users):
            ranked = [candidates[j] for j in top[row] if np.isfinite(scores[row, j])]
            truth = truths[start + row]
            recalls.append(recall_at_k(ranked, truth, k))
            ndcgs.append(ndcg_at_k(ranked, truth, k))
    return {f"recall_at_{k}": float(np.mean(recalls)), f"ndcg_at_{k}": float(np.mean(ndcgs)), "users": len(users)}
