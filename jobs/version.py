"""version: track a promoted model version with DVC and push it to the S3-compatible remote.

TIDAL_HOME is a DVC project without git (`dvc init --no-scm`); each promoted version folder gets a
`registry/versions/vNNNNNN.dvc` file holding its content hash, and `dvc push` uploads it to
s3://<bucket>/<prefix> at TIDAL_S3_ENDPOINT (SeaweedFS by default; AWS S3 or MinIO by configuration).
Credentials are read by DVC from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; none are written to its config. When
those are not set, the Airflow connection `TIDAL_S3_CONN_ID` (default `tidal_s3`: login = access key, password =
secret key, extra `endpoint_url`) supplies them to the DVC subprocess only.

When the object store is down the cycle does not fail: the version is promoted locally and tracked by DVC, and
its push waits in `registry/outbox/<version>.json`. Every later `run_version` (each cycle) and `tidal version --drain`
retries what is due, with exponential backoff (`version.backoff_s` doubling up to `version.max_backoff_s`). An entry
is keyed by the version and DVC's remote is content-addressed, so a retry can neither lose a version nor push it
twice under two names. `pull_version` fetches a version into another DVC project and verifies every file against the
sha256 recorded at promotion before anything loads it.

Run: `tidal version --run-id RUN`, `tidal version --version v000003`, `tidal version --drain`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from tidal.config import Settings, load_settings
from tidal.registry import Registry, utc_now_iso, verify_version_dir
from tidal.storage import StorageLayout, atomic_write_json, read_json, write_step_summary

REMOTE_NAME = "artifacts"


class DvcError(RuntimeError):
    pass


def s3_credentials_from_airflow() -> dict[str, str]:
    """AWS_* for the DVC subprocess from an Airflow connection, when the environment carries none."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return {}  # the environment wins
    conn_id = os.environ.get("TIDAL_S3_CONN_ID", "tidal_s3")
    try:
        from airflow.sdk import BaseHook  # inside a task: the API server's connection; else AIRFLOW_CONN_* env

        conn = BaseHook.get_connection(conn_id)
    except Exception:  # no Airflow, or no such connection: DVC reports the missing credentials itself
        return {}
    env = {"AWS_ACCESS_KEY_ID": conn.login or "", "AWS_SECRET_ACCESS_KEY": conn.password or ""}
    endpoint = (conn.extra_dejson or {}).get("endpoint_url")
    if endpoint and not os.environ.get("TIDAL_S3_ENDPOINT"):
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def dvc(project_dir: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", **s3_credentials_from_airflow()}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project_dir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed in {project_dir} (exit {proc.returncode}):\n"
                       f"{proc.stdout}{proc.stderr}\nCheck that the object store is up (make up) and that "
                       f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and TIDAL_S3_ENDPOINT are set.")
    return proc.stdout


def ensure_dvc_project(project_dir: Path, settings: Settings) -> None:
    """Idempotent: init once, and (re)point the default remote at the configured S3 endpoint every time."""
    if not (project_dir / ".dvc").exists():
        dvc(project_dir, "init", "--no-scm", "-q")
    dvc(project_dir, "remote", "add", "--force", "--default", REMOTE_NAME, settings.s3.remote_url)
    if settings.s3.endpoint_url:
        dvc(project_dir, "remote", "modify", REMOTE_NAME, "endpointurl", settings.s3.endpoint_url)


def dvc_file_md5(dvc_file: Path) -> str:
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def track_version(settings: Settings, version: str) -> Path:
    """`dvc add` the version folder once (local only: works while the object store is down); returns the .dvc file."""
    layout = StorageLayout(settings.home)
    version_dir = Registry(layout.registry).version(version).path
    ensure_dvc_project(layout.root, settings)
    dvc_file = version_dir.with_name(version_dir.name + ".dvc")
    if not dvc_file.exists():  # a retried task must not re-add (the content is immutable anyway)
        dvc(layout.root, "add", "-q", str(version_dir.relative_to(layout.root)))
    return dvc_file


def push_tracked(settings: Settings, dvc_file: Path) -> None:
    dvc(StorageLayout(settings.home).root, "push", "-q", str(dvc_file.relative_to(settings.home)))


def version_model(settings: Settings, version: str) -> dict[str, Any]:
    dvc_file = track_version(settings, version)
    push_tracked(settings, dvc_file)
    return {"version": version, "dvc_file": str(dvc_file), "md5": dvc_file_md5(dvc_file),
            "remote": settings.s3.remote_url, "endpoint": settings.s3.endpoint_url}


# ---- the outbox: pushes that wait for the object store ----------------------------------------------------------
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


def pull_version(settings: Settings, version: str, project_dir: Path) -> Path:
    """Pull one version into another DVC project and verify it by sha256 before anyone loads it."""
    layout = StorageLayout(settings.home)
    dvc_file = layout.registry / "versions" / f"{version}.dvc"
    project_dir.mkdir(parents=True, exist_ok=True)
    ensure_dvc_project(project_dir, settings)
    shutil.copy(dvc_file, project_dir / dvc_file.name)
    dvc(project_dir, "pull", "-q", "--force", dvc_file.name)
    pulled = project_dir / version
    # The sums recorded at promotion in the local registry; the pulled copy's own metadata when that is gone.
    try:
        expected = Registry(layout.registry).version(version).metadata
    except KeyError:
        expected = read_json(pulled / "metadata.json")
    verify_version_dir(pulled, expected)
    return pulled


def run_version(settings: Settings, run_id: str, reports_dir: Path | None = None) -> dict[str, Any]:
    drained = drain_outbox(settings)  # earlier cycles' pushes first, oldest version first
    promoted = Registry(StorageLayout(settings.home).registry).version_for_run(run_id)
    if promoted is None:
        summary = {"run_id": run_id, "status": "skipped", "reason": "this run promoted no model"}
    else:
        summary = {"run_id": run_id, **push_with_retries(settings, promoted.version)}
        if summary["status"] == "pushed":
            print(f"[version] {promoted.version} pushed to {summary['remote']} (md5 {summary['md5']})", flush=True)
    summary["outbox"] = {"drained": drained, "waiting": [e["version"] for e in outbox_entries(settings)]}
    if reports_dir is not None:
        write_step_summary(reports_dir, "version", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal version", description="Track and push a promoted model with DVC.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--run-id")
    group.add_argument("--version", help="a version id such as v000003")
    group.add_argument("--drain", action="store_true", help="retry every queued push now (the outbox)")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.drain:
        results = drain_outbox(settings, force=True)
        print(json.dumps(results, indent=2))
        return 0 if all(r["status"] == "pushed" for r in results) else 1
    if args.version:
        summary = version_model(settings, args.version)
    else:
        summary = run_version(settings, args.run_id, StorageLayout(settings.home).run_reports(args.run_id))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
