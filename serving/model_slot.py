"""The model serving answers with, and the hot-swap that replaces it when the production alias moves.

A `ServedModel` is a production version loaded, verified and warmed: its checksums match the sums recorded at
promotion, every weight is finite, and each known user's best `candidates_per_user` items are ranked up front
(items the model saw them use already removed), so a request only filters out what the online store says they
used since and cuts the list at k.

`ModelSlot` holds one reference to the current `ServedModel`. A watcher thread reads the alias
(registry/production.json) every `watch_interval_s`; when it names another version (a promotion or a rollback),
the thread loads that version beside the current one, verifies and warms it, then replaces the reference in one
assignment. Requests take the reference once at their start, so an in-flight request finishes on the model it
started with, and at most two models are resident (the current one and the one being loaded). A version that fails
to load or verify is refused: the slot keeps the current model, counts the failure and reports it, and does not
try that alias again until the alias changes. Each swap is appended to `<home>/serving/swaps.jsonl` with the time
the version became servable: the freshness figures (event landed -> served by a model trained on it) read it.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tidal.config import ServingParams
from tidal.registry import MODEL_FILE, ModelVersion, Registry, parse_utc, verify_version_dir


WARM_BATCH_USERS = 512  # users scored per matrix product while warming: bounds the memory of one product


@dataclass
class ServedModel:
    """One verified, warmed version: the checkpoint and each known user's ranked candidates."""

    version: str
    metadata: dict[str, Any]
    checkpoint: Any                       # models.recommender.Checkpoint
    item_ids: list[str]                   # checkpoint.item_ids, once (it copies)
    candidates: dict[str, tuple[np.ndarray, np.ndarray]]  # user -> (item indices, scores), best first
    seen: dict[str, frozenset[str]]       # user -> items the model saw them use (never recommended to them)
    popular: list[tuple[str, float]]      # the model's own ranking for a user with no history at all
    servable_at: float                    # epoch seconds when it was ready to answer
    load_s: float

    @property
    def newest_event_s(self) -> float | None:
        newest = self.metadata.get("newest_event_time")
        return parse_utc(newest).timestamp() if newest else None


class LoadRefused(RuntimeError):
    """A version that must not serve: files that do not match their sums, non-finite weights, or no checkpoint."""


def model_history(checkpoint) -> dict[str, frozenset[str]]:
    """user -> the items the checkpoint saw them use (its item-item term's rows: every user it learned from)."""
    ease = checkpoint.ease
    indptr, indices = ease.indptr.numpy(), ease.indices.numpy()
    items = np.asarray(ease.item_ids, dtype=object)
    return {user: frozenset(items[indices[indptr[row]:indptr[row + 1]]]) for row, user in enumerate(ease.user_ids)}


def rank_known_users(checkpoint, seen: dict[str, frozenset[str]], per_user: int
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each known user's best `per_user` items (indices into checkpoint.item_ids, scores), seen items removed."""
    items = checkpoint.item_ids
    index = {item: j for j, item in enumerate(items)}
    users = checkpoint.user_ids
    keep = min(per_user, len(items))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(users), WARM_BATCH_USERS):
        batch = users[start:start + WARM_BATCH_USERS]
        scores = checkpoint.score(batch, items)                              # (U, I) float64
        for row, user in enumerate(batch):
            used = [index[i] for i in seen.get(user, ()) if i in index]
            scores[row, used] = -np.inf
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep] if keep < len(items) else \
            np.tile(np.arange(len(items)), (len(batch), 1))
        for row, user in enumerate(batch):
            order = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
            order = order[np.isfinite(scores[row, order])]
            out[user] = (order.astype(np.int32), scores[row, order].astype(np.float32))
    return out


def load_version(version: ModelVersion, params: ServingParams) -> ServedModel:
    """Verify, load and warm one registry version, or raise LoadRefused with the reason."""
    from models.recommender import Checkpoint

    started = time.monotonic()
    path = version.model_path
    if not path.is_file():
        raise LoadRefused(f"{version.version}: no {MODEL_FILE} in {version.path}")
    try:
        verify_version_dir(version.path, version.metadata)
        checkpoint = Checkpoint.load(path)  # torch.load(weights_only=True) inside
    except Exception as error:  # a corrupt file fails in many ways (unpickling, zip, shapes): all are refusals
        raise LoadRefused(f"{version.version}: {type(error).__name__}: {error}") from error
    if not checkpoint.weights_finite():
        raise LoadRefused(f"{version.version}: non-finite weights")
    seen = model_history(checkpoint)
    candidates = rank_known_users(checkpoint, seen, params.candidates_per_user)
    popular = checkpoint.recommend_from_items([], params.max_k)
    return ServedModel(version.version, version.metadata, checkpoint, checkpoint.item_ids, candidates, seen, popular,
                       servable_at=time.time(), load_s=time.monotonic() - started)


@dataclass
class SlotCounters:
    swaps: int = 0
    failed_loads: int = 0
    last_refused: dict[str, Any] | None = None
    last_error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


class ModelSlot:
    """The current model and the watcher that swaps it; see the module docstring."""

    def __init__(self, registry_root: Path, params: ServingParams, swaps_log: Path | None = None):
        self.registry = Registry(registry_root)
        self.params = params
        self.swaps_log = swaps_log
        self.current: ServedModel | None = None
        self.counters = SlotCounters()
        self._seen_alias: str | None = None   # the alias content last acted on (loaded or refused)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- the watcher ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Watch in the background; the first check runs at once (until it loads a model, /readyz says 503)."""
        self._thread = threading.Thread(target=self._watch, name="tidal-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        while True:
            try:
                self.check_alias()
            except Exception as error:  # the watcher must outlive any one bad read; it reports and goes on
                self.counters.last_error = f"{type(error).__name__}: {error}"
            if self._stop.wait(self.params.watch_interval_s):
                return

    def alias_state(self) -> str | None:
        """The alias file's content (version and since), None when nothing is in production yet."""
        try:
            return self.registry.alias_path.read_text()
        except FileNotFoundError:
            return None

    def check_alias(self) -> None:
        """Load and swap in the version the alias names, if it is not the one serving and was not refused."""
        state = self.alias_state()
        if state is None or state == self._seen_alias:
            return
        self._seen_alias = state
        version_id = json.loads(state)["version"]
        if self.current is not None and self.current.version == version_id:
            return
        try:
            candidate = load_version(self.registry.version(version_id), self.params)
        except Exception as error:  # whatever failed (verify, load, warm-up), the version is refused and counted
            self.counters.failed_loads += 1
            self.counters.last_refused = {"version": version_id, "reason": str(error), "at": utc_iso(time.time()),
                                          "serving": self.current.version if self.current else None}
            print(f"[serve] refused {version_id}: {error}; still serving "
                  f"{self.current.version if self.current else 'nothing'}", flush=True)
            return
        previous = self.current
        # Counted and logged before it becomes visible: whoever sees the new version on /readyz or /v1/model
        # already finds its swap-log line and its count.
        self.counters.swaps += previous is not None
        self.record_swap(previous, candidate)
        self.current = candidate  # the swap: one reference assignment
        del previous
        # The model's many long-lived objects would otherwise be traced by every full collection, a pause of
        # milliseconds in the middle of some request: collect once here (unfrozen, so the old model's cycles go
        # too), then freeze what is left out of the collector's way until the next swap.
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def record_swap(self, previous: ServedModel | None, served: ServedModel) -> None:
        entry = {"version": served.version, "previous": previous.version if previous else None,
                 "kind": served.metadata.get("kind"), "promoted_at": served.metadata.get("promoted_at"),
                 "newest_event_time": served.metadata.get("newest_event_time"),
                 "servable_at": utc_iso(served.servable_at), "load_s": round(served.load_s, 3)}
        self.counters.history = (self.counters.history + [entry])[-50:]
        print(f"[serve] serving {served.version} (was {entry['previous']}), loaded in {entry['load_s']} s", flush=True)
        if self.swaps_log is None:
            return
        try:
            self.swaps_log.parent.mkdir(parents=True, exist_ok=True)
            # One line per write with O_APPEND: a reader never sees half an entry.
            with open(self.swaps_log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            # The log is a record of swaps, not a gate on them: a full or read-only disk must not keep a verified
            # model out of service. The failure is reported on /v1/model (last_error) and in the server's output.
            self.counters.last_error = f"swap log {self.swaps_log} not written: {type(error).__name__}: {error}"
            print(f"[serve] {self.counters.last_error}", flush=True)


def utc_iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds")
