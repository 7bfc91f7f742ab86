"""RESULTS.md of the freshness benchmark: the targets, both modes side by side with after/before ratios, the
per-task breakdown, and every file's figures."""

from __future__ import annotations

from typing import Any

TARGETS = {"p50": 60.0, "p95": 120.0}  # landed -> promoted, seconds (issue 13)


def cell(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(after: float | None, before: float | None) -> str:
    return "-" if not after or not before else f"{after / before:.2f}"


def delay_lines(modes: dict[str, Any]) -> list[str]:
    names = list(modes)
    lines = ["| delay | " + " | ".join(f"{m} n / p50 / p95 / max s" for m in names)
             + (" | p50 after/before | p95 after/before |" if len(names) == 2 else " |"),
             "|---|" + "---|" * len(names) + ("---|---|" if len(names) == 2 else "")]
    for key, label in [("landed_to_run_start_s", "landed -> run started"),
                       ("landed_to_online_s", "landed -> online store"),
                       ("landed_to_promoted_s", "**landed -> promoted**"),
                       ("landed_to_served_s", "landed -> served")]:
        stats = [modes[m]["summary"][key] for m in names]
        row = f"| {label} | " + " | ".join(f"{s['n']} / {cell(s['p50'])} / {cell(s['p95'])} / {cell(s['max'])}"
                                            for s in stats)
        if len(names) == 2:
            row += f" | {ratio(stats[1]['p50'], stats[0]['p50'])} | {ratio(stats[1]['p95'], stats[0]['p95'])}"
        lines.append(row + " |")
    return lines


def task_lines(modes: dict[str, Any]) -> list[str]:
    names = list(modes)
    lines = ["| task | " + " | ".join(f"{m}: gap before / duration s" for m in names) + " |",
             "|---|" + "---|" * len(names)]
    tasks = modes[names[0]]["summary"]["tasks"]
    for task in tasks:
        cells = [modes[m]["summary"]["tasks"][task] for m in names]
        lines.append(f"| {task} | " + " | ".join(f"{cell(c['gap_before_s'])} / {cell(c['duration_s'])}" for c in cells)
                     + " |")
    for key, label in [("cycle_start_to_promoted_s", "run started -> promote ended"),
                       ("cycle_start_to_end_s", "run started -> run ended")]:
        lines.append(f"| {label} | " + " | ".join(cell(modes[m]["summary"][key]) for m in names) + " |")
    sums = {m: (sum(t["gap_before_s"] or 0 for t in modes[m]["summary"]["tasks"].values()),
                sum(t["duration_s"] or 0 for t in modes[m]["summary"]["tasks"].values())) for m in names}
    lines.append("| sum of medians: gaps / durations | " + " | ".join(f"{cell(g)} / {cell(d)}" for g, d in sums.values())
                 + " |")
    return lines


def file_lines(mode: dict[str, Any]) -> list[str]:
    lines = [f"### {mode['mode']}: every file", "", "| file | batch | run | landed -> promoted s | -> served s |",
             "|---|---|---|---|---|"]
    for r in mode["rows"]:
        lines.append(f"| {r['file']} | {r['batch_id']} | {r['run_id'] or '-'} | {cell(r['landed_to_promoted_s'])} | "
                     f"{cell(r['landed_to_served_s'])} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    modes = report["modes"]
    head = [f"# Freshness under the Airflow scheduler, nobody triggering ({report['cpus']} CPUs)", "",
            f"Started {report['started_at']}, {report['wall_s']:.0f} s in all. Per mode: a private stack "
            f"(`scripts/stack.sh up` with the mode's components and settings), one warm-up file, then {report['files_per_mode']} files of the shipped "
            f"`generate.events_per_file` events, one every {report['interval_s']:g} s; the tick every "
            f"{report['every_minutes']} minutes. Target (issue 13): landed -> promoted p50 <= "
            f"{TARGETS['p50']:g} s, p95 <= {TARGETS['p95']:g} s.", ""]
    for name, mode in modes.items():
        s = mode["summary"]
        head.append(f"- **{name}**: {mode['what']}. {s['cycles']} cycles ({', '.join(s['run_types']) or '-'}), "
                    f"{s['idle_runs']} idle runs, median {cell(s['files_per_cycle'], 'g')} files per cycle; load "
                    f"average {mode['load_average_before'][0]:.2f} before, {mode['load_average_after'][0]:.2f} after"
                    + (f"; not promoted by the end: {', '.join(s['not_promoted'])}" if s["not_promoted"] else "") + ".")
    lines = head + ["", "## Per file", ""] + delay_lines(modes) + [
        "", "## Per cycle: median gap before each task and its duration (Airflow task instances)", "",
        "The first gap is run started -> check_landing started; the others, the previous task ended -> this one "
        "started (the scheduler's hop plus the task process's start).", ""] + task_lines(modes)
    for mode in modes.values():
        lines += [""] + file_lines(mode)
    return "\n".join(lines) + "\n"
