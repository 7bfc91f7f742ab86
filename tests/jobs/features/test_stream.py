"""features: the pure transforms on tiny DataFrames (local[1]), then the streaming job end to end on a private home."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from jobs.features.transforms import EventRules, classify_events, landing_lines, training_examples


EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
# A fixed "now" so that the future-timestamp rule is deterministic: 2026-11-03T00:00:00Z.
NOW = datetime(2026, 11, 3, tzinfo=timezone.utc).timestamp()
SKEW_S = 300
RULES = EventRules(event_types=EVENT_TYPES, max_id_length=16, max_future_skew_s=SKEW_S, now_epoch_s=NOW)

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "value": 0.5,
        "event_time": "2026-11-01T10:15:00Z", "context": {"source": "test"}}


def event(**changes) -> dict:
    """GOOD with some fields changed; a value of `...` removes the field."""
    record = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return record


def nested(depth: int) -> dict:
    """{"n": {"n": ... {"leaf": 1}}}, `depth` objects deep."""
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def line(**changes) -> bytes:
    return json.dumps(event(**changes)).encode()


# One landing file per case: name -> (file bytes, expected quarantine reason of its one row; None = accepted).
LINE_CASES: dict[str, tuple[bytes, str | None]] = {
    "valid_iso_time": (line(), None),
    "valid_epoch_seconds": (line(event_time=int(datetime(2026, 11, 1, 10, 15, tzinfo=timezone.utc).timestamp())), None),
    "valid_unknown_fields": (line(referrer="newsletter", extra={"a": [1, 2]}), None),
    "valid_without_value": (line(value=..., event_type="click"), None),
    "valid_integer_value": (line(value=3, event_type="rating"), None),
    "valid_at_skew_limit": (line(event_time=int(NOW + SKEW_S)), None),
    "valid_iso_with_offset": (line(event_time="2026-11-01T12:15:00+02:00"), None),
    "valid_id_at_max_length": (line(user_id="u" * 16), None),
    "broken_json": (json.dumps(GOOD).encode()[:-7], "malformed_json"),
    # Two records glued onto one line, or junk after one: the whole line is quarantined, never half accepted.
    "two_objects_on_one_line": (line() + line(event_id="e-second"), "malformed_json"),
    "two_objects_with_space": (line() + b"  " + line(event_id="e-second"), "malformed_json"),
    "trailing_junk": (line() + b" junk", "malformed_json"),
    "trailing_number": (line() + b" 5", "malformed_json"),
    "two_objects_with_comma": (line() + b"," + line(event_id="e-second"), "malformed_json"),
    "two_objects_after_a_tab": (b"\t" + line() + line(event_id="e-second"), "malformed_json"),
    # Deeper than any fixed number of regex passes could check: the glued record after it is still caught.
    "two_objects_with_comma_nested_20_deep": (line(context=nested(20)) + b"," + line(event_id="e-second"),
                                               "malformed_json"),
    "nested_20_deep_is_fine": (line(context=nested(20)), None),
    # A `]` that would close the parser's wrapping array inside the line, and a line that carries an MD5 of its
    # own start as a second value (the marker is the MD5 of the whole line, so it cannot match).
    "closing_bracket_then_more": (line() + b'],"x"', "malformed_json"),
    "second_value_is_the_md5_of_the_first": (line() + b',"' + hashlib.md5(line()).hexdigest().encode() + b'"',
                                             "malformed_json"),
    "braces_inside_strings_are_fine": (line(context={"note": 'a } { b "} {"'}), None),
    "trailing_tab_is_fine": (line() + b"\t", None),
    "arrays_of_objects_are_fine": (line(context={"items": [{"a": 1}, {"b": [{"c": 2}, {"d": 3}]}]}), None),
    "long_string_does_not_overflow": (line(context={"note": "x" * 100_000}), None),
    "bare_time_without_date": (line(event_time="10:15:00"), "unparseable_event_time"),
    "not_an_object_array": (json.dumps([GOOD]).encode(), "not_a_json_object"),
    "not_an_object_scalar": (b"42", "not_a_json_object"),
    "missing_user_id": (line(user_id=...), "missing_user_id"),
    "missing_event_time": (line(event_time=...), "missing_event_time"),
    "null_event_id": (line(event_id=None), "missing_event_id"),
    "user_id_number": (line(user_id=123), "wrong_type_user_id"),
    "event_type_bool": (line(event_type=True), "wrong_type_event_type"),
    "value_string": (line(value="not-a-number"), "wrong_type_value"),
    "value_bool": (line(value=True), "wrong_type_value"),
    "context_string": (line(context="abc"), "wrong_type_context"),
    "context_string_that_looks_like_an_object": (line(context='{"a": 1}'), "wrong_type_context"),
    "context_array": (line(context=[{"a": 1}]), "wrong_type_context"),
    "context_number": (line(context=-1.5), "wrong_type_context"),
    "context_bool": (line(context=False), "wrong_type_context"),
    "context_null_is_fine": (line(context=None), None),
    "context_empty_object_is_fine": (line(context={}), None),
    "empty_item_id": (line(item_id=""), "empty_item_id"),
    "blank_item_id": (line(item_id="   "), "empty_item_id"),
    "oversized_user_id": (line(user_id="u" * 17), "oversized_user_id"),
    "unknown_event_type": (line(event_type="teleport"), "unknown_event_type"),
    "unparseable_time": (line(event_time="yesterday"), "unparseable_event_time"),
    "future_time": (line(event_time="2026-11-03T01:00:00Z"), "future_event_time"),
    "just_past_skew_limit": (line(event_time=int(NOW + SKEW_S + 1)), "future_event_time"),
    "before_1970_iso": (line(event_time="1969-12-31T23:59:59Z"), "event_time_before_1970"),
    "before_1970_epoch": (line(event_time=-5), "event_time_before_1970"),
    "invalid_utf8": (line()[:-2] + b'\xff\xfe"}', "invalid_utf8"),
    "empty_file": (b"", "empty_file"),
    "spaces_only_file": (b"   ", "empty_file"),
}


def files_frame(spark, files: dict[str, bytes]):
    """binaryFile-shaped rows (path, content, length), one per named file."""
    return spark.createDataFrame([(f"file:/landing/{name}.jsonl", bytearray(data), len(data))
                                  for name, data in files.items()], "path string, content binary, length long")


@pytest.fixture(scope="module")
def classified(spark) -> dict[str, list]:
    """All LINE_CASES through landing_lines + classify_events in one Spark job: case name -> its rows."""
    files = {name: data for name, (data, _) in LINE_CASES.items()}
    rows = classify_events(landing_lines(files_frame(spark, files)), RULES).collect()
    by_case: dict[str, list] = {name: [] for name in LINE_CASES}
    for row in rows:
        by_case[Path(row.source_file).stem].append(row)
    return by_case


@pytest.mark.parametrize("case", list(LINE_CASES))
def test_classify_gives_exact_reason_per_line(classified, case):
    rows = classified[case]
    assert len(rows) == 1, f"{case}: expected one row, got {rows}"
    assert rows[0].quarantine_reason == LINE_CASES[case][1]


def test_accepted_rows_carry_typed_fields(classified):
    iso, epoch, extra = (classified[c][0] for c in ("valid_iso_time", "valid_epoch_seconds", "valid_unknown_fields"))
    expected_time = datetime(2026, 11, 1, 10, 15)  # session time zone is UTC; Spark returns naive datetimes
    assert iso.event_time == expected_time and epoch.event_time == expected_time
    assert classified["valid_iso_with_offset"][0].event_time == expected_time
    assert (iso.event_id, iso.user_id, iso.item_id, iso.event_type, iso.value) == ("e1", "u1", "i1", "view", 0.5)
    assert json.loads(iso.context) == {"source": "test"}
    assert iso.line_number == 1 and iso.file_reason is None
    assert extra.quarantine_reason is None and extra.user_id == "u1"
    assert classified["valid_without_value"][0].value is None
    assert classified["valid_integer_value"][0].value == 3.0


def test_raw_line_is_kept_for_quarantine(classified):
    broken = classified["broken_json"][0]
    assert broken.line == json.dumps(GOOD)[:-7]
    empty = classified["empty_file"][0]
    assert (empty.line, empty.line_number) == (None, 0)


def test_landing_lines_splits_lines_and_skips_blank_ones(spark):
    content = b'{"a": 1}\r\n\n   \n{"b": 2}\n'
    rows = landing_lines(files_frame(spark, {"mixed": content})).orderBy("line_number").collect()
    assert [(r.line_number, r.line, r.file_reason) for r in rows] == [(1, '{"a": 1}', None), (4, '{"b": 2}', None)]


def test_landing_lines_drop_one_carriage_return_per_line_and_keep_the_others(spark):
    # CRLF lines, a CR in the middle of a line, a doubled CR before the LF, and a last line ending in a lone CR.
    content = b'{"a": 1}\r\n{"b": "x\ry"}\r\n{"c": 3}\r\r\n\r\n{"d": 4}\r'
    rows = landing_lines(files_frame(spark, {"crlf": content})).orderBy("line_number").collect()
    assert [(r.line_number, r.line) for r in rows] == [
        (1, '{"a": 1}'), (2, '{"b": "x\ry"}'), (3, '{"c": 3}\r'), (5, '{"d": 4}')]


def test_invalid_utf8_marks_only_the_line_with_bad_bytes(spark):
    content = line(event_id="ok1") + b"\n" + b'{"event_id": "\xc3\x28"}' + b"\n" + line(event_id="ok2") + b"\n"
    rows = classify_events(landing_lines(files_frame(spark, {"utf8": content})), RULES).orderBy("line_number").collect()
    assert [(r.line_number, r.quarantine_reason) for r in rows] == [(1, None), (2, "invalid_utf8"), (3, None)]


@pytest.mark.parametrize("content", [b"\n", b"\n\n  \n"], ids=["newline_only", "blank_lines_only"])
def test_whitespace_only_file_is_quarantined_as_empty_file(spark, content):
    rows = landing_lines(files_frame(spark, {"blank": content})).collect()
    assert [(r.line_number, r.line, r.file_reason) for r in rows] == [(0, None, "empty_file")]


def test_training_examples_values(spark):
    from pyspark.sql import functions as F

    def at(day, hour):
        return datetime(2026, 11, day, hour, 30, tzinfo=timezone.utc)

    accepted = spark.createDataFrame([
        ("e1", "u1", "i1", "view", 0.5, at(1, 0)),
        ("e2", "u1", "i2", "purchase", 12.0, at(1, 13)),
        ("e3", "u1", "i1", "click", None, at(1, 23)),
        ("e4", "u2", "i1", "rating", 4.0, at(2, 7)),      # rating is not in the weight map: weight 1.0
        ("e5", "u3", "i3", "add_to_cart", None, at(2, 7)),
    ], "event_id string, user_id string, item_id string, event_type string, value double, event_time timestamp")
    weights = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
    out = training_examples(accepted, weights)
    assert out.columns == ["event_id", "user_id", "item_id", "event_type", "value", "event_time", "timestamp",
                           "event_weight", "hour_of_day", "user_batch_events", "item_batch_events"]
    rows = {r.event_id: r for r in out.orderBy(F.col("event_id")).collect()}
    assert {e: r.event_weight for e, r in rows.items()} == {"e1": 1.0, "e2": 5.0, "e3": 2.0, "e4": 1.0, "e5": 3.0}
    assert {e: r.hour_of_day for e, r in rows.items()} == {"e1": 0, "e2": 13, "e3": 23, "e4": 7, "e5": 7}
    assert {e: r.user_batch_events for e, r in rows.items()} == {"e1": 3, "e2": 3, "e3": 3, "e4": 1, "e5": 1}
    assert {e: r.item_batch_events for e, r in rows.items()} == {"e1": 3, "e2": 1, "e3": 3, "e4": 3, "e5": 1}
    assert rows["e1"].timestamp == at(1, 0).timestamp()
    assert rows["e3"].value is None and rows["e2"].value == 12.0


# ---- run_features end to end ---------------------------------------------------------------------------------

def day(d: int, h: int = 10) -> str:
    return f"2026-11-{d:02d}T{h:02d}:00:00Z"


FIRST_FILE_GOOD = [event(event_id=f"a{n}", user_id=f"u{n % 3}", item_id=f"i{n % 4}", event_time=day(1 + n % 2, n))
                   for n in range(6)]
FIRST_FILE_BAD = {
    "malformed_json": '{"event_id": "x1", "user_id": ',
    "missing_user_id": json.dumps(event(event_id="x2", user_id=...)),
    "wrong_type_user_id": json.dumps(event(event_id="x3", user_id=7)),
    "wrong_type_value": json.dumps(event(event_id="x4", value="lots")),
    "unknown_event_type": json.dumps(event(event_id="x5", event_type="teleport")),
    "future_event_time": json.dumps(event(event_id="x6", event_time="2030-01-01T00:00:00Z")),
    "missing_event_id": json.dumps(event(event_id=None)),
}
SECOND_FILE_GOOD = [event(event_id=f"b{n}", user_id=f"u{n}", item_id="i9", event_time=day(2, 20)) for n in range(3)]
# The first run's newest event is day(2, 5); with the default 2-day allowed lateness the watermark is 10-31T05:00.
LATE_WITHIN = event(event_id="late-ok", user_id="u8", item_id="i8", event_time="2026-11-01T00:00:00Z")
LATE_BEYOND = event(event_id="late-out", user_id="u8", item_id="i8", event_time="2026-10-30T00:00:00Z")


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def feature_runs(spark, tmp_path_factory):
    """Two runs of the streaming job on one home: the first over a dirty landing zone, the second over one new file."""
    from jobs.features.stream import run_features
    from tests.conftest import private_home
    from tidal.storage import StorageLayout

    tmp = tmp_path_factory.mktemp("features")
    with private_home(tmp) as settings:
        layout = StorageLayout(settings.home).ensure()
        landing = layout.landing_events
        duplicate_in_file = json.dumps(event(**{**FIRST_FILE_GOOD[0], "value": 0.9}))  # same event_id "a0"
        write_lines(landing / "events-000000.jsonl",
                    [json.dumps(e) for e in FIRST_FILE_GOOD[:3]] + list(FIRST_FILE_BAD.values())
                    + [json.dumps(e) for e in FIRST_FILE_GOOD[3:]] + [duplicate_in_file])
        (landing / "events-000001.jsonl").write_bytes(b"")
        (landing / "events-000002.jsonl").write_bytes(line(event_id="c1") + b"\n" + b'{"event_id": "\xff"}\n')
        (landing / "notes.txt").write_text("not a landing file\n")
        first = run_features(settings, reports_dir=tmp / "reports1", now_epoch_s=NOW)

        duplicate_across_runs = json.dumps(event(event_id="a1", event_time=day(2, 23)))
        write_lines(landing / "events-000003.jsonl", [json.dumps(e) for e in SECOND_FILE_GOOD] + [duplicate_across_runs]
                    + [json.dumps(LATE_WITHIN), json.dumps(LATE_BEYOND)])
        second = run_features(settings, reports_dir=tmp / "reports2", now_epoch_s=NOW)
        third = run_features(settings, now_epoch_s=NOW)
        (landing / "events-000004.jsonl").write_bytes(b"")
        only_empty = run_features(settings, now_epoch_s=NOW)
        yield {"first": first, "second": second, "third": third, "only_empty": only_empty, "layout": layout,
               "tmp": tmp}


def test_first_run_counts_reconcile_exactly(feature_runs):
    first = feature_runs["first"]
    expected_reasons = {reason: 1 for reason in FIRST_FILE_BAD} | {"empty_file": 1, "invalid_utf8": 1}
    assert first["quarantine_reasons"] == dict(sorted(expected_reasons.items()))
    assert first["batch_ids"] == [0]
    assert first["files"] == 3  # the zero-byte file counts, notes.txt does not
    assert first["accepted"] == 7  # six good lines + c1
    assert first["quarantined"] == 9
    assert first["duplicates"] == 1
    assert first["landed"] == 17
    assert first["landed"] == first["accepted"] + first["quarantined"] + first["duplicates"]


def test_summary_is_written_as_json(feature_runs):
    written = json.loads((feature_runs["tmp"] / "reports1" / "features.json").read_text())
    assert {k: v for k, v in written.items() if k != "seconds"} == \
        {k: v for k, v in feature_runs["first"].items() if k != "seconds"}


def test_duplicate_within_file_keeps_the_first_record(feature_runs):
    examples = pd.read_parquet(feature_runs["layout"].examples_batch(0))
    assert sorted(examples["event_id"]) == sorted([e["event_id"] for e in FIRST_FILE_GOOD] + ["c1"])
    assert examples.set_index("event_id").loc["a0", "value"] == FIRST_FILE_GOOD[0]["value"]


def test_second_run_reads_only_the_new_file(feature_runs):
    second = feature_runs["second"]
    assert second["batch_ids"] == [1]
    assert second["files"] == 1
    assert (second["landed"], second["accepted"], second["quarantined"], second["duplicates"]) == (6, 4, 1, 1)
    assert second["quarantine_reasons"] == {"late": 1}
    examples = pd.read_parquet(feature_runs["layout"].examples_batch(1)).set_index("event_id")
    assert sorted(examples.index) == ["b0", "b1", "b2", "late-ok"]  # late but inside the allowed lateness
    # counts are per batch, not over history
    assert examples["item_batch_events"].to_dict() == {"b0": 3, "b1": 3, "b2": 3, "late-ok": 1}
    assert examples["user_batch_events"].to_dict() == {"b0": 1, "b1": 1, "b2": 1, "late-ok": 1}
    # Sliding-window popularity comes from the item bucket state: i9's three events share one 5-minute bucket.
    assert examples["item_events_last_3600s"].to_dict() == {"b0": 3, "b1": 3, "b2": 3, "late-ok": 1}
    assert examples["item_events_last_86400s"].to_dict() == {"b0": 3, "b1": 3, "b2": 3, "late-ok": 1}


def test_event_beyond_the_allowed_lateness_is_quarantined_as_late_not_dropped(feature_runs):
    layout = feature_runs["layout"]
    quarantine = pd.read_parquet(layout.quarantine_events / "batch_id=1")
    assert quarantine[["quarantine_reason", "line_number"]].values.tolist() == [["late", 6]]
    assert json.loads(quarantine["raw_record"].iloc[0])["event_id"] == "late-out"
    manifest = json.loads((layout.feature_state / "batches" / "00000001.json").read_text())
    assert manifest["watermark"] == "2026-10-31T05:00:00+00:00"
    assert manifest["max_event_time"] == "2026-11-02T20:00:00+00:00"


def test_dedupe_state_is_bounded_by_the_watermark(feature_runs):
    """Each batch keeps one snapshot of the ids still above its watermark; older snapshots are removed."""
    state = feature_runs["layout"].feature_state / "event_ids"
    snapshots = sorted(p.name for p in state.glob("batch_id=*"))
    assert snapshots == ["batch_id=1", "batch_id=2"]  # batch 0's snapshot went once batch 2 was done
    ids = pd.read_parquet(state / "batch_id=1")
    # watermark after batch 1: 2026-11-02T20:00 - 2 days = 10-31T20:00, so every accepted id so far is still kept
    assert sorted(ids["event_id"]) == sorted([e["event_id"] for e in FIRST_FILE_GOOD] + ["c1", "b0", "b1", "b2", "late-ok"])


def test_run_with_no_new_files_makes_no_batch(feature_runs):
    third = feature_runs["third"]
    assert third["batch_ids"] == [] and third["files"] == 0
    assert (third["landed"], third["accepted"], third["quarantined"], third["duplicates"]) == (0, 0, 0, 0)


def test_run_with_only_a_zero_byte_file_reports_it_once(feature_runs):
    only_empty = feature_runs["only_empty"]
    assert only_empty["batch_ids"] == [2]
    assert only_empty["files"] == 1
    assert (only_empty["landed"], only_empty["quarantined"]) == (1, 1)
    assert only_empty["quarantine_reasons"] == {"empty_file": 1}


def test_quarantine_holds_raw_record_reason_and_source(feature_runs):
    layout = feature_runs["layout"]
    quarantine = pd.read_parquet(layout.quarantine_events / "batch_id=0")
    assert {"raw_record", "quarantine_reason", "source_file", "line_number"} <= set(quarantine.columns)
    by_reason = quarantine.set_index("quarantine_reason")
    for reason, raw in FIRST_FILE_BAD.items():
        assert by_reason.loc[reason, "raw_record"] == raw
        assert by_reason.loc[reason, "source_file"].endswith("/events-000000.jsonl")
    assert by_reason.loc["malformed_json", "line_number"] == 4
    assert by_reason.loc["empty_file", "source_file"].endswith("/events-000001.jsonl")
    assert pd.isna(by_reason.loc["empty_file", "raw_record"])
    assert by_reason.loc["invalid_utf8", "source_file"].endswith("/events-000002.jsonl")
    assert pd.read_parquet(layout.quarantine_events / "batch_id=1")["quarantine_reason"].tolist() == ["late"]


def test_bronze_is_partitioned_by_event_date(feature_runs):
    bronze = feature_runs["layout"].bronze_events
    assert sorted(p.name for p in bronze.glob("event_date=*")) == ["event_date=2026-11-01", "event_date=2026-11-02"]
    assert sorted(p.name for p in (bronze / "event_date=2026-11-02").glob("batch_id=*")) == ["batch_id=0", "batch_id=1"]
    table = pd.read_parquet(bronze)
    assert len(table) == 11  # 7 accepted in the first run + 4 in the second
    table["event_date"] = table["event_date"].astype(str)
    assert table.set_index("event_id").loc["b0", "event_date"] == "2026-11-02"
    assert table.set_index("event_id").loc["a0", "event_date"] == "2026-11-01"
    assert table["event_id"].is_unique


def test_dedupe_with_watermark_statuses(spark):
    """Pure transform: late beyond the watermark -> quarantined "late"; within it -> accepted; seen id -> duplicate.
    Only a quarantined record keeps its raw line (the only one ever written with it)."""
    from pyspark.sql import functions as F

    from jobs.features.transforms import dedupe_with_watermark

    parsed = spark.createDataFrame([
        ("new", "2026-11-02 00:00:00", None, "f", 1), ("seen", "2026-11-02 00:00:00", None, "f", 2),
        ("old", "2026-10-01 00:00:00", None, "f", 3), ("new", "2026-11-02 00:00:00", None, "f", 4),
        ("bad", "2026-10-01 00:00:00", "missing_user_id", "f", 5), ("edge", "2026-11-01 00:00:00", None, "f", 6),
    ], "event_id string, event_time string, quarantine_reason string, source_file string, line_number int") \
        .withColumn("event_time", F_to_ts("event_time")) \
        .withColumn("line", F.concat(F.lit("raw "), F.col("line_number").cast("string")))
    seen = spark.createDataFrame([("seen", datetime(2026, 11, 2))], "event_id string, event_time timestamp")
    watermark = datetime(2026, 11, 1, tzinfo=timezone.utc)
    rows = dedupe_with_watermark(parsed, seen, watermark).orderBy("line_number").collect()
    assert [(r.event_id, r.status, r.quarantine_reason) for r in rows] == [
        ("new", "accepted", None), ("seen", "duplicate", None), ("old", "quarantined", "late"),
        ("new", "duplicate", None), ("bad", "quarantined", "missing_user_id"), ("edge", "accepted", None)]
    assert [r.line for r in rows] == [None, None, "raw 3", None, "raw 5", None]
    no_watermark = dedupe_with_watermark(parsed, seen, None).orderBy("line_number").collect()
    assert [r.status for r in no_watermark][2] == "accepted"


def F_to_ts(name):
    from pyspark.sql import functions as F

    return F.to_timestamp(F.col(name))


def test_items_csv_is_read_by_its_header_without_a_spark_job(spark, tmp_path):
    from jobs.features.stream import read_items_csv

    path = tmp_path / "items.csv"
    path.write_text('title,item_id,categories\n"Heat, the film",i1,Action|Crime\nUp,i2,Animation\n')

    def jobs_run_by(build, group: str) -> tuple[int, Any]:
        spark.sparkContext.setJobGroup(group, "items.csv read")
        try:
            frame = build()
        finally:
            spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
        return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group)), frame

    jobs, frame = jobs_run_by(lambda: read_items_csv(spark, path), "items-csv-ours")
    assert jobs == 0
    assert frame.columns == ["title", "item_id", "categories"]
    assert sorted(tuple(r) for r in frame.collect()) == [("Heat, the film", "i1", "Action|Crime"),
                                                          ("Up", "i2", "Animation")]
    # What the header option alone costs: one job to read the names, on every micro-batch.
    assert jobs_run_by(lambda: spark.read.option("header", True).csv(str(path)), "items-csv-header")[0] == 1


def test_an_entity_snapshot_written_before_batch_events_existed_is_read_and_carried_on(spark, tmp_path):
    from jobs.features.state import ENTITY_STATE_SCHEMA, update_entity_state
    from jobs.features.stream import read_snapshot

    old = tmp_path / "batch_id=0"
    spark.createDataFrame([("user\u0001u1", 2.0, NOW - 3600)], "key string, decayed_count double, last_event_s double") \
        .write.parquet(str(old))
    snapshot = read_snapshot(spark, old, ENTITY_STATE_SCHEMA)
    assert [tuple(r) for r in snapshot.collect()] == [("user\u0001u1", 2.0, NOW - 3600, None)]
    events = spark.createDataFrame([("u2", "i1", "view", datetime.fromtimestamp(NOW, tz=timezone.utc))],
                                   "user_id string, item_id string, event_type string, event_time timestamp")
    state = {r.key: r for r in update_entity_state(snapshot, events, 3600.0).collect()}
    assert (state["user\u0001u1"].decayed_count, state["user\u0001u1"].batch_events) == (2.0, 0)
    assert state["user\u0001u2"].batch_events == 1


def test_a_failed_output_fails_its_batch_after_the_others_finished_and_the_rerun_replays_it(spark, tmp_path,
                                                                                             monkeypatch):
    """The batch's outputs are written side by side (process_micro_batch): one that fails must fail the batch with
    its own error, only once every other output has finished (none is still writing when the batch is replayed), and
    without the manifest, so the next run replays the batch whole."""
    import jobs.features.stream as stream
    from tests.conftest import private_home
    from tidal.storage import StorageLayout

    with private_home(tmp_path) as settings:
        layout = StorageLayout(settings.home).ensure()
        write_lines(layout.landing_events / "events-000000.jsonl",
                    [json.dumps(e) for e in FIRST_FILE_GOOD] + [FIRST_FILE_BAD["malformed_json"]])

        def quarantine_that_fails(classified, batch_id, layout_):
            raise RuntimeError("disk full (injected)")

        monkeypatch.setattr(stream, "write_quarantine", quarantine_that_fails)
        with pytest.raises(Exception, match="disk full \\(injected\\)"):
            stream.run_features(settings, now_epoch_s=NOW)
        finished_when_it_failed = {name: (path / "_SUCCESS").exists() for name, path in {
            "examples": layout.examples_batch(0), "entities": layout.feature_state / "entities" / "batch_id=0",
            "event_ids": layout.feature_state / "event_ids" / "batch_id=0"}.items()}
        assert finished_when_it_failed == {"examples": True, "entities": True, "event_ids": True}
        assert list((layout.feature_state / "batches").glob("*.json")) == []

        monkeypatch.undo()
        rerun = stream.run_features(settings, now_epoch_s=NOW)
    assert rerun["batch_ids"] == [0]
    assert (rerun["landed"], rerun["accepted"], rerun["quarantined"]) == (7, 6, 1)
    assert rerun["quarantine_reasons"] == {"malformed_json": 1}
    assert len(pd.read_parquet(layout.quarantine_events / "batch_id=0")) == 1


def test_only_a_landing_folder_holding_a_parquet_file_makes_a_batch_look_for_them(tmp_path):
    """batch_lines skips the query that names a batch's Parquet files (it reads every file's content) unless one has
    landed: in the folder or below it, in any case of its extension."""
    from jobs.features.stream import holds_parquet

    landing = tmp_path / "events"
    assert not holds_parquet(landing)
    landing.mkdir()
    (landing / "events-000000.jsonl").write_text("{}\n")
    (landing / "notes.parquet.txt").write_text("not a Parquet file")
    assert not holds_parquet(landing)
    (landing / "day=1").mkdir()
    (landing / "day=1" / "events-000001.PARQUET").write_bytes(b"PAR1")
    assert holds_parquet(landing)


def test_small_window_sums_are_broadcast_inside_the_examples_query_and_large_ones_cached_first(spark, tmp_path):
    """window_sums_for_join: under its size bound the sums join by a broadcast hint and run no job of their own; over
    it they are cached and counted first so the planner sees their size. Either way the examples get the same
    window counts."""
    from jobs.features.state import (ITEM_BUCKET_STATE_SCHEMA, item_window_sums, join_window_popularity,
                                     popularity_keys, update_item_buckets)
    from jobs.features.stream import SUMS_BROADCAST_MAX_BYTES, window_sums_for_join
    from tests.conftest import private_home

    bucket, windows = 3600, (3600, 7200)
    examples = spark.createDataFrame(
        [(f"e{n}", f"i{n % 3}", datetime.fromtimestamp(NOW - 600 * n, tz=timezone.utc)) for n in range(12)],
        "event_id string, item_id string, event_time timestamp")
    buckets = update_item_buckets(spark.createDataFrame([], ITEM_BUCKET_STATE_SCHEMA), examples, bucket)
    group = iter(range(1000))

    def joined(max_training_events):
        spark.sparkContext.setJobGroup(f"sums-{next(group)}", "window sums")
        with private_home(tmp_path) as settings:
            sums, cached = window_sums_for_join(item_window_sums(popularity_keys(examples, bucket), buckets, bucket,
                                                                 windows), max_training_events, settings)
        jobs = spark.sparkContext.statusTracker().getJobIdsForGroup(spark.sparkContext.getLocalProperty(
            "spark.jobGroup.id"))
        out = join_window_popularity(examples, sums, bucket, windows)
        plan = out._jdf.queryExecution().executedPlan().toString()
        rows = sorted(tuple(r) for r in out.select("event_id", "item_events_last_3600s", "item_events_last_7200s")
                      .collect())
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
        if cached:
            sums.unpersist()
        return cached, len(jobs), "BroadcastHashJoin" in plan, rows

    small = joined(12)
    # Over the bound: as many events as would make the bound exceed SUMS_BROADCAST_MAX_BYTES even with 1-byte ids.
    large = joined(SUMS_BROADCAST_MAX_BYTES)
    assert small[:3] == (False, 0, True)
    # Cached and counted: the count's jobs (its shuffle stages are jobs of their own under adaptive execution).
    assert large[0] is True and large[1] >= 1
    assert small[3] == large[3]
    # e0..e11 are 10 minutes apart back from NOW (an hour's start), items i0, i1, i2 in turn: e0 alone in NOW's
    # hour, e1-e6 in the hour before, e7-e11 in the one before that. A 1 h window is the example's own hour; 2 h
    # adds the hour before it.
    expected = {"e0": (1, 3), "e3": (2, 3), "e6": (2, 3), "e9": (1, 1), "e1": (2, 4), "e4": (2, 4), "e7": (2, 2),
                "e10": (2, 2), "e2": (2, 4), "e5": (2, 4), "e8": (2, 2), "e11": (2, 2)}
    assert {r[0]: r[1:] for r in small[3]} == expected
