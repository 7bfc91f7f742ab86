"""The one shape of a step's command line: `tidal STEP --run-id RUN [--batch-ids N ...]` runs the step's function
for that run (which writes its summary to the run's reports folder) and prints the summary as JSON."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable

from tidal.config import Settings, load_settings
from tidal.storage import StorageLayout


def run_step_main(argv: list[str] | None, *, prog: str, description: str,
                  run: Callable[[Settings, argparse.Namespace, Path], dict[str, Any]], batch_ids: bool = False,
                  exit_code: Callable[[dict[str, Any]], int] = lambda summary: 0) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--run-id", required=True, help="the run whose candidate and reports folder this is")
    if batch_ids:
        parser.add_argument("--batch-ids", type=int, nargs="+", required=True, help="the micro-batches to read")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the steps' log lines, as the task log shows them
    settings = load_settings()
    summary = run(settings, args, StorageLayout(settings.home).run_reports(args.run_id))
    print(json.dumps(summary, indent=2, default=str))
    return exit_code(summary)
