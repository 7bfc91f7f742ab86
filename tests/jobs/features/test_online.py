"""jobs/features/online.py: the real features job writing a real Valkey. Values against an independent pandas
computation of the same rules; outliers and quarantined records absent; the store down for a batch (the offline
output complete, the next batch resyncs in full) and `--sync-online` after the store lost its keys."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pandas as pd
import pytest

from tidal.online_store import connect, dump_namespace, read_entity


NOW = datetime(2026, 11, 2, tzinfo=timezone.utc).timestamp()
CAP = 3
WINDOWS, BUCKET = (3600, 86400), 300
USERS, EVENTS_PER_FILE = 20, 60


def events_of_file(f: int) -> list[dict]:
    """Ordinary users (3 events each, some items repeated), plus in file 0 a bot hammering one item. Twenty users,
    so the bot stands out: its robust z is about 16 (the threshold is 6; with 7 users it would be 5.95)."""
    out = [{"event_id": f"f{f}-e{j}", "user_id": f"u{(j * 3 + f) % USERS}", "item_id": f"i{(j + f) % 6}",
            "event_type": ("view", "click", "purchase")[j % 3], "event_time": f"2026-11-01T{f:02d}:{(j * 7) % 60:02d}:{j:02d}Z"}
           for j in range(EVENTS_PER_FILE)]
    if f == 0:
        out += [{"event_id": f"bot-{j}", "user_id": "bot", "item_id": "botitem", "event_type": "view",
                 "event_time": f"2026-11-01T00:{j % 60:02d}:00Z"} for j in range(200)]
    return out


def landing_lines(f: int) -> list[str]:
    quarantined = [json.dumps({"event_id": f"q{f}", "user_id": "qu", "item_id": "qi", "event_type": "teleport",
                               "event_time": "2026-11-01T00:00:00Z"}), '{"event_id": "broken", ']
    return [json.dumps(e) for e in events_of_file(f)] + quarantined


def expected_dump(files: list[int], namespace: str) -> dict[str, dict[str, str]]:
    """What the store must hold after these files: the job's rules, recomputed here without Spark."""
    every = pd.DataFrame([e for f in files for e in events_of_file(f)])
    every["t"] = pd.to_datetime(every["event_time"]).map(lambda ts: ts.timestamp())
    clock = every["t"].max()  # the stream's clock: the newest accepted event, outliers included
    kept = every[(every["user_id"] != "bot") & (every["item_id"] != "botitem")]
    out = {}
    for user, rows in kept.groupby("user_id"):
        latest = rows.groupby("item_id")["t"].max().reset_index().sort_values(["t", "item_id"], ascending=[False, True])
        last = float(latest["t"].iloc[0])
        out[f"{namespace}:user:{user}"] = {"recent:items": json.dumps(latest["item_id"].tolist()[:CAP], separators=(",", ":")),
                                           "recent:last_event_s": repr(last), "_ts:recent": repr(last)}
    newest = math.floor(clock / BUCKET)
    bucket = (kept["t"] // BUCKET).astype(int)
    for item in sorted(kept["item_id"].unique()):
        fields = {f"popularity:item_events_last_{w}s": str(int(((kept["item_id"] == item) & (bucket <= newest)
                                                              & (bucket > newest - w // BUCKET)).sum()))
                  for w in WINDOWS}
        out[f"{namespace}:item:{item}"] = {**fields, "_ts:popularity": repr(float(clock))}
    # Popular now: most events in the shortest window, ties by the longest, then id; items with none left out.
    counts = {item: tuple(json.loads(out[f"{namespace}:item:{item}"][f"popularity:item_events_last_{w}s"])
                          for w in WINDOWS) for item in kept["item_id"].unique()}
    ranked = sorted((item for item in counts if counts[item][-1] > 0), key=lambda i: ([-c for c in counts[i]], i))
    out[f"{namespace}:global:now"] = {"popular:items": json.dumps(ranked, separators=(",", ":")),
                                      "_ts:popular": repr(float(clock))}
    return out


@pytest.fixture(scope="module")
def online_runs(spark, tmp_path_factory):
    """One home and one Valkey: files 0-1 with the store up, file 2 with it down, file 3 after it is back."""
    from jobs.features.stream import run_features
    from tests.conftest import ValkeyServer, private_home

    tmp = tmp_path_factory.mktemp("online")
    server = ValkeyServer(tmp / "valkey")
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIDAL_REDIS_URL", server.url)
        mp.setenv("TIDAL_REDIS_NAMESPACE", "feat")
        overrides = {"features": {"max_files_per_trigger": 1, "online_recent_items": CAP,
                                  "popularity_windows_s": list(WINDOWS), "popularity_bucket_s": BUCKET}}
        with private_home(tmp, overrides) as settings:
            landing = settings.home / "landing" / "events"
            landing.mkdir(parents=True)

            def land_and_run(f: int):
                (landing / f"events-{f:06d}.jsonl").write_text("\n".join(landing_lines(f)) + "\n")
                return run_features(settings, now_epoch_s=NOW)

            runs = {}
            (landing / "events-000000.jsonl").write_text("\n".join(landing_lines(0)) + "\n")
            (landing / "events-000001.jsonl").write_text("\n".join(landing_lines(1)) + "\n")
            runs["up"] = run_features(settings, now_epoch_s=NOW)
            runs["dump_up"] = dump_namespace(connect(settings.online_store), settings.online_store)
            server.stop()
            runs["down"] = land_and_run(2)
            server.start()
            runs["back"] = land_and_run(3)
            runs["dump_back"] = dump_namespace(connect(settings.online_store), settings.online_store)
            yield {**runs, "settings": settings, "server": server}
    server.stop()


def test_store_holds_each_users_recent_items_and_each_items_window_popularity(online_runs):
    assert online_runs["up"]["batch_ids"] == [0, 1]
    assert online_runs["up"]["online_store"]["batches_written"] == 2
    assert online_runs["dump_up"] == expected_dump([0, 1], "feat")


def test_outliers_and_quarantined_records_never_reach_the_store(online_runs):
    assert online_runs["up"]["outlier_users"] == ["bot"]
    assert online_runs["up"]["quarantine_reasons"] == {"malformed_json": 2, "unknown_event_type": 2}
    keys = set(online_runs["dump_back"])
    assert not {k for k in keys if k.split(":", 2)[2] in ("bot", "botitem", "qu", "qi")}


def test_store_down_keeps_the_offline_output_and_the_next_batch_resyncs_in_full(online_runs):
    from tidal.manifests import read_batch_manifests
    from tidal.storage import StorageLayout

    down = online_runs["down"]
    assert down["batch_ids"] == [2] and down["online_store"]["batches_unreachable"] == [2]
    assert down["accepted"] == EVENTS_PER_FILE  # bronze and examples got the batch whatever the store did
    layout = StorageLayout(online_runs["settings"].home)
    manifests = {m["batch_id"]: m for m in read_batch_manifests(layout, [2, 3])}
    assert manifests[2]["online_store"]["status"] == "unreachable"
    assert online_runs["server"].password not in manifests[2]["online_store"]["error"]
    assert len(pd.read_parquet(layout.examples_batch(2))) == EVENTS_PER_FILE
    assert manifests[3]["online_store"]["mode"] == "full"
    # Users seen only while the store was down are there too: the store equals the state after all four files.
    assert online_runs["dump_back"] == expected_dump([0, 1, 2, 3], "feat")


def test_sync_online_rewrites_a_store_that_lost_its_keys(online_runs):
    from jobs.features.stream import sync_online_store

    settings = online_runs["settings"]
    client = connect(settings.online_store)
    client.flushdb()
    result = sync_online_store(settings)
    assert result["status"] == "written" and result["batch_id"] == 3 and result["mode"] == "full"
    assert dump_namespace(client, settings.online_store) == expected_dump([0, 1, 2, 3], "feat")
    read = read_entity(client, settings.online_store, "user", "u0", ["recent"], ttl_s=3600, now_s=NOW)["recent"]
    assert read.expired and read.values is None and read.age_s > 3600  # the TTL counts from the event time
