"""The DuckDB baseline of the features throughput benchmark does the work of one Spark micro-batch: on the same
landing files, the real Spark job (`run_features`) and `benchmarks.features.duckdb_features` must give the same
counts, the same quarantine reason per record and the same feature values per event_id."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from benchmarks.features import duckdb_features as ddb

from jobs.features.transforms import EventRules


# The batch clock both runs judge future timestamps by: 2026-11-03T00:00:00Z (the stream starts 2026-11-01).
NOW = datetime(2026, 11, 3, tzinfo=timezone.utc).timestamp()
# A tiny world whose three files span two hours (so the 1-hour and 24-hour windows differ), and an outlier rule
# loose enough that the bot below is flagged, with the items it drove.
OVERRIDES = {
    "generate": {"users": 30, "items": 25, "events_per_file": 300, "new_users_per_file": 2, "new_items_per_file": 1,
                 "file_interval_s": 2400},
    "features": {"outlier_z": 3.0, "outlier_min_events": 50},
}
FLOAT_TOLERANCE = 1e-6


def record(event_id: str, **fields) -> str:
    base = {"event_id": event_id, "user_id": "u000001", "item_id": "i000001", "event_type": "click", "value": None,
            "event_time": "2026-11-01T01:00:00Z", "context": {"b": 1, "a": "x"}}
    return json.dumps({**base, **fields})


def hand_written_lines(first_generated_id: str) -> list[str]:
    """Lines a producer gets wrong, copies of events, a bot and events old enough to leave the popularity state."""
    bad = [
        record("bad-json")[:-9],
        record("no-user", user_id=None), json.dumps({"event_id": "no-time", "user_id": "u", "item_id": "i",
                                                     "event_type": "view"}),
        record("int-item", item_id=7), record("str-value", value="high"), record("list-context", context=[1]),
        record("blank-user", user_id="  "), record("long-item", item_id="i" * 300),
        record("teleport", event_type="teleport"),
        record("bad-time", event_time="yesterday"), record("future", event_time="2026-11-03T00:05:01Z"),
        record("pre-1970", event_time=-1), "[1, 2]", record("trailing-comma")[:-1] + ", }",
        record("nan-value")[:-1].replace('"value": null', '"value": NaN') + "}",
        '{"event_id": "dup-key", "event_id": "again", "user_id": "u", "item_id": "i", "event_type": "view", '
        '"event_time": "2026-11-01T01:00:00Z"}',
    ]
    good = [
        record("epoch-time", event_time=NOW - 3600.5, event_type="rating", value=4),
        record("offset-time", event_time="2026-11-01T03:30:00+02:00"),
        record("year-month", event_time="2026-11"),                     # Spark reads it as 2026-11-01T00:00Z
        record("skew-edge", event_time=NOW + 300),                       # exactly at the allowed skew: accepted
        record(first_generated_id, value=99.0),                          # a later copy of a generated event: dropped
        record("twice", value=1.0), record("twice", value=2.0),          # the first copy wins
        record("old-1", event_time="2026-10-20T12:00:00Z", item_id="i-old"),  # pruned from the kept state, not from its own batch
        record("old-2", event_time="2026-10-20T12:04:00Z", item_id="i-old"),
        record("next-day", event_time="2026-11-02T01:30:00Z", item_id="i000003", context=None),
    ]
    # One bot: 400 events, 300 on an item nobody else touches (flagged with it) and 100 spread over real items.
    bot = [record(f"bot-{n}", user_id="bot-1", item_id="i-bot" if n < 300 else f"i{n % 20:06d}", event_type="view",
                  value=0.5, event_time=f"2026-11-01T{n % 3:02d}:{n % 60:02d}:{n % 59:02d}Z") for n in range(400)]
    return bad + good + bot


@pytest.fixture(scope="module")
def both_runs(spark, tmp_path_factory):
    """The Spark job and the DuckDB baseline over one landing zone: generated files, a hand-written file, a
    zero-byte file, a blank file and a file with one line that is not UTF-8."""
    from devtools.generate import generate_stream
    from jobs.features.stream import run_features
    from tests.conftest import private_home
    from tidal.storage import StorageLayout

    tmp = tmp_path_factory.mktemp("duckdb_equivalence")
    with private_home(tmp, OVERRIDES) as settings:
        layout = StorageLayout(settings.home).ensure()
        generate_stream(layout, settings.params.generate, seed=7, files=3, event_types=settings.params.base.event_types,
                        bad_fraction=0.03)
        landing = layout.landing_events
        first_id = json.loads((landing / "events-000000.jsonl").read_text().splitlines()[0])["event_id"]
        # \r\n endings and blank lines in the middle: line numbers must still agree.
        (landing / "events-000900.jsonl").write_bytes(
            "\r\n".join(hand_written_lines(first_id)[:5]).encode() + b"\r\n\r\n   \n"
            + "\n".join(hand_written_lines(first_id)[5:]).encode() + b"\n")
        (landing / "events-000901.jsonl").write_bytes(b"")
        (landing / "events-000902.jsonl").write_bytes(b" \n\t\n")
        (landing / "events-000903.jsonl").write_bytes(record("utf8-ok").encode() + b"\n"
                                                      + record("utf8-bad").encode()[:-3] + b'\xff"}\n')
        # A last line that ends in a lone \r (no \n): both drop it, so the quarantined raw records agree.
        (landing / "events-000904.jsonl").write_bytes(record("cr-ok").encode() + b"\n" + b'{"event_id": "cr-cut"\r')
        spark_summary = run_features(settings, now_epoch_s=NOW)
        duck = StorageLayout(tmp / "duck")
        duck_manifest = ddb.run_batch(layout.landing_events, layout.landing_items / "items.csv", duck,
                                      ddb.batch_params(settings, NOW))
        spark_manifest = json.loads((layout.feature_state / "batches" / "00000000.json").read_text())
        yield {"spark": layout, "duck": duck, "spark_summary": spark_summary, "spark_manifest": spark_manifest,
               "duck_manifest": duck_manifest}


def test_counts_reconcile_the_same(both_runs):
    spark, duck = both_runs["spark_manifest"], both_runs["duck_manifest"]
    assert both_runs["spark_summary"]["batch_ids"] == [0]  # one micro-batch, as the baseline does
    for key in ("landed", "accepted", "quarantined", "duplicates", "quarantine_reasons", "outlier_users",
                "outlier_items", "outlier_events_excluded", "max_event_time"):
        assert duck[key] == spark[key], key
    assert sorted(Path(f).name for f in duck["files"]) == sorted(Path(f).name for f in spark["files"])
    # The input is built to exercise every path; an input that stopped doing so would make this test vacuous.
    assert spark["duplicates"] >= 2 and "bot-1" in spark["outlier_users"] and "i-bot" in spark["outlier_items"]
    assert len(spark["quarantine_reasons"]) >= 15


def test_same_quarantine_reason_and_raw_record_per_record(both_runs):
    def by_record(layout) -> dict:
        frame = pd.read_parquet(layout.quarantine_events / "batch_id=0")
        return {(Path(r.source_file).name, int(r.line_number)): (r.quarantine_reason, r.raw_record)
                for r in frame.itertuples()}

    spark, duck = by_record(both_runs["spark"]), by_record(both_runs["duck"])
    assert duck == spark


def test_same_bronze_rows(both_runs):
    def rows(layout) -> pd.DataFrame:
        frame = pd.read_parquet(layout.bronze_events)
        frame["source_file"] = frame["source_file"].map(lambda f: Path(f).name)
        frame["event_date"] = frame["event_date"].astype(str)
        # Spark writes context through a Variant (sorted keys), DuckDB as the producer wrote it: compare the objects.
        frame["context"] = frame["context"].map(lambda c: None if c is None else json.loads(c))
        return frame.set_index("event_id").sort_index()

    columns = ["user_id", "item_id", "event_type", "value", "event_time", "context", "source_file", "event_date",
               "ingest_batch_id"]
    spark, duck = rows(both_runs["spark"]), rows(both_runs["duck"])
    assert duck.index.is_unique and list(duck.index) == list(spark.index)
    pd.testing.assert_frame_equal(duck[columns], spark[columns], check_dtype=False)


def test_same_features_per_event_id(both_runs):
    spark = pd.read_parquet(both_runs["spark"].examples_batch(0)).set_index("event_id").sort_index()
    duck = pd.read_parquet(both_runs["duck"].examples_batch(0)).set_index("event_id").sort_index()
    assert sorted(duck.columns) == sorted(spark.columns)
    assert {"item_events_last_3600s", "item_events_last_86400s", "user_share_view",
            "item_n_categories"} <= set(spark.columns)
    assert duck.index.is_unique and list(duck.index) == list(spark.index)
    mismatches = []
    for column in spark.columns:
        for event_id, expected, got in zip(spark.index, spark[column], duck[column]):
            if isinstance(expected, float) and isinstance(got, float):
                same = (math.isnan(expected) and math.isnan(got)) or abs(expected - got) <= FLOAT_TOLERANCE
            else:
                same = (pd.isna(expected) and pd.isna(got)) or expected == got
            if not same:
                mismatches.append((column, event_id, expected, got))
    assert not mismatches, f"{len(mismatches)} differing values, first ones: {mismatches[:10]}"
    # The windows must really slide: some example counts fewer events in the last hour than in the last day. And
    # events older than the kept state's horizon still see their own batch's events in their windows (both i-old
    # events share one 5-minute bucket): pruning applies to the snapshot, after the batch's features are read.
    assert (spark["item_events_last_3600s"] < spark["item_events_last_86400s"]).any()
    assert spark.loc[["old-1", "old-2"], "item_events_last_86400s"].tolist() == [2, 2]


# ---- the event contract, line by line, against Spark's classify_events ---------------------------------------

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "value": 0.5,
        "event_time": "2026-11-01T10:15:00Z", "context": {"source": "test"}}


def variant(**changes) -> str:
    return json.dumps({**GOOD, **changes})


# Lines on which the two must agree (see the module docstring of duckdb_features for the ones they do not).
CONTRACT_LINES = [
    variant(), variant(event_time=1.7e9 + 0.0000015), variant(event_time="2026-11-01"),
    variant(event_time="2026-11-01 10:15"), variant(event_time="2026-1-5T01:02:03Z"),
    variant(event_time="2026-11-01T10:15:00.1234567Z"), variant(event_time=" 2026-11-01T10:15:00Z "),
    variant(event_time="2026-11-01T10:15:00+0200"), variant(event_time="2026-11-01T10:15:00 UTC"),
    variant(event_time="2026-11-01T10:15:00.5"), variant(event_time="2026"), variant(event_time="2026-11"),
    variant(event_time="2026-02-30T00:00:00Z"), variant(event_time=True), variant(event_time={"a": 1}),
    variant(event_time=None), variant(event_time="2026-11-01T10:15:00+02"), variant(event_time="2026-11-01T10:15:60Z"),
    variant(event_time=1e20), variant(event_time=-1), variant(event_time="1969-12-31T23:59:59.999999Z"),
    variant(event_time="2026-11-03T00:05:00.9Z"), variant(event_time="2026-11-03T00:05:01Z"),
    variant(user_id="\t"), variant(user_id=" "), variant(user_id="\u00fc" * 16), variant(user_id="\u00fc" * 17),
    variant(user_id="\U0001F600" * 16), variant(event_type="View"), variant(value="3"), variant(value=[1]),
    variant(value={"x": 1}), variant(value=False), variant(value=12345678901234567890123456789012345678901),
    variant(context=[1]), variant(context=None), variant(context="x"), variant(context={"b": 1, "a": [1, 2.5, "x"]}),
    variant(event_id=123), variant(event_id=1.5), variant(item_id=None), '{"event_id": "m"}', "[]", '"str"', "null",
    "{}", '{"event_id": "x", "event_id": "y", "user_id": "u", "item_id": "i", "event_type": "view", '
          '"event_time": "2026-11-01T10:15:00Z"}',
    variant()[:-1] + ",}", variant()[:-1] + ', "value2": NaN}', variant()[:-1] + ', "v": Infinity}',
    variant(user_id="a, }"), variant(user_id="NaN"), '{"event_id": "\\ud800", "user_id": "u"}',
    '{"event_id": "ctl", "user_id": "a\tb"}', variant(user_id="a\u0000b"), variant()[:-1] + ', "z": 01}',
    variant()[:-9],
]


def test_contract_reasons_and_values_match_spark_line_by_line(spark, tmp_path):
    from pyspark.sql import functions as F

    from jobs.features.transforms import classify_events, landing_lines

    rules = EventRules(event_types=("view", "click", "add_to_cart", "purchase", "rating"), max_id_length=16,
                       max_future_skew_s=300, now_epoch_s=NOW)
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.jsonl").write_text("\n".join(CONTRACT_LINES) + "\n")
    files = spark.read.format("binaryFile").option("pathGlobFilter", "*.jsonl").load(str(landing))
    expected = {r.line_number: (r.quarantine_reason, r.event_us, r.value, r.context) for r in
                classify_events(landing_lines(files), rules).select(
                    "line_number", "quarantine_reason", F.unix_micros("event_time").alias("event_us"), "value",
                    "context").collect()}
    con = ddb.connect()
    ddb.classify_landing(con, ddb.landing_paths(landing), rules)
    got = {n: (reason, us, value, context) for n, reason, us, value, context in con.execute(
        "SELECT line_number, quarantine_reason, event_us, value, context FROM classified").fetchall()}

    def comparable(reason, us, value, context):
        # Values only matter for accepted records; context compared as an object (key order differs by design).
        return (reason, None, None, None) if reason else (reason, us, value, json.loads(context) if context else None)

    assert len(expected) == len(CONTRACT_LINES)
    differ = {n: (CONTRACT_LINES[n - 1], comparable(*expected[n]), comparable(*got.get(n, (None,) * 4)))
              for n in expected if comparable(*expected[n]) != comparable(*got.get(n, (None,) * 4))}
    assert not differ, differ
