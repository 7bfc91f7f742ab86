"""Cost of one incremental features pass: Spark session start vs the work, over a window of generated events.

Not a test. Run: `.venv/bin/python benchmarks/features/cycle_cost.py --events 10000 [--master local[2]]`
It generates the window into a fresh TIDAL_HOME under a temp dir, then times (1) the Spark session start,
(2) `run_features` over the window, (3) a second pass with nothing new (the fixed cost of a cycle with no data).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--events-per-file", type=int, default=2000)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tidal-bench-")) / "home"
    os.environ["TIDAL_HOME"] = str(home)

    from devtools.generate import generate_stream
    from tidal.config import load_settings
    from tidal.storage import StorageLayout

    settings = load_settings(overrides={"features": {"spark_master": args.master},
                                        "generate": {"events_per_file": args.events_per_file}})
    layout = StorageLayout(settings.home).ensure()
    files = max(1, args.events // args.events_per_file)
    generate_stream(layout, settings.params.generate, seed=1, files=files, event_types=settings.params.base.event_types)

    started = time.monotonic()
    from jobs.features.stream import run_features
    from tidal.spark import spark_for

    spark_for(settings).range(1).count()  # JVM up and one trivial job: what every cycle pays before any work
    spark_start = time.monotonic() - started
    started = time.monotonic()
    summary = run_features(settings)
    work = time.monotonic() - started
    started = time.monotonic()
    run_features(settings)
    idle = time.monotonic() - started
    print(json.dumps({"events": summary["landed"], "batches": len(summary["batch_ids"]), "master": args.master,
                      "spark_start_s": round(spark_start, 2), "features_pass_s": round(work, 2),
                      "events_per_s": round(summary["landed"] / work), "empty_pass_s": round(idle, 2)}, indent=2))


if __name__ == "__main__":
    main()
