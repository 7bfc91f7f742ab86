"""The tidal recommender: matrix factorization with content features, time-aware item biases and a
decayed popularity prior, trained with sampled softmax, built to be fine-tuned every few minutes.

One entry point, `train`, does both jobs: `init_from=None` is a full retrain from scratch, a `Checkpoint` is a
fine-tune that resumes weights and optimizer state. The result is always a new `Checkpoint`; the input one is
never mutated, so a rejected candidate leaves production untouched.

Score of user u for item i (see models/README.md for why this shape):
    mf(u, i)  = p_u . (e_i + mean_c g_c) + b_i + mean_c h_c          c over the item's categories
    score     = z_u(mf(u, .))(i) + pop_weight * z(log1p(pop_i))
where pop_i is an exponentially decayed interaction count (half-life `pop_half_life_days`) kept in the
checkpoint and advanced by every fine-tune, and z(.) standardizes over the model's item vocabulary (per user
for mf), so the two terms are on one scale and a score does not depend on which candidates are asked for.
Unknown users get p_u = 0 (ranking by bias + popularity); unknown items get the content part only, the median
item bias and zero popularity.

Usage:
    result = train(events, cfg=TrainConfig())                       # full retrain
    result = train(new_events, cfg=cfg, init_from=prod, anchor=anchor, replay=history_sample)   # fine-tune
    if result.finite: result.checkpoint.save("candidate.pt")
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

FORMAT_VERSION = 1
_SECONDS_PER_DAY = 86400.0
# Parameters in a fixed order: the optimizer state is saved and restored by this order.
_PARAM_NAMES = ("user", "item", "item_bias", "category", "category_bias")


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of the model and its training loop. Defaults are the fixed values the prequential
    benchmark was run with (benchmarks/prequential/README.md); they are not tuned per dataset."""

    dim: int = 64                      # embedding width
    epochs: int = 10                   # epochs of a full retrain
    lr: float = 0.01                   # Adam learning rate of a full retrain
    batch_size: int = 1024
    half_life_days: float = 60.0       # sample-weight decay: an event this old counts half
    replay_fraction: float = 1.0       # fine-tune: replay rows drawn per new row (0 disables replay)
    anchor_l2: float = 1e-4            # fine-tune: L2-SP strength toward the anchor's weights
    grad_clip: float = 5.0             # max global grad norm per step
    seed: int = 0
    negatives: int = 256               # uniform negatives per batch, shared by its rows (sampled softmax)
    l2: float = 1e-5                   # L2 on the embedding rows a batch touches
    init_std: float = 0.05             # std of new embedding rows
    finetune_epochs: int | None = 5    # fine-tune epochs (None: `epochs`)
    finetune_lr: float | None = None   # fine-tune learning rate (None: `lr`)
    pop_half_life_days: float = 60.0   # half-life of the popularity prior's decayed counts
    pop_weight: float = 1.0            # weight of the z-scored popularity prior in `score` (0 disables)
    max_categories: int = 16           # categories kept per item (the first ones listed)


@dataclass
class TrainResult:
    checkpoint: "Checkpoint"   # the trained model, a new object
    finite: bool               # False if a loss or weight became NaN/Inf: the caller must reject it
    losses: list[float]        # mean weighted loss per epoch
    train_cpu_s: float         # process CPU seconds (all threads) spent in `train`
    examples: int              # rows trained on per epoch (new + replay)
    wall_s: float = 0.0


class _Net(nn.Module):
    """Parameter holder and the two item-side lookups; users are plain rows of `user`."""

    def __init__(self, n_users: int, n_items: int, n_categories: int, dim: int, item_categories: torch.Tensor):
        super().__init__()
        self.user = nn.Parameter(torch.zeros(n_users, dim))               # (U, D)
        self.item = nn.Parameter(torch.zeros(n_items, dim))               # (I, D)
        self.item_bias = nn.Parameter(torch.zeros(n_items))               # (I,)
        # Row 0 of the category tables is padding; its gradient is masked out in `_content`.
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


class Checkpoint:
    """Model arguments + id vocabularies + weights + optimizer state + popularity prior.

    Plain tensors, lists and numbers only, so `torch.load(weights_only=True)` restores it.
    """

    def __init__(self, *, config: dict, user_ids: list[str], item_ids: list[str], categories: list[str],
                 catalog_ids: list[str], catalog_categories: torch.Tensor, weights: dict[str, torch.Tensor],
                 optimizer: dict | None, popularity: torch.Tensor, trained_until: float, lineage: dict | None = None):
        self.config = dict(config)                  # TrainConfig as a dict: rebuilds the exact model
        self._user_ids = list(user_ids)
        self._item_ids = list(item_ids)
        self.categories = list(categories)          # category j is row j+1 of the category tables
        self.catalog_ids = list(catalog_ids)        # every item with known metadata, seen or not
        self.catalog_categories = catalog_categories  # (N_catalog, M) long, 0 = padding
        self.weights = weights                      # name -> tensor, see _PARAM_NAMES
        self.optimizer = optimizer                  # Adam state_dict (or None)
        self.popularity = popularity                # (I,) decayed counts as of `trained_until`
        self.trained_until = float(trained_until)   # newest event timestamp learned from (unix s)
        self.lineage = dict(lineage or {})          # e.g. {"mode": "finetune", "examples": ...}
        self._user_index = {u: j for j, u in enumerate(self._user_ids)}
        self._item_index = {i: j for j, i in enumerate(self._item_ids)}
        self._catalog_index = {i: j for j, i in enumerate(self.catalog_ids)}
        self._net: _Net | None = None
        self._vocab_cache: tuple | None = None

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

    # ----- persistence --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION, "config": self.config, "user_ids": self._user_ids,
            "item_ids": self._item_ids, "categories": self.categories, "catalog_ids": self.catalog_ids,
            "catalog_categories": self.catalog_categories, "weights": self.weights,
            "optimizer": self.optimizer, "popularity": self.popularity, "trained_until": self.trained_until,
            "lineage": self.lineage,
        }

    @classmethod
    def from_dict(cls, state: dict) -> "Checkpoint":
        if state.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r}")
        return cls(config=state["config"], user_ids=state["user_ids"], item_ids=state["item_ids"],
                   categories=state["categories"], catalog_ids=state["catalog_ids"],
                   catalog_categories=state["catalog_categories"], weights=state["weights"],
                   optimizer=state["optimizer"], popularity=state["popularity"],
                   trained_until=state["trained_until"], lineage=state.get("lineage"))

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
        """Vectors (I, D), biases (I,) and log-popularity (I,) of the whole vocabulary, computed once per
        checkpoint (a checkpoint's weights never change after it is built)."""
        if self._vocab_cache is None:
            net = self.net()
            with torch.no_grad():
                vec, bias = net.items(torch.arange(len(self._item_ids)))
                self._vocab_cache = (vec, bias, torch.log1p(self.popularity), net.item_bias.median()
                                     if len(self._item_ids) else torch.tensor(0.0))
        return self._vocab_cache[:3]

    def _item_side(self, item_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vectors (I, D), biases (I,) and log-popularity (I,) for any items, known or not."""
        net = self.net()
        known = np.array([self._item_index.get(i, -1) for i in item_ids], dtype=np.int64)
        is_known = torch.from_numpy(known >= 0)
        idx = torch.from_numpy(np.where(known >= 0, known, 0))
        all_vec, all_bias, all_logpop = self._vocab_side()
        with torch.no_grad():
            vec, bias = all_vec[idx], all_bias[idx]
            if bool(is_known.all()):
                return vec, bias, all_logpop[idx]
            # Unknown items: content from the catalog (zero if absent), the median bias as a neutral prior.
            cat_rows = np.array([self._catalog_index.get(i, -1) for i in item_ids], dtype=np.int64)
            cats = torch.zeros(len(item_ids), self.catalog_categories.shape[1], dtype=torch.long)  # (I, M)
            has = torch.from_numpy(cat_rows >= 0)
            if bool(has.any()):
                cats[has] = self.catalog_categories[torch.from_numpy(cat_rows[cat_rows >= 0])]
            cold_vec, cold_bias = net.content(cats)
            median_bias = self._vocab_cache[3]
            vec = torch.where(is_known.unsqueeze(1), vec, cold_vec)
            bias = torch.where(is_known, bias, cold_bias + median_bias)
            logpop = torch.where(is_known, all_logpop[idx], torch.zeros(len(item_ids)))
        return vec, bias, logpop

    def _user_side(self, user_ids: Sequence[str]) -> torch.Tensor:
        net = self.net()
        known = np.array([self._user_index.get(u, -1) for u in user_ids], dtype=np.int64)
        idx = torch.from_numpy(np.where(known >= 0, known, 0))
        with torch.no_grad():
            vec = net.user[idx]                                             # (U, D)
            return torch.where(torch.from_numpy(known >= 0).unsqueeze(1), vec, torch.zeros_like(vec))

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Scores (U, I) as float64; unknown users and items get cold-start scores."""
        users = self._user_side(user_ids)                                   # (U, D)
        vec, bias, logpop = self._item_side(item_ids)                       # (I, D), (I,), (I,)
        with torch.no_grad():
            raw = users @ vec.T + bias                                      # (U, I)
            pop_weight = float(self.config.get("pop_weight", 0.0))
            if pop_weight == 0.0 or not self._item_ids:
                return raw.double().numpy()
            # Standardize over the whole vocabulary, not over the candidates asked for, so a score is a
            # function of (user, item) alone.
            all_vec, all_bias, all_logpop = self._vocab_side()
            full = users @ all_vec.T + all_bias                             # (U, I_vocab)
            mu, sd = full.mean(1, keepdim=True), full.std(1, keepdim=True).clamp(min=1e-6)
            pmu, psd = all_logpop.mean(), all_logpop.std().clamp(min=1e-6)
            out = (raw - mu) / sd + pop_weight * (logpop - pmu) / psd
        return out.double().numpy()

    def recommend(self, user_ids: Sequence[str], k: int, *, candidates: Sequence[str] | None = None,
                  exclude: Mapping[str, set[str]] | None = None) -> list[list[str]]:
        """Top-k item ids per user, best first; `exclude` removes items per user (e.g. already seen)."""
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


# ----- training ---------------------------------------------------------------------------------------------

def _decay(ages_s: np.ndarray, half_life_days: float) -> np.ndarray:
    """0.5 ** (age / half-life); ages below zero (clock skew) count as fresh."""
    return np.power(0.5, np.maximum(ages_s, 0.0) / (half_life_days * _SECONDS_PER_DAY))


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
    # Later rows win: an item listed twice keeps its last metadata.
    position = {item: j for j, item in enumerate(ids)}
    target = np.empty(len(item_ids), dtype=np.int64)
    for r, item in enumerate(item_ids):
        if item not in position:
            position[item] = len(ids)
            ids.append(item)
        target[r] = position[item]
    merged = np.zeros((len(ids), width), dtype=np.int64)
    merged[: len(mat)] = mat
    merged[target] = new_rows
    return ids, torch.from_numpy(merged)


def _extend_vocab(vocab: list[str], index: dict[str, int], values: np.ndarray) -> None:
    for v in pd.unique(values):
        if v not in index:
            index[v] = len(vocab)
            vocab.append(v)


def _sample_replay(replay: pd.DataFrame, n: int, t_ref: float, half_life_days: float,
                   rng: np.random.Generator) -> pd.DataFrame:
    """`n` rows of earlier history, drawn without replacement with probability proportional to their
    time-decayed weight, so the replay favors recent history but still reaches back."""
    if n <= 0 or replay is None or len(replay) == 0:
        return replay.iloc[:0] if replay is not None else pd.DataFrame(columns=["user_id", "item_id", "timestamp"])
    if n >= len(replay):
        return replay
    p = _decay(t_ref - replay["timestamp"].to_numpy(dtype=float), half_life_days) + 1e-12
    pick = rng.choice(len(replay), size=n, replace=False, p=p / p.sum())
    return replay.iloc[np.sort(pick)]


def train(interactions: pd.DataFrame, *, cfg: TrainConfig, init_from: Checkpoint | None = None,
          anchor: Checkpoint | None = None, replay: pd.DataFrame | None = None,
          items: pd.DataFrame | None = None, progress: Callable[[str], None] | None = None) -> TrainResult:
    """Full retrain (`init_from=None`) or fine-tune (`init_from=checkpoint`); see the module docstring.

    interactions: user_id (str), item_id (str), timestamp (float, unix s), optional weight (float).
    anchor: L2-SP target (the last full retrain); rows it lacks are not pulled anywhere.
    replay: earlier history; a fine-tune mixes in `replay_fraction * len(interactions)` rows of it.
    items: item metadata (item_id, categories "a|b") for content features and cold start.
    """
    cpu0, wall0 = time.process_time(), time.perf_counter()
    say = progress or (lambda _msg: None)
    finetune = init_from is not None
    epochs = (cfg.finetune_epochs if finetune and cfg.finetune_epochs is not None else cfg.epochs)
    lr = (cfg.finetune_lr if finetune and cfg.finetune_lr is not None else cfg.lr)
    if len(interactions) == 0 and init_from is None:
        raise ValueError("a full retrain needs at least one interaction")

    new = interactions.reset_index(drop=True)
    t_new = new["timestamp"].to_numpy(dtype=float)
    t_ref = float(t_new.max()) if len(new) else init_from.trained_until
    # One seed stream per call, varied by the data size so consecutive fine-tunes draw different negatives.
    seed = (cfg.seed * 1_000_003 + len(new)) % (2**31)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    # Replay rows (fine-tune only) carry weight 1: they are already a decay-weighted sample.
    if finetune and replay is not None and cfg.replay_fraction > 0:
        replayed = _sample_replay(replay, int(round(cfg.replay_fraction * len(new))), t_ref,
                                  cfg.half_life_days, rng)
    else:
        replayed = new.iloc[:0]

    # ----- vocabularies: previous ones, then new ids appended in order of first appearance -----
    user_ids = list(init_from._user_ids) if finetune else []
    item_ids = list(init_from._item_ids) if finetune else []
    categories = list(init_from.categories) if finetune else []
    uidx = {u: j for j, u in enumerate(user_ids)}
    iidx = {i: j for j, i in enumerate(item_ids)}
    for frame in (new, replayed):
        _extend_vocab(user_ids, uidx, frame["user_id"].astype(str).to_numpy())
        _extend_vocab(item_ids, iidx, frame["item_id"].astype(str).to_numpy())
    if items is not None and "categories" in items.columns:
        known = set(categories)
        for joined in items["categories"].fillna("").astype(str):
            for c in joined.split("|")[: cfg.max_categories]:
                if c and c not in known:
                    known.add(c)
                    categories.append(c)
    width = init_from.catalog_categories.shape[1] if finetune else cfg.max_categories
    catalog_ids, catalog_cats = _merge_catalog(init_from, items, categories, width)

    # ----- parameters: previous rows kept, new rows random (users, items) or neutral (biases) -----
    dim = int(init_from.weights["user"].shape[1]) if finetune else cfg.dim
    n_u, n_i, n_c = len(user_ids), len(item_ids), len(categories) + 1

    def rand(rows: int) -> torch.Tensor:
        return torch.randn(rows, dim, generator=gen) * cfg.init_std

    if finetune:
        old = init_from.weights
        # A new item starts at the median bias: neither buried nor promoted before it has evidence.
        bias_fill = old["item_bias"].median() if old["item_bias"].numel() else torch.tensor(0.0)
        weights = {
            "user": _grow(old["user"], n_u, rand(n_u - old["user"].shape[0])),
            "item": _grow(old["item"], n_i, rand(n_i - old["item"].shape[0])),
            "item_bias": _grow(old["item_bias"], n_i, bias_fill.expand(max(0, n_i - old["item_bias"].shape[0]))),
            "category": _grow(old["category"], n_c, rand(n_c - old["category"].shape[0])),
            "category_bias": _grow(old["category_bias"], n_c),
        }
    else:
        weights = {"user": rand(n_u), "item": rand(n_i), "item_bias": torch.zeros(n_i),
                   "category": rand(n_c), "category_bias": torch.zeros(n_c)}
    with torch.no_grad():
        weights["category"][0] = 0.0  # padding row
    draft = Checkpoint(config=asdict(cfg), user_ids=user_ids, item_ids=item_ids, categories=categories,
                       catalog_ids=catalog_ids, catalog_categories=catalog_cats, weights=weights,
                       optimizer=None, popularity=torch.zeros(n_i), trained_until=t_ref)
    net = _build_net(draft)
    params = [getattr(net, name) for name in _PARAM_NAMES]
    optimizer = torch.optim.Adam(params, lr=lr)
    if finetune and init_from.optimizer is not None:
        optimizer.load_state_dict(_grown_optimizer_state(init_from.optimizer, params))
        for group in optimizer.param_groups:
            group["lr"] = lr  # the saved state carries the previous run's lr

    # ----- anchor rows (L2-SP): map the anchor's ids onto this vocabulary -----
    # Item biases are not anchored: they carry "what is popular now", which must follow the stream; pinning
    # them to the anchor's moment is what makes a stale model stale.
    anchor_terms: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    if anchor is not None and cfg.anchor_l2 > 0:
        for name, own, theirs in (("user", uidx, anchor._user_ids), ("item", iidx, anchor._item_ids)):
            pairs = [(own[x], j) for j, x in enumerate(theirs) if x in own]
            if pairs:
                mine, src = map(torch.tensor, zip(*pairs))
                anchor_terms.append((getattr(net, name), mine, anchor.weights[name][src].clone()))
        shared = min(n_c, anchor.weights["category"].shape[0])
        for name in ("category",):
            rows = torch.arange(shared)
            anchor_terms.append((getattr(net, name), rows, anchor.weights[name][:shared].clone()))

    # ----- examples: indices and decayed, mean-1 weights -----
    train_frame = pd.concat([new[["user_id", "item_id", "timestamp"] + (["weight"] if "weight" in new else [])],
                             replayed[["user_id", "item_id", "timestamp"]]], ignore_index=True)
    u_all = torch.tensor([uidx[u] for u in train_frame["user_id"].astype(str)], dtype=torch.long)
    i_all = torch.tensor([iidx[i] for i in train_frame["item_id"].astype(str)], dtype=torch.long)
    w_np = np.ones(len(train_frame))
    w_np[: len(new)] = _decay(t_ref - t_new, cfg.half_life_days)
    if "weight" in new.columns:
        w_np[: len(new)] *= new["weight"].to_numpy(dtype=float)
    if len(w_np) and np.isfinite(w_np).all() and w_np.mean() > 0:
        w_np = w_np / w_np.mean()
    w_all = torch.tensor(w_np, dtype=torch.float32)
    n_ex = len(train_frame)

    finite = True
    losses: list[float] = []
    for epoch in range(epochs if n_ex else 0):
        order = torch.randperm(n_ex, generator=gen)
        total, count = 0.0, 0
        for start in range(0, n_ex, cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            u, i, w = u_all[b], i_all[b], w_all[b]                          # (B,)
            neg = torch.randint(0, n_i, (cfg.negatives,), generator=gen)    # (S,)
            p = net.user[u]                                                 # (B, D)
            content = net.all_content()                                     # (I, D), (I,)
            q_pos, b_pos = net.items(i, content)                            # (B, D), (B,)
            q_neg, b_neg = net.items(neg, content)                          # (S, D), (S,)
            pos = (p * q_pos).sum(1) + b_pos                                # (B,)
            negl = p @ q_neg.T + b_neg                                      # (B, S)
            negl = negl.masked_fill(neg.unsqueeze(0) == i.unsqueeze(1), float("-inf"))  # accidental hits
            logits = torch.cat([pos.unsqueeze(1), negl], 1)                 # (B, 1+S)
            ce = torch.logsumexp(logits, 1) - pos                           # (B,)
            loss = (w * ce).mean()
            reg = cfg.l2 * (p.pow(2).sum() + net.item[i].pow(2).sum()) / len(b)
            for param, mine, target in anchor_terms:
                reg = reg + cfg.anchor_l2 * (param[mine] - target).pow(2).sum()
            objective = loss + reg
            if not torch.isfinite(objective):
                finite = False
                break
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            net.category.grad[0] = 0.0  # padding stays zero
            net.category_bias.grad[0] = 0.0
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            total += loss.item() * len(b)
            count += len(b)
        if not finite:
            say(f"epoch {epoch + 1}/{epochs}: non-finite loss, candidate rejected")
            break
        losses.append(total / max(count, 1))
        say(f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.4f} ({n_ex} examples)")

    # ----- popularity prior: decay the old counts to t_ref, add the new events (not the replay) -----
    pop = torch.zeros(n_i, dtype=torch.float64)
    if finetune:
        old_t = init_from.trained_until
        pop[: init_from.popularity.shape[0]] = init_from.popularity.double() * float(
            _decay(np.array([t_ref - old_t]), cfg.pop_half_life_days)[0])
        t_ref = max(t_ref, old_t)
    if len(new):
        ev = torch.tensor(_decay(t_ref - t_new, cfg.pop_half_life_days), dtype=torch.float64)
        pop.index_add_(0, i_all[: len(new)], ev)

    weights_out = {name: getattr(net, name).detach().clone() for name in _PARAM_NAMES}
    checkpoint = Checkpoint(
        config=asdict(dataclasses.replace(cfg, dim=dim, max_categories=width)), user_ids=user_ids,
        item_ids=item_ids, categories=categories, catalog_ids=catalog_ids, catalog_categories=catalog_cats,
        weights=weights_out,
        optimizer=copy.deepcopy(optimizer.state_dict()), popularity=pop.float(), trained_until=t_ref,
        lineage={"mode": "finetune" if finetune else "retrain", "examples": n_ex, "new_examples": len(new)})
    finite = finite and checkpoint.weights_finite() and all(math.isfinite(x) for x in losses)
    return TrainResult(checkpoint=checkpoint, finite=finite, losses=losses,
                       train_cpu_s=time.process_time() - cpu0, examples=n_ex,
                       wall_s=time.perf_counter() - wall0)


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
