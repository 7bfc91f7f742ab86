"""Settings persisted at `up`: a new shell that sources `$(scripts/stack.sh env)` sees the ports the running
stack uses; a running stack refuses to be moved; a stopped one moves and stays moved. Real SeaweedFS, private
stack directory, moved ports."""

from __future__ import annotations

import boto3
import pytest

from tests.scripts.stack_run import free_ports, sourced, stack, stack_dir_env


SEEN = ("TIDAL_S3_ENDPOINT", "TIDAL_AIRFLOW_URL", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "TIDAL_S3_BUCKET")


def answers(seen: dict[str, str]) -> bool:
    """The endpoint a shell was given serves the stack's bucket (with the credentials it was given)."""
    boto3.client("s3", endpoint_url=seen["TIDAL_S3_ENDPOINT"], aws_access_key_id=seen["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=seen["AWS_SECRET_ACCESS_KEY"]).head_bucket(Bucket=seen["TIDAL_S3_BUCKET"])
    return True


@pytest.mark.stack
def test_a_new_shell_sees_the_ports_the_running_stack_uses(private_stack):
    ports = free_ports()
    base = int(ports["TIDAL_WEED_PORT_BASE"])
    started = stack("up", "s3", env=stack_dir_env(private_stack, **ports))
    assert started.returncode == 0, started.stderr
    env_file = private_stack / "stack.env"
    written = env_file.read_bytes()

    new_shell = sourced(stack_dir_env(private_stack), *SEEN, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

    assert new_shell["TIDAL_S3_ENDPOINT"] == f"http://127.0.0.1:{base + 20}"
    assert new_shell["TIDAL_AIRFLOW_URL"] == f"http://127.0.0.1:{base + 10}"
    assert new_shell["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == str(base + 93)
    assert answers(new_shell)
    assert env_file.read_bytes() == written


@pytest.mark.stack
def test_a_running_stack_refuses_other_ports_and_a_stopped_one_moves(private_stack):
    ports = free_ports()
    s3, moved_s3 = ports["TIDAL_S3_PORT"], str(int(ports["TIDAL_WEED_PORT_BASE"]) + 25)  # +25: no port of the block
    assert stack("up", "s3", env=stack_dir_env(private_stack, **ports)).returncode == 0
    written = (private_stack / "stack.env").read_bytes()

    refused = stack("up", "s3", env=stack_dir_env(private_stack, **{**ports, "TIDAL_S3_PORT": moved_s3}))

    assert refused.returncode == 1
    assert f"TIDAL_S3_PORT: the running seaweedfs uses '{s3}', this shell asks for '{moved_s3}'" in refused.stderr
    assert "stop it first (scripts/stack.sh down)" in refused.stderr
    assert (private_stack / "stack.env").read_bytes() == written
    assert f"S3 at http://127.0.0.1:{s3}" in stack("status", env=stack_dir_env(private_stack)).stdout

    assert stack("down", env=stack_dir_env(private_stack)).returncode == 0
    moved = stack("up", "s3", env=stack_dir_env(private_stack, **{**ports, "TIDAL_S3_PORT": moved_s3}))
    assert moved.returncode == 0, moved.stderr
    assert sourced(stack_dir_env(private_stack), *SEEN)["TIDAL_S3_ENDPOINT"] == f"http://127.0.0.1:{moved_s3}"

    # A later `up` from a shell without the exports starts where the stack was moved to, not on the defaults.
    assert stack("down", env=stack_dir_env(private_stack)).returncode == 0
    again = stack("up", "s3", env=stack_dir_env(private_stack))
    assert again.returncode == 0, again.stderr
    assert f"S3 on http://127.0.0.1:{moved_s3}" in again.stderr


def test_env_writes_the_file_only_when_there_is_none(tmp_path):
    stack_dir = tmp_path / "stack"
    first = sourced(stack_dir_env(stack_dir, TIDAL_S3_PORT="23333"), "TIDAL_S3_ENDPOINT")
    later = sourced(stack_dir_env(stack_dir, TIDAL_S3_PORT="24333"), "TIDAL_S3_ENDPOINT")
    assert first == later == {"TIDAL_S3_ENDPOINT": "http://127.0.0.1:23333"}


def test_the_trigger_settings_are_persisted_and_no_spark_remote_without_the_stacks_spark(tmp_path):
    stack_dir = tmp_path / "stack"
    names = ("TIDAL_INCREMENTAL_TRIGGER", "TIDAL_LANDING_POLL_S", "TIDAL_SPARK_REMOTE")
    first = sourced(stack_dir_env(stack_dir, TIDAL_INCREMENTAL_TRIGGER="schedule", TIDAL_LANDING_POLL_S="0.5"), *names)
    # Read back by a shell that sets neither; and no Spark Connect URL, since no server of the stack runs.
    assert first == sourced(stack_dir_env(stack_dir), *names) == \
        {"TIDAL_INCREMENTAL_TRIGGER": "schedule", "TIDAL_LANDING_POLL_S": "0.5", "TIDAL_SPARK_REMOTE": ""}


def test_the_stack_runs_the_warm_executor_unless_told_the_plain_one(tmp_path):
    default = sourced(stack_dir_env(tmp_path / "default"), "AIRFLOW__CORE__EXECUTOR")
    plain = sourced(stack_dir_env(tmp_path / "plain", TIDAL_AIRFLOW_EXECUTOR="LocalExecutor"),
                    "AIRFLOW__CORE__EXECUTOR", "TIDAL_AIRFLOW_EXECUTOR")
    assert default == {"AIRFLOW__CORE__EXECUTOR": "tidal.warm_executor.WarmLocalExecutor"}
    assert plain == {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "TIDAL_AIRFLOW_EXECUTOR": "LocalExecutor"}


def test_an_executor_the_stack_cannot_run_is_refused_before_anything_starts(tmp_path):
    stack_dir = tmp_path / "stack"
    refused = stack("up", "s3", env=stack_dir_env(stack_dir, **free_ports(), TIDAL_AIRFLOW_EXECUTOR="CeleryExecutor"))
    assert refused.returncode == 2
    assert ("TIDAL_AIRFLOW_EXECUTOR=CeleryExecutor: give tidal.warm_executor.WarmLocalExecutor LocalExecutor"
            in refused.stderr)
    assert "scripts/cluster.sh" in refused.stderr
    assert not list((stack_dir / "pids").glob("*.pid"))  # nothing was started
