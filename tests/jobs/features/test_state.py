"""feature_state: decayed counts, recency, event-type mix and the outlier rule, as pure transforms on local[1]."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from jobs.features.state import (ENTITY_STATE_SCHEMA, entity_features, flag_outliers, outlier_ids,
                                 robust_z_of_counts, update_entity_state)


T0 = datetime(2026, 11, 1)
HOUR = 3600.0


def events(spark, rows):
    """rows: (user, item, event_type, hours after T0)."""
    return spark.createDataFrame([(f"e{i}", u, i_, t, T0 + timedelta(hours=h)) for i, (u, i_, t, h) in enumerate(rows)],
                                 "event_id string, user_id string, item_id string, event_type string, event_time timestamp")


def time_range_s(batch) -> tuple[float, float]:
    """(oldest, newest) event time of a batch in epoch seconds, as the features job passes it from its stats."""
    row = batch.selectExpr("min(cast(event_time as double)) AS lo", "max(cast(event_time as double)) AS hi").first()
    return row.lo, row.hi


@pytest.mark.parametrize("form", ["list", "sum"])
def test_decayed_counts_update_incrementally_and_match_the_closed_form(spark, form):
    """Both ways of summing a batch: each key's list of times, and (given the batch's time range) one plain sum."""
    half_life = 10 * HOUR
    first = events(spark, [("u1", "i1", "view", 0), ("u1", "i2", "click", 10)])
    second = events(spark, [("u1", "i1", "view", 20)])
    empty = spark.createDataFrame([], ENTITY_STATE_SCHEMA)

    def update(state, batch):
        return update_entity_state(state, batch, half_life, time_range_s(batch) if form == "sum" else None)

    state1 = update(empty, first)
    state2 = {r.key: r for r in update(state1, second).collect()}
    # u1 at t=20h: events at 0, 10, 20 h -> 1/4 + 1/2 + 1
    assert state2["user\u0001u1"].decayed_count == pytest.approx(1.75)
    assert state2["user\u0001u1"].last_event_s == (T0 + timedelta(hours=20)).timestamp()
    assert state2["item\u0001i1"].decayed_count == pytest.approx(1 + 0.25)      # events at 0 and 20 h
    assert state2["item\u0001i2"].decayed_count == pytest.approx(1.0)           # untouched by the second batch
    assert state2["item\u0001i2"].last_event_s == (T0 + timedelta(hours=10)).timestamp()
    assert state2["type\u0001u1\u0001click"].decayed_count == pytest.approx(1.0)
    assert state2["type\u0001u1\u0001view"].decayed_count == pytest.approx(1.25)
    assert set(state2) == {"user\u0001u1", "item\u0001i1", "item\u0001i2", "type\u0001u1\u0001view",
                           "type\u0001u1\u0001click"}
    # The events of the batch that wrote the snapshot: the second batch's one event, none for the rest.
    assert {k: r.batch_events for k, r in state2.items()} == {
        "user\u0001u1": 1, "item\u0001i1": 1, "item\u0001i2": 0, "type\u0001u1\u0001view": 1,
        "type\u0001u1\u0001click": 0}


def test_the_sum_at_the_newest_time_gives_the_list_form_and_is_not_used_where_it_would_overflow(spark):
    # Two batches over 30 days, the second one late (older than the first): a key's last event can come from
    # the state, after every event of the batch.
    rows = [(f"u{k % 3}", f"i{k % 5}", ("view", "click")[k % 2], (k * 37) % 720) for k in range(60)]
    later = events(spark, [r for r in rows if r[3] >= 360])
    earlier = events(spark, [r for r in rows if r[3] < 360])
    empty = spark.createDataFrame([], ENTITY_STATE_SCHEMA)
    half_life = HOUR  # the 30 days are 720 half-lives: rate * span = 499, inside the sum's safe range

    def both_forms(half_life_s: float) -> tuple[dict, dict]:
        forms = []
        for time_range in (lambda b: None, time_range_s):
            state = update_entity_state(empty, later, half_life_s, time_range(later))
            state = update_entity_state(state, earlier, half_life_s, time_range(earlier))
            forms.append({r.key: (r.decayed_count, r.last_event_s, r.batch_events) for r in state.collect()})
        return forms[0], forms[1]

    listed, summed = both_forms(half_life)
    assert set(listed) == set(summed) and len(listed) == 3 + 5 + 6
    for key, (count, last, batch_events) in listed.items():
        assert summed[key][0] == pytest.approx(count, rel=1e-12) and summed[key][1:] == (last, batch_events)
    # 20 minutes: the 30 days are 2,160 half-lives, where a sum at the newest time would underflow its oldest terms
    # to 0 and multiply them by an infinite factor. The update keeps each key's list instead, so a key whose one
    # event is the batch's oldest still counts 1 at it.
    lonely = events(spark, [("u9", "i9", "view", 0), ("u1", "i1", "view", 720)])
    state = {r.key: r for r in update_entity_state(empty, lonely, HOUR / 3, time_range_s(lonely)).collect()}
    assert state["user\u0001u9"].decayed_count == 1.0 and state["user\u0001u1"].decayed_count == 1.0


def test_entity_features_give_decay_recency_and_type_mix(spark):
    half_life = 10 * HOUR
    batch = events(spark, [("u1", "i1", "view", 0), ("u1", "i1", "view", 10), ("u1", "i2", "click", 10),
                           ("u2", "i1", "purchase", 10)])
    state = update_entity_state(spark.createDataFrame([], ENTITY_STATE_SCHEMA), batch, half_life)
    rows = {r.event_id: r for r in entity_features(batch, state, half_life, ("view", "click", "purchase")).collect()}
    # u1 at t=10h: events at 0, 10, 10 -> 0.5 + 2 = 2.5; seen from the example at t=0 it is 2.5 * 2 = 5
    assert rows["e1"].user_decayed_count == pytest.approx(2.5)
    assert rows["e0"].user_decayed_count == pytest.approx(5.0)
    assert rows["e0"].user_recency_s == pytest.approx(10 * HOUR) and rows["e1"].user_recency_s == 0
    assert rows["e3"].item_decayed_count == pytest.approx(0.5 + 1 + 1)  # i1: 0, 10, 10 h
    assert (rows["e0"].user_share_view, rows["e0"].user_share_click) == (pytest.approx(1.5 / 2.5), pytest.approx(1 / 2.5))
    assert rows["e3"].user_share_purchase == 1.0 and rows["e3"].user_share_view == 0.0
    # The batch counts, from the state the batch updated: u1 3 events, u2 1; i1 3, i2 1.
    assert {e: (r.user_batch_events, r.item_batch_events) for e, r in rows.items()} == {
        "e0": (3, 3), "e1": (3, 3), "e2": (3, 1), "e3": (1, 3)}


@pytest.mark.parametrize(("users_per_count", "branch"), [
    ({1: 3, 2: 3, 3: 2, 40: 1}, "mad"),      # the common case
    ({1: 7, 2: 1, 9: 1, 300: 1}, "meanad"),  # over half the users share one count: MAD = 0, the mean deviation
    ({4: 6}, "none"),                        # everyone alike: nothing stands out
    ({1: 1, 2: 1, 3: 1, 4: 1}, "mad"),       # an even number of users: the median is the element at rank n/2
])
def test_robust_z_of_counts_matches_a_per_user_computation(users_per_count, branch):
    """The histogram form gives each count the z that the per-user definition gives each of its users."""
    xs = sorted(math.log1p(c) for c, k in users_per_count.items() for _ in range(k))
    n = len(xs)
    med = xs[math.ceil(n / 2) - 1]
    deviations = sorted(abs(x - med) for x in xs)
    mad, meanad = deviations[math.ceil(n / 2) - 1], sum(deviations) / n

    def z(x):
        if mad > 0:
            return 0.6745 * (x - med) / mad
        return (x - med) / (1.253314 * meanad) if meanad > 0 else 0.0

    got = robust_z_of_counts(users_per_count)
    assert set(got) == set(users_per_count)
    for count, value in got.items():
        assert value == pytest.approx(z(math.log1p(count)), rel=1e-12, abs=1e-12)
    assert branch == ("mad" if mad > 0 else "meanad" if meanad > 0 else "none")  # each case takes its branch
    if len(users_per_count) > 1:
        assert got[max(users_per_count)] > 0
    assert robust_z_of_counts({}) == {}


def test_injected_bot_is_flagged_and_normal_users_are_not(spark):
    """The synthetic stream (power-law activity) plus one bot making 300 events on 3 tail items in the same window."""
    from pyspark.sql import functions as F

    from devtools.generate import SyntheticWorld, generate_file_events
    from tidal.config import GenerateParams

    params = GenerateParams()
    world = SyntheticWorld(params, seed=3, files=2)
    rows = generate_file_events(world, 0, 3, params.events_per_file, ("view", "click", "purchase"))
    bot = [{**rows[0], "event_id": f"bot-{k}", "user_id": "bot-1", "item_id": f"i{297 + k % 3:06d}"} for k in range(300)]
    frame = spark.createDataFrame([(r["event_id"], r["user_id"], r["item_id"]) for r in rows + bot],
                                  "event_id string, user_id string, item_id string")
    # z > 6 on log counts: organic heavy users of a Pareto(1.5) activity law reach z ~ 5.5 (seeds 3-5), the bot 7.2.
    users, items = flag_outliers(frame, z_threshold=6.0, min_events=50)
    assert [r.user_id for r in users.collect()] == ["bot-1"]
    flagged_items = {r.item_id for r in items.collect()}
    assert flagged_items == {"i000297", "i000298", "i000299"}  # tail items the bot drove, not the popular head
    top_user_events = frame.filter(F.col("user_id") != "bot-1").groupBy("user_id").count().agg(F.max("count")).first()[0]
    assert top_user_events < 300 and math.isfinite(top_user_events)
    # The id lists the micro-batch collects are the same users and items, sorted.
    assert outlier_ids(frame, z_threshold=6.0, min_events=50) == (["bot-1"], ["i000297", "i000298", "i000299"])
    organic = frame.filter(F.col("user_id") != "bot-1")
    assert outlier_ids(organic, z_threshold=6.0, min_events=50) == ([], [])
    # The bot's 300 events reach 150; none of its three items (100 of its events each) does: a user, no item.
    assert outlier_ids(frame, z_threshold=6.0, min_events=150) == (["bot-1"], [])
    # Nobody reaches 301 events: nothing is flagged.
    assert outlier_ids(frame, z_threshold=6.0, min_events=301) == ([], [])


def test_sliding_window_item_popularity_counts_the_window_ending_at_each_example(spark):
    from jobs.features.state import (ITEM_BUCKET_STATE_SCHEMA, item_window_popularity, prune_item_buckets,
                                     update_item_buckets)

    bucket, windows = 3600, (3600, 3 * 3600)
    keep = max(windows)
    # i1: events at 0.5 h, 1.5 h, 2.5 h, 3.5 h (one per hourly bucket 0..3); i2: two at 3.2 h.
    first = events(spark, [("u1", "i1", "view", 0.5), ("u1", "i1", "view", 1.5)])
    second = events(spark, [("u2", "i1", "view", 2.5), ("u2", "i1", "click", 3.5), ("u3", "i2", "view", 3.2),
                            ("u4", "i2", "view", 3.2)])
    empty = spark.createDataFrame([], ITEM_BUCKET_STATE_SCHEMA)
    state1 = prune_item_buckets(update_item_buckets(empty, first, bucket), bucket, keep)
    merged2 = update_item_buckets(state1, second, bucket)
    hour0 = int(T0.timestamp()) // bucket
    got = {(r.item_id, r.bucket - hour0): r.events for r in prune_item_buckets(merged2, bucket, keep).collect()}
    # The snapshot for the next batch: newest bucket 3, buckets <= 3 - keep/bucket = 0 dropped (bounded state).
    assert got == {("i1", 1): 1, ("i1", 2): 1, ("i1", 3): 1, ("i2", 3): 2}
    rows = {r.event_id: r for r in item_window_popularity(second, merged2, bucket, windows).collect()}
    # This batch's features read the merged state before pruning: e0 (i1 at 2.5 h, bucket 2) still sees bucket 0.
    assert (rows["e0"].item_events_last_3600s, rows["e0"].item_events_last_10800s) == (1, 3)
    # e1 (i1 at 3.5 h, bucket 3): 1 h -> bucket 3; 3 h -> buckets 1..3.
    assert (rows["e1"].item_events_last_3600s, rows["e1"].item_events_last_10800s) == (1, 3)
    assert (rows["e2"].item_events_last_3600s, rows["e2"].item_events_last_10800s) == (2, 2)


def test_popularity_windows_must_be_whole_buckets():
    from pydantic import ValidationError

    from tidal.config import FeaturesParams

    assert FeaturesParams(popularity_windows_s=(600, 3600), popularity_bucket_s=300).popularity_windows_s == (600, 3600)
    for bad in ((1000,), (600, 600), (0,)):
        with pytest.raises(ValidationError, match="multiples of features.popularity_bucket_s"):
            FeaturesParams(popularity_windows_s=bad, popularity_bucket_s=300)
