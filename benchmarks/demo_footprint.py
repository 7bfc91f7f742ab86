"""Wall time and peak memory of `make demo` (or any command) for the whole embedded stack.

Samples, once a second, every process that belongs to the checkout: its command line or its environment
mentions the checkout's path (Airflow renames its processes, but they inherit AIRFLOW_HOME=<checkout>/.stack).
Memory is reported as the peak of the summed PSS (proportional set size: shared pages are split between the
processes that share them, so the sum is not inflated) and, for comparison, of the summed RSS.

Run from the checkout:  .venv/bin/python benchmarks/demo_footprint.py -- make demo
The cluster profile's processes mention its folder instead (tests/cluster puts it at /tmp/tidal-cluster-*):
    .venv/bin/python benchmarks/demo_footprint.py --match /tmp/tidal-cluster- -- make test-cluster
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil


def stack_processes(match: str) -> list[psutil.Process]:
    found, me = [], os.getpid()  # not this sampler, whose own command line holds --match
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if match in " ".join(proc.cmdline()) or any(match in v for v in proc.environ().values()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def sample(match: str) -> tuple[int, int, int]:
    pss = rss = 0
    procs = stack_processes(match)
    for proc in procs:
        try:
            info = proc.memory_full_info()
            pss += info.pss
            rss += info.rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pss, rss, len(procs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--match", default=None,
                        help="count the processes whose command line or environment contains this (default: --checkout)")
    parser.add_argument("--out", default=None, help="write the result as JSON here too")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command to run, after --")
    args = parser.parse_args()
    match = args.match or args.checkout
    command = [c for c in args.command if c != "--"] or ["make", "demo"]
    peak = {"pss": 0, "rss": 0, "processes": 0}
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            pss, rss, n = sample(match)
            peak["pss"], peak["rss"], peak["processes"] = max(peak["pss"], pss), max(peak["rss"], rss), max(peak["processes"], n)
            done.wait(1.0)

    thread = threading.Thread(target=sampler, daemon=True)
    started = time.monotonic()
    thread.start()
    rc = subprocess.call(command, cwd=args.checkout)
    done.set()
    thread.join()
    result = {"command": " ".join(command), "matched": match, "exit_code": rc,
              "wall_s": round(time.monotonic() - started, 1),
              "peak_pss_mib": round(peak["pss"] / 2**20), "peak_rss_mib": round(peak["rss"] / 2**20),
              "peak_processes": peak["processes"]}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
