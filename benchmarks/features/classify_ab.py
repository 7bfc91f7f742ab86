"""Another checkout's `classify_events` against this one's: the same output on good, bad and fuzzed lines, and the
time of each, side by side in one session.

Not a test. Run (from the repo root; BASE is a checkout, e.g. `git worktree add /tmp/base HEAD~1`):
    PYTHONPATH=. .venv/bin/python benchmarks/features/classify_ab.py BASE [--lines 500000] [--rounds 6]

The lines: `--lines` generated events (devtools.generate, serialised as its landing files are), then every kind of bad
line in `bad_lines` ten times (malformed, a second value after the first, not an object, each field missing, null, of
the wrong type, empty or oversized, times that cannot be parsed or are out of range, escapes, deep nesting), then
`--fuzzed` (2,000) generated lines with one character deleted, inserted or everything after it cut (a fixed seed).
They are cached on `local[2]` (4 partitions) as the line rows `classify_events` reads.

Both classifications must give the same rows (`exceptAll` both ways is empty, over each row's JSON text: the line's
position and every output column), or the script stops before timing anything: a cheaper classification that
changes one quarantine reason is a different contract. Then one untimed run of each and `--rounds` rounds of both in turn (round-robin, so a burst of
load on this shared machine hits both alike), each an aggregation over every output column. Prints one JSON object:
the quarantine reasons and their counts, and per side the runs, best and median seconds, and the ratio of this
checkout's median to the base's.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

OUTPUT = ("source_file", "line_number", "event_id", "user_id", "item_id", "event_type", "value", "event_time",
          "context", "quarantine_reason")


def load_transforms(checkout: Path):
    """The base checkout's jobs/features/transforms.py as a module of its own (it imports only pyspark and stdlib)."""
    spec = importlib.util.spec_from_file_location("base_transforms", checkout / "jobs" / "features" / "transforms.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def bad_lines(record: dict) -> list[str]:
    """One line per way a record can break (or nearly break) the event contract, built from a good `record`."""
    good = json.dumps(record)

    def changed(**fields) -> str:
        out = dict(record)
        for name, value in fields.items():
            if value is KeyError:
                out.pop(name, None)
            else:
                out[name] = value
        return json.dumps(out)

    def raw(name: str, token: str) -> str:
        """The record with one field's value written as `token`, a JSON text json.dumps would not write."""
        marker = "\u0000raw\u0000"
        return json.dumps({**record, name: marker}).replace(json.dumps(marker), token)

    return [
        # not one JSON object
        "{", "not json", good + " junk", good + good, good + "," + good, good + '],"x"', "[1,2]", '"a string"', "42",
        "null", "true", "[" + good + "]", "[" * 300 + "]" * 300, '{"a":' + "[" * 200 + "]" * 200 + "}",
        '{"event_id":"a","event_id":"b"}',
        # objects that are, or nearly are, events
        "  " + good + "  ", "\ufffd" + good, good.replace('"user_id"', '"USER_ID"'),
        json.dumps({**record, "extra": [1, 2, {"x": "y"}]}),
        # the ids
        changed(user_id=5), changed(user_id={"a": 1}), changed(item_id=True), changed(event_type=3),
        changed(event_id=None), changed(event_id=KeyError), changed(user_id=""), changed(user_id="   "),
        changed(item_id="x" * 1000), changed(event_type="nope"), changed(user_id="\u00e9\u4e2d"),
        changed(user_id='a"b\\c'),
        # the event time
        changed(event_time="10:15:00"), changed(event_time=1700000000), changed(event_time=1.7e9),
        changed(event_time=-5), changed(event_time="3000-01-01T00:00:00Z"), changed(event_time="1960-01-01T00:00:00Z"),
        changed(event_time="garbage"), changed(event_time="2024-02-30T00:00:00"),
        changed(event_time=" 2024-01-01 10:00:00"), changed(event_time="+2024-01-01"), changed(event_time=None),
        changed(event_time=KeyError), changed(event_time=[1]),
        # the value and the context
        changed(value="3"), changed(value={"a": 1}), changed(value=True), changed(value=None), changed(value=KeyError),
        changed(value=1e308), changed(value=12345678901234567890), changed(value=-0.0),
        changed(context=[1]), changed(context="x"), changed(context=None),
        changed(context={"a": {"b": [1, {"c": None}]}}),
        # contexts as Spark writes them back: keys sorted, decimals without trailing zeros, escapes, duplicates
        changed(context={"b": 1, "A": [1.5, {"z": None, "y": True}], "\u00e9": "x", "a": -0.0, "B": False}),
        changed(context={"k": "\u2028\u007f/<>&'", "\U0001f600": "\ud7ff", "~": [], "": {}}),
        raw("context", '{"p": 9.90, "q": 1e3, "r": 12345678901234567890, "s": 100.0, "t": -12.500}'),
        raw("context", '{"k": 0.0000001, "l": 0.10, "m": -0, "n": [0.0, 1.000000000000001]}'),
        raw("context", '{"s": "a\\"b", "t": "\\u00e9", "u": "tab\\t", "\\u0041": 1}'),
        raw("context", '{"dup": 1, "dup": 2}'), raw("context", '{"n": {"m": {"dup": 1, "dup": 1}}}'),
        raw("extra", '{"dup": 1, "dup": 2}'), raw("extra", "1" * 1200), raw("extra", "[" * 70 + "]" * 70),
        # numbers whose text is at, or just past, the length a double is read from exactly, and ones spelled oddly
        changed(value=0.1), changed(value=123456789012.5), changed(value=0.12345678901234567),
        changed(value=1234567890.123456789), changed(value=-1e-300), changed(value=2 ** 53 + 1),
        changed(event_time=1700000000.25), changed(event_time=1700000000.123456789),
        raw("value", "1E2"), raw("value", "1e400"), raw("value", "-0.0"), raw("value", "0.50000"),
        raw("value", "100.0"), raw("event_time", "1.7e9"), raw("event_time", "1700000000.0000"),
        # a number too large for a double is an infinite one, whose JSON text is the string "Infinity"'s
        changed(user_id="Infinity"), changed(value="-Infinity"), changed(event_time="Infinity"),
        raw("user_id", "1e400"), raw("event_time", "-1e400"),
        # ids whose text holds an escape, or characters JSON may escape
        changed(user_id="a\\b"), changed(user_id="tab\there"), changed(item_id="\u2028"), changed(item_id="a/b"),
        json.dumps({**record, "user_id": "\u00e9\u4e2d"}, ensure_ascii=False), raw("user_id", '"\\u0041b"'),
        raw("user_id", '"a\\/b"'), raw("user_id", '"\\ud800x"'), raw("context", '{"k": "\\udc00", "\\ud83d": 1}'),
        changed(event_time="2024-01-01T00:00:00\\Z"),
    ]


def fuzzed(lines: list[str], count: int, seed: int = 7) -> list[str]:
    """`count` lines, each a random one of `lines` with one character deleted, one inserted, or the rest cut."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        line = rnd.choice(lines)
        at = rnd.randrange(len(line))
        out.append(rnd.choice((line[:at] + line[at + 1:], line[:at] + rnd.choice('{}[]",:0a\\ ') + line[at:],
                               line[:at])))
    return out


def main(argv: list[str] | None = None, spark=None) -> int:
    """`spark`: a session to use instead of a new local[2] one (the tests pass theirs, whose settings stay as they
    are)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the other checkout (its jobs/features/transforms.py)")
    parser.add_argument("--lines", type=int, default=500_000, help="generated lines, before the bad and fuzzed ones")
    parser.add_argument("--fuzzed", type=int, default=2000, help="generated lines with one random edit each")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--no-line-reader", action="store_true",
                        help="this checkout without tidal's event line reader (the variant path alone)")
    args = parser.parse_args(argv)

    import jobs.features.transforms as this
    from benchmarks.features.classify_cost import cached_line_rows, generated_records
    from tidal.config import load_params
    from tidal.spark import event_line_reader, spark_session

    base_transforms = load_transforms(args.base)
    base_params = load_params().base
    records = generated_records(args.lines, base_params.event_types)
    good = [json.dumps(r) for r in records]
    lines = good + bad_lines(records[0]) * 10 + fuzzed(good, args.fuzzed)
    frame = cached_line_rows(spark or spark_session("local[2]", 4), lines)
    rules = this.EventRules(base_params.event_types, base_params.max_id_length, base_params.max_future_skew_s,
                            time.time())
    reader = None if args.no_line_reader else event_line_reader(frame.sparkSession)
    try:
        result = compare(frame, base_transforms, this, rules, args.rounds, reader)
    finally:
        frame.unpersist()
    print(json.dumps({"lines": len(lines), **result}, indent=2))
    return 0 if result["same_output"] else 1


def compare(frame, base_transforms, this_transforms, rules, rounds: int, line_reader: str | None = None) -> dict:
    """Both classifications of the cached line rows: whether they agree, and (only then) their times in turn. This
    checkout's uses `line_reader` (tidal.spark.event_line_reader's name) when given; the base's never does."""
    from pyspark.sql import functions as F

    this_options = {"line_reader": line_reader} if line_reader else {}
    outputs = {"base": base_transforms.classify_events(frame, base_transforms.EventRules(**dataclasses.asdict(rules))),
               "this": this_transforms.classify_events(frame, rules, **this_options)}
    outputs = {side: out.select(*OUTPUT) for side, out in outputs.items()}
    # Compared as each row's JSON text: Spark's own equality takes -0.0 for 0.0, which a written file does not.
    exact = {side: out.select(F.to_json(F.struct(*OUTPUT)).alias("row")) for side, out in outputs.items()}
    only_base, only_this = (exact["base"].exceptAll(exact["this"]).count(),
                            exact["this"].exceptAll(exact["base"]).count())
    if only_base or only_this:
        return {"same_output": False, "rows_only_in_base": only_base, "rows_only_in_this": only_this}
    reasons = {r["quarantine_reason"] or "accepted": r["count"]
               for r in outputs["this"].groupBy("quarantine_reason").count().collect()}
    queries = {side: out.agg(F.sum(F.hash(*OUTPUT)).alias("h")) for side, out in outputs.items()}
    for query in queries.values():  # one untimed run each: the JIT's warm-up is not charged to either
        query.first()
    runs: dict[str, list[float]] = {side: [] for side in queries}
    for _ in range(rounds):
        for side, query in queries.items():
            started = time.monotonic()
            query.first()
            runs[side].append(round(time.monotonic() - started, 3))
    medians = {side: sorted(r)[len(r) // 2] for side, r in runs.items()}
    read_plain = frame.filter(F.call_function(line_reader, F.col("line")).isNotNull()).count() if line_reader else 0
    return {"same_output": True, "line_reader": line_reader, "lines_read_by_line_reader": read_plain,
            "reasons": dict(sorted(reasons.items())),
            "sides": {side: {"runs_s": r, "best_s": min(r), "median_s": medians[side]} for side, r in runs.items()},
            "this_vs_base_median": round(medians["this"] / medians["base"], 3)}

if __name__ == "__main__":
    raise SystemExit(main())
