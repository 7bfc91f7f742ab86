"""Where one features micro-batch spends its time: Spark's event log of a `run_features` pass, summarised per job.

Not a test. Run (from the repo root):
    PYTHONPATH=. .venv/bin/python benchmarks/features/profile_batch.py --events 200000 [--keep-log DIR]

It generates the events into a fresh temp TIDAL_HOME, starts the session with `spark.eventLog.enabled` (the same
session settings as tidal/spark.py, plus the log), runs one `run_features` pass as one micro-batch, then reads the
event log back and prints, per Spark job in order: the call site (file:line of the job's action in jobs/), wall
seconds, executor CPU seconds of its stages, and the shuffle bytes it wrote. The raw log can be kept (`--keep-log`)
and opened in Spark's history server (`.venv/bin/spark-class org.apache.spark.deploy.history.HistoryServer` with
`spark.history.fs.logDirectory` pointing at it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def summarise_event_log(paths: list[Path]) -> list[dict[str, Any]]:
    """One row per Spark job in the log: call site, wall s, stages' executor run and CPU s, shuffle write bytes."""
    jobs: dict[int, dict[str, Any]] = {}
    stage_job: dict[int, int] = {}
    stage_metrics: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in (line for path in paths for line in path.read_text().splitlines()):
        event = json.loads(line)
        kind = event.get("Event")
        if kind == "SparkListenerJobStart":
            props = event.get("Properties") or {}
            jobs[event["Job ID"]] = {"job": event["Job ID"], "start_ms": event["Submission Time"],
                                     "site": props.get("spark.job.description") or props.get("callSite.short") or "?",
                                     "sql": props.get("spark.sql.execution.id")}
            for stage in event.get("Stage IDs", []):
                stage_job[stage] = event["Job ID"]
        elif kind == "SparkListenerJobEnd" and event["Job ID"] in jobs:
            jobs[event["Job ID"]]["end_ms"] = event["Completion Time"]
        elif kind == "SparkListenerTaskEnd":
            metrics = event.get("Task Metrics") or {}
            m = stage_metrics[event["Stage ID"]]
            m["tasks"] += 1
            m["run_ms"] += metrics.get("Executor Run Time", 0)
            m["cpu_ns"] += metrics.get("Executor CPU Time", 0)
            m["shuffle_write_bytes"] += (metrics.get("Shuffle Write Metrics") or {}).get("Shuffle Bytes Written", 0)
            m["input_records"] += (metrics.get("Input Metrics") or {}).get("Records Read", 0)
    for stage, m in stage_metrics.items():
        job = jobs.get(stage_job.get(stage, -1))
        if job is None:
            continue
        for key, value in m.items():
            job[key] = job.get(key, 0) + value
    rows = []
    for job in sorted(jobs.values(), key=lambda j: j["job"]):
        rows.append({"job": job["job"], "site": job["site"], "sql_execution": job["sql"],
                     "wall_s": round((job.get("end_ms", job["start_ms"]) - job["start_ms"]) / 1000, 3),
                     "tasks": int(job.get("tasks", 0)), "run_s": round(job.get("run_ms", 0) / 1000, 3),
                     "cpu_s": round(job.get("cpu_ns", 0) / 1e9, 3),
                     "shuffle_write_mb": round(job.get("shuffle_write_bytes", 0) / 2**20, 1),
                     "input_records": int(job.get("input_records", 0))})
    return rows


def by_site(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs grouped by call site, biggest wall time first."""
    sites: dict[str, dict[str, Any]] = {}
    for row in rows:
        s = sites.setdefault(row["site"], {"site": row["site"], "jobs": 0, "wall_s": 0.0, "cpu_s": 0.0,
                                           "shuffle_write_mb": 0.0})
        s["jobs"] += 1
        for key in ("wall_s", "cpu_s", "shuffle_write_mb"):
            s[key] = round(s[key] + row[key], 3)
    return sorted(sites.values(), key=lambda s: -s["wall_s"])


STEPS = ("batch_lines", "dedupe_state_before", "batch_stats", "write_bronze", "without_outliers",
         "write_state_and_examples", "write_recent_items", "publish_online_state", "write_quarantine",
         "write_dedupe_state", "compact_bronze")


def label_steps(stream_module, spark, step_wall_s: dict[str, float]) -> None:
    """Name every Spark job after the micro-batch step that ran it (the jobs of a foreachBatch have no useful call
    site): each step of jobs.features.stream is wrapped to set `spark.job.description` while it runs, and adds its
    wall seconds (planning in the driver included, which the event log's job times leave out) to `step_wall_s`. The
    batch's outputs run side by side (jobs.features.stream.process_micro_batch), so their seconds overlap."""
    import functools

    def labelled(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            spark.sparkContext.setLocalProperty("spark.job.description", name)
            started = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                step_wall_s[name] = step_wall_s.get(name, 0.0) + time.monotonic() - started
                spark.sparkContext.setLocalProperty("spark.job.description", None)
        return wrapper

    for name in STEPS:
        if hasattr(stream_module, name):
            setattr(stream_module, name, labelled(name, getattr(stream_module, name)))


def profile(events: int, events_per_file: int, master: str, driver_memory: str, log_dir: Path,
            warm_passes: int = 0, extra_conf: tuple[str, ...] = ()) -> dict[str, Any]:
    """Generate, run one pass with the event log on, return the pass's seconds and the per-job summary.

    `warm_passes` runs that many passes first, each on a fresh TIDAL_HOME in the same session, so the measured pass
    sees a JVM whose JIT has warmed up, as a task on the stack's long-lived Spark Connect server does."""
    log_dir.mkdir(parents=True, exist_ok=True)
    # Read by the JVM at start: tidal.spark's builder adds its own settings on top.
    os.environ["PYSPARK_SUBMIT_ARGS"] = (f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir=file:{log_dir} "
                                         "--conf spark.eventLog.compress=false "
                                         + "".join(f"--conf {c} " for c in extra_conf) + "pyspark-shell")
    from devtools.generate import generate_stream
    from jobs.features.stream import run_features
    from tidal.config import load_settings
    from tidal.spark import spark_for
    from tidal.storage import StorageLayout

    files = max(1, events // events_per_file)
    import jobs.features.stream as stream_module

    spark, step_wall_s, warm_s = None, {}, []
    for attempt in range(warm_passes + 1):
        home = Path(tempfile.mkdtemp(prefix="tidal-profile-")) / "home"
        os.environ["TIDAL_HOME"] = str(home)
        settings = load_settings(overrides={"features": {"spark_master": master, "spark_driver_memory": driver_memory,
                                                         "max_files_per_trigger": files},
                                            "generate": {"events_per_file": events_per_file}})
        layout = StorageLayout(settings.home).ensure()
        generate_stream(layout, settings.params.generate, seed=1, files=files,
                        event_types=settings.params.base.event_types)
        if spark is None:
            spark = spark_for(settings)
            spark.range(1).count()
            label_steps(stream_module, spark, step_wall_s)
        measured = attempt == warm_passes
        if measured:
            step_wall_s.clear()
            first_job_id = max((r["job"] for r in summarise_event_log(event_logs(log_dir))), default=-1) + 1 \
                if warm_passes else 0
        started = time.monotonic()
        summary = run_features(settings)
        seconds = time.monotonic() - started
        if not measured:
            warm_s.append(round(seconds, 2))
        shutil.rmtree(home.parent, ignore_errors=True)
    spark.stop()
    rows = [r for r in summarise_event_log(event_logs(log_dir)) if r["job"] >= first_job_id]
    return {"events": summary["landed"], "pass_s": round(seconds, 2), "warm_passes_s": warm_s, "jobs": len(rows),
            "by_site": by_site(rows), "step_wall_s": {k: round(v, 3) for k, v in step_wall_s.items()},
            "per_job": rows, "event_log": str(event_logs(log_dir)[-1].parent)}


def event_logs(log_dir: Path) -> list[Path]:
    # Spark 4 writes a rolling log: a folder eventlog_v2_<app>/ with events_<n>_<app> files (and appstatus_*).
    return sorted((p for p in log_dir.rglob("events_*")), key=lambda p: p.stat().st_mtime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--events-per-file", type=int, default=20_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--warm-passes", type=int, default=0,
                        help="passes to run first in the same session (JIT warm-up, as on the stack's warm Spark)")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra Spark setting for the session (repeatable), to compare settings")
    parser.add_argument("--keep-log", type=Path, default=None, help="keep the event log in this folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    log_dir = args.keep_log or Path(tempfile.mkdtemp(prefix="tidal-eventlog-"))
    result = profile(args.events, args.events_per_file, args.master, args.driver_memory, log_dir, args.warm_passes,
                     tuple(args.conf))
    print(f"{result['events']:,} events, pass {result['pass_s']} s, {result['jobs']} Spark jobs "
          f"(warm-up passes: {result['warm_passes_s']} s)")
    print("step wall s (driver planning included): " + ", ".join(f"{k} {v}" for k, v in result["step_wall_s"].items()))
    print(f"{'site':60s} {'jobs':>4s} {'wall s':>8s} {'cpu s':>8s} {'shuffle MB':>10s}")
    for s in result["by_site"]:
        print(f"{s['site'][:60]:60s} {s['jobs']:4d} {s['wall_s']:8.2f} {s['cpu_s']:8.2f} {s['shuffle_write_mb']:10.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.keep_log is None:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
