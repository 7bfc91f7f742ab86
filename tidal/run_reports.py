"""A run's reports folder as a reader sees it: which runs have one, their step summaries, and one report file,
found by name with strict checks so a request never reads outside the reports folder.

    reports/runs/<run folder>/<step>.json        each step's summary (tidal.storage.write_step_summary)
    reports/runs/<run folder>/drift.html, drift.png, data_docs/index.html, data_docs/...

A run is named by its run id (an Airflow run id such as `manual__2026-12-02T04:00:00+00:00`, or a CLI cycle id) or
by its folder name (`safe_name` of the run id). A report is named by its path inside the run's folder, one plain
segment per folder: `..`, `.`, an absolute path, a backslash, a NUL or an unexpected file type is refused with
ReportRequestError (a request of no allowed form: HTTP 400), a well-formed name that names no file with
FileNotFoundError (HTTP 404). Used by the Airflow UI plugin (plugins/tidal_ui).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tidal.storage import StorageLayout, safe_name


# Airflow run ids: `<run type>__<ISO time>` (':' and '+' included) or a custom id; CLI cycle ids are plainer still.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,249}$")
# One folder or file name. ':' and '+' because GX names its validation folders after the run id.
SEGMENT_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,127}$")
MAX_REPORT_PATH = 512
MAX_SEGMENTS = 12
# What a run's reports folder holds: summaries, the drift page and plot, the Data Docs site and its offline assets.
REPORT_SUFFIXES = {".html", ".json", ".png", ".svg", ".css", ".js", ".map", ".woff", ".woff2", ".ttf", ".eot",
                   ".otf", ".gif", ".jpg", ".ico", ".txt"}


class ReportRequestError(ValueError):
    """A run id or report path of no allowed form (never looked up on disk)."""


def check_run_id(run_id: str) -> str:
    """The run id if it is of an allowed form (`..` refused even where the pattern would let dots through)."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise ReportRequestError(f"{str(run_id)[:80]!r} is not a run id (letters, digits and _ . : + -, "
                                 f"at most 250 characters, no '..')")
    return run_id


def run_folder(layout: StorageLayout, run_id: str) -> Path:
    """The run's reports folder (FileNotFoundError when the run wrote none)."""
    folder = layout.run_reports(check_run_id(run_id))
    if not folder.is_dir():
        raise FileNotFoundError(f"no reports for run {run_id}")
    return folder


def report_path(layout: StorageLayout, run_id: str, relative: str) -> Path:
    """The file `relative` names inside the run's reports folder, checked form first, then on disk."""
    if not isinstance(relative, str) or not relative or len(relative) > MAX_REPORT_PATH:
        raise ReportRequestError(f"a report path is 1 to {MAX_REPORT_PATH} characters")
    segments = relative.split("/")
    if len(segments) > MAX_SEGMENTS or not all(SEGMENT_PATTERN.match(s) and s.strip(".") for s in segments):
        raise ReportRequestError(f"{relative[:80]!r} is not a report path: plain names joined by '/', no '..', "
                                 f"no absolute path, no encoded characters")
    if Path(segments[-1]).suffix.lower() not in REPORT_SUFFIXES:
        raise ReportRequestError(f"{segments[-1][:80]!r} is not a report file ({', '.join(sorted(REPORT_SUFFIXES))})")
    folder = run_folder(layout, run_id).resolve()
    path = folder.joinpath(*segments).resolve()
    # A symlink inside the folder could still point out of it: the resolved file must lie under the folder.
    if not path.is_relative_to(folder) or not path.is_file():
        raise FileNotFoundError(f"no report {relative} for run {run_id}")
    return path


def step_summaries(layout: StorageLayout, run_id: str) -> dict[str, Any]:
    """{step: its summary} of one run, in the order the files were written."""
    files = sorted(run_folder(layout, run_id).glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    summaries = {}
    for path in files:
        try:
            summaries[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):  # a summary being replaced right now: the next read has it
            continue
    return summaries


def runs(layout: StorageLayout) -> list[dict[str, Any]]:
    """Every run with a reports folder, oldest first: {folder, run_id, written (mtime), reports (what it holds)}.

    run_id is the one its summaries recorded (the Airflow run id, ':' and '+' included), else the folder name."""
    root = layout.reports / "runs"
    folders = [p for p in root.iterdir() if p.is_dir() and RUN_ID_PATTERN.match(p.name)] if root.is_dir() else []
    found = []
    for folder in folders:
        summaries = sorted(folder.glob("*.json"))
        run_id = folder.name
        for path in summaries:
            try:
                run_id = json.loads(path.read_text()).get("run_id") or run_id
                break
            except (OSError, ValueError, AttributeError):
                continue
        written = min((p.stat().st_mtime for p in summaries), default=folder.stat().st_mtime)
        found.append({"folder": folder.name, "run_id": run_id, "written": written,
                      "steps": [p.stem for p in summaries],
                      "reports": [name for name in ("drift.html", "drift.png", "data_docs/index.html")
                                  if (folder / name).is_file()]})
    return sorted(found, key=lambda r: (r["written"], r["folder"]))


def same_run(run_id: str) -> str:
    """The folder name a run id maps to (what report URLs carry)."""
    return safe_name(check_run_id(run_id))
