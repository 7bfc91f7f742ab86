"""The online feature store: feature groups per entity in a Redis-protocol server (the stack's Valkey, or any Redis).

Layout (after Feast's Redis online store): one hash per entity key, `<namespace>:<entity>:<id>` (e.g.
`tidal:user:u42`, `tidal:item:i7`). A feature group is a set of fields in that hash, `<group>:<feature>`, each
value JSON; the group carries its event time in the field `_ts:<group>` (epoch seconds). One hash holds every group
of its entity, so a read of all of a user's features is one HGETALL.

Writes are HSETs of whole groups computed from state, never increments, so writing the same rows twice leaves the
same keys (a replayed micro-batch is idempotent); they are sent pipelined, `chunk` keys per round trip. Reads
enforce a TTL: a group whose event time is more than `ttl_s` before `now_s` reads as expired (no values), and every
group reports its age. A server that cannot be reached raises `OnlineStoreUnavailable` with the URL (never its
password) and the cause; callers decide what that means for them (the features job keeps its offline output).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from tidal.config import OnlineStoreSettings


TS_PREFIX = "_ts:"
CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 10.0


class OnlineStoreUnavailable(RuntimeError):
    """The online store could not be reached or refused us; the message names the URL and the cause."""


@dataclass(frozen=True)
class GroupRow:
    """One feature group of one entity, as written: values by feature name and the group's event time."""

    entity: str             # "user", "item"
    entity_id: str
    group: str              # e.g. "recent", "popularity"
    values: dict[str, Any]  # feature name -> a JSON-serializable value
    event_time_s: float     # the time the values describe (epoch seconds)


@dataclass(frozen=True)
class GroupRead:
    """One feature group as read: `values` is None when the group is missing or older than the TTL."""

    values: dict[str, Any] | None
    event_time_s: float | None
    age_s: float | None     # now_s - event_time_s; None when the group was never written
    expired: bool


def entity_key(namespace: str, entity: str, entity_id: str) -> str:
    return f"{namespace}:{entity}:{entity_id}"


def connect(settings: OnlineStoreSettings, timeout_s: float | None = None):
    """A client for the configured store (checked with a PING), or OnlineStoreUnavailable. `timeout_s` bounds
    both connecting and every reply (serving answers within milliseconds, so it gives a short one)."""
    import redis

    if not settings.url:
        raise OnlineStoreUnavailable("no online store configured: set TIDAL_REDIS_URL")
    client = redis.Redis.from_url(settings.url, socket_connect_timeout=timeout_s or CONNECT_TIMEOUT_S,
                                  socket_timeout=timeout_s or SOCKET_TIMEOUT_S, decode_responses=True)
    with unavailable_as(settings):
        client.ping()
    return client


class unavailable_as:
    """Context manager: the client's connection, timeout and auth errors become OnlineStoreUnavailable."""

    def __init__(self, settings: OnlineStoreSettings):
        self.settings = settings

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        import redis

        if error is not None and isinstance(error, (redis.ConnectionError, redis.TimeoutError,
                                                    redis.AuthenticationError, redis.ResponseError, OSError)):
            raise OnlineStoreUnavailable(f"online store at {self.settings.display_url}: "
                                         f"{type(error).__name__}: {error}") from error
        return False


def encode_group(row: GroupRow) -> dict[str, str]:
    """The hash fields of one group: `<group>:<feature>` -> JSON, and `_ts:<group>` -> the event time."""
    if not math.isfinite(row.event_time_s):
        raise ValueError(f"{row.entity} {row.entity_id!r} group {row.group}: event time {row.event_time_s} is not finite")
    fields = {f"{row.group}:{name}": json.dumps(value, separators=(",", ":")) for name, value in row.values.items()}
    fields[TS_PREFIX + row.group] = repr(float(row.event_time_s))
    return fields


def write_groups(client, settings: OnlineStoreSettings, rows: Iterable[GroupRow], chunk: int = 1000) -> int:
    """HSET every row's group into its entity's hash, pipelined `chunk` rows per round trip; returns rows written."""
    written = 0
    with unavailable_as(settings):
        for batch in chunked(rows, chunk):
            pipe = client.pipeline(transaction=False)
            for row in batch:
                pipe.hset(entity_key(settings.namespace, row.entity, row.entity_id), mapping=encode_group(row))
            pipe.execute()
            written += len(batch)
    return written


def chunked(rows: Iterable[GroupRow], size: int) -> Iterator[list[GroupRow]]:
    batch: list[GroupRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def decode_groups(fields: dict[str, str], ttl_s: float, now_s: float) -> dict[str, GroupRead]:
    """A hash as HGETALL returns it -> every group in it, with its age and the TTL applied."""
    values: dict[str, dict[str, Any]] = {}
    for field, raw in fields.items():
        if not field.startswith(TS_PREFIX):
            group, _, name = field.partition(":")
            values.setdefault(group, {})[name] = json.loads(raw)
    out = {}
    for field, raw in fields.items():
        if field.startswith(TS_PREFIX):
            group, event_time = field[len(TS_PREFIX):], float(raw)
            age = now_s - event_time
            expired = age > ttl_s
            out[group] = GroupRead(None if expired else values.get(group, {}), event_time, age, expired)
    return out


def read_entity(client, settings: OnlineStoreSettings, entity: str, entity_id: str, groups: Iterable[str],
                ttl_s: float, now_s: float) -> dict[str, GroupRead]:
    """The named groups of one entity; a group never written reads as GroupRead(None, None, None, False)."""
    with unavailable_as(settings):
        fields = client.hgetall(entity_key(settings.namespace, entity, entity_id))
    found = decode_groups(fields, ttl_s, now_s)
    return {group: found.get(group, GroupRead(None, None, None, False)) for group in groups}


def read_entities(client, settings: OnlineStoreSettings, entity: str, entity_ids: list[str], groups: Iterable[str],
                  ttl_s: float, now_s: float) -> dict[str, dict[str, GroupRead]]:
    """Many entities in one pipelined round trip: entity id -> its groups, as `read_entity` gives them."""
    groups = list(groups)
    with unavailable_as(settings):
        pipe = client.pipeline(transaction=False)
        for entity_id in entity_ids:
            pipe.hgetall(entity_key(settings.namespace, entity, entity_id))
        replies = pipe.execute()
    out = {}
    for entity_id, fields in zip(entity_ids, replies):
        found = decode_groups(fields, ttl_s, now_s)
        out[entity_id] = {g: found.get(g, GroupRead(None, None, None, False)) for g in groups}
    return out


def dump_namespace(client, settings: OnlineStoreSettings) -> dict[str, dict[str, str]]:
    """Every hash under the namespace, key -> fields: what a test or an operator compares between two stores."""
    with unavailable_as(settings):
        keys = sorted(client.scan_iter(match=f"{settings.namespace}:*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return dict(zip(keys, pipe.execute()))
