"""The storage layout under one root (TIDAL_HOME), and the small atomic-write helpers every step uses.

Layout (docs/design.md): landing/events, bronze/events, quarantine/events, features/examples, features/state,
checkpoints/stream, registry, reports. Writers put a file next to its destination and `os.replace` it, so a
reader sees the old content or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class StorageLayout:
    root: Path

    @property
    def landing_events(self) -> Path:
        return self.root / "landing" / "events"

    @property
    def landing_items(self) -> Path:
        return self.root / "landing" / "items"

    @property
    def bronze_events(self) -> Path:
        return self.root / "bronze" / "events"

    @property
    def quarantine_events(self) -> Path:
        return self.root / "quarantine" / "events"

    @property
    def feature_examples(self) -> Path:
        return self.root / "features" / "examples"

    @property
    def feature_state(self) -> Path:
        return self.root / "features" / "state"

    @property
    def stream_checkpoint(self) -> Path:
        return self.root / "checkpoints" / "stream"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def serving_swaps(self) -> Path:
        """serving's log of the versions it swapped in, each with the time it became servable (JSON lines)."""
        return self.root / "serving" / "swaps.jsonl"

    def examples_batch(self, batch_id: int) -> Path:
        return self.feature_examples / f"batch_id={batch_id}"

    def run_reports(self, run_id: str) -> Path:
        """Each run (an Airflow run id or a CLI cycle id) keeps its step summaries and reports together."""
        return self.reports / "runs" / safe_name(run_id)

    def ensure(self) -> "StorageLayout":
        for path in (self.landing_events, self.landing_items, self.bronze_events, self.quarantine_events,
                     self.feature_examples, self.feature_state, self.stream_checkpoint, self.registry, self.reports):
            path.mkdir(parents=True, exist_ok=True)
        return self


def safe_name(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep folder names portable, and never '.', '..' or empty (a folder that is
    not the run's own)."""
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return name if name.strip(".") else "_" * max(1, len(name))


def partition_value(folder: Path) -> int:
    """The number in a Hive-style partition folder name: `batch_id=12` -> 12."""
    return int(folder.name.split("=", 1)[1])


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """The one atomic write: `write(tmp)` fills a temp file next to `path`, which is fsynced and then replaces
    `path`, so a reader (or a crash) sees the old file or the new one, never half of either."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_step_summary(reports_dir: Path, step: str, summary: dict[str, Any]) -> Path:
    """Every step writes its small machine-readable summary as <run reports>/<step>.json."""
    path = reports_dir / f"{step}.json"
    atomic_write_json(path, summary)
    return path


def record_summary(reports_dir: Path | None, step: str, summary: dict[str, Any]) -> dict[str, Any]:
    """write_step_summary when the run has a reports folder (a step called outside a run has none); returns the
    summary, so a step can end with `return record_summary(...)`."""
    if reports_dir is not None:
        write_step_summary(reports_dir, step, summary)
    return summary
