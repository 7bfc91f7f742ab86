"""DVC over the registry: track a version folder, push it to the S3-compatible remote, pull and verify it back.

TIDAL_HOME is a DVC project without git (`dvc init --no-scm`); each promoted version folder gets a
`registry/versions/vNNNNNN.dvc` file holding its content hash, and `dvc push` uploads it to
s3://<bucket>/<prefix> at TIDAL_S3_ENDPOINT (SeaweedFS by default; AWS S3 or MinIO by configuration).
Credentials are read by DVC from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; none are written to its config. When
those are not set, the Airflow connection `TIDAL_S3_CONN_ID` (default `tidal_s3`: login = access key, password =
secret key, extra `endpoint_url`) supplies them to the DVC subprocess only. `pull_version` verifies every file
against the sha256 recorded at promotion before anything loads it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tidal.config import Settings
from tidal.registry import Registry, verify_version_dir
from tidal.storage import StorageLayout, read_json


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


def wanted_remote(settings: Settings) -> dict[str, str]:
    """The default remote's section as `dvc remote add --force` and `remote modify endpointurl` leave it."""
    return {"url": settings.s3.remote_url, **({"endpointurl": settings.s3.endpoint_url} if settings.s3.endpoint_url else {})}


def remote_is_current(project_dir: Path, settings: Settings) -> bool:
    """Does .dvc/config already make REMOTE_NAME the default remote, exactly as configured? Read with configobj,
    the library DVC writes it with; an unreadable file counts as not current (the commands rewrite it)."""
    from configobj import ConfigObj, ConfigObjError

    path = project_dir / ".dvc" / "config"
    try:
        config = ConfigObj(str(path), encoding="utf-8", file_error=True)
    except (OSError, ConfigObjError):
        return False
    section = config.get(f'remote "{REMOTE_NAME}"')
    return config.get("core", {}).get("remote") == REMOTE_NAME and dict(section or {}) == wanted_remote(settings)


def ensure_dvc_project(project_dir: Path, settings: Settings) -> None:
    """Idempotent: init once, and (re)point the default remote at the configured S3 endpoint whenever the config
    says otherwise. Each `dvc` command is a Python start (~0.7 s), so a config that is already right costs none."""
    if not (project_dir / ".dvc").exists():
        dvc(project_dir, "init", "--no-scm", "-q")
    if remote_is_current(project_dir, settings):
        return
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
