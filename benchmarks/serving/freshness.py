"""Freshness under the real Airflow scheduler: event file landed -> visible in the online store, and -> served by
a model trained on it, p50/p95 over N cycles of a steady generated stream.

It runs `make demo`'s driver (devtools/demo.py: one landing file per cycle, a run triggered as soon as the file
is pending, serving and the online store part of the stack) against a running stack, then reads the figures
with tidal/freshness.py and writes FRESHNESS.md and freshness.json next to this file.

    scripts/stack.sh up all && set -a && source "$(scripts/stack.sh env)" && set +a
    python benchmarks/serving/freshness.py --cycles 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from devtools import demo  # noqa: E402
from tidal.config import load_settings  # noqa: E402
from tidal.freshness import freshness_report  # noqa: E402
from tidal.storage import StorageLayout  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10, help="cycles to drive (0: only read the figures)")
    parser.add_argument("--since", type=float, default=None,
                        help="with --cycles 0: report the files landed since this epoch second")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    started = time.time() if args.since is None else args.since
    load_before = os.getloadavg()
    if args.cycles:
        demo.main(["--cycles", str(args.cycles), "--first-files", "1", "--files-per-cycle", "1"])
    report = freshness_report(StorageLayout(load_settings().home), since_s=started - 1)
    report.update(cycles_driven=args.cycles, load_average_before=load_before, load_average_after=os.getloadavg(),
                  wall_s=round(time.time() - started, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "freshness.json").write_text(json.dumps(report, indent=2) + "\n")
    online, served = report["landed_to_online_s"], report["landed_to_served_s"]
    lines = [f"# Freshness over {online['n']} landing files under the Airflow scheduler (2 cores, load average "
             f"{load_before[0]:.2f} before, {report['load_average_after'][0]:.2f} after)", "",
             "One landing file per cycle (devtools/demo.py's driver: a run is triggered as soon as a file is "
             "pending, so the 5-minute schedule's wait is not in these figures).", "",
             "| delay | files | p50 s | p95 s | max s |", "|---|---|---|---|---|",
             f"| landed -> visible in the online store | {online['n']} | {online['p50']} | {online['p95']} | "
             f"{online['max']} |",
             f"| landed -> served by a model trained on it | {served['n']} | {served['p50']} | {served['p95']} | "
             f"{served['max']} |", "",
             "| file | batch | landed -> online s | landed -> served s |", "|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['batch_id']} | {fmt(r['landed_to_online_s'])} | {fmt(r['landed_to_served_s'])} |"
              for r in report["files"]]
    if report["not_served_yet"]:
        lines += ["", f"Not served yet at the end: {', '.join(report['not_served_yet'])}."]
    (args.out / "FRESHNESS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
