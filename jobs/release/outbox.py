"""The outbox: pushes that wait for the object store (registry/outbox/<version>.json).

When the object store is down the cycle does not fail: the version is promoted locally and tracked by DVC, and
its push waits here. Every later `run_version` (each cycle) and `tidal version --drain` retries what is due, with
exponential backoff (`version.backoff_s` doubling up to `version.max_backoff_s`). An entry is keyed by the version
and DVC's remote is content-addressed, so a retry can neither lose a version nor push it twice under two names.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jobs.release.dvc import DvcError, dvc_file_md5, push_tracked, track_version
from tidal.config import Settings
from tidal.registry import utc_now_iso
from tidal.storage import StorageLayout, atomic_write_json, read_json


def outbox_dir(settings: Settings) -> Path:
    return StorageLayout(settings.home).registry / "outbox"


def outbox_entries(settings: Settings) -> list[dict[str, Any]]:
    folder = outbox_dir(settings)
    return [read_json(p) for p in sorted(folder.glob("v*.json"))] if folder.exists() else []


def _backoff(settings: Settings, attempts: int) -> float:
    p = settings.params.version
    return min(p.max_backoff_s, p.backoff_s * (2 ** max(0, attempts - 1)))


def push_with_retries(settings: Settings, version: str, sleep=time.sleep) -> dict[str, Any]:
    """Track, then push with `version.push_attempts` tries and doubling waits; queue it in the outbox if all fail."""
    dvc_file = track_version(settings, version)
    md5 = dvc_file_md5(dvc_file)
    attempts, last_error = settings.params.version.push_attempts, ""
    for attempt in range(1, attempts + 1):
        try:
            push_tracked(settings, dvc_file)
            _outbox_done(settings, version)
            return {"version": version, "status": "pushed", "attempts": attempt, "dvc_file": str(dvc_file),
                    "md5": md5, "remote": settings.s3.remote_url, "endpoint": settings.s3.endpoint_url}
        except DvcError as err:
            last_error = str(err).splitlines()[0]
            print(f"[version] push of {version} failed (try {attempt}/{attempts}): {last_error}", flush=True)
            if attempt < attempts:
                sleep(_backoff(settings, attempt))
    entry = _enqueue(settings, version, md5, attempts, last_error)
    print(f"[version] object store unreachable: {version} is promoted locally; its push waits in the outbox "
          f"(next try after {entry['next_attempt_at']})", flush=True)
    return {"version": version, "status": "queued", "attempts": attempts, "dvc_file": str(dvc_file), "md5": md5,
            "remote": settings.s3.remote_url, "endpoint": settings.s3.endpoint_url, "error": last_error}


def _enqueue(settings: Settings, version: str, md5: str, attempts: int, error: str) -> dict[str, Any]:
    path = outbox_dir(settings) / f"{version}.json"
    entry = read_json(path) if path.exists() else {"version": version, "md5": md5, "queued_at": utc_now_iso(),
                                                    "attempts": 0}
    entry["attempts"] += attempts
    entry["last_error"] = error
    entry["next_attempt_at"] = datetime.fromtimestamp(time.time() + _backoff(settings, entry["attempts"]),
                                                      timezone.utc).isoformat()
    atomic_write_json(path, entry)
    return entry


def _outbox_done(settings: Settings, version: str) -> None:
    (outbox_dir(settings) / f"{version}.json").unlink(missing_ok=True)


def drain_outbox(settings: Settings, *, force: bool = False) -> list[dict[str, Any]]:
    """Retry every queued push that is due (all of them with force); one try each, then back off again."""
    results = []
    for entry in outbox_entries(settings):
        due = datetime.fromisoformat(entry["next_attempt_at"]) <= datetime.now(timezone.utc)
        if not (force or due):
            results.append({"version": entry["version"], "status": "waiting", "next_attempt_at": entry["next_attempt_at"]})
            continue
        dvc_file = track_version(settings, entry["version"])
        if dvc_file_md5(dvc_file) != entry["md5"]:
            raise RuntimeError(f"{entry['version']}: its .dvc hash changed since it was queued; refusing to push")
        try:
            push_tracked(settings, dvc_file)
        except DvcError as err:
            queued = _enqueue(settings, entry["version"], entry["md5"], 1, str(err).splitlines()[0])
            results.append({"version": entry["version"], "status": "queued", "attempts": queued["attempts"],
                            "next_attempt_at": queued["next_attempt_at"]})
        else:
            _outbox_done(settings, entry["version"])
            print(f"[version] outbox: {entry['version']} pushed after {entry['attempts']} failed tries", flush=True)
            results.append({"version": entry["version"], "status": "pushed", "md5": entry["md5"]})
    return results
