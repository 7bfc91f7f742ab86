"""tidal/online_store.py against a real Valkey: the key layout, idempotent pipelined writes, TTL and age on read, a
server stopped and started again, and a malformed TIDAL_REDIS_URL refused before any work."""

from __future__ import annotations

import pytest

from tidal.config import ConfigError, load_settings, online_store_settings
from tidal.online_store import (GroupRow, OnlineStoreUnavailable, connect, dump_namespace, read_entities, read_entity,
                                write_groups)


def rows(n_users: int = 3) -> list[GroupRow]:
    users = [GroupRow("user", f"u{i}", "recent", {"items": [f"i{i}", "i0"], "last_event_s": 1000.0 + i}, 1000.0 + i)
             for i in range(n_users)]
    return users + [GroupRow("item", "i0", "popularity", {"item_events_last_3600s": 7}, 1500.0)]


def test_layout_one_hash_per_entity_each_group_with_its_event_time(valkey_server):
    settings = online_store_settings(valkey_server.url, "t1")
    client = connect(settings)
    assert write_groups(client, settings, rows(), chunk=2) == 4
    dump = dump_namespace(client, settings)
    assert sorted(dump) == ["t1:item:i0", "t1:user:u0", "t1:user:u1", "t1:user:u2"]
    assert dump["t1:user:u1"] == {"recent:items": '["i1","i0"]', "recent:last_event_s": "1001.0",
                                  "_ts:recent": "1001.0"}
    assert dump["t1:item:i0"] == {"popularity:item_events_last_3600s": "7", "_ts:popularity": "1500.0"}
    # A second group in the same hash leaves the first one as it was.
    write_groups(client, settings, [GroupRow("user", "u1", "profile", {"segment": "a"}, 900.0)])
    assert dump_namespace(client, settings)["t1:user:u1"]["recent:items"] == '["i1","i0"]'


def test_writing_the_same_rows_twice_leaves_the_same_keys(valkey_server):
    settings = online_store_settings(valkey_server.url, "t2")
    client = connect(settings)
    write_groups(client, settings, rows())
    first = dump_namespace(client, settings)
    write_groups(client, settings, rows())
    assert dump_namespace(client, settings) == first
    # Values are set, not added: a newer state replaces the old one exactly.
    write_groups(client, settings, [GroupRow("item", "i0", "popularity", {"item_events_last_3600s": 2}, 1600.0)])
    assert dump_namespace(client, settings)["t2:item:i0"] == {"popularity:item_events_last_3600s": "2",
                                                              "_ts:popularity": "1600.0"}


def test_reads_report_age_and_enforce_the_ttl(valkey_server):
    settings = online_store_settings(valkey_server.url, "t3")
    client = connect(settings)
    write_groups(client, settings, rows())
    fresh = read_entity(client, settings, "user", "u2", ["recent", "never"], ttl_s=100, now_s=1052.0)
    assert fresh["recent"].values == {"items": ["i2", "i0"], "last_event_s": 1002.0}
    assert fresh["recent"].age_s == pytest.approx(50.0) and not fresh["recent"].expired
    assert fresh["never"].values is None and fresh["never"].age_s is None
    stale = read_entity(client, settings, "user", "u2", ["recent"], ttl_s=100, now_s=1102.5)["recent"]
    assert stale.expired and stale.values is None and stale.age_s == pytest.approx(100.5)
    many = read_entities(client, settings, "user", ["u0", "u1", "nobody"], ["recent"], ttl_s=1000, now_s=1001.0)
    assert [many[u]["recent"].age_s for u in ("u0", "u1", "nobody")] == [1.0, 0.0, None]


def test_server_stopped_then_started_again(valkey_server):
    settings = online_store_settings(valkey_server.url, "t4")
    client = connect(settings)
    write_groups(client, settings, rows())
    valkey_server.stop()
    with pytest.raises(OnlineStoreUnavailable, match=r"127\.0\.0\.1") as err:
        write_groups(client, settings, rows())
    assert valkey_server.password not in str(err.value)
    with pytest.raises(OnlineStoreUnavailable):
        connect(settings)
    valkey_server.start()
    # Data persisted on disk (append-only file) survives the restart, and the same client reconnects.
    assert read_entity(client, settings, "user", "u0", ["recent"], 1e9, 1000.0)["recent"].values["items"] == ["i0", "i0"]
    write_groups(client, settings, rows(4))
    assert len(dump_namespace(client, settings)) == 5


def test_wrong_password_is_unavailable_not_a_crash(valkey_server):
    settings = online_store_settings(valkey_server.url.replace(valkey_server.password, "wrong"), "t5")
    with pytest.raises(OnlineStoreUnavailable, match="Authentication|WRONGPASS|invalid"):
        connect(settings)


@pytest.mark.parametrize("url, why", [
    ("redis://:secret@127.0.0.1:notaport/0", "Port could not be cast"),
    ("http://127.0.0.1:6379", "scheme 'http'"),
    ("redis://:secret@127.0.0.1:6379/db1", "database 'db1' is not a number"),
    ("redis://", "names no host"),
    ("127.0.0.1:6379", "is not redis"),
    ("redis://:secret@127.0.0.1:70000/0", "out of range"),
])
def test_malformed_url_is_refused_with_a_clear_message(monkeypatch, url, why):
    monkeypatch.setenv("TIDAL_REDIS_URL", url)
    with pytest.raises(ConfigError, match=why) as err:
        load_settings()
    assert "TIDAL_REDIS_URL" in str(err.value) and "redis://[:PASSWORD@]HOST:PORT/DB" in str(err.value)
    assert "secret" not in str(err.value)


def test_namespace_is_checked_and_no_url_means_no_store(monkeypatch):
    monkeypatch.setenv("TIDAL_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("TIDAL_REDIS_NAMESPACE", "a:b")
    with pytest.raises(ConfigError, match="TIDAL_REDIS_NAMESPACE"):
        load_settings()
    monkeypatch.delenv("TIDAL_REDIS_URL")
    monkeypatch.delenv("TIDAL_REDIS_NAMESPACE")
    assert load_settings().online_store.url is None
    assert online_store_settings("redis://:pw@h:1/2").display_url == "redis://:***@h:1/2"
