"""features -> the online store: each micro-batch's online state, projected from the offline state it just wrote.

Two feature groups (layout: tidal/online_store.py):

- user `recent`: `items` (the user's most recent distinct items, newest first, at most
  `features.online_recent_items`) and `last_event_s`; its event time is the user's last event.
- item `popularity`: `item_events_last_<w>s` per window of `features.popularity_windows_s`, the same sliding-window
  counts the training examples carry, evaluated at the stream's clock (the newest accepted event time); its event
  time is that clock.
- global `popular` (entity `global`, id `now`): `items`, the `features.online_popular_items` items with the most
  events in the shortest window (ties by the longer windows, then item id); what serving gives a user with no
  history. Its event time is the clock.

Both are read from the batch's state snapshots (features/state/user_recent, features/state/item_buckets), never
from the stream's rows, so the values are SET from state: a replayed batch writes exactly what its first attempt
wrote, and outliers and quarantined records, which never reach the state, never reach the store. A batch writes the
users it saw and every item still in the bucket state. `features/state/online_store.json` records the last batch
written to which store; when it is missing, behind by more than one batch, or names another store, the batch writes
every user in the snapshot instead (a full resync).

When the store cannot be reached the batch still completes offline (bronze, examples, state, manifest: nothing is
lost), its manifest says `online_store.status: unreachable` with the cause, and the next batch that reaches the
store resyncs it in full; `tidal features --sync-online` does so at once.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator

from jobs.features.state import popularity_column
from tidal.config import Settings
from tidal.online_store import GroupRow, OnlineStoreUnavailable, connect, write_groups
from tidal.registry import utc_now_iso
from tidal.storage import StorageLayout, atomic_write_json, read_json


RECENT = "recent"
POPULARITY = "popularity"
POPULAR_NOW = ("global", "now", "popular")  # entity, id, group


def sync_marker_path(layout: StorageLayout) -> Path:
    return layout.feature_state / "online_store.json"


def store_target(settings: Settings) -> str:
    """Which store a marker refers to: the URL without its password, and the namespace."""
    return f"{settings.online_store.display_url} namespace={settings.online_store.namespace}"


def needs_full_sync(layout: StorageLayout, settings: Settings, batch_id: int) -> bool:
    marker = sync_marker_path(layout)
    if not marker.exists():
        return batch_id > 0
    last = read_json(marker)
    return last.get("target") != store_target(settings) or last.get("batch_id", -1) < batch_id - 1


def recent_rows(snapshot: Path, users: list[str] | None) -> Iterator[GroupRow]:
    """The `recent` group of the given users (None: all) from a user_recent snapshot."""
    import pyarrow.parquet as pq

    if users is not None and not users:
        return
    table = pq.read_table(snapshot, filters=[("user_id", "in", users)] if users is not None else None)
    frame = table.to_pandas().sort_values(["user_id", "event_s", "item_id"], ascending=[True, False, True])
    for user_id, rows in frame.groupby("user_id", sort=True):
        last = float(rows["event_s"].iloc[0])
        yield GroupRow("user", user_id, RECENT, {"items": rows["item_id"].tolist(), "last_event_s": last}, last)


def popularity_rows(buckets: Path, bucket_s: int, windows_s: tuple[int, ...], clock_s: float) -> Iterator[GroupRow]:
    """The `popularity` group of every item in a bucket snapshot, its windows ending at the clock's bucket (the
    rule of jobs.features.state.item_window_popularity: buckets b with B - w/bucket < b <= B)."""
    import pyarrow.parquet as pq

    frame = pq.read_table(buckets).to_pandas()
    newest = math.floor(clock_s / bucket_s)
    counts = {}
    for w in windows_s:
        in_window = frame[(frame["bucket"] <= newest) & (frame["bucket"] > newest - w // bucket_s)]
        counts[w] = in_window.groupby("item_id")["events"].sum()
    for item_id in sorted(frame["item_id"].unique()):
        values = {popularity_column(w): int(counts[w].get(item_id, 0)) for w in windows_s}
        yield GroupRow("item", item_id, POPULARITY, values, clock_s)


def popular_now_row(item_rows: list[GroupRow], windows_s: tuple[int, ...], limit: int, clock_s: float) -> GroupRow:
    """The popular-now ranking from the items' window counts: shortest window first, longer ones break ties."""
    columns = [popularity_column(w) for w in sorted(windows_s)]
    ranked = sorted(item_rows, key=lambda row: ([-row.values[c] for c in columns], row.entity_id))
    items = [row.entity_id for row in ranked if row.values[columns[-1]] > 0][:limit]
    entity, entity_id, group = POPULAR_NOW
    return GroupRow(entity, entity_id, group, {"items": items}, clock_s)


def publish_batch(layout: StorageLayout, settings: Settings, batch_id: int, recent_snapshot: Path,
                  bucket_snapshot: Path | None, clock_s: float | None, batch_users: list[str],
                  full: bool | None = None) -> dict[str, Any]:
    """Write one batch's online state (`full`: every user of the snapshot; None: decided by the marker); the result
    goes into the batch manifest. Never raises for an unreachable store: the offline output of the batch is already
    written and stays the source of truth."""
    if not settings.online_store.url:
        return {"status": "off"}
    started = time.monotonic()
    full = needs_full_sync(layout, settings, batch_id) if full is None else full
    fp = settings.params.features
    try:
        client = connect(settings.online_store)
        users = write_groups(client, settings.online_store, recent_rows(recent_snapshot, None if full else batch_users))
        items = 0
        if bucket_snapshot is not None and clock_s is not None:
            item_rows = list(popularity_rows(bucket_snapshot, fp.popularity_bucket_s, fp.popularity_windows_s, clock_s))
            ranking = popular_now_row(item_rows, fp.popularity_windows_s, fp.online_popular_items, clock_s)
            write_groups(client, settings.online_store, item_rows + [ranking])  # one pipeline for both
            items = len(item_rows)
    except OnlineStoreUnavailable as err:
        print(f"[features] batch {batch_id}: online store not written ({err}); the offline output is complete, and "
              "the next batch that reaches the store resyncs it in full (or run `tidal features --sync-online`)",
              flush=True)
        return {"status": "unreachable", "error": str(err)}
    atomic_write_json(sync_marker_path(layout), {"batch_id": batch_id, "target": store_target(settings)})
    return {"status": "written", "mode": "full" if full else "incremental", "users": users, "items": items,
            "seconds": round(time.monotonic() - started, 3), "written_at": utc_now_iso()}
