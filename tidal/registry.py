"""Model registry on the local filesystem: immutable versions, staged candidates, and an atomic production alias.

    registry/candidates/<run>/     a fine-tune's output while it is being gated (never served)
    registry/versions/v000007/     a promoted version: model.pt, metadata.json, reference.parquet, holdout.parquet
    registry/production.json       the alias: which version serves; replaced with os.replace, never edited
    registry/events.jsonl          append-only log of promotions and rejections

Promotion renames the whole candidate folder into versions/ (atomic on one filesystem) and only then moves the
alias, so a reader following the alias always finds a complete version. Versions never change after promotion.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from tidal.storage import atomic_write_json, read_json, safe_name

VERSION_PATTERN = re.compile(r"^v(\d{6})$")
MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"
REFERENCE_FILE = "reference.parquet"
HOLDOUT_FILE = "holdout.parquet"


@dataclass(frozen=True)
class ModelVersion:
    version: str
    path: Path
    metadata: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.candidates_dir = self.root / "candidates"
        self.alias_path = self.root / "production.json"
        self.events_path = self.root / "events.jsonl"

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialises writers (promotion, rollback) across processes; readers never need it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- reading -------------------------------------------------------------------------------------------
    def version(self, version: str) -> ModelVersion:
        path = self.versions_dir / version
        if not (path / METADATA_FILE).is_file():
            raise KeyError(f"model version {version} not found under {self.versions_dir}")
        return ModelVersion(version, path, read_json(path / METADATA_FILE))

    def versions(self) -> list[ModelVersion]:
        if not self.versions_dir.exists():
            return []
        names = sorted(p.name for p in self.versions_dir.iterdir() if VERSION_PATTERN.match(p.name))
        return [self.version(n) for n in names]

    def production(self) -> ModelVersion | None:
        if not self.alias_path.exists():
            return None
        return self.version(read_json(self.alias_path)["version"])

    def candidate_dir(self, run_id: str) -> Path:
        return self.candidates_dir / safe_name(run_id)

    def candidate_metadata(self, run_id: str) -> dict[str, Any] | None:
        path = self.candidate_dir(run_id) / METADATA_FILE
        return read_json(path) if path.is_file() else None

    def version_for_run(self, run_id: str) -> ModelVersion | None:
        """The version a run promoted, if any (makes promotion idempotent across task retries)."""
        for mv in reversed(self.versions()):
            if mv.metadata.get("run_id") == run_id:
                return mv
        return None

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]

    # ---- writing -------------------------------------------------------------------------------------------
    def new_candidate_dir(self, run_id: str) -> Path:
        """An empty staging folder for a run's candidate (a retried task starts it afresh)."""
        path = self.candidate_dir(run_id)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def _next_version(self) -> str:
        numbers = [int(m.group(1)) for p in (self.versions_dir.iterdir() if self.versions_dir.exists() else [])
                   if (m := VERSION_PATTERN.match(p.name))]
        return f"v{max(numbers, default=0) + 1:06d}"

    def _log(self, event: dict[str, Any]) -> None:
        with open(self.events_path, "a") as handle:
            handle.write(json.dumps(event, sort_keys=True) + "\n")

    def promote_candidate(self, run_id: str, *, reason: str) -> ModelVersion:
        """Turn a run's candidate into the next version and point production at it. Idempotent per run id."""
        with self._lock():
            existing = self.version_for_run(run_id)
            if existing is None:
                staged = self.candidate_dir(run_id)
                if not (staged / MODEL_FILE).is_file() or not (staged / METADATA_FILE).is_file():
                    raise FileNotFoundError(f"no complete candidate for run {run_id} in {staged}")
                version = self._next_version()
                metadata = read_json(staged / METADATA_FILE)
                metadata.update(version=version, promoted_at=utc_now_iso())
                if metadata.get("kind") == "full":
                    metadata["anchor"] = version  # a full retrain starts a new fine-tune chain
                atomic_write_json(staged / METADATA_FILE, metadata)
                self.versions_dir.mkdir(parents=True, exist_ok=True)
                staged.rename(self.versions_dir / version)
                existing = self.version(version)
            self._set_alias(existing.version, action="promote", run_id=run_id, reason=reason)
            return existing

    def _set_alias(self, version: str, *, action: str, run_id: str, reason: str) -> None:
        previous = read_json(self.alias_path)["version"] if self.alias_path.exists() else None
        if previous == version:
            return
        at = utc_now_iso()
        atomic_write_json(self.alias_path, {"version": version, "since": at, "run_id": run_id, "reason": reason})
        self._log({"action": action, "version": version, "previous": previous, "run_id": run_id, "reason": reason,
                   "at": at})

    def record_rejection(self, run_id: str, *, reason: str, details: dict[str, Any]) -> None:
        """A failed gate leaves production untouched; the candidate stays in candidates/ for inspection."""
        with self._lock():
            self._log({"action": "reject", "run_id": run_id, "reason": reason, "details": details, "at": utc_now_iso()})
