"""The tidal recommender: matrix factorization with content features, time-aware item biases and a
decayed popularity prior, trained with sampled softmax, built to be fine-tuned every few minutes.

One entry point, `train`, does both jobs: `init_from=None` is a full retrain from scratch, a `Checkpoint` is a
fine-tune that resumes weights and optimizer state. The result is always a new `Checkpoint`; the input one is
never mutated, so a rejected candidate leaves production untouched.

Score of user u for item i (see models/README.md for why this shape):
    mf(u, i)  = p_u . (e_i + mean_c g_c) + b_i + mean_c h_c          c over the item's categories
    score     = z_u(mf(u, .))(i) + a * z_u(ease(u, .))(i) + w * z(log1p(pop_h(i)))
z(.) standardizes over the model's item vocabulary (per user for mf), so the two terms share one scale and a
score does not depend on which candidates are asked for. Unknown users get p_u = 0 (ranking by bias +
popularity); unknown items get the content part only, the median item bias and zero popularity.

Nothing here depends on how many seconds the stream spans. Time is counted in events (the stream's own clock):
- sample weights decay with an event's age in events, half-life `half_life_share` of the events learned so far;
- pop_h is a decayed interaction count for each half-life h of a grid (shares of the events learned so far),
  kept in the checkpoint and advanced by every fine-tune;
- the EASE weight a, the popularity half-life h and weight w are chosen online (`observe` / `select`): every
  batch of new events first scores the current model's grid of (a, h, w) on those events, before it is learned
  from, and the cell with the best forgetting-weighted recall so far is the one `score` uses.

Usage:
    result = train(events, cfg=TrainConfig(), selection=prod.selection)      # full retrain
    result = finetune(prod, new_events, cfg=cfg, anchor=anchor, history=recent_history)
    #      = train(new_events, init_from=observe(prod, recent_history, new_events), replay=recent_history, ...)
    if result.finite: result.checkpoint.save("candidate.pt")
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from models.data import event_ages
from models.ease import DecayedEASE

FORMAT_VERSION = 2
# Parameters in a fixed order: the optimizer state is saved and restored by this order.
_PARAM_NAMES = ("user", "item", "item_bias", "category", "category_bias")


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of the model and its training loop. Defaults are the fixed values the prequential
    benchmark was run with (benchmarks/prequential/README.md); they are not tuned per dataset. No field is in
    seconds or days: decays are shares of the events learned so far, so a stream that is 30 times faster or
    slower behaves the same."""

    dim: int = 64                      # embedding width
    epochs: int = 10                   # epochs of a full retrain
    lr: float = 0.01                   # Adam learning rate of a full retrain
    batch_size: int = 1024
    half_life_share: float = 0.02      # sample weights: an event this share of the learned events old counts half
    replay_fraction: float = 1.0       # fine-tune: replay rows drawn per new row (0 disables replay)
    anchor_l2: float = 1e-4            # fine-tune: L2-SP strength toward the anchor's weights
    grad_clip: float = 5.0             # max global grad norm per step
    seed: int = 0
    negatives: int = 256               # uniform negatives per batch, shared by its rows (sampled softmax)
    l2: float = 1e-5                   # L2 on the embedding rows a batch touches
    init_std: float = 0.05             # std of new embedding rows
    finetune_epochs: int | None = 5    # fine-tune epochs (None: `epochs`)
    finetune_lr: float | None = None   # fine-tune learning rate (None: `lr`)
    pop_share_min: float = 0.005       # popularity half-lives: `pop_shares` values, geometric from min to max,
    pop_share_max: float = 0.25        #   as shares of the events learned so far
    pop_shares: int = 6
    pop_weight_max: float = 8.0        # popularity weights: 0 and `pop_weights` halvings down from the max
    pop_weights: int = 6
    ease_half_life_share: float = 0.05 # item-item term: an event this share of the learned events old counts half
    ease_l2_share: float = 30.0        #   its ridge, times the mean diagonal of the Gram matrix
    ease_max_items: int = 1000         #   items with a row (the most-interacted, decayed)
    ease_weight_max: float = 8.0       #   its weights: 0 and `ease_weights` halvings down from the max
    ease_weights: int = 4
    selection_forgetting: float = 0.9  # per observed batch, old evidence for a choice of weights fades
    max_categories: int = 16           # categories kept per item (the first ones listed)


def popularity_half_life_shares(cfg: TrainConfig) -> np.ndarray:
    """The grid of popularity half-lives, shares of the learned events: (G,)."""
    return np.geomspace(cfg.pop_share_min, cfg.pop_share_max, cfg.pop_shares)


def _weight_grid(largest: float, halvings: int) -> np.ndarray:
    return np.concatenate([[0.0], largest * 0.5 ** np.arange(halvings - 1, -1, -1)])


def popularity_weights(cfg: TrainConfig) -> np.ndarray:
    """The grid of popularity weights: 0, then halvings up to `pop_weight_max`: (W,)."""
    return _weight_grid(cfg.pop_weight_max, cfg.pop_weights)


def ease_weights(cfg: TrainConfig) -> np.ndarray:
    """The grid of item-item (EASE) weights: 0, then halvings up to `ease_weight_max`: (A,)."""
    return _weight_grid(cfg.ease_weight_max, cfg.ease_weights)


def grid_shape(cfg: TrainConfig) -> tuple[int, int, int]:
    """(A, G, W): EASE weights x popularity half-lives x popularity weights."""
    return len(ease_weights(cfg)), len(popularity_half_life_shares(cfg)), len(popularity_weights(cfg))


def default_choice(cfg: TrainConfig) -> tuple[int, int, int]:
    """(EASE weight, popularity half-life, popularity weight) grid cell used before any batch was observed:
    weights 1, the half-life nearest the sample weights' one."""
    shares = popularity_half_life_shares(cfg)
    return (int(np.argmin(np.abs(ease_weights(cfg) - 1.0))),
            int(np.argmin(np.abs(np.log(shares / cfg.half_life_share)))),
            int(np.argmin(np.abs(popularity_weights(cfg) - 1.0))))


def select(selection: np.ndarray | None, cfg: TrainConfig) -> tuple[int, int, int]:
    """The grid cell with the highest forgetting-weighted recall observed so far (first on ties); the default
    before any evidence."""
    if selection is None or not np.any(np.asarray(selection) > 0):
        return default_choice(cfg)
    return tuple(int(x) for x in np.unravel_index(int(np.argmax(np.asarray(selection))), grid_shape(cfg)))


def update_selection(selection: np.ndarray | None, recall_sums: np.ndarray, forgetting: float) -> np.ndarray:
    """Evidence after one more observed batch: old evidence times `forgetting` plus this batch's summed
    per-user recall of every grid cell, (A, G, W)."""
    old = np.zeros_like(recall_sums) if selection is None else np.asarray(selection, dtype=float)
    return forgetting * old + recall_sums


@dataclass
class TrainResult:
    checkpoint: "Checkpoint"   # the trained model, a new object
    finite: bool               # False if a loss or weight became NaN/Inf: the caller must reject it
    losses: list[float]        # mean weighted loss per epoch
    train_cpu_s: float         # process CPU seconds (all threads) spent in `train`
    examples: int              # rows trained on per epoch (new + replay)
    wall_s: float = 0.0


class _Net(nn.Module):
    """The model's parameters, its item-side lookups and its loss; users are plain rows of `user`."""

    def __init__(self, n_users: int, n_items: int, n_categories: int, dim: int, item_categories: torch.Tensor):
        super().__init__()
        self.user = nn.Parameter(torch.zeros(n_users, dim))               # (U, D)
        self.item = nn.Parameter(torch.zeros(n_items, dim))               # (I, D)
        self.item_bias = nn.Parameter(torch.zeros(n_items))               # (I,)
        # Row 0 of the category tables is padding; its gradient is zeroed in `zero_padding_grads`.
        self.category = nn.Parameter(torch.zeros(n_categories + 1, dim))  # (C+1, D)
        self.category_bias = nn.Parameter(torch.zeros(n_categories + 1))  # (C+1,)
        self.register_buffer("item_categories", item_categories, persistent=False)  # (I, M), 0 = none
        # The same membership as a sparse row-normalized (I, C+1) matrix: one sparse mm per batch gives every
        # item's content vector, far cheaper than gathering (N, M, D) category rows and scattering back.
        rows, slots = torch.nonzero(item_categories > 0, as_tuple=True)
        counts = (item_categories > 0).sum(1).clamp(min=1).float()
        self.register_buffer("membership", torch.sparse_coo_tensor(
            torch.stack([rows, item_categories[rows, slots]]), 1.0 / counts[rows],
            (n_items, n_categories + 1), check_invariants=False).coalesce(), persistent=False)

    def forward(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor,
                weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled softmax: each positive (users[b], items[b]) against the batch's shared negatives.

        users, items, weights: (B,); negatives: (S,). Returns logits (B, 1+S), column 0 the positive, and the
        weighted mean cross-entropy. A negative that is the row's own positive (an accidental hit) is masked."""
        p = self.user[users]                                                # (B, D)
        content = self.all_content()                                        # (I, D), (I,)
        q_pos, b_pos = self.items(items, content)                           # (B, D), (B,)
        q_neg, b_neg = self.items(negatives, content)                       # (S, D), (S,)
        pos = (p * q_pos).sum(1) + b_pos                                    # (B,)
        neg = p @ q_neg.T + b_neg                                           # (B, S)
        neg = neg.masked_fill(negatives.unsqueeze(0) == items.unsqueeze(1), float("-inf"))
        logits = torch.cat([pos.unsqueeze(1), neg], 1)                      # (B, 1+S)
        loss = (weights * (torch.logsumexp(logits, 1) - pos)).mean()
        return logits, loss

    def zero_padding_grads(self) -> None:
        self.category.grad[0] = 0.0  # the padding row stays zero
        self.category_bias.grad[0] = 0.0

    def content(self, categories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean category vector and bias for rows of category ids: (N, M) -> (N, D), (N,)."""
        mask = (categories > 0).float()                                   # (N, M)
        count = mask.sum(1).clamp(min=1.0)                                # (N,)
        vec = (self.category[categories] * mask.unsqueeze(-1)).sum(1) / count.unsqueeze(-1)
        bias = (self.category_bias[categories] * mask).sum(1) / count
        return vec, bias

    def all_content(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Content vector and bias of every vocabulary item: (I, D), (I,)."""
        vec = torch.sparse.mm(self.membership, self.category)                          # (I, D)
        bias = torch.sparse.mm(self.membership, self.category_bias.unsqueeze(1)).squeeze(1)  # (I,)
        return vec, bias

    def items(self, idx: torch.Tensor, content: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Item vectors and biases for vocabulary rows: (N,) -> (N, D), (N,). Pass `content` (from
        `all_content`) to share one computation between several lookups."""
        vec, bias = content if content is not None else self.all_content()
        return self.item[idx] + vec[idx], self.item_bias[idx] + bias[idx]


class _Regularizer:
    """The fine-tune's two penalties, added to the gradients in closed form after the loss's backward pass:
    - L2 `l2 * (sum_b |p_u_b|^2 + sum_b |e_i_b|^2) / B` on the user and item rows a batch touches;
    - L2-SP `anchor_l2 * |theta - theta_anchor|^2` toward the anchor (the last full retrain) on the rows of user,
      item and category embeddings the anchor knows, mapped onto this model's vocabulary. Item biases are not
      anchored: they carry "what is popular now", which must follow the stream; pinning them to the anchor's
      moment is what makes a stale model stale.
    Why closed form: both gradients are one line of algebra (2 * strength * (theta - target)), while autograd
    through them costs a gather, a scatter-add and a power per table per batch; that was most of the fine-tune's
    time over a bare loop (benchmarks/training/loop.py). The optimum is the same."""

    def __init__(self, net: _Net, anchor: "Checkpoint | None", uidx: dict, iidx: dict, l2: float, strength: float):
        self.l2 = l2
        self.strength = strength
        # (parameter, its rows the anchor knows, the anchor's values for them): the rows are a slice when the
        # anchor's vocabulary is a prefix of this one (the usual case: vocabularies are append-only), else an index.
        self.anchored: list[tuple[nn.Parameter, slice | torch.Tensor, torch.Tensor]] = []
        if anchor is None or strength <= 0:
            return
        for name, own, theirs in (("user", uidx, anchor._user_ids), ("item", iidx, anchor._item_ids)):
            mine, src = _shared_rows(own, theirs)
            if len(mine):
                target = anchor.weights[name][src]
                rows = slice(0, len(mine)) if torch.equal(mine, torch.arange(len(mine))) else mine
                self.anchored.append((getattr(net, name), rows, target.clone()))
        shared = min(net.category.shape[0], anchor.weights["category"].shape[0])
        self.anchored.append((net.category, slice(0, shared), anchor.weights["category"][:shared].clone()))

    @torch.no_grad()
    def add_gradients(self, net: _Net, users: torch.Tensor, items: torch.Tensor) -> None:
        """Add both penalties' gradients to `net`'s .grad (after backward, before clipping)."""
        if self.l2 > 0:
            scale = 2.0 * self.l2 / len(users)
            net.user.grad.index_add_(0, users, net.user[users], alpha=scale)
            net.item.grad.index_add_(0, items, net.item[items], alpha=scale)
        for param, rows, target in self.anchored:
            if isinstance(rows, slice):
                param.grad[rows].add_(param[rows] - target, alpha=2.0 * self.strength)
            else:
                param.grad.index_add_(0, rows, param[rows] - target, alpha=2.0 * self.strength)


def _shared_rows(own: dict[str, int], theirs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the ids both vocabularies know, in `theirs` order: (own rows, their rows), int64."""
    # Vocabularies are append-only, so a chain's anchor is usually a prefix of its own vocabulary (`own` is
    # ordered by row): one comparison instead of a lookup per id.
    if list(own)[: len(theirs)] == list(theirs):
        rows = torch.arange(len(theirs))
        return rows, rows
    found = pd.Series(list(theirs), dtype=object).map(own)
    src = np.flatnonzero(found.notna().to_numpy())
    return torch.from_numpy(found.to_numpy()[src].astype(np.int64)), torch.from_numpy(src.astype(np.int64))


class UnsupportedCheckpointFormat(ValueError):
    """A checkpoint written by an older (or newer) tidal: only a full retrain can replace it."""


class Checkpoint:
    """Model arguments + id vocabularies + weights + optimizer state + popularity prior + the online choice of
    the popularity term.

    Plain tensors, lists and numbers only, so `torch.load(weights_only=True)` restores it.
    """

    def __init__(self, *, config: dict, user_ids: list[str], item_ids: list[str], categories: list[str],
                 catalog_ids: list[str], catalog_categories: torch.Tensor, weights: dict[str, torch.Tensor],
                 optimizer: dict | None, popularity: torch.Tensor, trained_until: float, events_seen: int,
                 selection: torch.Tensor | None = None, ease: dict | None = None, lineage: dict | None = None):
        self.config = dict(config)                  # TrainConfig as a dict: rebuilds the exact model
        self._user_ids = list(user_ids)
        self._item_ids = list(item_ids)
        self.categories = list(categories)          # category j is row j+1 of the category tables
        self.catalog_ids = list(catalog_ids)        # every item with known metadata, seen or not
        self.catalog_categories = catalog_categories  # (N_catalog, M) long, 0 = padding
        self.weights = weights                      # name -> tensor, see _PARAM_NAMES
        self.optimizer = optimizer                  # Adam state_dict (or None)
        self.popularity = popularity                # (G, I) decayed counts, one row per grid half-life
        self.trained_until = float(trained_until)   # newest event timestamp learned from (unix s)
        self.events_seen = int(events_seen)         # events learned from so far: the stream's clock
        self.selection = selection                  # (A, G, W) evidence for each choice of weights, or None
        self.ease = DecayedEASE.from_dict(ease) if ease is not None else DecayedEASE.empty()  # item-item term
        self.lineage = dict(lineage or {})          # e.g. {"mode": "finetune", "examples": ...}
        self._user_index = {u: j for j, u in enumerate(self._user_ids)}
        self._item_index = {i: j for j, i in enumerate(self._item_ids)}
        self._catalog_index = {i: j for j, i in enumerate(self.catalog_ids)}
        self._net: _Net | None = None
        self._vocab_cache: tuple | None = None
        self._ease_columns: np.ndarray | None = None

    # ----- vocabularies -------------------------------------------------------------------------------------
    @property
    def user_ids(self) -> list[str]:
        return list(self._user_ids)

    @property
    def item_ids(self) -> list[str]:
        return list(self._item_ids)

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.config)

    @property
    def choice(self) -> tuple[int, int, int]:
        """The (EASE weight, popularity half-life, popularity weight) grid cell `score` uses."""
        return select(None if self.selection is None else self.selection.numpy(), self.train_config)

    def terms(self) -> dict:
        """The weights `score` uses, in words (for logs and the registry's metadata)."""
        cfg, (a, g, w) = self.train_config, self.choice
        return {"ease_weight": float(ease_weights(cfg)[a]),
                "pop_half_life_share": float(popularity_half_life_shares(cfg)[g]),
                "pop_half_life_events": float(popularity_half_life_shares(cfg)[g] * self.events_seen),
                "pop_weight": float(popularity_weights(cfg)[w]), "observed": self.selection is not None}

    def with_selection(self, selection: np.ndarray) -> "Checkpoint":
        """The same model with new evidence for the popularity term (weights shared, not copied)."""
        state = self.to_dict()
        state["selection"] = torch.as_tensor(np.asarray(selection, dtype=np.float64))
        out = Checkpoint.from_dict(state)
        out._net, out._vocab_cache, out.ease = self._net, self._vocab_cache, self.ease
        return out

    # ----- persistence --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION, "config": self.config, "user_ids": self._user_ids,
            "item_ids": self._item_ids, "categories": self.categories, "catalog_ids": self.catalog_ids,
            "catalog_categories": self.catalog_categories, "weights": self.weights,
            "optimizer": self.optimizer, "popularity": self.popularity, "trained_until": self.trained_until,
            "events_seen": self.events_seen, "selection": self.selection, "ease": self.ease.to_dict(),
            "lineage": self.lineage,
        }

    @classmethod
    def from_dict(cls, state: dict) -> "Checkpoint":
        if state.get("format") != FORMAT_VERSION:
            raise UnsupportedCheckpointFormat(f"unsupported checkpoint format {state.get('format')!r} (this code "
                                              f"reads {FORMAT_VERSION}; retrain to upgrade)")
        return cls(config=state["config"], user_ids=state["user_ids"], item_ids=state["item_ids"],
                   categories=state["categories"], catalog_ids=state["catalog_ids"],
                   catalog_categories=state["catalog_categories"], weights=state["weights"],
                   optimizer=state["optimizer"], popularity=state["popularity"],
                   trained_until=state["trained_until"], events_seen=state["events_seen"],
                   selection=state.get("selection"), ease=state.get("ease"), lineage=state.get("lineage"))

    def save(self, path: str | Path) -> None:
        """Atomic write: a temp file in the target directory, then os.replace (readers never see half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(self.to_dict(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | Path) -> "Checkpoint":
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=True))

    # ----- scoring ------------------------------------------------------------------------------------------
    def net(self) -> _Net:
        if self._net is None:
            self._net = _build_net(self)
        return self._net

    def weights_finite(self) -> bool:
        tensors = list(self.weights.values()) + [self.popularity]
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    def _vocab_side(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vectors (I, D), biases (I,) and z-scored log-popularity (G, I) of the whole vocabulary, computed
        once per checkpoint (a checkpoint's weights never change after it is built)."""
        if self._vocab_cache is None:
            net = self.net()
            with torch.no_grad():
                vec, bias = net.items(torch.arange(len(self._item_ids)))
                zpop, cold_zpop = popularity_z(self.popularity)
                median = net.item_bias.median() if len(self._item_ids) else torch.tensor(0.0)
                self._vocab_cache = (vec, bias, zpop, cold_zpop, median)
        return self._vocab_cache[:3]

    def _item_side(self, item_ids: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vectors (I, D), biases (I,) and z-scored log-popularity (G, I) for any items, known or not (None: the
        vocabulary, without looking each id up: what serving asks per request)."""
        if item_ids is None:
            return self._vocab_side()
        net = self.net()
        known = np.array([self._item_index.get(i, -1) for i in item_ids], dtype=np.int64)
        is_known = torch.from_numpy(known >= 0)
        idx = torch.from_numpy(np.where(known >= 0, known, 0))
        all_vec, all_bias, all_zpop = self._vocab_side()
        with torch.no_grad():
            vec, bias, zpop = all_vec[idx], all_bias[idx], all_zpop[:, idx]
            if bool(is_known.all()):
                return vec, bias, zpop
            # Unknown items: content from the catalog (zero if absent), the median bias as a neutral prior.
            cat_rows = np.array([self._catalog_index.get(i, -1) for i in item_ids], dtype=np.int64)
            cats = torch.zeros(len(item_ids), self.catalog_categories.shape[1], dtype=torch.long)  # (I, M)
            has = torch.from_numpy(cat_rows >= 0)
            if bool(has.any()):
                cats[has] = self.catalog_categories[torch.from_numpy(cat_rows[cat_rows >= 0])]
            cold_vec, cold_bias = net.content(cats)
            cold_zpop, median_bias = self._vocab_cache[3], self._vocab_cache[4]
            vec = torch.where(is_known.unsqueeze(1), vec, cold_vec)
            bias = torch.where(is_known, bias, cold_bias + median_bias)
            zpop = torch.where(is_known.unsqueeze(0), zpop, cold_zpop.unsqueeze(1))
        return vec, bias, zpop

    def _user_side(self, user_ids: Sequence[str]) -> torch.Tensor:
        net = self.net()
        known = np.array([self._user_index.get(u, -1) for u in user_ids], dtype=np.int64)
        idx = torch.from_numpy(np.where(known >= 0, known, 0))
        with torch.no_grad():
            vec = net.user[idx]                                             # (U, D)
            return torch.where(torch.from_numpy(known >= 0).unsqueeze(1), vec, torch.zeros_like(vec))

    def score_parts(self, user_ids: Sequence[str], item_ids: Sequence[str]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three terms of `score`: z-scored mf (U, I), z-scored EASE (U, I) and z-scored log-popularity for
        every grid half-life (G, I). Each is standardized over the whole vocabulary, not over the candidates
        asked for, so a score is a function of (user, item) alone."""
        zmf, zpop = self._mf_z(self._user_side(user_ids), item_ids)
        return zmf, self._ease_z(user_ids, item_ids), zpop

    def _mf_z(self, users: torch.Tensor, item_ids: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """z-scored mf (U, I) of user vectors (U, D), and z-scored log-popularity (G, I); None: the vocabulary."""
        vec, bias, zpop = self._item_side(item_ids)                         # (I, D), (I,), (G, I)
        if not self._item_ids:
            n = 0 if item_ids is None else len(item_ids)
            return np.zeros((users.shape[0], n)), zpop.double().numpy()
        with torch.no_grad():
            raw = users @ vec.T + bias                                      # (U, I)
            all_vec, all_bias, _ = self._vocab_side()
            full = raw if item_ids is None else users @ all_vec.T + all_bias  # (U, I_vocab)
            mu, sd = full.mean(1, keepdim=True), full.std(1, keepdim=True).clamp(min=1e-6)
            zmf = ((raw - mu) / sd).double().numpy()
        return zmf, zpop.double().numpy()

    def _ease_z(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        return ease_z(self.ease, len(self._item_ids), user_ids, item_ids)

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Scores (U, I) as float64: z(mf) + a * z(EASE) + w * z(log-popularity at half-life h), with
        (a, h, w) = `choice`; unknown users and items get cold-start scores."""
        return self._combine(*self.score_parts(user_ids, item_ids))

    def _combine(self, zmf: np.ndarray, zease: np.ndarray, zpop: np.ndarray) -> np.ndarray:
        cfg, (a, g, w) = self.train_config, self.choice
        return combine(zmf, zease, zpop[g], float(ease_weights(cfg)[a]), float(popularity_weights(cfg)[w]))

    def recommend(self, user_ids: Sequence[str], k: int, *, candidates: Sequence[str] | None = None,
                  exclude: Mapping[str, Iterable[str]] | None = None) -> list[list[str]]:
        """Top-k item ids per user, best first. `exclude` maps a user to items never to recommend to them (the
        items they have seen, including those seen since the model was trained); ids outside the candidates
        are ignored."""
        cand = list(self._item_ids if candidates is None else candidates)
        if not cand:
            return [[] for _ in user_ids]
        scores = self.score(user_ids, cand)
        if exclude:
            pos = {item: j for j, item in enumerate(cand)}
            for row, user in enumerate(user_ids):
                cols = [pos[i] for i in exclude.get(user, ()) if i in pos]
                scores[row, cols] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]            # (U, k)
        return [[cand[j] for j in row if np.isfinite(scores[r, j])] for r, row in enumerate(top)]

    # ----- users the model does not know: fold-in from their recent items ------------------------------------
    def score_from_items(self, recent_item_ids: Sequence[str], item_ids: Sequence[str] | None = None
                         ) -> np.ndarray:
        """Scores (I,) of `item_ids` (default: the vocabulary) for a user the model does not know, from the
        items they interacted with recently, newest first (as the online store keeps them), combined with the
        same weights as `score`:
        - mf: the user's vector is the mean of the recent items' vectors (own row + categories), weighted
          0.5 ** (position / n) so the newest counts most and the oldest of the n about half;
        - EASE: x B with x = 1 on each recent modelled item (recent events have almost no decay);
        - popularity: as for any user.
        Ids the model does not know are ignored; with none left (or an empty history) the user is scored like
        an unknown user by `score`: item bias + popularity."""
        cand = None if item_ids is None else list(item_ids)  # None: the vocabulary, ids never looked up one by one
        known = [i for i in recent_item_ids if i in self._item_index]
        dim = int(self.weights["user"].shape[1])
        user = torch.zeros(1, dim)
        if known:
            vec, _, _ = self._vocab_side()
            rows = torch.tensor([self._item_index[i] for i in known])
            recency = torch.pow(0.5, torch.arange(len(known), dtype=torch.float32) / len(known))  # (n,)
            user = (recency.unsqueeze(1) * vec[rows]).sum(0, keepdim=True) / recency.sum()      # (1, D)
        zmf, zpop = self._mf_z(user, cand)
        modelled = self.ease.items_scores(known, np.ones(len(known))).astype(np.float64)[None, :]  # (1, N)
        cols = self._vocab_ease_columns() if cand is None else None
        zease = standardize_ease(self.ease, modelled, len(self._item_ids), cand, cols)
        return self._combine(zmf, zease, zpop)[0]

    def _vocab_ease_columns(self) -> np.ndarray:
        """Each vocabulary item's column in the EASE term (-1: not modelled), computed once per checkpoint."""
        if self._ease_columns is None:
            self._ease_columns = np.array([self.ease._item_index.get(i, -1) for i in self._item_ids], dtype=np.int64)
        return self._ease_columns

    def recommend_from_items(self, recent_item_ids: Sequence[str], k: int, exclude: Iterable[str] = (), *,
                             candidates: Sequence[str] | None = None, exclude_recent: bool = True
                             ) -> list[tuple[str, float]]:
        """Top-k (item id, score) for a user the model does not know, best first, scored by
        `score_from_items` from their recent items (newest first). The recent items themselves are not
        recommended (`exclude_recent=False` keeps them), nor anything in `exclude`; `candidates` defaults to
        the model's items. An empty history gives the unknown-user ranking (item bias + popularity)."""
        cand = self._item_ids if candidates is None else list(candidates)
        if not cand or k <= 0:
            return []
        scores = self.score_from_items(recent_item_ids, None if candidates is None else cand)
        banned = set(exclude) | (set(recent_item_ids) if exclude_recent else set())
        if candidates is None:  # look the few banned ids up, not every candidate
            scores[[self._item_index[i] for i in banned if i in self._item_index]] = -np.inf
        else:
            scores[[j for j, item in enumerate(cand) if item in banned]] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return [(cand[j], float(scores[j])) for j in top if np.isfinite(scores[j])]


def popularity_z(popularity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decayed counts (G, I) -> z-scored log-counts over the items (G, I), and the z of a count of 0 (G,).
    Counts are rescaled to mean 1 before the log, so the term's shape does not depend on the half-life (short
    half-lives have small counts)."""
    pop = popularity.double()
    logpop = torch.log1p(pop / pop.mean(1, keepdim=True).clamp(min=1e-12))
    mu, sd = logpop.mean(1, keepdim=True), logpop.std(1, keepdim=True).clamp(min=1e-6)
    return ((logpop - mu) / sd).float(), (-mu / sd).squeeze(1).float()


def ease_z(ease: DecayedEASE, n_vocab: int, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
    """EASE scores (U, I) standardized per user over a vocabulary of `n_vocab` items, of which the modelled
    ones score x_u B and the rest 0."""
    if not ease.item_ids:
        return np.zeros((len(user_ids), len(item_ids)))
    return standardize_ease(ease, ease.user_scores(user_ids).astype(np.float64), n_vocab, item_ids)


def standardize_ease(ease: DecayedEASE, modelled: np.ndarray, n_vocab: int, item_ids: Sequence[str] | None,
                     cols: np.ndarray | None = None) -> np.ndarray:
    """Rows x B over the modelled items (U, N) -> their z-scores (U, I) over a vocabulary of `n_vocab` items
    (the unmodelled ones score 0), looked up for `item_ids` (or given as their EASE columns `cols`, -1 for an
    item not modelled)."""
    if not ease.item_ids:
        return np.zeros((modelled.shape[0], len(item_ids) if cols is None else len(cols)))
    n_vocab, n = max(n_vocab, len(ease.item_ids)), len(ease.item_ids)
    mu = modelled.sum(1, keepdims=True) / n_vocab
    var = ((modelled - mu) ** 2).sum(1, keepdims=True) + (n_vocab - n) * mu ** 2
    sd = np.sqrt(var / max(n_vocab - 1, 1)).clip(min=1e-6)
    if cols is None:
        cols = np.array([ease._item_index.get(i, -1) for i in item_ids], dtype=np.int64)
    raw = np.zeros((modelled.shape[0], len(cols)))
    raw[:, cols >= 0] = modelled[:, cols[cols >= 0]]
    return (raw - mu) / sd


def combine(zmf: np.ndarray, zease: np.ndarray, zpop: np.ndarray, ease_weight: float, pop_weight: float
            ) -> np.ndarray:
    """score = z(mf) + ease_weight * z(EASE) + pop_weight * z(log-popularity): (U, I), (U, I), (I,) -> (U, I).
    One function for serving and for the online choice, so what is chosen is what is served."""
    out = zmf + ease_weight * zease if ease_weight else zmf.copy()
    if pop_weight:
        out += pop_weight * zpop[None, :]
    return out


def _build_net(ckpt: Checkpoint) -> _Net:
    w = ckpt.weights
    dim = int(w["user"].shape[1])
    cat_rows = np.array([ckpt._catalog_index.get(i, -1) for i in ckpt._item_ids], dtype=np.int64)
    width = ckpt.catalog_categories.shape[1]
    item_cats = torch.zeros(len(ckpt._item_ids), width, dtype=torch.long)
    if len(cat_rows) and (cat_rows >= 0).any():
        has = torch.from_numpy(cat_rows >= 0)
        item_cats[has] = ckpt.catalog_categories[torch.from_numpy(cat_rows[cat_rows >= 0])]
    net = _Net(len(ckpt._user_ids), len(ckpt._item_ids), len(ckpt.categories), dim, item_cats)
    with torch.no_grad():
        for name in _PARAM_NAMES:
            getattr(net, name).copy_(w[name])
    return net



def _grow(old: torch.Tensor, rows: int, init: torch.Tensor | None = None) -> torch.Tensor:
    """`old` extended to `rows` rows; new rows from `init` (or zeros)."""
    extra = rows - old.shape[0]
    if extra <= 0:
        return old.clone()
    tail = init if init is not None else torch.zeros((extra,) + tuple(old.shape[1:]), dtype=old.dtype)
    return torch.cat([old, tail.to(old.dtype)], 0)


def _merge_catalog(prev: Checkpoint | None, items: pd.DataFrame | None, categories: list[str],
                   width: int) -> tuple[list[str], torch.Tensor]:
    """Catalog ids and their (N, width) category rows: the previous catalog updated by `items`.

    Category ids are stable across checkpoints (categories are only ever appended), so previous rows are
    reused as they are."""
    ids = list(prev.catalog_ids) if prev is not None else []
    mat = prev.catalog_categories.numpy() if prev is not None else np.zeros((0, width), dtype=np.int64)
    if items is None or len(items) == 0:
        return ids, torch.from_numpy(mat.copy())
    cat_index = {c: j + 1 for j, c in enumerate(categories)}
    cats = items["categories"] if "categories" in items.columns else pd.Series("", index=items.index)
    # Parse each distinct category string once (catalogs repeat a few hundred combinations).
    codes, uniques = pd.factorize(cats.fillna("").astype(str))
    parsed = np.zeros((len(uniques), width), dtype=np.int64)
    for r, joined in enumerate(uniques):
        row = [cat_index[c] for c in joined.split("|") if c][:width]
        parsed[r, : len(row)] = row
    new_rows = parsed[codes]                                                 # (len(items), width)
    item_ids = items["item_id"].astype(str).to_numpy()
    # New ids are appended in order of first appearance; later rows win: an item listed twice keeps its last
    # metadata.
    fresh = item_ids[pd.Index(ids, dtype=object).get_indexer(item_ids) < 0]
    ids.extend(pd.unique(fresh).tolist())
    target = pd.Index(ids, dtype=object).get_indexer(item_ids)
    merged = np.zeros((len(ids), width), dtype=np.int64)
    merged[: len(mat)] = mat
    merged[target] = new_rows
    return ids, torch.from_numpy(merged)


def _extend_vocab(vocab: list[str], index: dict[str, int], values: np.ndarray) -> None:
    for v in pd.unique(values):
        if v not in index:
            index[v] = len(vocab)
            vocab.append(v)


# ----- the stream's clock: ages in events ---------------------------------------------------------------------

def _decay(ages: np.ndarray, half_life: float) -> np.ndarray:
    """0.5 ** (age / half-life), both in events."""
    return np.power(0.5, np.asarray(ages, dtype=float) / np.maximum(half_life, 1.0))


def _sample_replay(replay: pd.DataFrame, n: int, offset: int, half_life: float,
                   rng: np.random.Generator) -> pd.DataFrame:
    """`n` rows of earlier history, drawn without replacement with probability proportional to their decayed
    weight (age = their age within the history + `offset`, the new events after them), so the replay
    favors recent history but still reaches back."""
    if n <= 0 or replay is None or len(replay) == 0:
        return replay.iloc[:0] if replay is not None else pd.DataFrame(columns=["user_id", "item_id", "timestamp"])
    if n >= len(replay):
        return replay
    p = _decay(event_ages(replay["timestamp"].to_numpy(dtype=float)) + offset, half_life) + 1e-12
    pick = rng.choice(len(replay), size=n, replace=False, p=p / p.sum())
    return replay.iloc[np.sort(pick)]


def popularity_counts(items: torch.Tensor, ages: np.ndarray, n_items: int, events_seen: int,
                      cfg: TrainConfig) -> torch.Tensor:
    """Decayed counts (G, I) of events (item rows (n,), ages in events (n,)): each adds 0.5 ** (age / h) to its
    item, one row per grid half-life h (a share of `events_seen`)."""
    half_lives = popularity_half_life_shares(cfg) * events_seen                              # (G,)
    pop = torch.zeros(len(half_lives), n_items, dtype=torch.float64)
    for g, half_life in enumerate(half_lives):
        pop[g].index_add_(0, items, torch.tensor(_decay(ages, half_life), dtype=torch.float64))
    return pop


def _advance_popularity(previous: Checkpoint | None, new_items: torch.Tensor, new_ages: np.ndarray, n_items: int,
                        events_seen: int, cfg: TrainConfig) -> torch.Tensor:
    """Decayed counts (G, I) after learning the new events: the old counts decay by the number of new events,
    then the new events are added (`popularity_counts`)."""
    pop = popularity_counts(new_items, new_ages, n_items, events_seen, cfg)
    if previous is not None:
        half_lives = popularity_half_life_shares(cfg) * events_seen
        old = previous.popularity.double()
        fade = torch.tensor(_decay(np.full(len(half_lives), float(len(new_ages))), half_lives))  # (G,)
        pop[:, : old.shape[1]] += old * fade.unsqueeze(1)
    return pop.float()


# ----- training -------------------------------------------------------------------------------------------------

@dataclass
class _Vocab:
    """Id vocabularies (append-only) and the item catalog."""

    user_ids: list[str]
    item_ids: list[str]
    categories: list[str]
    catalog_ids: list[str]
    catalog_categories: torch.Tensor
    uidx: dict
    iidx: dict

    @classmethod
    def extend(cls, previous: Checkpoint | None, frames: Sequence[pd.DataFrame], items: pd.DataFrame | None,
               cfg: TrainConfig) -> "_Vocab":
        """The previous vocabularies, then new ids appended in order of first appearance."""
        user_ids = list(previous._user_ids) if previous else []
        item_ids = list(previous._item_ids) if previous else []
        categories = list(previous.categories) if previous else []
        uidx = {u: j for j, u in enumerate(user_ids)}
        iidx = {i: j for j, i in enumerate(item_ids)}
        for frame in frames:
            _extend_vocab(user_ids, uidx, frame["user_id"].astype(str).to_numpy())
            _extend_vocab(item_ids, iidx, frame["item_id"].astype(str).to_numpy())
        if items is not None and "categories" in items.columns:
            known = set(categories)
            # Each distinct string once, in order of first appearance (the same order as every row).
            for joined in pd.unique(items["categories"].fillna("").astype(str)):
                for c in joined.split("|")[: cfg.max_categories]:
                    if c and c not in known:
                        known.add(c)
                        categories.append(c)
        width = previous.catalog_categories.shape[1] if previous else cfg.max_categories
        catalog_ids, catalog_cats = _merge_catalog(previous, items, categories, width)
        return cls(user_ids, item_ids, categories, catalog_ids, catalog_cats, uidx, iidx)


def _initial_weights(vocab: _Vocab, previous: Checkpoint | None, cfg: TrainConfig,
                     gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Previous rows kept; new rows random (users, items, categories) or neutral (biases)."""
    dim = int(previous.weights["user"].shape[1]) if previous else cfg.dim
    n_u, n_i, n_c = len(vocab.user_ids), len(vocab.item_ids), len(vocab.categories) + 1

    def rand(rows: int) -> torch.Tensor:
        return torch.randn(rows, dim, generator=gen) * cfg.init_std

    if previous is None:
        weights = {"user": rand(n_u), "item": rand(n_i), "item_bias": torch.zeros(n_i),
                   "category": rand(n_c), "category_bias": torch.zeros(n_c)}
    else:
        old = previous.weights
        # A new item starts at the median bias: neither buried nor promoted before it has evidence.
        bias_fill = old["item_bias"].median() if old["item_bias"].numel() else torch.tensor(0.0)
        weights = {
            "user": _grow(old["user"], n_u, rand(n_u - old["user"].shape[0])),
            "item": _grow(old["item"], n_i, rand(n_i - old["item"].shape[0])),
            "item_bias": _grow(old["item_bias"], n_i, bias_fill.expand(max(0, n_i - old["item_bias"].shape[0]))),
            "category": _grow(old["category"], n_c, rand(n_c - old["category"].shape[0])),
            "category_bias": _grow(old["category_bias"], n_c),
        }
    with torch.no_grad():
        weights["category"][0] = 0.0  # padding row
    return weights


def _examples(new: pd.DataFrame, replayed: pd.DataFrame, vocab: _Vocab, new_ages: np.ndarray,
              half_life: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """User rows, item rows and mean-1 sample weights (N,) of the new events (decayed by age) followed by the
    replay (weight 1: it is already a decay-weighted sample)."""
    users = pd.concat([new["user_id"], replayed["user_id"]], ignore_index=True).astype(str)
    items = pd.concat([new["item_id"], replayed["item_id"]], ignore_index=True).astype(str)
    u = torch.from_numpy(pd.Index(vocab.user_ids, dtype=object).get_indexer(users).astype(np.int64))
    i = torch.from_numpy(pd.Index(vocab.item_ids, dtype=object).get_indexer(items).astype(np.int64))
    w = np.ones(len(users))
    w[: len(new)] = _decay(new_ages, half_life)
    if "weight" in new.columns:
        w[: len(new)] *= new["weight"].to_numpy(dtype=float)
    if len(w) and np.isfinite(w).all() and w.mean() > 0:
        w = w / w.mean()
    return u, i, torch.tensor(w, dtype=torch.float32)


def _fit(net: _Net, optimizer: torch.optim.Optimizer, examples: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
         epochs: int, cfg: TrainConfig, regularizer: _Regularizer, gen: torch.Generator,
         say: Callable[[str], None]) -> tuple[list[float], bool]:
    """The training loop: shuffled batches, the model's loss, the penalties' gradients, clipped Adam steps.
    Returns the mean loss per epoch and False if a loss became non-finite (training stops there).

    Inside a torch.distributed process group of N processes (models/distributed.py), every process draws the
    same order and negatives (same seed), takes every N-th row of each batch (`_my_rows`), and
    DistributedDataParallel averages the gradients; the penalties' gradients and the clipped step are then the same on every process,
    so the replicas stay equal and each step is the single-process step up to float rounding."""
    u_all, i_all, w_all = examples
    n_ex, n_items = len(u_all), net.item.shape[0]
    params = [getattr(net, name) for name in _PARAM_NAMES]
    rank, world = _process_group()
    model: nn.Module = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # The buffers (item categories) are built from the same vocabulary on every process and never change, and
        # one is sparse, which the newer `forward_sync_buffers=False` would still broadcast at init (gloo refuses
        # sparse tensors): so the deprecated flag, which syncs none.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            model = DistributedDataParallel(net, broadcast_buffers=False)
    losses: list[float] = []
    for epoch in range(epochs if n_ex else 0):
        order = torch.randperm(n_ex, generator=gen)
        total = 0.0
        for start in range(0, n_ex, cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            u, i = u_all[b], i_all[b]                                       # (B,)
            negatives = torch.randint(0, n_items, (cfg.negatives,), generator=gen)  # (S,)
            mine, share = _my_rows(b, rank, world)
            _, loss = model(u_all[mine], i_all[mine], negatives, w_all[mine])
            if share != 1.0:
                loss = loss * share
            value = _mean_over_processes(loss.detach(), world)
            # A non-finite weight anywhere shows up here once a batch touches it, and in `weights_finite` at the end.
            if not math.isfinite(value):
                say(f"epoch {epoch + 1}/{epochs}: non-finite loss, candidate rejected")
                return losses, False
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            regularizer.add_gradients(net, u, i)
            net.zero_padding_grads()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            optimizer.step()
            total += value * len(b)
        losses.append(total / n_ex)
        say(f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f} ({n_ex} examples)")
    return losses, True


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process is in; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _my_rows(batch: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, float]:
    """This process's rows of a batch (every `world`-th), and the factor that makes the processes' gradients,
    once DistributedDataParallel averages them, the whole batch's mean even when the shards differ in size:
    len(mine) * world / len(batch). A batch smaller than the group is trained whole by every process."""
    if world == 1 or len(batch) < world:
        return batch, 1.0
    mine = batch[rank::world]
    return mine, len(mine) * world / len(batch)


def _mean_over_processes(value: torch.Tensor, world: int) -> float:
    """A batch's loss, averaged over the processes' shards (every process must see the same value: they all
    stop on a non-finite one, or none does)."""
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world
    return value.item()


def _fit_ease(new: pd.DataFrame, replay: pd.DataFrame | None, previous: Checkpoint | None, events_seen: int,
              cfg: TrainConfig) -> DecayedEASE:
    """The item-item term, refit on the new events and the history offered (a fine-tune without history keeps
    the previous one: a refit on a few new events alone would forget who watches what)."""
    if previous is not None and (replay is None or len(replay) == 0):
        return previous.ease
    frames = [new] if replay is None else [replay, new]

    def column(name: str, dtype=None) -> np.ndarray:
        # The columns joined as arrays: concatenating the frames copied every column through pandas, a
        # sizeable share of a small fine-tune.
        return np.concatenate([frame[name].to_numpy(dtype=dtype) for frame in frames])

    return DecayedEASE.fit_arrays(column("user_id"), column("item_id"), column("timestamp", float),
                                  half_life=cfg.ease_half_life_share * events_seen, l2_share=cfg.ease_l2_share,
                                  max_items=cfg.ease_max_items)


def train(interactions: pd.DataFrame, *, cfg: TrainConfig, init_from: Checkpoint | None = None,
          anchor: Checkpoint | None = None, replay: pd.DataFrame | None = None,
          items: pd.DataFrame | None = None, selection: np.ndarray | torch.Tensor | None = None,
          progress: Callable[[str], None] | None = None) -> TrainResult:
    """Full retrain (`init_from=None`) or fine-tune (`init_from=checkpoint`); see the module docstring.

    interactions: user_id (str), item_id (str), timestamp (float, unix s), optional weight (float); the events
        learned from, newer than everything `init_from` learned.
    anchor: L2-SP target (the last full retrain); rows it lacks are not pulled anywhere.
    replay: earlier history; a fine-tune mixes in `replay_fraction * len(interactions)` rows of it.
    items: item metadata (item_id, categories "a|b") for content features and cold start.
    selection: evidence for the popularity term (default: `init_from`'s); pass the production model's to a
        full retrain so it keeps what the stream has shown.
    """
    cpu0, wall0 = time.process_time(), time.perf_counter()
    say = progress or (lambda _msg: None)
    finetune = init_from is not None
    epochs = cfg.finetune_epochs if finetune and cfg.finetune_epochs is not None else cfg.epochs
    lr = cfg.finetune_lr if finetune and cfg.finetune_lr is not None else cfg.lr
    if len(interactions) == 0 and init_from is None:
        raise ValueError("a full retrain needs at least one interaction")

    new = interactions.reset_index(drop=True)
    new_ages = event_ages(new["timestamp"].to_numpy(dtype=float))
    events_seen = (init_from.events_seen if finetune else 0) + len(new)
    half_life = cfg.half_life_share * events_seen              # in events
    t_ref = float(new["timestamp"].max()) if len(new) else init_from.trained_until
    if finetune:
        t_ref = max(t_ref, init_from.trained_until)
    # One seed stream per call, varied by the data size so consecutive fine-tunes draw different negatives.
    seed = (cfg.seed * 1_000_003 + len(new)) % (2**31)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    if finetune and replay is not None and cfg.replay_fraction > 0:
        replayed = _sample_replay(replay, int(round(cfg.replay_fraction * len(new))), len(new), half_life, rng)
    else:
        replayed = new.iloc[:0]
    vocab = _Vocab.extend(init_from, (new, replayed), items, cfg)
    weights = _initial_weights(vocab, init_from, cfg, gen)
    draft = Checkpoint(config=asdict(cfg), user_ids=vocab.user_ids, item_ids=vocab.item_ids,
                       categories=vocab.categories, catalog_ids=vocab.catalog_ids,
                       catalog_categories=vocab.catalog_categories, weights=weights, optimizer=None,
                       popularity=torch.zeros(0, 0), trained_until=t_ref, events_seen=events_seen)
    net = _build_net(draft)
    # The fused kernel: one pass per parameter instead of a dozen element-wise ops (the same Adam update).
    optimizer = torch.optim.Adam([getattr(net, name) for name in _PARAM_NAMES], lr=lr, fused=True)
    if finetune and init_from.optimizer is not None:
        optimizer.load_state_dict(_grown_optimizer_state(init_from.optimizer,
                                                         [getattr(net, name) for name in _PARAM_NAMES]))
        for group in optimizer.param_groups:
            group["lr"] = lr  # the saved state carries the previous run's lr
            group["fused"], group["foreach"] = True, None  # and its implementation (older checkpoints: unfused)
    examples = _examples(new, replayed, vocab, new_ages, half_life)
    losses, finite = _fit(net, optimizer, examples, epochs, cfg,
                          _Regularizer(net, anchor, vocab.uidx, vocab.iidx, cfg.l2, cfg.anchor_l2), gen, say)

    # The popularity prior learns the new events only, not the replay.
    popularity = _advance_popularity(init_from, examples[1][: len(new)], new_ages, len(vocab.item_ids),
                                     events_seen, cfg)
    if selection is None and finetune:
        selection = init_from.selection
    ease = _fit_ease(new, replay if finetune else None, init_from, events_seen, cfg)
    dim = int(weights["user"].shape[1])
    checkpoint = Checkpoint(
        config=asdict(dataclasses.replace(cfg, dim=dim, max_categories=vocab.catalog_categories.shape[1])),
        user_ids=vocab.user_ids, item_ids=vocab.item_ids, categories=vocab.categories,
        catalog_ids=vocab.catalog_ids, catalog_categories=vocab.catalog_categories,
        weights={name: getattr(net, name).detach().clone() for name in _PARAM_NAMES},
        # No copy: the optimizer ends with this call, so nothing else holds or changes its state.
        optimizer=optimizer.state_dict(), popularity=popularity, trained_until=t_ref,
        events_seen=events_seen,
        selection=None if selection is None else torch.as_tensor(np.asarray(selection, dtype=np.float64)),
        ease=ease.to_dict(), lineage={"mode": "finetune" if finetune else "retrain", "examples": len(examples[0]),
                 "new_examples": len(new)})
    finite = finite and checkpoint.weights_finite() and all(math.isfinite(x) for x in losses)
    return TrainResult(checkpoint=checkpoint, finite=finite, losses=losses,
                       train_cpu_s=time.process_time() - cpu0, examples=len(examples[0]),
                       wall_s=time.perf_counter() - wall0)


# ----- the online choice of the popularity term ----------------------------------------------------------------

def grid_metrics(parts: tuple[np.ndarray, np.ndarray, np.ndarray], task, cfg: TrainConfig) -> dict:
    """Every (EASE weight, popularity half-life, popularity weight) cell scored on one window's evaluation set
    (`models.metrics.WindowTask`), from the terms `Checkpoint.score_parts(task.users, task.candidates)`
    returns. {"recall": (A, G, W) mean Recall@k, "ndcg": (A, G, W), "users": n}."""
    from models.metrics import evaluate_scores_fast as evaluate_scores

    recall = np.full(grid_shape(cfg), np.nan)
    ndcg = recall.copy()
    if not task.users:
        return {"recall": recall, "ndcg": ndcg, "users": 0}
    zmf, zease, zpop = parts
    for a, ease_weight in enumerate(ease_weights(cfg)):
        for g in range(zpop.shape[0]):
            for w, pop_weight in enumerate(popularity_weights(cfg)):
                if pop_weight == 0.0 and g > 0:   # weight 0 ignores the half-life: scored once
                    recall[a, g, w], ndcg[a, g, w] = recall[a, 0, w], ndcg[a, 0, w]
                    continue
                m = evaluate_scores(combine(zmf, zease, zpop[g], float(ease_weight), float(pop_weight)), task)
                recall[a, g, w], ndcg[a, g, w] = m[f"recall_at_{task.k}"], m[f"ndcg_at_{task.k}"]
    return {"recall": recall, "ndcg": ndcg, "users": len(task.users)}


def observe_task(checkpoint: Checkpoint, task) -> tuple[Checkpoint, dict]:
    """`observe` on a prepared evaluation set (`models.metrics.WindowTask`); also returns the grid it scored."""
    cfg = checkpoint.train_config
    if not task.users:
        return checkpoint, grid_metrics(None, task, cfg)
    grid = grid_metrics(checkpoint.score_parts(task.users, task.candidates), task, cfg)
    previous = None if checkpoint.selection is None else checkpoint.selection.numpy()
    evidence = update_selection(previous, grid["recall"] * grid["users"], cfg.selection_forgetting)
    return checkpoint.with_selection(evidence), grid


def observe(checkpoint: Checkpoint, history: pd.DataFrame, new_events: pd.DataFrame, k: int = 10) -> Checkpoint:
    """Test-then-train for the score's weights: score every grid cell of `checkpoint` on events it has not
    learned yet (`new_events`, with `history` the events before them, under the evaluation protocol's rules),
    and return the same model with that evidence added (the input is not mutated). Call it before training on
    `new_events`; a batch with no returning user adds nothing."""
    from models.metrics import prepare_window

    return observe_task(checkpoint, prepare_window(history, new_events, k))[0]


def finetune(production: Checkpoint, new_events: pd.DataFrame, *, cfg: TrainConfig, anchor: Checkpoint | None,
             history: pd.DataFrame | None, items: pd.DataFrame | None = None, k: int = 10,
             progress: Callable[[str], None] | None = None) -> TrainResult:
    """The incremental strategy as the benchmark measures it: first `observe` the new events with the production
    model (the weights of its score learn from them), then fine-tune on them with `history` as replay (and as
    the EASE term's data). `history`: the events before `new_events`, newest last."""
    seen = observe(production, history, new_events, k) if history is not None and len(history) else production
    return train(new_events, cfg=cfg, init_from=seen, anchor=anchor, replay=history, items=items, progress=progress)


def _grown_optimizer_state(state: dict, params: list[torch.Tensor]) -> dict:
    """Adam state of a smaller model padded with zero moments for the rows added since."""
    state = copy.deepcopy(state)
    for key, param in enumerate(params):
        slot = state["state"].get(key)
        if not slot:
            continue
        for name in ("exp_avg", "exp_avg_sq"):
            if name in slot:
                slot[name] = _grow(slot[name], param.shape[0])
    return state
