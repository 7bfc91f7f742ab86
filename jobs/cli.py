"""`tidal`: one subcommand per step, plus `tidal cycle` (all steps in order, without Airflow).

Each subcommand hands its arguments to the job's own `main(argv)`, so `tidal features ...` and
`python -m jobs.features ...` are the same program. Heavy imports happen only in the chosen job.
"""

from __future__ import annotations

import importlib
import json
import sys

# subcommand -> (module, one-line help)
STEP_COMMANDS = {
    "generate": ("jobs.generate", "append synthetic interaction files to landing/events"),
    "features": ("jobs.features", "Spark streaming: new landing files -> bronze, examples, quarantine"),
    "compact": ("jobs.compact", "compact closed bronze dates into a few files (features does it after each run)"),
    "validate": ("jobs.validate", "Great Expectations on a run's new examples, with Data Docs"),
    "drift": ("jobs.drift", "KS drift test of new examples against the production reference"),
    "finetune": ("jobs.finetune", "fine-tune a candidate from production (or train the first model)"),
    "gate": ("jobs.gate", "score candidate vs production on the freshest held-out slice"),
    "promote": ("jobs.promote", "move the production alias to a passing candidate"),
    "version": ("jobs.version", "track the promoted model with DVC and push it to S3"),
    "quarantine": ("jobs.quarantine", "list, export and replay quarantined records (list | export | replay)"),
    "registry": ("jobs.registry_cli", "list and show model versions, and which served when (served-at)"),
    "rollback": ("jobs.rollback", "point production back at an earlier version (--to V --reason ... [--by])"),
    "retrain": ("jobs.retrain", "full retrain from scratch over a history window (--reason ... [--days N])"),
}
USAGE = "usage: tidal <command> [args]\n\ncommands:\n" + "\n".join(
    f"  {name:<22}{help_}" for name, (_, help_) in {
        **STEP_COMMANDS,
        "cycle [--json]": ("", "run every step in order without Airflow"),
        "evaluate prequential": ("", "prequential replay of all strategies on an interactions file"),
    }.items())


def cycle_main(argv: list[str]) -> int:
    import argparse

    from jobs.cycle import run_cycle
    from tidal.config import load_settings

    parser = argparse.ArgumentParser(prog="tidal cycle", description="Run one incremental cycle without Airflow.")
    parser.add_argument("--json", action="store_true", help="print all step summaries as one JSON object on stdout")
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args(argv)
    settings = load_settings()
    # With --json, stdout carries only the JSON; progress goes to stderr.
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print
    if args.json:
        real_stdout, sys.stdout = sys.stdout, sys.stderr
        try:
            result = run_cycle(settings, args.run_id, log=log)
        finally:
            sys.stdout = real_stdout
        print(json.dumps(result, indent=2, default=str))
    else:
        result = run_cycle(settings, args.run_id, log=log)
        for step, seconds in result["seconds"].items():
            print(f"{step:<10} {seconds:>7.2f} s")
        print(f"reports: {result['reports']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "cycle":
        return cycle_main(rest)
    if command == "evaluate":
        if not rest or rest[0] != "prequential":
            print("usage: tidal evaluate prequential --interactions PATH [--items PATH] --out DIR", file=sys.stderr)
            return 2
        return importlib.import_module("jobs.prequential").main(rest[1:])
    if command not in STEP_COMMANDS:
        print(f"tidal: unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
        return 2
    return importlib.import_module(STEP_COMMANDS[command][0]).main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
