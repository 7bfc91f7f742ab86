"""Throughput of the features job: Spark (`jobs.features.run_features`) vs a single-process DuckDB implementation
of the same micro-batch (`duckdb_features.py`), side by side on the same generated landing files.

Not a test. Run (from the repo root):
    PYTHONPATH=. .venv/bin/python benchmarks/features/throughput.py --events 1000000 5000000

It generates the largest size once with `devtools.generate` (files are a pure function of their index, so the first
k files of the largest stream are the smaller sizes' input: they are hard-linked, not regenerated), then for each
size, each in a fresh process so neither engine inherits the other's memory or JIT warm-up:
  1. Spark: session start (JVM + one trivial job) timed apart from the work, then one `run_features` pass over all
     the files as one micro-batch (max_files_per_trigger = the file count);
  2. DuckDB: `duckdb_features.run_batch` over the same files (threads = the Spark master's cores);
  3. with `--warm-server`, also Spark as the stack runs it: the same pass as a task on a private Spark Connect server
     (`scripts/stack.sh up spark`, same master and heap) that has already run two warm-up tasks, one of one file
     and one of `--warm-up-events` events (default 1M: what a stack of 10k-event cycles every 30 s has processed
     within its first hour), so its JIT is warm as on a long-lived stack. The warm-up events are files of their
     own, generated after the largest size's, so no measured pass reads a file the warm-up read. One warm-up task
     of one file was not enough: the first 1M pass after it took 36-39 s, the same pass after several 1M ones 20-23 s
     (benchmarks/features/RESULTS.md, "2026-12-05 (later): smaller read tasks"); both warm-up times are recorded.
Events/s = landed records / seconds of work; ratio = DuckDB events/s / Spark events/s. The two runs' counts are
compared (a throughput number for different work would be meaningless). The 1-minute load average is sampled
through each run, since the 2 cores are shared. Results go to throughput.json next to this file and a section is
appended to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# The batch clock of both runs: after every generated event, so none is quarantined as future by chance.
NOW_EPOCH_S = datetime(2027, 1, 1, tzinfo=timezone.utc).timestamp()
# Counts both engines must agree on before their speeds are compared.
COUNT_KEYS = ("landed", "accepted", "quarantined", "duplicates", "outlier_events_excluded")


@dataclass
class LoadSampler:
    """Samples the 1-minute load average every `every_s` seconds while a run is going."""

    every_s: float = 5.0
    samples: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "LoadSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every_s):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(s), 2), "mean": round(sum(s) / len(s), 2), "max": round(max(s), 2)}


# ---- the two passes (each runs in its own process) ------------------------------------------------------------

def spark_pass(home: Path, overrides: dict[str, Any], now_epoch_s: float, remote: str | None = None) -> dict[str, Any]:
    """Spark session start, then one run_features pass over everything under home/landing; on the Spark Connect
    server at `remote` when given (the stack's warm Spark), else on a local JVM started here."""
    os.environ["TIDAL_HOME"] = str(home)
    os.environ.pop("SPARK_REMOTE", None)
    if remote:
        os.environ["TIDAL_SPARK_REMOTE"] = remote
    else:
        os.environ.pop("TIDAL_SPARK_REMOTE", None)
    import psutil

    from jobs.features.stream import run_features
    from tidal.config import load_settings
    from tidal.spark import spark_for

    settings = load_settings(overrides=overrides)
    started = time.monotonic()
    # Started here with the configured heap (or, with TIDAL_SPARK_REMOTE, a session on the warm server); run_features'
    # own getOrCreate then reuses this session.
    spark = spark_for(settings)
    spark.range(1).count()
    start_s = time.monotonic() - started
    started = time.monotonic()
    summary = run_features(settings, now_epoch_s=now_epoch_s)
    work_s = time.monotonic() - started
    # A local session's JVM is this process's child (py4j launched it). A Connect session has none here: the work
    # ran in the shared server, whose peak memory is not this pass's alone, so it is not reported.
    jvm_pid = next((c.pid for c in psutil.Process().children(recursive=True) if c.name() == "java"), None)
    # work_s is the whole run_features call; stream_s stops before the bronze compaction it runs afterwards (which
    # the DuckDB batch does not do; it only acts once a date has many files, see jobs.features.compact).
    return {"start_s": start_s, "work_s": work_s, "stream_s": summary["seconds"], "batches": len(summary["batch_ids"]),
            "compacted_dates": len(summary.get("compaction", {}).get("compacted", [])),
            "peak_rss_mib": peak_rss_mib(f"/proc/{jvm_pid}/status") if jvm_pid else None,
            "spark": "connect" if settings.spark_remote else "local", **{k: summary[k] for k in COUNT_KEYS}}


def duckdb_pass(home: Path, out: Path, overrides: dict[str, Any], now_epoch_s: float, threads: int,
                memory_limit: str) -> dict[str, Any]:
    """The DuckDB batch over the same landing files, outputs under `out`."""
    os.environ["TIDAL_HOME"] = str(home)
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.features.duckdb_features import batch_params, connect, run_batch

    from tidal.config import load_settings
    from tidal.storage import StorageLayout

    settings = load_settings(overrides=overrides)
    source = StorageLayout(settings.home)
    started = time.monotonic()
    manifest = run_batch(source.landing_events, source.landing_items / "items.csv", StorageLayout(out),
                         batch_params(settings, now_epoch_s), con=connect(threads, memory_limit))
    return {"work_s": time.monotonic() - started, "batches": 1, "peak_rss_mib": peak_rss_mib("/proc/self/status"),
            **{k: manifest[k] for k in COUNT_KEYS}}


def peak_rss_mib(proc_status: str) -> int | None:
    """A process's peak resident memory (VmHWM), in MiB; for Spark that is the JVM, where the work happens."""
    for line in Path(proc_status).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return None


def run_in_child(kind: str, payload: dict[str, Any], timeout_s: float, log: Path) -> dict[str, Any]:
    """One pass in a fresh interpreter; its JSON result is the last line of its stdout, its stderr goes to `log`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(payload)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    started = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=out, text=True, timeout=timeout_s, env=env,
                                  cwd=REPO_ROOT)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s", "wall_s": time.monotonic() - started}
    out_lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out_lines:
        tail = log.read_text()[-2000:]
        return {"error": f"exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}",
                "wall_s": time.monotonic() - started}
    return json.loads(out_lines[-1])


# ---- input ---------------------------------------------------------------------------------------------------

def generate_landing(home: Path, events: int, events_per_file: int, seed: int) -> dict[str, Any]:
    """The largest size's landing files (devtools.generate, the demo's synthetic stream) under home/landing."""
    os.environ["TIDAL_HOME"] = str(home)
    from devtools.generate import generate_stream
    from tidal.config import load_settings
    from tidal.storage import StorageLayout

    settings = load_settings(overrides={"generate": {"events_per_file": events_per_file}})
    layout = StorageLayout(settings.home).ensure()
    started = time.monotonic()
    files = generate_stream(layout, settings.params.generate, seed=seed, files=events // events_per_file,
                            event_types=settings.params.base.event_types)
    return {"files": len(files), "seconds": round(time.monotonic() - started, 1),
            "bytes": sum(f.path.stat().st_size for f in files)}


def link_landing(source: Path, home: Path, files: int, skip: int = 0) -> Path:
    """A fresh home whose landing holds `files` files of `source` after its first `skip` (hard links) and its
    items.csv."""
    landing = home / "landing" / "events"
    landing.mkdir(parents=True)
    for path in sorted(source.glob("landing/events/events-*.jsonl"))[skip:skip + files]:
        os.link(path, landing / path.name)
    (home / "landing" / "items").mkdir(parents=True)
    shutil.copy(source / "landing" / "items" / "items.csv", home / "landing" / "items" / "items.csv")
    return home


@dataclass
class WarmServer:
    """A private Spark Connect server started by scripts/stack.sh, as the stack keeps one warm for its tasks."""

    stack_dir: Path
    port: int
    start_s: float

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, master: str, driver_memory: str) -> "WarmServer":
        import yaml
        from warm_spark import free_port, stack  # this folder is on sys.path: the script runs from here

        params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
        params["features"].update(spark_master=master, spark_driver_memory=driver_memory)
        params_path = workdir / "server-params.yaml"
        params_path.write_text(yaml.safe_dump(params))
        server = cls(workdir / "stack", free_port(), 0.0)
        started = time.monotonic()
        up = stack(server.stack_dir, server.port, "up", "spark", params=params_path)
        server.start_s = time.monotonic() - started
        if up.returncode != 0:
            stack(server.stack_dir, server.port, "down")
            raise SystemExit(f"scripts/stack.sh up spark failed:\n{up.stderr[-3000:]}")
        return server

    def stop(self) -> None:
        from warm_spark import stack

        down = stack(self.stack_dir, self.port, "down")
        if down.returncode != 0:
            print(f"[throughput] scripts/stack.sh down failed:\n{down.stderr[-2000:]}", file=sys.stderr)


def warm_up(server: WarmServer, workdir: Path, measured_files: int, warm_up_files: int,
            timeout_s: float) -> dict[str, float]:
    """The server's warm-up tasks: one file (the first task on a server compiles everything), then `warm_up_files`
    files that no measured pass reads (the JIT gets hot over volume, not over tasks). Their work seconds."""
    seconds = {}
    for name, files in (("first_task", 1), ("warm_up_pass", warm_up_files)):
        if files == 0:
            continue
        home = link_landing(workdir / "source", workdir / f"warm-up-{name}", files, skip=measured_files)
        overrides = {"features": {"max_files_per_trigger": files}}
        warmed = run_in_child("spark", {"home": str(home), "overrides": overrides, "now": NOW_EPOCH_S,
                                        "remote": server.url}, timeout_s, workdir / f"warm-up-{name}.log")
        if "work_s" not in warmed:  # the warm figures would silently be a cold server's
            raise SystemExit(f"the warm-up task on the Spark Connect server failed: {warmed.get('error')}")
        seconds[name] = round(warmed["work_s"], 2)
        shutil.rmtree(home, ignore_errors=True)
    return seconds


def master_cores(master: str) -> int:
    match = re.fullmatch(r"local\[(\d+)\]", master)
    return int(match.group(1)) if match else (os.cpu_count() or 1)


# ---- report --------------------------------------------------------------------------------------------------

def results_table(rows: list[dict[str, Any]]) -> str:
    warm = any("spark_warm" in r for r in rows)
    lines = ["| events | Spark start s | Spark s | Spark events/s | DuckDB s | DuckDB events/s "
             "| ratio (DuckDB / Spark) | counts agree |"
             + (" warm server: Spark s | events/s | ratio |" if warm else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if warm else "")]
    for r in rows:
        spark, duck = r["spark"], r["duckdb"]

        def cell(side: dict[str, Any], key: str, fmt: str) -> str:
            return format(side[key], fmt) if key in side else f"failed: {side.get('error', '?')}"[:80]

        def ratio(key: str) -> str:
            return format(r[key], '.1f') + 'x' if r.get(key) else 'n/a'

        line = (f"| {r['events']:,} | {cell(spark, 'start_s', '.1f')} | {cell(spark, 'work_s', '.1f')} | "
                f"{cell(spark, 'events_per_s', ',.0f')} | {cell(duck, 'work_s', '.1f')} | "
                f"{cell(duck, 'events_per_s', ',.0f')} | {ratio('ratio')} | {r['counts_agree']} |")
        if warm:
            side = r.get("spark_warm", {})
            line += f" {cell(side, 'work_s', '.1f')} | {cell(side, 'events_per_s', ',.0f')} | {ratio('ratio_warm')} |"
        lines.append(line)
    return "\n".join(lines)


def machine_note(load: dict[str, float]) -> str:
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0) if Path("/proc/meminfo").exists() else 0
    return (f"{os.cpu_count()} cores shared with another engineer's test runs, {mem_kib / 2**20:.0f} GiB RAM; "
            f"1-minute load average during the runs: min {load['min']}, mean {load['mean']}, max {load['max']}")


def append_results_md(path: Path, command: str, note: str, table: str, details: list[str]) -> None:
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    section = [f"\n## Throughput: Spark features job vs single-process DuckDB, same input ({day})\n",
               f"Command: `{command}`\n", f"Machine: {note}.\n", table, "", *details, ""]
    with path.open("a") as f:
        f.write("\n".join(section))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--events-per-file", type=int, default=20_000)
    parser.add_argument("--master", default="local[2]", help="Spark master (DuckDB gets as many threads)")
    parser.add_argument("--driver-memory", default="8g", help="features.spark_driver_memory for the Spark run")
    parser.add_argument("--duckdb-memory-limit", default="8GB")
    parser.add_argument("--warm-up-events", type=int, default=1_000_000,
                        help="with --warm-server: events of the warm-up pass before the measured ones")
    parser.add_argument("--max-files-per-trigger", type=int, default=None,
                        help="default: all files, i.e. one micro-batch")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per pass")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir, removed at the end")
    parser.add_argument("--no-record", action="store_true", help="do not write throughput.json or RESULTS.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here (benchmarks/run.py reads it)")
    parser.add_argument("--warm-server", action="store_true",
                        help="also run Spark as the stack runs it: each size as a task on a Spark Connect server "
                             "(scripts/stack.sh, same master and heap) that has already run the warm-up tasks")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PAYLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one pass, in a fresh process: print its JSON result as the last line
        kind, payload = args.child[0], json.loads(args.child[1])
        result = (spark_pass(Path(payload["home"]), payload["overrides"], payload["now"], payload.get("remote"))
                  if kind.startswith("spark") else
                  duckdb_pass(Path(payload["home"]), Path(payload["out"]), payload["overrides"], payload["now"],
                              payload["threads"], payload["memory_limit"]))
        print(json.dumps(result), flush=True)
        return 0

    sizes = sorted(set(args.events))
    if any(n % args.events_per_file for n in (*sizes, args.warm_up_events)):
        parser.error("every --events and --warm-up-events must be a multiple of --events-per-file")
    warm_up_files = args.warm_up_events // args.events_per_file if args.warm_server else 0
    extra_files = max(warm_up_files, 1) if args.warm_server else 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tidal-throughput-"))
    command = "PYTHONPATH=. .venv/bin/python benchmarks/features/throughput.py " + " ".join(argv or sys.argv[1:])
    threads = master_cores(args.master)
    rows: list[dict[str, Any]] = []
    load = LoadSampler()
    server, warm_up_s = None, None
    try:
        with load:
            total = sizes[-1] + extra_files * args.events_per_file
            print(f"[throughput] generating {total:,} events into {workdir}", file=sys.stderr, flush=True)
            generated = generate_landing(workdir / "source", total, args.events_per_file, args.seed)
            print(f"[throughput] generated {generated}", file=sys.stderr, flush=True)
            kinds = ("spark", "duckdb")
            if args.warm_server:
                server = WarmServer.start(workdir, args.master, args.driver_memory)
                warm_up_s = warm_up(server, workdir, sizes[-1] // args.events_per_file, warm_up_files,
                                    args.timeout_s)
                print(f"[throughput] Spark Connect server up in {server.start_s:.1f} s, warm-up tasks "
                      f"{warm_up_s} s", file=sys.stderr, flush=True)
                kinds = ("spark", "spark_warm", "duckdb")
            for events in sizes:
                files = events // args.events_per_file
                overrides = {"features": {"spark_master": args.master, "spark_driver_memory": args.driver_memory,
                                          "max_files_per_trigger": args.max_files_per_trigger or files}}
                row: dict[str, Any] = {"events": events, "files": files}
                for kind in kinds:
                    home = link_landing(workdir / "source", workdir / f"{kind}-{events}", files)
                    payload = {"home": str(home), "out": str(workdir / f"{kind}-{events}-out"), "overrides": overrides,
                               "now": NOW_EPOCH_S, "threads": threads, "memory_limit": args.duckdb_memory_limit,
                               "remote": server.url if kind == "spark_warm" else None}
                    print(f"[throughput] {kind} on {events:,} events ...", file=sys.stderr, flush=True)
                    with LoadSampler() as pass_load:
                        result = run_in_child(kind, payload, args.timeout_s, workdir / f"{kind}-{events}.log")
                    result["load_avg_1m"] = pass_load.summary()
                    if "work_s" in result:
                        result["events_per_s"] = result["landed"] / result["work_s"]
                    row[kind] = result
                    print(f"[throughput] {kind} on {events:,} events: {json.dumps(result)}", file=sys.stderr,
                          flush=True)
                    shutil.rmtree(home, ignore_errors=True)
                    shutil.rmtree(workdir / f"{kind}-{events}-out", ignore_errors=True)
                spark, duck = row["spark"], row["duckdb"]
                row["counts_agree"] = (all(row[kind].get(k) == duck.get(k) for k in COUNT_KEYS for kind in kinds)
                                       if all("work_s" in row[kind] for kind in kinds) else "n/a")
                if "events_per_s" in spark and "events_per_s" in duck:
                    row["ratio"] = duck["events_per_s"] / spark["events_per_s"]
                if "events_per_s" in row.get("spark_warm", {}) and "events_per_s" in duck:
                    row["ratio_warm"] = duck["events_per_s"] / row["spark_warm"]["events_per_s"]
                rows.append(row)
    finally:
        if server is not None:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    table = results_table(rows)
    note = machine_note(load.summary())
    print(table)
    print(note)
    if args.json:
        args.json.write_text(json.dumps({"command": command, "load_avg_1m": load.summary(), "rows": rows,
                                         "warm_up_s": warm_up_s}, indent=2))
    if not args.no_record:
        record = {"command": command, "machine": note, "generated": generated, "events_per_file": args.events_per_file,
                  "warm_up_s": warm_up_s,
                  "master": args.master, "duckdb_threads": threads, "driver_memory": args.driver_memory,
                  "duckdb_memory_limit": args.duckdb_memory_limit, "now_epoch_s": NOW_EPOCH_S,
                  "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
        (HERE / "throughput.json").write_text(json.dumps(record, indent=2) + "\n")
        details = [f"- {r['events']:,} events ({r['files']} files of {args.events_per_file:,}): Spark "
                   f"{r['spark'].get('batches', '?')} micro-batch(es) ({r['spark'].get('stream_s', '?')} s of it "
                   f"before the bronze compaction step, {r['spark'].get('compacted_dates', '?')} dates compacted), "
                   f"load {r['spark'].get('load_avg_1m')}, JVM peak "
                   f"RSS {r['spark'].get('peak_rss_mib', '?')} MiB (heap limit {args.driver_memory}); DuckDB "
                   f"{threads} threads, load {r['duckdb'].get('load_avg_1m')}, peak RSS "
                   f"{r['duckdb'].get('peak_rss_mib', '?')} MiB" for r in rows]
        append_results_md(HERE / "RESULTS.md", command, note, table, details)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
