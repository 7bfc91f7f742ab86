"""One entry point for the speed benchmarks of issue 13, side by side, each figure next to its baseline of the same run.

Not a test. Run (from the repo root): `make bench` or
    PYTHONPATH=. .venv/bin/python benchmarks/run.py [--events 1000000 5000000] [--freshness] [--out DIR]

Sections (each one a fresh process, so none inherits another's JVM, threads or memory):
  features    Spark `run_features` vs the single-process DuckDB batch on the same generated files
              (benchmarks/features/throughput.py): events/s of each, ratio Spark / DuckDB (target >= 0.5), with Spark
              both on a fresh JVM and as a task on a warm Spark Connect server (as the stack runs it);
  cycle       one incremental features pass over a 10k-event window as a task runs it, on the stack's warm Spark
              (Spark Connect) once it has run 20 tasks, vs a local JVM per task, alternating
              (benchmarks/features/warm_spark.py): seconds of work (target <= 5 s), the task's wall time, and the
              same pass in a fresh server's 2nd-4th tasks;
  drift       every drift test of a cycle (jobs.drift.statistics.drift_tests) over 1M current rows x a 20k
              reference, next to the bare scipy calls on the same arrays (target < 2 s);
  training    the fine-tune's samples/s vs a bare PyTorch loop on the same model, batch and optimizer
              (benchmarks/training/loop.py; target >= 0.8);
  freshness   only with --freshness, and only when benchmarks/freshness/bench.py exists (about 30 minutes).
The 1-minute load average (os.getloadavg) is sampled through every section: the machine is shared. Writes
<out>/results.json and <out>/RESULTS.md (default: benchmarks/run/).
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
from typing import Any


HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.features.throughput import LoadSampler  # noqa: E402  (after the path is set)


def run_script(args: list[str], timeout_s: float) -> tuple[str, float]:
    """A benchmark script in a fresh interpreter from the repo root; (stdout, seconds). Raises on failure."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return proc.stdout, time.monotonic() - started


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a script printed last (one line, or indented from its last line starting with '{')."""
    lines = stdout.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("{"))
    return json.loads("\n".join(lines[start:]))


def features_section(events: list[int], driver_memory: str, timeout_s: float) -> dict[str, Any]:
    """Spark vs DuckDB events/s per size, twice: a fresh JVM per pass (the JIT cold) and a task on a warm Spark
    Connect server, as the stack runs every cycle (benchmarks/features/throughput.py --warm-server)."""
    out = Path(tempfile.mkdtemp(prefix="tidal-bench-")) / "throughput.json"
    run_script(["benchmarks/features/throughput.py", "--events", *map(str, events), "--no-record", "--warm-server",
                "--driver-memory", driver_memory, "--json", str(out)], timeout_s)
    result = json.loads(out.read_text())
    rows, warm_up_s = result["rows"], result.get("warm_up_s") or {}
    figures = []
    for r in rows:
        duck = r["duckdb"]
        for kind, label in (("spark", "a fresh JVM"), ("spark_warm", "the warm Spark Connect server")):
            spark = r.get(kind, {})
            ok = "events_per_s" in spark and "events_per_s" in duck
            start = (f"Spark start {spark.get('start_s', 0):.1f} s (not counted)" if kind == "spark" else
                     f"session on the server {spark.get('start_s', 0):.1f} s (not counted), after the warm-up "
                     f"tasks (one file {warm_up_s.get('first_task')} s, then the warm-up pass "
                     f"{warm_up_s.get('warm_up_pass')} s)")
            figures.append({"figure": f"features events/s at {r['events']:,} events, {label}",
                            "value": round(spark["events_per_s"]) if ok else None,
                            "baseline": round(duck["events_per_s"]) if ok else None, "baseline_name": "DuckDB batch",
                            "ratio": round(spark["events_per_s"] / duck["events_per_s"], 3) if ok else None,
                            "target": ">= 0.5", "met": ok and spark["events_per_s"] / duck["events_per_s"] >= 0.5,
                            "note": f"counts agree: {r['counts_agree']}; {start}; loads {spark.get('load_avg_1m')} / "
                                    f"{duck.get('load_avg_1m')}" + ("" if ok else f"; {spark.get('error', '')}"),
                            "raw": r})
    return {"figures": figures}


def cycle_section(timeout_s: float) -> dict[str, Any]:
    """The 10k-event features task as the stack runs it (a session on its warm Spark Connect server, after the
    tasks ten minutes of 30-s cycles would have run on it) and as it ran before the server existed (a local JVM per
    task), alternating, 3 rounds (benchmarks/features/warm_spark.py). The fresh server's first tasks are reported
    too: its JIT is still compiling Spark's own code through them."""
    rounds, warm_up_tasks = 3, 20
    stdout, _ = run_script(["benchmarks/features/warm_spark.py", "--events", "10000", "--rounds", str(rounds),
                            "--warm-up-tasks", str(warm_up_tasks), "--no-write"], timeout_s)
    r = last_json(stdout)
    local, warm = r["medians"]["local"], r["medians"]["connect_warm"]
    fresh = r["warm_up_pass_s"]
    fresh_2_to_4 = round(median(fresh[1:4]), 2)
    note = (f"medians of {rounds} local / {rounds} warm runs, on a server that had run {warm_up_tasks} tasks "
            f"(passes {fresh[0]} s for the first, median {fresh_2_to_4} s for the 2nd-4th, "
            f"{round(median(fresh[-4:]), 2)} s for the last four); session acquire {warm['spark_start_s']} s warm vs "
            f"{local['spark_start_s']} s for a local JVM; pass with nothing new {warm['empty_pass_s']} s vs "
            f"{local['empty_pass_s']} s")
    return {"figures": [
        {"figure": "features pass over a 10k-event window, warm Spark (s)", "value": warm["features_pass_s"],
         "baseline": local["features_pass_s"], "baseline_name": "local Spark per task (s)",
         "ratio": round(warm["features_pass_s"] / local["features_pass_s"], 3), "target": "value <= 5 s",
         "met": warm["features_pass_s"] <= 5.0, "note": note, "raw": r},
        {"figure": "features task wall, 10k events, warm Spark (s)", "value": warm["task_wall_s"],
         "baseline": local["task_wall_s"], "baseline_name": "local Spark per task (s)",
         "ratio": round(warm["task_wall_s"] / local["task_wall_s"], 3), "target": "-", "met": None,
         "note": "the whole task process: Python start, imports, session, the pass, exit", "raw": {}},
        {"figure": "features pass over a 10k-event window, a fresh server's 2nd-4th tasks (s)",
         "value": fresh_2_to_4, "baseline": local["features_pass_s"], "baseline_name": "local Spark per task (s)",
         "ratio": round(fresh_2_to_4 / local["features_pass_s"], 3), "target": "-", "met": None,
         "note": "the same pass in the stack's first minutes, the JIT still compiling (the figure before this "
                 "protocol)", "raw": {}}]}


def drift_frames(n: int, seed: int):
    """A drift window shaped like the examples: value (half missing), event_weight, event_type, item_id (Zipf)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    value = rng.normal(3.0, 1.0, n)
    value[rng.random(n) < 0.5] = np.nan
    return pd.DataFrame({"value": value, "event_weight": rng.choice([1.0, 2.0, 3.0, 5.0], n),
                         "event_type": rng.choice(["view", "click", "add_to_cart", "purchase", "rating"], n),
                         "item_id": [f"i{i:06d}" for i in rng.zipf(1.3, n) % 20000]})


def drift_section(current_rows: int) -> dict[str, Any]:
    """drift_tests over `current_rows` x the capped reference, vs the bare scipy tests on the same arrays."""
    import numpy as np
    import pandas as pd
    from scipy.stats import chi2_contingency, ks_2samp

    from jobs.drift.statistics import drift_tests
    from tidal.config import load_settings

    params = load_settings().params.drift
    reference, current = drift_frames(params.reference_max_rows, 1), drift_frames(current_rows, 2)
    drift_tests(reference, current, params)  # imports and first-call costs out of the timing
    started = time.perf_counter()
    results, level = drift_tests(reference, current, params)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    for feature in params.features:
        ks_2samp(reference[feature].to_numpy(float)[~np.isnan(reference[feature].to_numpy(float))],
                 current[feature].to_numpy(float)[~np.isnan(current[feature].to_numpy(float))])
    for feature in params.categorical_features:  # one 2 x K table per feature (item ids as they are, no buckets)
        codes, uniques = pd.factorize(pd.concat([reference[feature], current[feature]], ignore_index=True))
        k = len(uniques)
        table = np.array([np.bincount(codes[:len(reference)], minlength=k), np.bincount(codes[len(reference):],
                                                                                       minlength=k)]) + 1
        chi2_contingency(table)
    bare = time.perf_counter() - started
    return {"figures": [{"figure": f"drift tests, {current_rows:,} current x {len(reference):,} reference rows (s)",
                         "value": round(seconds, 3), "baseline": round(bare, 3),
                         "baseline_name": "bare scipy calls (s)", "ratio": round(seconds / bare, 2),
                         "target": "value < 2 s", "met": seconds < 2.0,
                         "note": f"{len(results)} tests, decision {level}", "raw": {"seconds": seconds}}]}


def training_section(timeout_s: float) -> dict[str, Any]:
    stdout, _ = run_script(["benchmarks/training/loop.py"], timeout_s)
    r = last_json(stdout)
    return {"figures": [{"figure": "fine-tune samples/s", "value": r["finetune_samples_per_s"],
                         "baseline": r["bare_samples_per_s"], "baseline_name": "bare PyTorch loop",
                         "ratio": r["ratio"], "target": ">= 0.8", "met": r["ratio"] >= 0.8,
                         "note": f"its _fit loop alone {r['fit_samples_per_s']}/s (ratio {r['fit_ratio']}); "
                                 f"{r['examples']} examples x {r['epochs']} epochs, batch {r['batch_size']}",
                         "raw": r}]}


def freshness_section(timeout_s: float) -> dict[str, Any]:
    script = HERE / "freshness" / "bench.py"
    if not script.exists():
        return {"figures": [], "skipped": "benchmarks/freshness/bench.py is not there"}
    stdout, seconds = run_script([str(script.relative_to(REPO_ROOT))], timeout_s)
    return {"figures": [], "seconds": round(seconds), "stdout_tail": stdout.strip().splitlines()[-20:]}


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Benchmarks ({record['recorded_at']})", "", f"Command: `{record['command']}`", "",
             f"Machine: {record['cores']} cores; 1-minute load average through the run: {record['load_avg_1m']}.", "",
             "| figure | value | baseline (same run) | ratio | target | met | notes |", "|---|---|---|---|---|---|---|"]
    for name, section in record["sections"].items():
        if "error" in section:
            lines.append(f"| {name} | failed | | | | | {section['error'][:200]} |")
        for f in section.get("figures", []):
            lines.append(f"| {f['figure']} | {f['value']} | {f['baseline']} ({f['baseline_name']}) | {f['ratio']} | "
                         f"{f['target']} | {'-' if f['met'] is None else f['met']} | {f['note']} (load {section.get('load_avg_1m')}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--drift-rows", type=int, default=1_000_000)
    parser.add_argument("--only", nargs="+", choices=("features", "cycle", "drift", "training"), default=None)
    parser.add_argument("--freshness", action="store_true", help="also run benchmarks/freshness/bench.py (slow)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per section")
    parser.add_argument("--out", type=Path, default=HERE / "run")
    args = parser.parse_args(argv)
    sections = {"features": lambda: features_section(args.events, args.driver_memory, args.timeout_s),
                "cycle": lambda: cycle_section(args.timeout_s), "drift": lambda: drift_section(args.drift_rows),
                "training": lambda: training_section(args.timeout_s)}
    chosen = [name for name in sections if args.only is None or name in args.only]
    if args.freshness:
        sections["freshness"] = lambda: freshness_section(args.timeout_s)
        chosen.append("freshness")
    record: dict[str, Any] = {"command": "benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "cores": os.cpu_count(), "sections": {}}
    with LoadSampler() as load:
        for name in chosen:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            with LoadSampler() as section_load:
                try:
                    result = sections[name]()
                except Exception as err:  # noqa: BLE001 - one failed section is reported, the others still run
                    result = {"error": f"{type(err).__name__}: {err}"}
            result["load_avg_1m"] = section_load.summary()
            record["sections"][name] = result
            print(f"[bench] {name}: {json.dumps(result.get('figures', result), default=str)[:600]}", file=sys.stderr,
                  flush=True)
    record["load_avg_1m"] = load.summary()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (args.out / "RESULTS.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
