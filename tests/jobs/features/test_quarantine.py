"""Bad input through the real job (JSON Lines and Parquet landing files), then `tidal quarantine` replay: a record
fixed by a rule change or by hand is accepted once, and never stays both accepted and quarantined."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.jobs.features.test_stream import NOW, event


GOOD_PARQUET = pd.DataFrame({
    "event_id": ["p1", "p2", "p3"], "user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i1", "i2"],
    "event_type": ["view", "click", "teleport"],
    "event_time": pd.to_datetime(["2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z", "2026-11-01T12:00:00Z"]),
    "value": [0.5, None, 1.0], "extra_column": ["ignored", "ignored", "ignored"]})


def quarantine_cli(argv: list[str]) -> dict:
    import contextlib
    import io

    from jobs.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["quarantine", *argv]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def replayed(spark, tmp_path_factory):
    from jobs.features.stream import run_features
    from tests.conftest import write_params
    from tidal.config import load_settings
    from tidal.storage import StorageLayout

    tmp = tmp_path_factory.mktemp("quarantine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIDAL_HOME", str(tmp / "home"))
        mp.setenv("TIDAL_PARAMS", str(write_params(tmp / "params.yaml")))
        settings = load_settings()
        layout = StorageLayout(settings.home).ensure()
        landing = layout.landing_events
        (landing / "events-000000.jsonl").write_text("\n".join(json.dumps(e) for e in [
            event(event_id="j1"), event(event_id="j2", event_type="teleport"), event(event_id="j3", user_id=""),
            event(event_id="j4", item_id="i" * 300)]) + "\n")
        # Micro-second timestamps, as Spark reads them (pandas writes nanoseconds by default).
        GOOD_PARQUET.to_parquet(landing / "events-000001.parquet", index=False, coerce_timestamps="us")
        GOOD_PARQUET.assign(user_id=[1, 2, 3]).drop(columns=["item_id"]).to_parquet(
            landing / "events-000002.parquet", index=False, coerce_timestamps="us")
        (landing / "events-000003.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
        first = run_features(settings, now_epoch_s=NOW)

        # The rule is corrected: "teleport" becomes a known event type. Replay those records as they are, and fix
        # j3 by hand through an export.
        listed_before = quarantine_cli(["list"])
        rule_fixed = quarantine_cli(["replay", "--reason", "unknown_event_type"])
        again = quarantine_cli(["replay", "--reason", "unknown_event_type"])
        export = tmp / "open.jsonl"
        quarantine_cli(["export", "--out", str(export), "--reason", "empty_user_id"])
        entries = [json.loads(line) for line in export.read_text().splitlines()]
        fixed = tmp / "fixed.jsonl"
        fixed.write_text("".join(json.dumps({**e, "record": {**json.loads(e["record"]), "user_id": "u-fixed"}}) + "\n"
                                 for e in entries))
        hand_fixed = quarantine_cli(["replay", "--fixed", str(fixed)])

        mp.setenv("TIDAL_PARAMS", str(write_params(tmp / "params.yaml", {
            "base": {"event_types": ["view", "click", "add_to_cart", "purchase", "rating", "teleport"]}})))
        second = run_features(load_settings(), now_epoch_s=NOW)
        listed_after = quarantine_cli(["list"])
        yield {"first": first, "second": second, "layout": layout, "listed_before": listed_before,
               "listed_after": listed_after, "rule_fixed": rule_fixed, "again": again, "hand_fixed": hand_fixed,
               "entries": entries}


def test_bad_input_classes_end_in_quarantine_and_the_rest_goes_on(replayed):
    first = replayed["first"]
    assert first["quarantine_reasons"] == {"empty_user_id": 1, "oversized_item_id": 1, "parquet_wrong_schema": 1,
                                           "unknown_event_type": 2, "unreadable_parquet": 1}
    # 4 JSON lines + 3 Parquet rows + one record for each of the two bad Parquet files
    assert (first["landed"], first["accepted"], first["quarantined"], first["duplicates"]) == (9, 3, 6, 0)
    bronze = pd.read_parquet(replayed["layout"].bronze_events)
    bronze = bronze[bronze["batch_id"].astype(int) == 0]
    assert sorted(bronze["event_id"]) == ["j1", "p1", "p2"]
    p2 = bronze.set_index("event_id").loc["p2"]
    assert pd.isna(p2["value"]) and str(p2["event_time"]).startswith("2026-11-01 11:00:00")


def test_wrong_parquet_schema_is_quarantined_with_the_problem(replayed):
    quarantine = pd.read_parquet(replayed["layout"].quarantine_events / "batch_id=0").set_index("quarantine_reason")
    assert quarantine.loc["parquet_wrong_schema", "raw_record"] == "missing column item_id; user_id is bigint, not string"
    assert quarantine.loc["parquet_wrong_schema", "source_file"].endswith("events-000002.parquet")
    assert quarantine.loc["unreadable_parquet", "raw_record"].startswith("unreadable: ")
    assert quarantine.loc["parquet_wrong_schema", "line_number"] == 0


def test_replay_lands_open_records_once_and_closes_them(replayed):
    assert replayed["listed_before"] == {"open": 6, "reasons": {
        "empty_user_id": 1, "oversized_item_id": 1, "parquet_wrong_schema": 1, "unknown_event_type": 2,
        "unreadable_parquet": 1}}
    assert replayed["rule_fixed"]["records"] == 2 and replayed["rule_fixed"]["reasons"] == {"unknown_event_type": 2}
    assert replayed["again"] == {"status": "nothing_to_replay", "records": 0, "skipped_file_level": 0}
    assert [e["reason"] for e in replayed["entries"]] == ["empty_user_id"]
    assert replayed["hand_fixed"]["records"] == 1

    second = replayed["second"]
    # both replay files, in one batch: two teleports (now a known type) and the fixed j3 are accepted
    assert (second["landed"], second["accepted"], second["quarantined"], second["duplicates"]) == (3, 3, 0, 0)
    bronze = pd.read_parquet(replayed["layout"].bronze_events)
    assert sorted(bronze["event_id"]) == ["j1", "j2", "j3", "p1", "p2", "p3"]
    assert bronze.set_index("event_id").loc["j3", "user_id"] == "u-fixed"
    # Nothing accepted is still open in quarantine; the file-level entries stay open until the file is re-landed.
    assert replayed["listed_after"] == {"open": 3, "reasons": {
        "oversized_item_id": 1, "parquet_wrong_schema": 1, "unreadable_parquet": 1}}


def test_fuzzed_lines_each_get_exactly_one_verdict_that_matches_the_contract(spark):
    """hypothesis: arbitrary JSON-ish lines (and junk) through landing_lines + classify_events, one Spark pass per
    example. Every non-blank line gets exactly one row; an accepted row satisfies every rule of the contract."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from jobs.features.transforms import EventRules, classify_events, landing_lines
    from tests.jobs.features.test_stream import EVENT_TYPES, files_frame

    rules = EventRules(event_types=EVENT_TYPES, max_id_length=16, max_future_skew_s=300, now_epoch_s=NOW)
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                       st.text(max_size=20))
    ident = st.one_of(st.text(min_size=0, max_size=20), scalar)
    timestamps = st.one_of(st.integers(-10**10, 2 * 10**9),
                           st.datetimes().map(lambda d: d.isoformat() + "Z"), st.text(max_size=25), scalar)
    record = st.fixed_dictionaries(
        {}, optional={"event_id": ident, "user_id": ident, "item_id": ident,
                      "event_type": st.one_of(st.sampled_from(EVENT_TYPES), ident), "value": scalar,
                      "event_time": timestamps, "context": st.one_of(st.dictionaries(st.text(max_size=5), scalar), scalar),
                      "extra": scalar})
    line = st.one_of(record.map(json.dumps), st.binary(max_size=40).map(lambda b: b.decode("latin-1")))

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(line, min_size=1, max_size=25))
    @example(['{"event_time": 253402300800.0}'])  # year 10000: once crashed the batch's stats collect
    @example(["{}", "\x1c"])  # not blank to the contract (only ASCII whitespace is), blank to str.strip()
    # Two valid records glued onto one line: once accepted as the first, the second lost (json.loads below refuses it).
    @example(['{"event_id": "a", "user_id": "u", "item_id": "i", "event_type": "view", "event_time": 1}'
              '{"event_id": "b", "user_id": "u", "item_id": "i", "event_type": "view", "event_time": 2}'])
    def check(lines):
        clean = [ln.replace("\n", " ").replace("\r", " ") for ln in lines]
        # Blank as the contract means it (Java regex \s: ASCII whitespace only), not str.strip(), which also strips
        # \x1c-\x1f and \x85: a line of '\x1c' is a malformed record, not a blank one.
        kept = [ln for ln in clean if ln.strip(" \t\n\x0b\f\r")]
        payload = "\n".join(clean).encode()
        from pyspark.sql import functions as F

        # event_time as epoch seconds: a quarantined record may hold any timestamp, beyond what datetime can hold.
        rows = classify_events(landing_lines(files_frame(spark, {"fuzz": payload})), rules) \
            .withColumn("event_time", F.col("event_time").cast("double")).collect()
        if not kept:
            assert [r.quarantine_reason for r in rows] == ["empty_file"]
            return
        assert len(rows) == len(kept)
        for r in rows:
            if r.quarantine_reason is None:
                assert all(isinstance(getattr(r, f), str) and getattr(r, f).strip() and len(getattr(r, f)) <= 16
                           for f in ("event_id", "user_id", "item_id"))
                assert r.event_type in EVENT_TYPES and r.event_time is not None
                parsed = json.loads(r.line)
                assert isinstance(parsed, dict) and parsed["event_id"] == r.event_id

    check()
