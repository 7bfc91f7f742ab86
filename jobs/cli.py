"""`tidal`: one entry point; each command is a module's `main(argv)`, so `tidal features ...` and
`python -m jobs.features.stream ...` are the same program. Heavy imports happen only in the chosen module.
"""

from __future__ import annotations

import importlib
import sys


# command -> (module whose main(argv) runs it, one-line help)
COMMANDS = {
    "generate": ("devtools.generate", "append synthetic interaction files to landing/events (development)"),
    "features": ("jobs.features.stream", "Spark streaming: new landing files -> bronze, examples, quarantine"),
    "compact": ("jobs.features.compact", "compact closed bronze dates into a few files (features does it after each run)"),
    "validate": ("jobs.validation.validate", "Great Expectations on a run's new examples, with Data Docs"),
    "drift": ("jobs.drift.run", "drift tests of new examples against the production reference"),
    "finetune": ("jobs.training.finetune", "fine-tune a candidate from production (or train the first model)"),
    "gate": ("jobs.release.gate", "score candidate vs production on the freshest held-out slice"),
    "promote": ("jobs.release.promote", "move the production alias to a passing candidate"),
    "version": ("jobs.release.version", "track the promoted model with DVC and push it to S3"),
    "quarantine": ("jobs.features.quarantine", "list, export and replay quarantined records (list | export | replay)"),
    "registry": ("jobs.release.registry_cli", "list and show model versions, and which served when (served-at)"),
    "rollback": ("jobs.release.rollback", "point production back at an earlier version (--to V --reason ... [--by])"),
    "cycle": ("jobs.cycle", "run every incremental step in order without Airflow [--json]"),
    "retrain": ("jobs.retrain", "full retrain from scratch over a history window (--reason ... [--days N])"),
    "dvc-stage": ("jobs.training.dvc_stages", "one stage of dvc.yaml (dvc repro runs them)"),
    "pipelines": ("tidal.pipelines", "show the pipelines' steps, or print dvc.yaml (show | dvc-yaml)"),
    "evaluate": ("jobs.prequential", "evaluate prequential: replay of all strategies on an interactions file"),
    "serve": ("serving.server", "the recommendations API on 127.0.0.1 (--port N); the stack starts it"),
}
USAGE = "usage: tidal <command> [args]\n\ncommands:\n" + "\n".join(
    f"  {name:<14}{help_}" for name, (_, help_) in COMMANDS.items())


def run_command(command: str, argv: list[str]) -> int:
    """The one dispatch: import the command's module and hand it the rest of the arguments."""
    module = COMMANDS[command][0]
    if command == "evaluate":  # `tidal evaluate prequential ...`: one kind of evaluation so far
        if not argv or argv[0] != "prequential":
            print("usage: tidal evaluate prequential --interactions PATH [--items PATH] --out DIR", file=sys.stderr)
            return 2
        argv = argv[1:]
    return importlib.import_module(module).main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"tidal: unknown command '{argv[0]}'\n\n{USAGE}", file=sys.stderr)
        return 2
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
