"""What classifying a line against the event contract costs, and which of its checks pay most.

Not a test. Run (from the repo root):
    PYTHONPATH=. .venv/bin/python benchmarks/features/classify_cost.py [--lines 200000] [--reps 3]

It generates `--lines` event lines (devtools.generate, serialised as its landing files are), caches them as the line rows
`classify_events` reads (4 partitions on local[2]), then times one aggregation over every output column of:
- `full`: `jobs.features.transforms.classify_events` as shipped: one parse of `[<line>,"<md5 of the line>"]` gives
  the record and whether anything followed it (`parse_with_end_marker`);
- `regex_check`: the baseline, the same contract with the check shipped until 2026-12-04: a plain parse, then
  possessive regexes over the line's skeleton for a second top-level value (`regex_has_trailing_content` below).
  Its parse reads `[<line>]`, so that element 0 is the record as in the shipped code: one concatenation more than
  the old code had, a small cost charged to the baseline;
- `no_trailing_check`: a plain parse and no check at all (what checking for a second JSON value costs; the check
  stays in the job: without it a glued second record would be dropped silently);
- `parse_only`: `try_parse_json` alone (the floor any variant-based classification pays).
After one untimed warm-up, the variants run in turn, `--reps` rounds; each reports its best with all runs, and the
quarantined count and an output hash, so a variant that changed the outcome shows. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from unittest import mock


OUTPUT = ("event_id", "user_id", "item_id", "event_type", "value", "event_time", "context", "quarantine_reason")
MAX_NESTING_CHECKED = 8  # the baseline's depth of exact checking; deeper lines fell back to a weaker rule


def regex_has_trailing_content(line):
    """The baseline check (tidal's until 2026-12-04): True where a line holds more than one top-level JSON value.
    String literals are blanked by a possessive regex, then the innermost objects and arrays are replaced by a token
    MAX_NESTING_CHECKED times; one object ends as that single token. The common line (one object, at most one
    level of nested objects, no array) is recognised by one regex first."""
    from pyspark.sql import functions as F

    string = r'"(?:[^"\\]++|\\.)*+"'
    flat_object = r"\{(?:[^{}\[\]\"]++|" + string + r")*+\}"
    simple_object = r"^\s*\{(?:[^{}\[\]\"]++|" + string + "|" + flat_object + r")*+\}\s*\z"
    skeleton = F.regexp_replace(F.regexp_replace(line, string, '""'), r"^\s+|\s+$", "")
    reduced = skeleton
    for _ in range(MAX_NESTING_CHECKED):
        reduced = F.regexp_replace(reduced, r"\{[^{}\[\]]*+\}|\[[^{}\[\]]*+\]", "X")
    fully_reduced = ~reduced.rlike(r"[{}\[\]]")
    weak_rule = ~skeleton.endswith("}") | skeleton.rlike(r"\}\s*\{")
    return F.when(line.rlike(simple_object), F.lit(False)).otherwise(
        skeleton.startswith("{") & F.when(fully_reduced, reduced != "X").otherwise(weak_rule))


LINES_PER_FILE = 2000


def generated_records(count: int, event_types) -> list[dict]:
    """`count` events as devtools.generate writes them to landing files (files of LINES_PER_FILE, seed 1)."""
    from devtools.generate import SyntheticWorld, generate_file_events
    from tidal.config import GenerateParams

    files = -(-count // LINES_PER_FILE)
    world = SyntheticWorld(GenerateParams(), seed=1, files=files)
    return [row for f in range(files)
            for row in generate_file_events(world, f, 1, LINES_PER_FILE, event_types)][:count]


def cached_line_rows(spark, lines: list[str]):
    """The lines as the rows `classify_events` reads (LINES_PER_FILE to a file name), cached in 4 partitions and
    counted, so that no timed query pays for building them."""
    frame = spark.createDataFrame(
        [(f"f{i // LINES_PER_FILE}", i % LINES_PER_FILE + 1, line, None) for i, line in enumerate(lines)],
        "source_file string, line_number int, line string, file_reason string").repartition(4).cache()
    frame.count()
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    from pyspark.sql import functions as F

    import jobs.features.transforms as transforms
    from tidal.config import load_params
    from tidal.spark import spark_session

    base = load_params().base
    lines = [json.dumps(r) for r in generated_records(args.lines, base.event_types)]
    spark = spark_session("local[2]", 4)
    frame = cached_line_rows(spark, lines)
    rules = transforms.EventRules(base.event_types, base.max_id_length, base.max_future_skew_s, time.time())

    def parse_only(df, _rules):
        return df.select(*[F.lit("").alias(c) for c in OUTPUT[:-1]],
                         F.when(F.expr("try_parse_json(line)").isNull(), "malformed_json").alias("quarantine_reason"))

    def plain_parse(line, _marker):  # [<line>]: element 0 is what try_parse_json(line) gives, and no marker follows it
        return F.try_parse_json(F.concat(F.lit("["), line, F.lit("]")))

    variants = {
        "full": {},
        "regex_check": {"parse_with_end_marker": plain_parse,
                        "ends_at_its_marker": lambda wrapped, _marker: wrapped.isNotNull()
                        & ~regex_has_trailing_content(F.col("line"))},
        "no_trailing_check": {"parse_with_end_marker": plain_parse,
                              "ends_at_its_marker": lambda wrapped, _marker: wrapped.isNotNull()},
    }

    def classify_with(patches: dict):
        def classify(df, classify_rules):
            with contextlib.ExitStack() as stack:
                for name, replacement in patches.items():
                    stack.enter_context(mock.patch.object(transforms, name, replacement))
                return transforms.classify_events(df, classify_rules)
        return classify

    queries = {name: classify_with(patches)(frame, rules) for name, patches in variants.items()}
    queries["parse_only"] = parse_only(frame, rules)
    queries = {name: query.agg(F.sum(F.hash(*OUTPUT)).alias("h"), F.count("*").alias("n"),
                               F.count("quarantine_reason").alias("quarantined")) for name, query in queries.items()}
    queries["full"].first()  # warms the JIT, so the first variant timed is not the one that pays for it
    runs: dict[str, list[float]] = {name: [] for name in queries}
    rows = {}
    for _ in range(args.reps):  # round-robin, so a burst of load on this shared box hits every variant alike
        for name, query in queries.items():
            started = time.monotonic()
            rows[name] = query.first()
            runs[name].append(round(time.monotonic() - started, 3))
    result = {"lines": args.lines, "master": "local[2]", "variants": {
        name: {"best_s": min(runs[name]), "runs_s": runs[name],
               "us_per_line": round(min(runs[name]) / args.lines * 1e6, 2), "lines": rows[name]["n"],
               "quarantined": rows[name]["quarantined"], "output_hash": rows[name]["h"]} for name in queries}}
    result["full_vs_regex_check"] = round(min(runs["full"]) / min(runs["regex_check"]), 3)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
