"""version: track a promoted model version with DVC and push it to the S3-compatible remote.

TIDAL_HOME is a DVC project without git (`dvc init --no-scm`); each promoted version folder gets a
`registry/versions/vNNNNNN.dvc` file holding its content hash, and `dvc push` uploads it to
s3://<bucket>/<prefix> at TIDAL_S3_ENDPOINT (SeaweedFS by default; AWS S3 or MinIO by configuration).
Credentials are read by DVC from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; none are written to its config.

Run: `tidal version --run-id RUN`, or `tidal version --version v000003`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tidal.config import Settings, load_settings
from tidal.registry import Registry
from tidal.storage import StorageLayout, write_step_summary

REMOTE_NAME = "artifacts"


class DvcError(RuntimeError):
    pass


def dvc(project_dir: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
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


def version_model(settings: Settings, version: str) -> dict[str, Any]:
    layout = StorageLayout(settings.home)
    version_dir = Registry(layout.registry).version(version).path
    ensure_dvc_project(layout.root, settings)
    target = version_dir.relative_to(layout.root)
    dvc_file = version_dir.with_name(version_dir.name + ".dvc")
    if not dvc_file.exists():  # a retried task must not re-add (the content is immutable anyway)
        dvc(layout.root, "add", "-q", str(target))
    dvc(layout.root, "push", "-q", str(dvc_file.relative_to(layout.root)))
    return {"version": version, "dvc_file": str(dvc_file), "md5": dvc_file_md5(dvc_file),
            "remote": settings.s3.remote_url, "endpoint": settings.s3.endpoint_url}


def run_version(settings: Settings, run_id: str, reports_dir: Path | None = None) -> dict[str, Any]:
    promoted = Registry(StorageLayout(settings.home).registry).version_for_run(run_id)
    if promoted is None:
        summary = {"run_id": run_id, "status": "skipped", "reason": "this run promoted no model"}
    else:
        summary = {"run_id": run_id, "status": "pushed", **version_model(settings, promoted.version)}
        print(f"[version] {promoted.version} pushed to {summary['remote']} (md5 {summary['md5']})", flush=True)
    if reports_dir is not None:
        write_step_summary(reports_dir, "version", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal version", description="Track and push a promoted model with DVC.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--run-id")
    group.add_argument("--version", help="a version id such as v000003")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.version:
        summary = version_model(settings, args.version)
    else:
        summary = run_version(settings, args.run_id, StorageLayout(settings.home).run_reports(args.run_id))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
