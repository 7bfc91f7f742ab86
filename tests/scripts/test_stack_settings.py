"""Settings persisted at `up`: a new shell that sources `$(scripts/stack.sh env)` sees the ports the running
stack uses; a running stack refuses to be moved; a stopped one moves and stays moved. Real SeaweedFS, private
stack directory, moved ports."""

from __future__ import annotations

import boto3
import pytest

from tests.scripts.stack_run import TEST_PORTS, sourced, stack, stack_dir_env

SEEN = ("TIDAL_S3_ENDPOINT", "TIDAL_AIRFLOW_URL", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "TIDAL_S3_BUCKET")
MOVED_S3_PORT = "22333"


def answers(seen: dict[str, str]) -> bool:
    """The endpoint a shell was given serves the stack's bucket (with the credentials it was given)."""
    boto3.client("s3", endpoint_url=seen["TIDAL_S3_ENDPOINT"], aws_access_key_id=seen["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=seen["AWS_SECRET_ACCESS_KEY"]).head_bucket(Bucket=seen["TIDAL_S3_BUCKET"])
    return True


@pytest.mark.stack
def test_a_new_shell_sees_the_ports_the_running_stack_uses(private_stack):
    started = stack("up", "s3", env=stack_dir_env(private_stack, **TEST_PORTS))
    assert started.returncode == 0, started.stderr
    env_file = private_stack / "stack.env"
    written = env_file.read_bytes()

    new_shell = sourced(stack_dir_env(private_stack), *SEEN, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

    assert new_shell["TIDAL_S3_ENDPOINT"] == "http://127.0.0.1:21333"
    assert new_shell["TIDAL_AIRFLOW_URL"] == "http://127.0.0.1:21090"
    assert new_shell["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "20393"
    assert answers(new_shell)
    assert env_file.read_bytes() == written


@pytest.mark.stack
def test_a_running_stack_refuses_other_ports_and_a_stopped_one_moves(private_stack):
    assert stack("up", "s3", env=stack_dir_env(private_stack, **TEST_PORTS)).returncode == 0
    written = (private_stack / "stack.env").read_bytes()

    refused = stack("up", "s3", env=stack_dir_env(private_stack, **{**TEST_PORTS, "TIDAL_S3_PORT": MOVED_S3_PORT}))

    assert refused.returncode == 1
    assert "TIDAL_S3_PORT: the running seaweedfs uses '21333', this shell asks for '22333'" in refused.stderr
    assert "stop it first (scripts/stack.sh down)" in refused.stderr
    assert (private_stack / "stack.env").read_bytes() == written
    assert "S3 at http://127.0.0.1:21333" in stack("status", env=stack_dir_env(private_stack)).stdout

    assert stack("down", env=stack_dir_env(private_stack)).returncode == 0
    moved = stack("up", "s3", env=stack_dir_env(private_stack, **{**TEST_PORTS, "TIDAL_S3_PORT": MOVED_S3_PORT}))
    assert moved.returncode == 0, moved.stderr
    assert sourced(stack_dir_env(private_stack), *SEEN)["TIDAL_S3_ENDPOINT"] == "http://127.0.0.1:22333"

    # A later `up` from a shell without the exports starts where the stack was moved to, not on the defaults.
    assert stack("down", env=stack_dir_env(private_stack)).returncode == 0
    again = stack("up", "s3", env=stack_dir_env(private_stack))
    assert again.returncode == 0, again.stderr
    assert "S3 on http://127.0.0.1:22333" in again.stderr


def test_env_writes_the_file_only_when_there_is_none(tmp_path):
    stack_dir = tmp_path / "stack"
    first = sourced(stack_dir_env(stack_dir, TIDAL_S3_PORT="23333"), "TIDAL_S3_ENDPOINT")
    later = sourced(stack_dir_env(stack_dir, TIDAL_S3_PORT="24333"), "TIDAL_S3_ENDPOINT")
    assert first == later == {"TIDAL_S3_ENDPOINT": "http://127.0.0.1:23333"}
