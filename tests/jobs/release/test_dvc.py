"""jobs.release.dvc's project setup with the real `dvc` CLI: the remote is (re)written only when the config says
otherwise, so a version step on a set-up project spends no Python start on it; what the config holds is what
`dvc remote list` and `dvc config` read back."""

from __future__ import annotations

import pytest

from jobs.release import dvc as dvc_module
from jobs.release.dvc import REMOTE_NAME, dvc, ensure_dvc_project, remote_is_current
from tidal.config import S3Settings


@pytest.fixture
def counted(monkeypatch):
    """Every `dvc` command the module runs, by its arguments (still run for real)."""
    calls: list[tuple[str, ...]] = []

    def counting(project_dir, *args):
        calls.append(args)
        return dvc(project_dir, *args)

    monkeypatch.setattr(dvc_module, "dvc", counting)
    return calls


def with_s3(settings, endpoint: str | None, bucket: str = "tidal"):
    return settings.model_copy(update={"s3": S3Settings(endpoint_url=endpoint, bucket=bucket, prefix="dvc")})


def remote_config(project) -> tuple[list[str], str]:
    return dvc(project, "remote", "list").split(), dvc(project, "config", "core.remote").strip()


def remote_options(project) -> list[str]:
    prefix = f"remote.{REMOTE_NAME}."
    return sorted(line.removeprefix(prefix) for line in dvc(project, "config", "--list", "--project").split()
                  if line.startswith(prefix))


def test_the_remote_is_written_once_and_rewritten_only_when_the_settings_change(tidal_env, tmp_path, counted):
    project = tmp_path / "project"
    project.mkdir()
    settings = with_s3(tidal_env(), "http://127.0.0.1:18333")

    ensure_dvc_project(project, settings)
    assert [c[:2] for c in counted] == [("init", "--no-scm"), ("remote", "add"), ("remote", "modify")]
    assert remote_is_current(project, settings)
    counted.clear()
    ensure_dvc_project(project, settings)
    assert counted == []  # already right: no dvc start at all

    moved = with_s3(settings, "http://127.0.0.1:28333", bucket="other")
    assert not remote_is_current(project, moved)
    ensure_dvc_project(project, moved)
    assert [c[:2] for c in counted] == [("remote", "add"), ("remote", "modify")]
    assert remote_config(project) == ([REMOTE_NAME, "s3://other/dvc", "(default)"], REMOTE_NAME)
    assert remote_options(project) == ["endpointurl=http://127.0.0.1:28333", "url=s3://other/dvc"]

    # No endpoint (AWS S3): `remote add --force` alone, which drops the old endpointurl.
    counted.clear()
    aws = with_s3(settings, None, bucket="other")
    ensure_dvc_project(project, aws)
    assert [c[:2] for c in counted] == [("remote", "add")]
    assert remote_options(project) == ["url=s3://other/dvc"]
    assert remote_is_current(project, aws)


def test_a_config_changed_by_hand_or_unreadable_is_rewritten(tidal_env, tmp_path, counted):
    project = tmp_path / "project"
    project.mkdir()
    settings = with_s3(tidal_env(), "http://127.0.0.1:18333")
    ensure_dvc_project(project, settings)
    dvc(project, "remote", "add", "elsewhere", "s3://x/y")
    dvc(project, "remote", "default", "elsewhere")
    assert not remote_is_current(project, settings)
    ensure_dvc_project(project, settings)
    assert remote_config(project)[1] == REMOTE_NAME and remote_is_current(project, settings)

    # A config DVC cannot read is not taken as current; DVC's own error says what is wrong, as before.
    (project / ".dvc" / "config").write_text("['remote \"artifacts\"\n  url = = =\n")
    assert not remote_is_current(project, settings)
    with pytest.raises(dvc_module.DvcError, match="configuration error"):
        ensure_dvc_project(project, settings)
