"""What classifying a line against the event contract costs, and which of its checks pay most.

Not a test. Run (from the repo root):
    PYTHONPATH=. .venv/bin/python benchmarks/features/classify_cost.py [--lines 200000] [--reps 3]

It generates `--lines` event lines (devtools.generate, serialised as its landing files are), caches them as the line rows
`classify_events` reads (4 partitions on local[2]), then times one aggregation over every output column of:
- `full`: `jobs.features.transforms.classify_events` as shipped;
- `no_trailing_check`: the same with `has_trailing_content` replaced by false (what the check for a second JSON value
  on a line costs; the check stays in the job: without it a glued second record would be dropped silently);
- `parse_only`: `try_parse_json` alone (the floor any variant-based classification pays).
After one untimed warm-up, each variant runs `--reps` times; the best is reported with all runs, and the
quarantined count, so a variant that changed the outcome shows. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock


OUTPUT = ("event_id", "user_id", "item_id", "event_type", "value", "event_time", "context", "quarantine_reason")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    from pyspark.sql import functions as F

    import jobs.features.transforms as transforms
    from devtools.generate import SyntheticWorld, generate_file_events
    from tidal.config import GenerateParams, load_params
    from tidal.spark import spark_session

    per_file = 2000
    params, base = GenerateParams(), load_params().base
    files = -(-args.lines // per_file)
    world = SyntheticWorld(params, seed=1, files=files)
    lines = [json.dumps(row) for f in range(files)
             for row in generate_file_events(world, f, 1, per_file, base.event_types)][:args.lines]
    spark = spark_session("local[2]", 4)
    frame = spark.createDataFrame(
        [(f"f{i // per_file}", i % per_file + 1, line, None) for i, line in enumerate(lines)],
        "source_file string, line_number int, line string, file_reason string").repartition(4).cache()
    frame.count()
    rules = transforms.EventRules(base.event_types, base.max_id_length, base.max_future_skew_s, time.time())

    def parse_only(df, _rules):
        return df.select(*[F.lit("").alias(c) for c in OUTPUT[:-1]],
                         F.when(F.expr("try_parse_json(line)").isNull(), "malformed_json").alias("quarantine_reason"))

    def timed(classify) -> dict:
        query = classify(frame, rules).agg(F.sum(F.hash(*OUTPUT)).alias("h"), F.count("*").alias("n"),
                                           F.count("quarantine_reason").alias("quarantined"))
        runs, row = [], None
        for _ in range(args.reps):
            started = time.monotonic()
            row = query.first()
            runs.append(round(time.monotonic() - started, 3))
        return {"best_s": min(runs), "runs_s": runs, "us_per_line": round(min(runs) / args.lines * 1e6, 2),
                "lines": row["n"], "quarantined": row["quarantined"]}

    timed(transforms.classify_events)  # warms the JIT, so the first variant timed is not the one that pays for it
    result = {"lines": args.lines, "master": "local[2]", "variants": {}}
    result["variants"]["full"] = timed(transforms.classify_events)
    with mock.patch.object(transforms, "has_trailing_content", lambda line: F.lit(False)):
        result["variants"]["no_trailing_check"] = timed(transforms.classify_events)
    result["variants"]["parse_only"] = timed(parse_only)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
