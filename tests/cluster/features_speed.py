"""Speed of one features pass over the same landing files on several Spark masters: `local[2]` against the cluster
profile's standalone cluster (two workers of 1 core, one 768 MiB executor each). For docs/cluster.md; not a test.

Run (from the repo root, with the cluster profile up, under the machine's heavy-run lock):
    source "$(scripts/cluster.sh env)"
    flock -o /tmp/tidal-heavy.lock .venv/bin/python -m tests.cluster.features_speed \\
        --events 1000000 --masters 'local[2]' "$TIDAL_SPARK_MASTER_URL"

It generates the events once (devtools.generate, seed 1, files of 20,000 events), then for each master, in a fresh
process and a fresh home holding hard links to the same files: starts the Spark session (timed apart: the JVM, and
on the cluster the application's executors), then runs `jobs.features.stream.run_features` over all the files as one
micro-batch with the repo's params.yaml and only features.spark_master, spark_driver_memory and
max_files_per_trigger changed. No online store (TIDAL_REDIS_URL is dropped) and no Spark Connect server, so both
passes do the same work; the cluster pass keeps SPARK_CONF_DIR, where the profile sizes its executors. The counts
of the passes must agree. Prints one JSON object with seconds, events/s and the 1-minute load average per pass.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from tests.cluster.cycle_seconds import LoadSampler
from tests.conftest import REPO_ROOT


# After every generated event, so none is quarantined as "future" by the clock of the day the pass runs.
NOW_EPOCH_S = datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp()
COUNT_KEYS = ("landed", "accepted", "quarantined", "duplicates", "outlier_events_excluded")


def one_pass(home: Path, master: str, driver_memory: str, files: int) -> dict:
    """In the child process: the session, then the features job over everything under home/landing."""
    os.environ["TIDAL_HOME"] = str(home)
    from jobs.features.stream import run_features
    from tidal.config import load_settings
    from tidal.spark import spark_for

    settings = load_settings(overrides={"features": {"spark_master": master, "spark_driver_memory": driver_memory,
                                                     "max_files_per_trigger": files}})
    started = time.monotonic()
    spark = spark_for(settings)  # run_features' own getOrCreate reuses it
    spark.range(1).count()
    start_s = time.monotonic() - started
    started = time.monotonic()
    summary = run_features(settings, now_epoch_s=NOW_EPOCH_S)
    return {"start_s": round(start_s, 1), "work_s": round(time.monotonic() - started, 1),
            "batches": len(summary["batch_ids"]), **{k: summary[k] for k in COUNT_KEYS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--events-per-file", type=int, default=20_000)
    parser.add_argument("--masters", nargs="+", default=["local[2]"])
    parser.add_argument("--driver-memory", default="4g", help="features.spark_driver_memory for every pass")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--child", nargs=3, metavar=("HOME", "MASTER", "FILES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        home, master, files = args.child
        print(json.dumps(one_pass(Path(home), master, args.driver_memory, int(files))), flush=True)
        return 0

    from devtools.generate import generate_stream
    from tidal.config import load_params
    from tidal.storage import StorageLayout

    files = args.events // args.events_per_file
    workdir = Path(tempfile.mkdtemp(prefix="tidal-features-speed-"))
    workdir.chmod(0o755)  # the standalone executors read the landing files too (here as the same user)
    passes = {}
    try:
        params = load_params(REPO_ROOT / "params.yaml", overrides={"generate": {"events_per_file": args.events_per_file}})
        source = StorageLayout(workdir / "source").ensure()
        generated = time.monotonic()
        generate_stream(source, params.generate, seed=1, files=files, event_types=params.base.event_types)
        generated = round(time.monotonic() - generated, 1)
        for n, master in enumerate(args.masters):
            home = StorageLayout(workdir / f"pass-{n}").ensure()
            for path in sorted(source.landing_events.glob("events-*.jsonl")):
                os.link(path, home.landing_events / path.name)
            shutil.copytree(source.landing_items, home.landing_items, dirs_exist_ok=True)
            env = {k: v for k, v in os.environ.items()
                   if k not in ("TIDAL_REDIS_URL", "TIDAL_SPARK_REMOTE", "SPARK_REMOTE", "TIDAL_PARAMS")}
            if not master.startswith("spark://"):
                env.pop("SPARK_CONF_DIR", None)
            env["PYTHONPATH"] = str(REPO_ROOT)
            with LoadSampler() as load:
                done = subprocess.run([sys.executable, "-m", "tests.cluster.features_speed", "--driver-memory",
                                       args.driver_memory, "--child", str(home.root), master, str(files)],
                                      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise SystemExit(f"{master}: exit {done.returncode}\n{done.stderr[-4000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["events_per_s"] = round(result["landed"] / result["work_s"])
            result["load_avg_1m"] = load.summary()
            passes[master] = result
            print(f"[features_speed] {master}: {json.dumps(result)}", file=sys.stderr, flush=True)
            shutil.rmtree(home.root, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    counts = {master: tuple(p[k] for k in COUNT_KEYS) for master, p in passes.items()}
    result = {"events": args.events, "files": files, "generate_s": generated, "driver_memory": args.driver_memory,
              "counts_agree": len(set(counts.values())) == 1, "passes": passes, "cores": os.cpu_count()}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["counts_agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
