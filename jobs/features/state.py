"""feature_state: per-entity features kept under features/state/, updated per micro-batch, and the outlier rule.

Pure DataFrame -> DataFrame functions (tested on local[1]); `jobs.features` wires them into each micro-batch and
writes each batch's new state as a snapshot keyed by its batch id (a replay rewrites its own snapshot from the
previous one, so state is updated incrementally and never recomputed over all history).

- Decayed counts: count(t) = count(t0) * 2^(-(t - t0) / half_life) + sum over new events e of
  2^(-(t - t_e) / half_life), with t = the newest event time of the entity. Per user and per item.
- Recency: the entity's last event time (seconds since it is part of each example: `user_recency_s`).
- Batch counts: the entity's events in the batch that wrote the snapshot (`user_batch_events`, `item_batch_events`
  of that batch's examples).
- Event-type mix: the user's decayed count per event type, as shares.

- Item popularity over sliding windows: per (item, time bucket of `features.popularity_bucket_s`) event counts,
  kept under features/state/item_buckets/. `item_events_last_<w>s` of an example at time t is the item's events in
  the buckets b with B - w/bucket < b <= B, B = floor(t / bucket): a window of w seconds ending at the example's
  bucket, read from the state as of the end of its batch (so it counts the example itself). The snapshot kept for
  the next batch drops the buckets older than the longest window plus the allowed lateness before the newest
  bucket: the next batch's watermark quarantines events that old as late, so none of its examples needs them.

- Recent items: per user the `features.online_recent_items` most recent distinct items (each at its latest event
  time, newest first, ties by item id), kept under features/state/user_recent/ as (user_id, item_id, event_s) rows;
  the online store's `recent` group is read from it.

Outliers (bots, scrapers): within a micro-batch, per user x = log1p(events); robust z = 0.6745 (x - median) / MAD
(Iglewicz & Hoaglin); a user is flagged when z > `features.outlier_z` and it has at least
`features.outlier_min_events` events. Items are flagged when at least that many events came more than half from
flagged users (the items a bot drove); not on raw counts, which are heavy-tailed by nature (a popular item is not
a bot). Flagged
entities' events stay in bronze but are left out of the training examples and counted in the batch manifest.
"""

from __future__ import annotations

import math


DEDUPE_STATE_SCHEMA = "event_id string, event_time timestamp"
# batch_events: the entity's events in the batch that wrote the snapshot (0 if none); its examples' batch counts.
# A snapshot written before the column existed reads it as null, and the next batch writes it.
ENTITY_STATE_SCHEMA = "key string, decayed_count double, last_event_s double, batch_events long"
ITEM_BUCKET_STATE_SCHEMA = "item_id string, bucket long, events long"
USER_RECENT_STATE_SCHEMA = "user_id string, item_id string, event_s double"
SEP = "\u0001"  # joins the parts of a state key; cannot appear in an id (ids are JSON strings, control chars aside)
LN2 = math.log(2.0)
# The largest argument given to exp() in the closed form of the decayed sum: exp() of more than ~709 overflows a
# double, and below ~-745 it is 0. See update_decayed_state.
MAX_EXP_ARGUMENT = 700.0


def robust_z_of_counts(users_per_count: dict[int, int]) -> dict[int, float]:
    """{events per user: users with that many} -> {events: robust z of x = log1p(events)}.

    z = 0.6745 (x - median) / MAD. When MAD is 0 (over half the entities share one value, e.g. one event per user
    on most items) the mean absolute deviation stands in, z = (x - median) / (1.253314 * meanAD) (Iglewicz &
    Hoaglin); if that is 0 too, nothing stands out: z = 0. The median and MAD are exact, the element at rank
    ceil(n/2) of the n users. Computed on the driver from the histogram: a batch's users take only as many distinct
    counts as there are ways to split its events (at most sqrt(2 * events)), so this is a few hundred numbers where a
    per-user Spark plan would be two percentile aggregations and two cross joins, each its own job."""
    counts = sorted(users_per_count)
    n = sum(users_per_count.values())
    if n == 0:
        return {}
    x = {c: math.log1p(c) for c in counts}

    def lower_median(pairs: list[tuple[float, int]]) -> float:
        rank, seen = math.ceil(n / 2), 0
        for value, weight in sorted(pairs):
            seen += weight
            if seen >= rank:
                return value
        raise AssertionError("the weights sum to n")

    med = lower_median([(x[c], users_per_count[c]) for c in counts])
    deviation = {c: abs(x[c] - med) for c in counts}
    mad = lower_median([(deviation[c], users_per_count[c]) for c in counts])
    meanad = math.fsum(deviation[c] * users_per_count[c] for c in counts) / n
    if mad > 0:
        return {c: 0.6745 * (x[c] - med) / mad for c in counts}
    if meanad > 0:
        return {c: (x[c] - med) / (1.253314 * meanad) for c in counts}
    return {c: 0.0 for c in counts}


def flag_outliers(events_df, z_threshold: float, min_events: int):
    """Accepted events -> DataFrames of flagged `users` (user_id, events, z) and `items` (item_id, events, bot_share).

    Users: robust z of log1p(events in the batch) above `z_threshold`, with at least `min_events` events. Items: at
    least `min_events` events, more than half of them from flagged users (the items a bot or scraper drove). Raw
    item counts are heavy-tailed by nature, so a z-score on them would flag the catalogue's head, not abuse.
    Runs one Spark job: the histogram of events per user, collected to score its counts (`robust_z_of_counts`)."""
    return flagged_frames(events_df, *flagged_user_counts(events_df, z_threshold, min_events), min_events)


def flagged_frames(events_df, per_user, flagged: dict[int, float], min_events: int):
    """The flagged users and items as DataFrames, from `flagged_user_counts`'s result (no Spark job here)."""
    from pyspark.sql import functions as F

    # z looked up from the few flagged counts (no flagged count: no row, so no z to look up).
    z_column = F.create_map(*[F.lit(v) for count, score in sorted(flagged.items()) for v in (count, float(score))]) \
        [F.col("events")] if flagged else F.lit(None).cast("double")
    users = per_user.filter(F.col("events").isin(list(flagged))).select("user_id", "events", z_column.alias("z"))
    by_bot = events_df.join(users.select("user_id", F.lit(1).alias("_bot")), "user_id", "left")
    return users, outlier_items(by_bot, F.col("_bot").isNotNull(), min_events)


def flagged_user_counts(events_df, z_threshold: float, min_events: int):
    """Events -> (per-user counts (user_id, events), {flagged count: its z}): the histogram of events per user is
    collected (one Spark job) and scored on the driver (`robust_z_of_counts`)."""
    from pyspark.sql import functions as F

    per_user = events_df.groupBy("user_id").agg(F.count("*").alias("events"))
    histogram = {r["events"]: r["users"] for r in
                 per_user.groupBy("events").agg(F.count("*").alias("users")).collect()}
    return per_user, {c: z for c, z in robust_z_of_counts(histogram).items() if z > z_threshold and c >= min_events}


def outlier_ids(events_df, z_threshold: float, min_events: int) -> tuple[list[str], list[str]]:
    """The ids `flag_outliers` flags, (users, items), each sorted, in one Spark job when nothing is flagged (the
    usual batch: no item can be more than half driven by flagged users when there are none) and two otherwise (the
    histogram, then both lists in one query), where collecting the users and then their items took three."""
    from pyspark.sql import functions as F

    per_user, flagged = flagged_user_counts(events_df, z_threshold, min_events)
    if not flagged:
        return [], []
    users, items = flagged_frames(events_df, per_user, flagged, min_events)
    rows = users.select(F.lit(True).alias("_is_user"), F.col("user_id").alias("_id")) \
        .unionByName(items.select(F.lit(False).alias("_is_user"), F.col("item_id").alias("_id"))).collect()
    return sorted(r["_id"] for r in rows if r["_is_user"]), sorted(r["_id"] for r in rows if not r["_is_user"])


def outlier_items(events_df, from_flagged_user, min_events: int):
    """Events + a boolean column (the event came from a flagged user) -> flagged items (item_id, events, bot_share):
    at least `min_events` events, more than half of them from flagged users."""
    from pyspark.sql import functions as F

    return events_df.groupBy("item_id").agg(
        F.count("*").alias("events"), (F.count(F.when(from_flagged_user, 1)) / F.count("*")).alias("bot_share")) \
        .filter((F.col("events") >= min_events) & (F.col("bot_share") > 0.5))


def update_decayed_state(state_df, events_df, key: str, half_life_s: float,
                         events_time_range_s: tuple[float, float] | None = None):
    """Entity state (key, decayed_count, last_event_s, batch_events) + this batch's events -> the new state for every
    entity, with batch_events = its events in this batch (0 for the others).

    Each batch only touches the entities it saw; the others keep their row (their decay is applied when read,
    relative to the reader's time, so an idle entity costs nothing per batch).

    `events_time_range_s`: the (oldest, newest) event time of `events_df` in epoch seconds, when the caller knows
    it. The batch's part of an entity's count, the sum over its events of exp(-rate (last - t)), then becomes
    exp(-rate (last - R)) * sum of exp(-rate (R - t)) with R the newest time: one plain sum per key, which Spark
    aggregates in a hash map. Without it each key keeps the list of its event times (a list aggregate falls back to
    sorting once a task holds more than 128 keys): 10 s against 2.4 s for 3M events in a scratch probe. The closed
    form is used only while rate * (newest - oldest) <= MAX_EXP_ARGUMENT, so no term underflows to 0 and the
    factor cannot overflow (about 1,000 half-lives; with the shipped 7-day half-life, 19 years of lateness)."""
    from pyspark.sql import functions as F

    rate = LN2 / half_life_s
    t = F.col("event_time").cast("double")
    keyed = events_df.select(F.col(key).alias("key"), t.alias("t"))
    batch_last, batch_events = F.max("t").alias("batch_last"), F.count("*").alias("_batch_events")
    closed_form = events_time_range_s is not None and \
        rate * (events_time_range_s[1] - events_time_range_s[0]) <= MAX_EXP_ARGUMENT
    if closed_form:
        newest = F.lit(float(events_time_range_s[1]))
        batch = keyed.groupBy("key").agg(batch_last, batch_events,
                                         F.sum(F.exp(-rate * (newest - F.col("t")))).alias("_sum_at_newest"))
    else:
        batch = keyed.groupBy("key").agg(batch_last, batch_events, F.collect_list("t").alias("ts"))
    merged = state_df.drop("batch_events").join(batch, "key", "full_outer")
    last = F.greatest(F.coalesce("last_event_s", "batch_last"), F.coalesce("batch_last", "last_event_s"))
    old = F.coalesce(F.col("decayed_count"), F.lit(0.0)) * F.exp(-rate * (last - F.coalesce("last_event_s", last)))
    if closed_form:
        new = F.col("_sum_at_newest") * F.exp(-rate * (last - newest))
    else:
        new = F.aggregate("ts", F.lit(0.0), lambda acc, x: acc + F.exp(-rate * (last - x)))
    return merged.select("key", (old + F.coalesce(new, F.lit(0.0))).alias("decayed_count"), last.alias("last_event_s"),
                         F.coalesce("_batch_events", F.lit(0)).alias("batch_events"))


def state_keys(events_df):
    """Events -> one row per state key each event updates: (key, event_time), key in
    user<SEP>u, item<SEP>i, type<SEP>u<SEP>event_type. One table holds all three kinds, so a batch writes one snapshot."""
    from pyspark.sql import functions as F

    def keyed(*parts):
        return events_df.select(F.concat_ws(SEP, *parts).alias("key"), "event_time")

    return keyed(F.lit("user"), "user_id").unionByName(keyed(F.lit("item"), "item_id")) \
        .unionByName(keyed(F.lit("type"), "user_id", "event_type"))


def update_entity_state(state_df, events_df, half_life_s: float,
                        events_time_range_s: tuple[float, float] | None = None):
    """The per-batch update of features/state/entities: decayed counts and last event times for every user, item and
    (user, event type) the batch saw; the rest keep their row. `events_time_range_s`: see update_decayed_state."""
    return update_decayed_state(state_df, state_keys(events_df), "key", half_life_s, events_time_range_s)


def entity_features(examples_df, state_df, half_life_s: float, event_types: tuple[str, ...]):
    """Each example joined with the state as of the end of its batch: the user's and the item's events in the batch
    (`user_batch_events`, `item_batch_events`), their decayed counts (decayed to the example's own time), recency
    (seconds from the example to the entity's latest event, >= 0: 0 for the entity's newest event) and the user's
    event-type shares.

    The batch counts come from the state, which the batch's own events updated, not from window functions over the
    examples: the state joins are broadcast while the state is small, so the examples are never shuffled for them."""
    from pyspark.sql import functions as F

    rate = LN2 / half_life_s
    t = F.col("event_time").cast("double")
    parts = F.split("key", SEP)
    state = state_df.select(parts.getItem(0).alias("_kind"), parts.getItem(1).alias("_id"),
                            parts.getItem(2).alias("_type"), "decayed_count", "last_event_s", "batch_events")
    out, helpers = examples_df, []
    for kind in ("user", "item"):
        count, last = f"_{kind}_c", f"_{kind}_t"
        helpers += [count, last]
        side = state.filter(F.col("_kind") == kind).select(
            F.col("_id").alias(f"{kind}_id"), F.col("decayed_count").alias(count),
            F.col("last_event_s").alias(last), F.col("batch_events").alias(f"{kind}_batch_events"))
        out = out.join(side, f"{kind}_id", "left") \
            .withColumn(f"{kind}_decayed_count", F.col(count) * F.exp(-rate * (t - F.col(last)))) \
            .withColumn(f"{kind}_recency_s", F.greatest(F.col(last) - t, F.lit(0.0)))
    mix = state.filter(F.col("_kind") == "type").groupBy(F.col("_id").alias("user_id")) \
        .pivot("_type", list(event_types)).agg(F.first("decayed_count"))
    total = sum((F.coalesce(F.col(e), F.lit(0.0)) for e in event_types), F.lit(0.0))
    mix = mix.select("user_id", *[(F.coalesce(F.col(e), F.lit(0.0)) / total).alias(f"user_share_{e}")
                                  for e in event_types])
    out = out.join(mix, "user_id", "left")
    # The helper columns by name (not out.columns, a whole-plan analysis on the server per call on Spark Connect).
    return out.drop(*helpers)


def item_content_features(examples_df, items_df):
    """Examples + item metadata (item_id, categories "a|b", title) -> item_categories, item_n_categories,
    item_title_length; items without metadata get nulls (cold start falls back to popularity)."""
    from pyspark.sql import functions as F

    content = items_df.select(
        "item_id", F.col("categories").alias("item_categories"),
        F.size(F.split(F.col("categories"), r"\|")).alias("item_n_categories"),
        F.length(F.col("title")).alias("item_title_length"))
    return examples_df.join(content, "item_id", "left")


def popularity_column(window_s: int) -> str:
    return f"item_events_last_{window_s}s"


def time_bucket(bucket_s: int):
    """An event's popularity bucket: floor(event_time / bucket_s), as a long column."""
    from pyspark.sql import functions as F

    return F.floor(F.col("event_time").cast("double") / bucket_s).cast("long")


def update_item_buckets(state_df, events_df, bucket_s: int):
    """Item bucket state (item_id, bucket, events) + this batch's events -> the merged state (counts add up per
    item and bucket). The batch's features read this, unpruned; `prune_item_buckets` bounds what is kept."""
    from pyspark.sql import functions as F

    batch = events_df.groupBy("item_id", time_bucket(bucket_s).alias("bucket")).agg(F.count("*").alias("events"))
    return state_df.unionByName(batch).groupBy("item_id", "bucket").agg(F.sum("events").cast("long").alias("events"))


def prune_item_buckets(state_df, bucket_s: int, keep_s: int):
    """Drop the buckets more than `keep_s` before the newest one, so the state is bounded by the window plus the
    allowed lateness, not by history. Applied to the snapshot the next batch starts from, after this batch's
    features were read: the next batch accepts nothing older than its watermark, so it never needs them."""
    from pyspark.sql import functions as F

    newest = state_df.agg(F.max("bucket").alias("_newest"))
    return (state_df.crossJoin(newest).filter(F.col("bucket") > F.col("_newest") - keep_s // bucket_s)
            .drop("_newest"))


def popularity_keys(events_df, bucket_s: int):
    """Events -> the distinct (item_id, _bucket) pairs their examples read popularity windows for."""
    return events_df.select("item_id", time_bucket(bucket_s).alias("_bucket")).distinct()


def item_window_sums(keys_df, bucket_state_df, bucket_s: int, windows_s: tuple[int, ...]):
    """(item_id, _bucket) keys + item bucket state -> per key one `item_events_last_<w>s` column per window: the
    item's events in the buckets b with _bucket - w/bucket < b <= _bucket."""
    from pyspark.sql import functions as F

    buckets = bucket_state_df.select("item_id", F.col("bucket").alias("_b"), F.col("events").alias("_n"))
    joined = keys_df.join(buckets, "item_id").filter(F.col("_b") <= F.col("_bucket"))
    return joined.groupBy("item_id", "_bucket").agg(*[
        F.sum(F.when(F.col("_b") > F.col("_bucket") - w // bucket_s, F.col("_n")).otherwise(0)).alias(popularity_column(w))
        for w in windows_s])


def join_window_popularity(examples_df, sums_df, bucket_s: int, windows_s: tuple[int, ...]):
    """Examples + `item_window_sums` -> the examples with their windows' counts (0 where the item has no events
    in a window, which cannot happen for an example read against its own batch's state)."""
    from pyspark.sql import functions as F

    with_bucket = examples_df.withColumn("_bucket", time_bucket(bucket_s))
    out = with_bucket.join(sums_df, ["item_id", "_bucket"], "left")
    for w in windows_s:
        out = out.withColumn(popularity_column(w), F.coalesce(F.col(popularity_column(w)), F.lit(0)).cast("long"))
    return out.drop("_bucket")


def item_window_popularity(examples_df, bucket_state_df, bucket_s: int, windows_s: tuple[int, ...]):
    """Examples + item bucket state -> the same with one `item_events_last_<w>s` column per window."""
    sums = item_window_sums(popularity_keys(examples_df, bucket_s), bucket_state_df, bucket_s, windows_s)
    return join_window_popularity(examples_df, sums, bucket_s, windows_s)


def update_user_recent(state_df, events_df, cap: int):
    """User recent-items state (user_id, item_id, event_s) + this batch's events -> the new state: per user the
    `cap` distinct items with the latest event times, each at its latest time. Order-free (a max, then a rank with
    ties broken by item id), so however the events were cut into batches the state is the same."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    batch = events_df.select("user_id", "item_id", F.col("event_time").cast("double").alias("event_s"))
    latest = state_df.unionByName(batch).groupBy("user_id", "item_id").agg(F.max("event_s").alias("event_s"))
    rank = F.row_number().over(Window.partitionBy("user_id").orderBy(F.col("event_s").desc(), F.col("item_id")))
    return latest.withColumn("_rank", rank).filter(F.col("_rank") <= cap).drop("_rank")
