"""A long-lived Spark session running batch after batch: Spark's default compiled-code cache vs tidal's, side by side.

Not a test. Run (from the repo root):
    PYTHONPATH=. .venv/bin/python benchmarks/features/codegen_cache.py [--passes 8] [--rounds 2] [--events 10000]

Spark compiles each query stage's generated Java code and keeps the classes in an LRU of
`spark.sql.codegen.cache.maxEntries` (default 100). A features micro-batch compiles about 180, so on a session that
runs one batch after another (a test session; a catch-up task's batches on the stack's Spark Connect server) the
cache never hits. (Across tasks on the Connect server the classes are reused only given
`tidal.spark.CONNECT_SESSION_CONF`: otherwise each task's query has a class loader of its own.) This runs the same
sequence of batches in two fresh processes per round, one with Spark's default and one with
`tidal.spark.CODEGEN_CACHE_ENTRIES` (a static setting, so each needs its own JVM), alternating, `--rounds` times:
one TIDAL_HOME per process, `--events` events landed before each pass (5 files), `--passes` `run_features` passes,
so batch ids and state grow as on the server. Per pass: wall seconds, the classes compiled (Spark's CodegenMetrics)
and the JVM's CPU seconds (all its threads, the JIT compiler's included, from /proc). The first two passes differ in
shape (no state, then state) and warm the JVM, so the summary is the median of the rest. Writes codegen_cache.json
next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import median


HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SPARK_DEFAULT_ENTRIES = 100
WARM_UP_PASSES = 2


def jvm_cpu_s(pid: int) -> float:
    """The driver JVM's user + system CPU seconds so far (local mode: the executors are its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_passes(entries: int, passes: int, events: int) -> list[dict]:
    """In this process: a local[2] session with `entries`, then `passes` features passes over one growing home."""
    import tidal.spark
    from devtools.generate import generate_stream
    from jobs.features.stream import run_features
    from tidal.config import load_settings
    from tidal.storage import StorageLayout

    tidal.spark.CODEGEN_CACHE_ENTRIES = entries  # what tidal.spark's session builder sets; read when the JVM starts

    home = Path(tempfile.mkdtemp(prefix="tidal-codegen-")) / "home"
    os.environ["TIDAL_HOME"] = str(home)
    settings = load_settings(overrides={"features": {"spark_master": "local[2]", "max_files_per_trigger": 5},
                                        "generate": {"events_per_file": max(1, events // 5)}})
    layout = StorageLayout(settings.home).ensure()
    spark = tidal.spark.spark_for(settings)
    assert spark.conf.get("spark.sql.codegen.cache.maxEntries") == str(entries)
    jvm = spark.sparkContext._jvm
    jvm_pid = jvm.java.lang.ProcessHandle.current().pid()
    compilations = jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    rows = []
    for index in range(passes):
        generate_stream(layout, settings.params.generate, seed=index + 1, files=5, bad_fraction=0.01,
                        event_types=settings.params.base.event_types)
        compiled_before, cpu_before, started = compilations.getCount(), jvm_cpu_s(jvm_pid), time.monotonic()
        summary = run_features(settings)
        rows.append({"pass": index, "batch_ids": summary["batch_ids"], "landed": summary["landed"],
                     "wall_s": round(time.monotonic() - started, 2),
                     "classes_compiled": compilations.getCount() - compiled_before,
                     "jvm_cpu_s": round(jvm_cpu_s(jvm_pid) - cpu_before, 2)})
    spark.stop()
    return rows


def child(entries: int, passes: int, events: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("TIDAL_SPARK_REMOTE", "SPARK_REMOTE", "TIDAL_HOME")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run([sys.executable, __file__, "--child", str(entries), "--passes", str(passes),
                           "--events", str(events)], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the run with {entries} entries failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: list[list[dict]]) -> dict:
    measured = [row for run in runs for row in run[WARM_UP_PASSES:]]
    return {key: median(row[key] for row in measured) for key in ("wall_s", "classes_compiled", "jvm_cpu_s")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=10_000, help="events landed before each pass")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.passes <= WARM_UP_PASSES:
        parser.error(f"--passes must be more than the {WARM_UP_PASSES} warm-up passes")
    if args.child is not None:
        print(json.dumps(run_passes(args.child, args.passes, args.events)))
        return 0

    from tidal.spark import CODEGEN_CACHE_ENTRIES

    settings = {"spark_default": SPARK_DEFAULT_ENTRIES, "tidal": CODEGEN_CACHE_ENTRIES}
    runs: dict[str, list] = {name: [] for name in settings}
    loads, started = [], datetime.now(timezone.utc).isoformat(timespec="seconds")
    for round_index in range(args.rounds):
        for name, entries in settings.items():
            loads.append(os.getloadavg()[0])
            runs[name].append(child(entries, args.passes, args.events))
            print(f"round {round_index + 1} {name} ({entries} entries): "
                  f"{[(r['wall_s'], r['classes_compiled']) for r in runs[name][-1]]}", flush=True)
    summary = {name: summarise(runs[name]) for name in settings}
    result = {
        "started": started, "master": "local[2]",
        "events_per_pass": args.events, "passes": args.passes, "rounds": args.rounds,
        "warm_up_passes_left_out": WARM_UP_PASSES, "entries": settings, "load_1min": loads,
        "median_after_warm_up": summary,
        "wall_ratio_tidal_to_default": round(summary["tidal"]["wall_s"] / summary["spark_default"]["wall_s"], 3),
        "runs": runs,
    }
    (HERE / "codegen_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
