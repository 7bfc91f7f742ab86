"""What serving reads from the online feature store, and how it keeps answering when the store is down.

Per request: the user's `recent` group (their recent items, newest first, and its age), one HGETALL. Every
`popular_refresh_s`: the popular-now ranking (`global:now`, written by the features job). Replies are bounded by a
short timeout. When the store fails, serving answers from the model alone and says so (`degraded`), and does not
ask the store again for `store_retry_s`, so an outage costs one slow request per interval, not one per request;
the first read that succeeds ends the degraded state.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tidal.config import OnlineStoreSettings, ServingParams
from tidal.online_store import GroupRead, OnlineStoreUnavailable, connect, read_entity

READ_TIMEOUT_S = 0.25
RECENT_GROUP, POPULAR_GROUP = "recent", "popular"
POPULAR_ENTITY, POPULAR_ID = "global", "now"


@dataclass(frozen=True)
class RecentItems:
    items: list[str]              # newest first; empty when the store has none (or is down)
    age_s: float | None           # age of the group (now - the user's last event), None when never written
    expired: bool


class OnlineFeatures:
    """The online store as serving sees it: reads that never raise, and an error count for /metrics."""

    def __init__(self, store: OnlineStoreSettings, features_ttl_s: float, params: ServingParams):
        self.store, self.ttl_s, self.params = store, features_ttl_s, params
        self.errors = 0
        self.degraded_reason: str | None = None if store.url else "no online store configured (TIDAL_REDIS_URL)"
        self._client = None
        self._retry_at = 0.0
        self._popular: tuple[float, list[str], float | None] = (0.0, [], None)  # (read at, items, event time)
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.store.url)

    def _fail(self, error: Exception) -> None:
        self.errors += 1
        self.degraded_reason = f"online store unreachable ({error}); answering from the model alone"
        self._client = None
        self._retry_at = time.monotonic() + self.params.store_retry_s

    def _read(self, entity: str, entity_id: str, group: str) -> GroupRead | None:
        """One group, or None while the store is down or in its retry pause."""
        if not self.configured or time.monotonic() < self._retry_at:
            return None
        try:
            if self._client is None:
                self._client = connect(self.store, timeout_s=READ_TIMEOUT_S)
            read = read_entity(self._client, self.store, entity, entity_id, [group], self.ttl_s, time.time())[group]
        except OnlineStoreUnavailable as error:
            self._fail(error)
            return None
        self.degraded_reason = None
        return read

    def recent_items(self, user_id: str) -> RecentItems:
        read = self._read("user", user_id, RECENT_GROUP)
        if read is None or read.values is None:
            return RecentItems([], read.age_s if read else None, bool(read and read.expired))
        return RecentItems([str(i) for i in read.values.get("items", [])], read.age_s, False)

    def popular_now(self) -> tuple[list[str], float | None]:
        """The popular-now ranking and its age, reread at most every `popular_refresh_s` (empty when unknown)."""
        read_at, items, event_time = self._popular
        if time.monotonic() - read_at >= self.params.popular_refresh_s:
            with self._lock:
                read = self._read(POPULAR_ENTITY, POPULAR_ID, POPULAR_GROUP)
                if read is not None:  # while the store is down the last ranking read stays (its age says how old)
                    items = [str(i) for i in read.values.get("items", [])] if read.values is not None else []
                    event_time = read.event_time_s
                self._popular = (time.monotonic(), items, event_time)
        return items, (time.time() - event_time) if event_time is not None else None
