"""Model registry on the local filesystem: immutable versions, staged candidates, and an atomic production alias.

    registry/candidates/<run>/     a fine-tune's output while it is being gated (never served)
    registry/versions/v000007/     a promoted version: model.pt, metadata.json, reference.parquet, holdout.parquet
    registry/production.json       the alias: which version serves; replaced with os.replace, never edited
    registry/events.jsonl          append-only log of promotions, registrations, rollbacks and rejections

Promotion renames the whole candidate folder into versions/ (atomic on one filesystem) and only then moves the
alias, so a reader following the alias always finds a complete version. Versions never change after promotion.

Lineage: each version's metadata.json holds its kind (full | incremental), parent, anchor, the batches, row counts
and event-time range it saw, its metrics, params, code version, promoted_at and the sha256 of every file. When it
served and when it was retired is not written into the (immutable) version: it is derived from the alias moves in
events.jsonl, which is also what `served_at(ts)` reads.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
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
    # Microseconds: two alias moves within one second must still order, or served_at could not answer.
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


MOMENTS_ALLOWED = "`now` or an ISO 8601 time such as 2026-11-28T10:00Z (UTC when it has no offset)"
VERSION_REFS_ALLOWED = ("a version id vNNNNNN such as v000003, `latest` (the newest version) or `production` "
                        "(the version serving now)")


def parse_utc(text: str) -> datetime:
    """ISO 8601 in, aware UTC datetime out ("2026-11-28T10:00Z", "2026-11-28T10:00:00+00:00"; naive means UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not an ISO 8601 time such as 2026-11-28T10:00Z") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def parse_moment(text: str) -> datetime:
    """What an operator types for an instant: `now`, or ISO 8601 as parse_utc reads it."""
    if text.strip().lower() == "now":
        return datetime.now(timezone.utc)
    try:
        return parse_utc(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give {MOMENTS_ALLOWED}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_checksums(path: Path) -> dict[str, str]:
    """sha256 of every file a version holds except its metadata (which carries these sums)."""
    return {p.name: file_sha256(p) for p in sorted(Path(path).iterdir())
            if p.is_file() and p.name != METADATA_FILE and not p.name.startswith(".")}


class ChecksumMismatch(RuntimeError):
    """A version's files do not match the sha256 sums recorded when it was promoted."""


def verify_version_dir(path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Refuse to load a version whose files differ from its recorded sums (a partial copy, a corrupt pull)."""
    metadata = metadata if metadata is not None else read_json(Path(path) / METADATA_FILE)
    expected = metadata.get("checksums")
    if not expected:
        raise ChecksumMismatch(f"{path}: metadata has no checksums; cannot verify it")
    actual = {name: file_sha256(Path(path) / name) if (Path(path) / name).is_file() else None for name in expected}
    bad = sorted(name for name in expected if actual[name] != expected[name])
    if bad:
        raise ChecksumMismatch(f"{path}: {bad} do not match the sha256 recorded at promotion "
                               f"({ {n: (expected[n][:12], (actual[n] or 'missing')[:12]) for n in bad} })")


def who_asked(by: str | None = None) -> str:
    """The operator recorded with a rollback: --by, else $USER, else the OS account."""
    if by and by.strip():
        return by.strip()
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


class StaleCandidate(RuntimeError):
    """Production moved while a candidate trained from the old production: promoting it would undo that move."""


_ANY = object()


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
        if not VERSION_PATTERN.match(version):
            # Also keeps a name like ../x from reading a metadata.json outside versions/.
            raise KeyError(f"{version!r} is not a version id (vNNNNNN such as v000003)")
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

    def resolve(self, ref: str) -> ModelVersion:
        """A version named as an operator names it: vNNNNNN, `latest` or `production`.

        ValueError for a name of no allowed form, KeyError for a version id that does not exist, LookupError when
        `latest` or `production` has nothing to point at yet.
        """
        name = ref.strip()
        if name == "latest":
            versions = self.versions()
            if not versions:
                raise LookupError(f"no versions yet under {self.versions_dir}; `latest` needs one")
            return versions[-1]
        if name == "production":
            production = self.production()
            if production is None:
                raise LookupError("nothing is in production yet; `production` needs a promotion")
            return production
        if not VERSION_PATTERN.match(name):
            raise ValueError(f"{ref!r} is not a version: give {VERSION_REFS_ALLOWED}")
        if not (self.versions_dir / name / METADATA_FILE).is_file():
            known = [mv.version for mv in self.versions()]
            span = f"{known[0]} .. {known[-1]}" if known else "none yet"
            raise KeyError(f"no version {name} in {self.versions_dir} (versions: {span})")
        return self.version(name)

    def serving(self) -> dict[str, Any] | None:
        """The version serving now and the alias move that put it there: {version, since, how, by, reason}."""
        if not self.alias_path.exists():
            return None
        alias = read_json(self.alias_path)
        moves = self.served_intervals(alias["version"])
        return {"version": alias["version"], "since": alias["since"], "how": moves[-1]["how"] if moves else None,
                "by": alias.get("by"), "reason": alias.get("reason")}

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

    def alias_moves(self) -> list[dict[str, Any]]:
        """Every move of the production alias, oldest first (promotions and rollbacks)."""
        return [e for e in self.events() if e["action"] in ("promote", "rollback")]

    def served_intervals(self, version: str) -> list[dict[str, Any]]:
        """When a version served: [{from, until (None while serving), how, by}] from the alias moves."""
        moves = self.alias_moves()
        intervals = []
        for i, move in enumerate(moves):
            if move["version"] == version:
                until = moves[i + 1]["at"] if i + 1 < len(moves) else None
                intervals.append({"from": move["at"], "until": until, "how": move["action"],
                                  "by": move.get("by"), "reason": move.get("reason")})
        return intervals

    def retired_at(self, version: str) -> str | None:
        """When the alias last moved away from this version; None if it serves now or never served."""
        intervals = self.served_intervals(version)
        return intervals[-1]["until"] if intervals else None

    def served_at(self, moment: str | datetime) -> str | None:
        """Which version was in production at that instant, `now` included (None before the first promotion)."""
        at = parse_moment(moment) if isinstance(moment, str) else moment.astimezone(timezone.utc)
        serving = None
        for move in self.alias_moves():
            if parse_utc(move["at"]) > at:
                break
            serving = move["version"]
        return serving

    def lineage(self, version: str) -> dict[str, Any]:
        """A version's metadata plus what only the event log knows: when it served and when it was retired."""
        mv = self.version(version)
        production = self.production()
        return {**mv.metadata, "version": version, "serving": production is not None and production.version == version,
                "served": self.served_intervals(version), "retired_at": self.retired_at(version)}

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

    def promote_candidate(self, run_id: str, *, reason: str, expect_production: Any = _ANY) -> ModelVersion:
        """Turn a run's candidate into the next version and point production at it. Idempotent per run id.

        expect_production makes the alias move a compare-and-set: an incremental candidate passes its parent, and if
        production moved meanwhile (a full retrain or a rollback won the race) StaleCandidate is raised and nothing
        changes, so a fine-tune of the old model never replaces the newer one.
        """
        with self._lock():
            existing = self.version_for_run(run_id)
            if existing is None:
                current = read_json(self.alias_path)["version"] if self.alias_path.exists() else None
                if expect_production is not _ANY and current != expect_production:
                    raise StaleCandidate(f"run {run_id} trained from {expect_production}, but production is now "
                                         f"{current}; the next cycle fine-tunes from {current}")
                existing = self._make_version(run_id)
            self._set_alias(existing.version, action="promote", run_id=run_id, reason=reason)
            return existing

    def register_candidate(self, run_id: str, *, reason: str) -> ModelVersion:
        """Make a run's candidate a version without serving it (a full retrain with promote=register)."""
        with self._lock():
            existing = self.version_for_run(run_id)
            if existing is None:
                existing = self._make_version(run_id)
                self._log({"action": "register", "version": existing.version, "run_id": run_id, "reason": reason,
                           "at": utc_now_iso()})
            return existing

    def _make_version(self, run_id: str) -> ModelVersion:
        staged = self.candidate_dir(run_id)
        if not (staged / MODEL_FILE).is_file() or not (staged / METADATA_FILE).is_file():
            raise FileNotFoundError(f"no complete candidate for run {run_id} in {staged}")
        version = self._next_version()
        metadata = read_json(staged / METADATA_FILE)
        metadata.update(version=version, promoted_at=utc_now_iso(), checksums=version_checksums(staged))
        if metadata.get("kind") == "full":
            metadata["anchor"] = version  # a full retrain starts a new fine-tune chain
        atomic_write_json(staged / METADATA_FILE, metadata)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        # One rename moves the complete folder: versions/ never holds half a version.
        staged.rename(self.versions_dir / version)
        return self.version(version)

    def rollback(self, to: str | None = None, *, reason: str, by: str | None = None) -> dict[str, Any]:
        """Point production at an earlier version (default: the one that served before the current one).

        The target must be complete and match its recorded checksums; the alias is replaced atomically and the move
        is logged with who asked and why. The next incremental cycle fine-tunes from the target.
        """
        if not reason or not reason.strip():
            raise ValueError("a rollback needs a reason (--reason)")
        operator = who_asked(by)
        with self._lock():
            current = read_json(self.alias_path)["version"] if self.alias_path.exists() else None
            if current is None:
                raise ValueError("nothing is in production yet; there is nothing to roll back")
            if to is None:
                earlier = [m["version"] for m in self.alias_moves() if m["version"] != current]
                if not earlier:
                    raise ValueError(f"{current} is the only version that ever served; name one with --to")
                to = earlier[-1]
            if not VERSION_PATTERN.match(to):
                raise ValueError(f"{to!r} is not a version id (vNNNNNN)")
            target = self.version(to)  # KeyError if it does not exist
            if to == current:
                raise ValueError(f"{to} is already in production")
            if not target.model_path.is_file():
                raise FileNotFoundError(f"{to} has no {MODEL_FILE}; refusing to serve it")
            if target.metadata.get("checksums"):
                verify_version_dir(target.path, target.metadata)
            self._set_alias(to, action="rollback", run_id=f"rollback-to-{to}", reason=reason.strip(), by=operator)
            return {"from": current, "to": to, "by": operator, "reason": reason.strip(),
                    "at": read_json(self.alias_path)["since"]}

    def _set_alias(self, version: str, *, action: str, run_id: str, reason: str, by: str | None = None) -> None:
        previous = read_json(self.alias_path)["version"] if self.alias_path.exists() else None
        if previous == version:
            return
        at = utc_now_iso()
        alias = {"version": version, "since": at, "run_id": run_id, "reason": reason}
        event = {"action": action, "version": version, "previous": previous, "run_id": run_id, "reason": reason,
                 "at": at}
        if by is not None:
            alias["by"] = event["by"] = by
        atomic_write_json(self.alias_path, alias)
        self._log(event)

    def record_rejection(self, run_id: str, *, reason: str, details: dict[str, Any],
                         request: dict[str, Any] | None = None) -> None:
        """A failed gate leaves production untouched; the candidate stays in candidates/ for inspection.

        `request` is what an operator asked for (a full retrain's reason, trigger and promote mode): logged with the
        rejection, so the audit trail says why the run existed as well as why it was refused.
        """
        event = {"action": "reject", "run_id": run_id, "reason": reason, "details": details, "at": utc_now_iso()}
        if request is not None:
            event["request"] = request
        with self._lock():
            self._log(event)
