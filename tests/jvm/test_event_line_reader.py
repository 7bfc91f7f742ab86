"""tidal's event line reader (jvm/src/tidal/spark/EventLineReader.java): the fields it reads from a plain event line,
the lines it leaves to the variant path, and the contract kept: classify_events gives the same rows with it as
without it, on every case of the event contract's tests and every bad line of the classification A/B."""

from __future__ import annotations

import json
import logging
import math

import pytest

from benchmarks.features import classify_ab
from jobs.features.transforms import classify_events, landing_lines
from tests.jobs.features.test_stream import LINE_CASES, RULES, files_frame
from tidal import spark as tidal_spark
from tidal.spark import EVENT_LINE_READER, JVM_JAR, event_line_reader

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view", "value": 0.5,
        "event_time": "2026-11-01T10:15:00Z", "context": {"source": "test"}}


@pytest.fixture(scope="module")
def reader(spark) -> str:
    if not JVM_JAR.exists():
        pytest.fail(f"{JVM_JAR} is missing: build it with `make jvm` (a JDK's javac)")
    name = event_line_reader(spark)
    assert name == EVENT_LINE_READER
    return name


def read(spark, reader: str, lines: list[str]) -> list:
    """The reader's row for each line, in order (None where it leaves the line to the variant path)."""
    from pyspark.sql import functions as F

    frame = spark.createDataFrame([(i, line) for i, line in enumerate(lines)], "i int, line string")
    rows = frame.select("i", F.call_function(reader, F.col("line")).alias("r")).orderBy("i").collect()
    return [row.r for row in rows]


def test_reads_the_fields_of_plain_lines(spark, reader):
    lines = [
        json.dumps(GOOD),
        json.dumps({**GOOD, "value": 3, "event_time": 1761992100, "context": None, "extra": [1, {"a": "b"}]}),
        json.dumps({**GOOD, "user_id": "a\"b\\c\u00e9", "context": {"b": [1.50, True, None], "A": {"z": -0.0}}}),
        json.dumps({k: v for k, v in GOOD.items() if k not in ("value", "context")}) + " \t",
        json.dumps({**GOOD, "value": -0.0, "event_time": -0.0}),
    ]
    first, second, third, fourth, zero = read(spark, reader, lines)
    assert tuple(first) == ("e1", "u1", "i1", "view", 0.5, "2026-11-01T10:15:00Z", None, '{"source":"test"}')
    assert (second.value, second.time_text, second.time_seconds, second.context) == (3.0, None, 1761992100.0, "null")
    # Ids are decoded as the variant decodes them; the context is written as Spark's to_json writes the variant:
    # keys sorted, decimals without trailing zeros, -0.0 as 0.
    assert third.user_id == "a\"b\\c\u00e9"
    assert third.context == '{"A":{"z":0},"b":[1.5,true,null]}'
    assert (fourth.value, fourth.context) == (None, None)
    # A decimal has no negative zero: the variant path reads -0.0 as 0.0, and so does the reader.
    assert math.copysign(1, zero.value) == math.copysign(1, zero.time_seconds) == 1.0


@pytest.mark.parametrize("line", [
    "",                                                              # nothing
    " " + json.dumps(GOOD),                                          # not starting with its object
    json.dumps(GOOD) + json.dumps(GOOD),                             # a second value
    json.dumps(GOOD) + " junk",
    json.dumps(GOOD)[:-3],                                           # cut
    json.dumps([GOOD]),                                              # not an object
    json.dumps({**GOOD, "user_id": 5}),                              # an id that is not a string
    json.dumps({k: v for k, v in GOOD.items() if k != "item_id"}),   # an id missing
    json.dumps({**GOOD, "event_time": None}),                        # no event time
    json.dumps({**GOOD, "value": "3"}),                              # a value that is not a number
    json.dumps({**GOOD, "value": 0.12345678901234566}),              # a number longer than it reads exactly
    json.dumps({**GOOD, "value": 12345678901234567890}),             # an integer beyond a long
    json.dumps({**GOOD, "value": 1e300}),                            # an exponent
    json.dumps({**GOOD, "context": "x"}),                            # a context that is not an object
    json.dumps({**GOOD, "context": {"a": "tab\there"}}),             # a context string that needs an escape
    json.dumps({**GOOD, "context": {}})[:-2] + '"a": 1e5}}',         # a context number it does not write
    json.dumps(GOOD)[:-1] + ', "user_id": "u2"}',                    # a duplicate key
    json.dumps({**GOOD, "context": {}})[:-2] + '"a": 1, "a": 2}}',   # a duplicate key, nested
    json.dumps(GOOD)[:-1] + ', "extra": ' + "[" * 70 + "]" * 70 + "}",  # nested deeper than its limit
    json.dumps(GOOD)[:-1] + ', "extra": ' + "1" * 200 + "}",           # a number longer than its limit
    json.dumps({**GOOD, "note": "x" * 70_000}),                      # a line longer than its limit
    json.dumps({**GOOD, "user_id": "bad \ufffd byte"}, ensure_ascii=False),  # where a byte was not UTF-8
    json.dumps({**GOOD, "user_id": "\ud800x"}),                      # an escaped lone surrogate (variant: malformed)
    json.dumps({**GOOD, "extra": {"k": "\udc00"}}),                  # ... also in a field it does not read
])
def test_leaves_every_other_line_to_the_variant_path(spark, reader, line):
    assert read(spark, reader, [line]) == [None]


def test_classification_gives_the_same_rows_with_the_reader_as_without(spark, reader):
    """Every case of the contract's tests and every bad line of the A/B (each ten times in the A/B, once here),
    through landing_lines and classify_events both ways: the same rows, and the reader read the plain ones."""
    from pyspark.sql import functions as F

    bad = classify_ab.bad_lines(GOOD)
    files = {**{name: data for name, (data, _) in LINE_CASES.items()},
             "bad": "\n".join(bad).encode(), "good": (json.dumps(GOOD) + "\n").encode() * 3}
    lines = landing_lines(files_frame(spark, files)).cache()
    with_reader = classify_events(lines, RULES, line_reader=reader)
    without = classify_events(lines, RULES)
    # As each row's JSON text: Spark's own equality would take -0.0 for 0.0.
    rows_with, rows_without = (frame.select(F.to_json(F.struct(*classify_ab.OUTPUT)))
                               for frame in (with_reader, without))
    assert rows_with.exceptAll(rows_without).count() == 0
    assert rows_without.exceptAll(rows_with).count() == 0
    assert with_reader.count() == without.count() == len(LINE_CASES) + len(bad) + 3
    read_lines = {(r.source_file.rsplit("/", 1)[-1], r.line_number)
                  for r in with_reader.filter(F.col("read_by_line_reader")).collect()}
    assert ("good.jsonl", 3) in read_lines and ("valid_iso_time.jsonl", 1) in read_lines
    assert ("broken_json.jsonl", 1) not in read_lines and ("user_id_number.jsonl", 1) not in read_lines
    assert without.filter(F.col("read_by_line_reader")).count() == 0
    lines.unpersist()


def test_a_session_without_the_reader_is_told_and_classifies_without_it(spark, monkeypatch, caplog):
    monkeypatch.setattr(tidal_spark, "EVENT_LINE_READER_CLASS", "tidal.spark.NoSuchReader")
    monkeypatch.setattr(tidal_spark, "_missing_reader_reported", set())
    with caplog.at_level(logging.WARNING, logger="tidal.spark"):
        assert event_line_reader(spark) is None
    assert "make jvm" in caplog.text and "tidal.spark.NoSuchReader" in caplog.text
    rows = classify_events(landing_lines(files_frame(spark, {"one": json.dumps(GOOD).encode()})), RULES).collect()
    assert [(r.user_id, r.quarantine_reason, r.read_by_line_reader) for r in rows] == [("u1", None, False)]
