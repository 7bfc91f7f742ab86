"""version: DVC tracks a promoted version and pushes it to the S3 remote; a retry neither re-adds nor re-uploads."""

from __future__ import annotations

import boto3
import pytest

from jobs.release.version import run_version, version_model
from tidal.registry import Registry
from tidal.storage import StorageLayout, atomic_write_json


pytestmark = pytest.mark.stack


def promote_dummy(layout: StorageLayout, run_id: str, payload: bytes) -> str:
    registry = Registry(layout.registry)
    staged = registry.new_candidate_dir(run_id)
    (staged / "model.pt").write_bytes(payload)
    atomic_write_json(staged / "metadata.json", {"run_id": run_id, "kind": "full"})
    return registry.promote_candidate(run_id, reason="test").version


def remote_objects(s3_env) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3_env["endpoint"])
    reply = client.list_objects_v2(Bucket=s3_env["bucket"], Prefix=s3_env["prefix"] + "/")
    return sorted(o["Key"] for o in reply.get("Contents", []))


def test_push_is_content_addressed_and_idempotent(tidal_env, s3_env):
    settings = tidal_env()
    layout = StorageLayout(settings.home).ensure()
    version = promote_dummy(layout, "run-1", b"weights-one")

    first = run_version(settings, "run-1", layout.run_reports("run-1"))
    assert first["status"] == "pushed" and first["version"] == version
    assert first["remote"] == f"s3://{s3_env['bucket']}/{s3_env['prefix']}"
    objects = remote_objects(s3_env)
    assert objects, "nothing reached the bucket"
    # DVC stores objects under files/md5/<2 chars>/<rest>; the directory manifest is the .dvc file's hash.
    md5 = first["md5"]
    assert any(key.endswith(f"/files/md5/{md5[:2]}/{md5[2:]}") for key in objects)

    again = version_model(settings, version)  # a retried task
    assert again["md5"] == first["md5"] and remote_objects(s3_env) == objects

    promote_dummy(layout, "run-2", b"weights-two")
    second = run_version(settings, "run-2", layout.run_reports("run-2"))
    assert second["md5"] != first["md5"] and len(remote_objects(s3_env)) > len(objects)


def test_a_run_that_promoted_nothing_pushes_nothing(tidal_env, s3_env):
    settings = tidal_env()
    summary = run_version(settings, "no-promotion", StorageLayout(settings.home).ensure().run_reports("x"))
    assert summary["status"] == "skipped" and remote_objects(s3_env) == []


@pytest.mark.parametrize("bad", ["../x", "v1", "v0000001", "/etc/passwd", ""])
def test_a_version_that_is_not_a_version_id_is_refused_before_dvc_runs(bad, tidal_env, capsys):
    from jobs.release.version import main

    settings = tidal_env()
    assert main(["--version", bad]) == 2
    assert "is not a version id; give one such as v000003" in capsys.readouterr().err
    assert not (settings.home / ".dvc").exists()
