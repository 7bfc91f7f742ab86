"""A closed-form item-item model (EASE, Steck 2019) whose interactions decay with their age in the stream; one
of the three terms of the tidal score (models/recommender.py).

    B = I - P / diag(P),  P = (X^T X + lambda I)^-1,  ease(u, .) = x_u B

X (users x items) holds each (user, item) pair weighted by 0.5 ** (age / half-life) of its latest event, age
counted in events, so the model follows what people watch together *now* and needs no notion of seconds. Only
the `max_items` items with the largest decayed counts get a row (the solve costs min(users, items) x items^2); other items score
0. lambda is `l2_share` times the mean diagonal of X^T X, so it scales with the data.

    ease = DecayedEASE.fit(history, half_life=2500.0, l2_share=30.0, max_items=1000)
    scores = ease.score(user_ids, item_ids)      # (U, I)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from models.data import event_ages


def ridge_inverse(x: torch.Tensor, l2_share: float) -> torch.Tensor:
    """P = (X^T X + lambda I)^-1 for X (U, N) float64, lambda = `l2_share` times the mean diagonal of X^T X.

    Solved with Cholesky factors (the matrices are symmetric positive definite thanks to the ridge), on the
    smaller side: with fewer users than items (U < N), by Woodbury, P = (I - X^T (X X^T + lambda I)^-1 X) /
    lambda, which costs U N^2 instead of N^3, so a refit on a small stream costs what its data is, not what
    the item cap is. Both sides give the same P up to rounding (tests/models/test_recommender.py). In torch,
    so it runs on the threads torch is given."""
    users, n = x.shape
    lam = max(l2_share * float((x * x).sum()) / max(n, 1), 1e-9)
    if users >= n:
        gram = x.T @ x                                                           # (N, N)
        gram.diagonal().add_(lam)
        return torch.cholesky_inverse(torch.linalg.cholesky(gram))
    inner = x @ x.T                                                              # (U, U)
    inner.diagonal().add_(lam)
    solved = torch.cholesky_solve(x, torch.linalg.cholesky(inner))              # (U, N): (X X^T + lambda I)^-1 X
    p = -(x.T @ solved)                                                          # (N, N)
    p.diagonal().add_(1.0)
    return p / lam


def _as_str(values: np.ndarray) -> np.ndarray:
    """Ids as an object array of str, whatever type they were read as."""
    return pd.Series(values, copy=False).astype(str).to_numpy()


class DecayedEASE:
    """B over `item_ids`, and each known user's decayed row of X (the input of a score)."""

    def __init__(self, item_ids: list[str], weights: torch.Tensor, user_ids: list[str], indptr: torch.Tensor,
                 indices: torch.Tensor, values: torch.Tensor):
        self.item_ids = list(item_ids)   # the modelled items: B's rows and columns
        self.weights = weights           # (N, N) float32, zero diagonal
        self.user_ids = list(user_ids)   # users with a row of X, stored CSR: indptr (U+1,), indices/values (nnz,)
        self.indptr, self.indices, self.values = indptr, indices, values
        self._item_index = {i: j for j, i in enumerate(self.item_ids)}
        self._user_index = {u: j for j, u in enumerate(self.user_ids)}

    @classmethod
    def fit(cls, history: pd.DataFrame, *, half_life: float, l2_share: float, max_items: int) -> "DecayedEASE":
        """Fit on events (user_id, item_id, timestamp); `half_life` in events."""
        return cls.fit_arrays(history["user_id"].to_numpy(), history["item_id"].to_numpy(),
                              history["timestamp"].to_numpy(dtype=float), half_life=half_life, l2_share=l2_share,
                              max_items=max_items)

    @classmethod
    def fit_arrays(cls, user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray, *, half_life: float,
                   l2_share: float, max_items: int) -> "DecayedEASE":
        """`fit` on the events' columns (n,) each: a fine-tune passes its history and new events without
        building a frame of them."""
        if len(timestamps) == 0:
            return cls.empty()
        decay = np.power(0.5, event_ages(timestamps) / max(half_life, 1.0))
        # Integer codes in sorted-id order stand in for the ids: grouping and sorting strings was a third of a
        # small refit, and the codes give the same groups in the same order (so the same sums and ties).
        item_codes, item_names = pd.factorize(_as_str(item_ids), sort=True)
        # pandas' groupby sum (compensated) as before, not a plain bincount: the masses, so the kept items and
        # their column order, stay bit for bit what they were. The stable sort keeps the smaller id first on ties.
        mass = pd.Series(decay).groupby(item_codes).sum().to_numpy()                # (items,)
        kept_codes = np.argsort(-mass, kind="stable")[:max_items]
        kept = item_names[kept_codes].tolist()
        column_of_code = np.full(len(item_names), -1, dtype=np.int64)
        column_of_code[kept_codes] = np.arange(len(kept_codes))
        col = column_of_code[item_codes]
        keep = col >= 0
        user_codes, users = pd.factorize(_as_str(np.asarray(user_ids)[keep]), sort=True)
        # X: each (user, item) pair's latest event, i.e. its largest decay; every user here has a kept item.
        x = np.zeros((len(users), len(kept)))
        np.maximum.at(x, (user_codes, col[keep]), decay[keep])
        # Which pairs occur, kept apart from x: a very old event's decay can underflow to 0 and is still an entry.
        present = np.zeros(x.shape, dtype=bool)
        present[user_codes, col[keep]] = True
        rows, cols = np.nonzero(present)                                            # row-major: by user, then item
        vals = x[rows, cols]
        # float32: B is kept in float32 anyway, the ridge keeps the system well conditioned (B agrees with a
        # float64 solve to about 1e-6 of its largest entry), and the solve is the largest fixed cost of a fine-tune.
        p = ridge_inverse(torch.from_numpy(x).float(), l2_share)                         # (N, N)
        b = -p / p.diagonal().unsqueeze(0)
        b.diagonal().zero_()
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(users)))])
        return cls(kept, b.float(), users.tolist(), torch.from_numpy(indptr), torch.from_numpy(cols.copy()),
                   torch.from_numpy(vals.astype(np.float32)))

    @classmethod
    def empty(cls) -> "DecayedEASE":
        return cls([], torch.zeros(0, 0), [], torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                   torch.zeros(0))

    def to_dict(self) -> dict:
        return {"item_ids": self.item_ids, "weights": self.weights, "user_ids": self.user_ids,
                "indptr": self.indptr, "indices": self.indices, "values": self.values}

    @classmethod
    def from_dict(cls, state: dict) -> "DecayedEASE":
        return cls(state["item_ids"], state["weights"], state["user_ids"], state["indptr"], state["indices"],
                   state["values"])

    def user_scores(self, user_ids: Sequence[str]) -> np.ndarray:
        """x_u B over the modelled items: (U, N); unknown users score 0."""
        out = np.zeros((len(user_ids), len(self.item_ids)), dtype=np.float32)
        b = self.weights.numpy()
        for r, user in enumerate(user_ids):
            j = self._user_index.get(user)
            if j is None:
                continue
            lo, hi = int(self.indptr[j]), int(self.indptr[j + 1])
            out[r] = self.values[lo:hi].numpy() @ b[self.indices[lo:hi].numpy()]
        return out

    def items_scores(self, item_ids: Sequence[str], values: np.ndarray) -> np.ndarray:
        """x B over the modelled items for one row x built from items (a user the model does not know):
        (n,) ids with their values (n,) -> (N,); unmodelled ids are ignored, a repeated id keeps its largest
        value (as a fit keeps a pair's latest event)."""
        row = np.zeros(len(self.item_ids), dtype=np.float32)
        for item, value in zip(item_ids, values):
            j = self._item_index.get(item)
            if j is not None:
                row[j] = max(row[j], float(value))
        nonzero = np.flatnonzero(row)  # a few recent items: multiply only their rows of B
        return row[nonzero] @ self.weights.numpy()[nonzero] if len(nonzero) else np.zeros(len(self.item_ids),
                                                                                          dtype=np.float32)

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """(U, I) for any items; items without a row score 0."""
        cols = np.array([self._item_index.get(i, -1) for i in item_ids], dtype=np.int64)
        full = self.user_scores(user_ids)
        out = np.zeros((len(user_ids), len(item_ids)))
        out[:, cols >= 0] = full[:, cols[cols >= 0]]
        return out
