"""serving/app.py over real HTTP: what each kind of user gets, the bad inputs, no model yet, and the online store
stopped and started again under a running server."""

from __future__ import annotations

import time

import pytest

from tests.serving.conftest import promote, write_online


def group_of(item: str) -> int:
    return int(item[1:]) % 4  # models.synthetic: item j belongs to taste group j % 4


@pytest.fixture
def served(trained, serving_home, start_serving, valkey_server):
    """v000001 (the full retrain) in production, an online store with recent items for two users."""
    version = promote(serving_home, trained.paths[0], "run-0", trained.newest[0], kind="full")
    now = time.time()
    newbie_items = ["i2", "i6", "i10", "i14", "i18", "i22"]  # one taste group (2), newest first
    write_online(valkey_server.url, {"u0": ["i3", "i7"], "newbie": newbie_items}, ["i5", "i9", "i1", "i13"], now)
    server = start_serving(valkey_server.url)
    server.wait_ready(version)
    return server, version, newbie_items


def test_a_known_user_gets_the_models_ranking_without_anything_they_used(served, trained):
    server, version, _ = served
    reply = server.get("/v1/recommendations/u0", k=10)
    assert reply.status_code == 200
    body = reply.json()
    assert body["model_version"] == version and body["source"] == "model" and body["fallback"] is None
    assert body["degraded"] is None and len(body["request_id"]) == 32
    assert reply.headers["x-request-id"] == body["request_id"]
    assert [item["rank"] for item in body["items"]] == list(range(1, 11))
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    history = set(trained.interactions.iloc[:1800].query("user_id == 'u0'")["item_id"])
    recommended = {item["item_id"] for item in body["items"]}
    # Neither what the model saw u0 use nor what the online store saw since (i3, i7).
    assert history and not recommended & history and not recommended & {"i3", "i7"}
    assert body["features"]["recent_items"]["count"] == 2 and 0 <= body["features"]["recent_items"]["age_s"] < 60


def test_a_new_user_with_recent_events_gets_personal_results_from_them(served):
    server, version, newbie_items = served
    body = server.get("/v1/recommendations/newbie", k=10).json()
    assert body["source"] == "recent_items" and body["fallback"] is None and body["model_version"] == version
    items = [item["item_id"] for item in body["items"]]
    assert len(items) == 10 and not set(items) & set(newbie_items)
    # Their recent items are all of taste group 2; most of what they get is too (a quarter would be chance).
    assert sum(group_of(i) == 2 for i in items) >= 5, items
    popular = [item["item_id"] for item in server.get("/v1/recommendations/nobody", k=10).json()["items"]]
    assert items != popular


def test_a_user_with_nothing_gets_what_is_popular_now(served):
    server, version, _ = served
    body = server.get("/v1/recommendations/nobody", k=3).json()
    assert body["source"] == "popular" and body["model_version"] == version
    assert [item["item_id"] for item in body["items"]] == ["i5", "i9", "i1"]  # the store's ranking, in order
    assert "unknown to v000001" in body["fallback"] and "popular-now" in body["fallback"]
    assert 0 <= body["features"]["popular_now"]["age_s"] < 60


@pytest.mark.parametrize("query, message", [
    ({"k": "0"}, "k must be a whole number from 1 to 100; got 0"),
    ({"k": "-3"}, "k must be a whole number from 1 to 100; got -3"),
    ({"k": "101"}, "k must be a whole number from 1 to 100; got 101"),
    ({"k": "ten"}, "k must be a whole number from 1 to 100; got 'ten'"),
    ({"k": "2.5"}, "k must be a whole number from 1 to 100; got '2.5'"),
    ({"k": ""}, "k must be a whole number from 1 to 100; got ''"),
    ({"k": "1_0"}, "k must be a whole number from 1 to 100; got '1_0'"),
    ({"k": "9" * 40}, "k must be a whole number from 1 to 100; got '" + "9" * 40 + "'"),
])
def test_a_bad_k_is_refused_with_what_is_allowed(served, query, message):
    server, _, _ = served
    reply = server.get("/v1/recommendations/u0", **query)
    assert reply.status_code == 400 and reply.json()["error"] == message


@pytest.mark.parametrize("path, message", [
    ("/v1/recommendations/", "user_id is empty"),
    ("/v1/recommendations/%20%20", "user_id is empty"),
    ("/v1/recommendations/" + "u" * 257, "user_id is 257 characters long; at most 256 are allowed"),
    ("/v1/recommendations/u%01x", "user_id holds control characters"),
])
def test_a_bad_user_id_is_refused_with_what_is_allowed(served, path, message):
    server, _, _ = served
    reply = server.get(path)
    assert reply.status_code == 400 and reply.json()["error"].startswith(message)


def test_the_online_store_stopped_then_started_again(served, valkey_server, trained):
    server, version, _ = served
    valkey_server.stop()
    degraded = server.get("/v1/recommendations/u0", k=5)
    assert degraded.status_code == 200  # the model alone still answers
    body = degraded.json()
    assert body["model_version"] == version and len(body["items"]) == 5
    assert body["degraded"].startswith("online store unreachable")
    history = set(trained.interactions.iloc[:1800].query("user_id == 'u0'")["item_id"])
    assert not {item["item_id"] for item in body["items"]} & history
    # A user the model does not know: the model's own popularity, and it says so.
    newbie = server.get("/v1/recommendations/newbie", k=5).json()
    assert newbie["source"] == "popular" and newbie["degraded"] and "v000001's popularity" in newbie["fallback"]
    metrics = server.get("/metrics").text
    assert "tidal_online_store_degraded 1" in metrics
    errors = float(next(line.split()[1] for line in metrics.splitlines()
                        if line.startswith("tidal_online_store_errors_total ")))
    assert errors >= 1

    valkey_server.start()  # the same data (append-only file): recovery within the retry pause (2 s)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = server.get("/v1/recommendations/newbie", k=5).json()
        if body["degraded"] is None:
            break
        time.sleep(0.2)
    assert body["degraded"] is None and body["source"] == "recent_items"
    assert "tidal_online_store_degraded 0" in server.get("/metrics").text


def test_no_model_yet_is_not_ready_and_answers_from_popularity_or_503(serving_home, start_serving, valkey_server):
    bare = start_serving(valkey_server.url, {"serving": {"popular_refresh_s": 0.2}})
    ready = bare.get("/readyz")
    assert ready.status_code == 503 and ready.json()["reason"].startswith("no model in production yet")
    assert bare.get("/healthz").json() == {"alive": True}
    # Nothing in the store either: 503 with what to run.
    reply = bare.get("/v1/recommendations/u0")
    assert reply.status_code == 503 and "run a cycle" in reply.json()["error"]
    write_online(valkey_server.url, {}, ["i4", "i8"], time.time())
    time.sleep(0.3)  # serving.popular_refresh_s: the ranking is reread at most this often
    body = bare.get("/v1/recommendations/u0").json()
    assert body["model_version"] is None and body["source"] == "popular"
    assert [item["item_id"] for item in body["items"]] == ["i4", "i8"]
    assert body["fallback"].startswith("no model in production yet")


def test_metrics_count_requests_and_name_the_model(served):
    server, version, _ = served
    for _ in range(3):
        server.get("/v1/recommendations/u0")
    server.get("/v1/recommendations/u0", k="0")
    text = server.get("/metrics").text
    assert f'tidal_model_version_info{{version="{version}"}} 1' in text
    assert 'tidal_serving_requests_total{route="/v1/recommendations/{user_id}",status="200"} 3' in text
    assert 'tidal_serving_requests_total{route="/v1/recommendations/{user_id}",status="400"} 1' in text
    assert "tidal_model_loaded 1" in text and "tidal_model_failed_loads_total 0" in text
    age = float(next(line.split()[1] for line in text.splitlines() if line.startswith("tidal_model_age_seconds ")))
    assert age > 3600  # trained on a 2024 stream
    assert text.count("tidal_serving_request_seconds_bucket") == 12
