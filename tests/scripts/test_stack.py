"""scripts/stack.sh against the SeaweedFS that `make test` started: reuse, loopback binding, checked credentials,
a port table that lists every port it opens, and a moved stack that would collide with it refused."""

from __future__ import annotations

import os
import re
import subprocess

import boto3
import botocore.exceptions
import pytest

from tests.conftest import REPO_ROOT
from tests.scripts.stack_run import free_ports, stack, stack_dir_env


pytestmark = pytest.mark.stack
STACK = str(REPO_ROOT / "scripts" / "stack.sh")


def stack_pid() -> str:
    return (REPO_ROOT / ".stack" / "pids" / "seaweedfs.pid").read_text().strip()


def test_up_twice_reuses_the_running_server(s3_env):
    before = stack_pid()
    proc = subprocess.run([STACK, "up", "s3"], capture_output=True, text=True, check=True)
    assert "already running" in proc.stderr and stack_pid() == before


def test_every_port_seaweedfs_opens_is_on_loopback(s3_env):
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    weed = [line for line in listening.splitlines() if f"pid={stack_pid()}," in line]
    assert weed, "SeaweedFS listens on no port"
    addresses = {re.split(r"\s+", line)[3].rsplit(":", 1)[0] for line in weed}
    assert addresses == {"127.0.0.1"}


def weed_listens_on() -> set[int]:
    listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return {int(re.split(r"\s+", line)[3].rsplit(":", 1)[1]) for line in listening.splitlines()
            if f"pid={stack_pid()}," in line}


def test_the_port_table_lists_every_port_seaweedfs_opens(s3_env):
    listed = subprocess.run([STACK, "ports"], capture_output=True, text=True).stdout
    in_table = {int(line.split()[0]) for line in listed.splitlines() if " seaweedfs " in line}
    assert weed_listens_on() == in_table


def test_a_moved_stack_that_would_collide_with_the_running_one_is_refused(s3_env, tmp_path):
    # The case: TIDAL_S3_PORT=28333 next to a default stack, whose S3 gRPC port is 28333.
    s3_grpc = int(s3_env["endpoint"].rsplit(":", 1)[1]) + 10000
    stack_dir = tmp_path / "stack"

    refused = stack("up", env=stack_dir_env(stack_dir, **{**free_ports(), "TIDAL_S3_PORT": str(s3_grpc)}))

    assert refused.returncode == 1
    assert (f"port {s3_grpc} on 127.0.0.1, wanted for the seaweedfs S3 API (TIDAL_S3_PORT), is in use by "
            f"weed (pid {stack_pid()})") in refused.stderr
    assert not (stack_dir / "stack.env").exists() and not any((stack_dir / "pids").iterdir())


def test_wrong_credentials_are_refused(s3_env):
    good = boto3.client("s3", endpoint_url=s3_env["endpoint"])
    good.put_object(Bucket=s3_env["bucket"], Key=f"{s3_env['prefix']}/probe", Body=b"ok")
    bad = boto3.client("s3", endpoint_url=s3_env["endpoint"], aws_access_key_id="intruder",
                       aws_secret_access_key=os.urandom(8).hex())
    with pytest.raises(botocore.exceptions.ClientError) as err:
        bad.get_object(Bucket=s3_env["bucket"], Key=f"{s3_env['prefix']}/probe")
    assert err.value.response["Error"]["Code"] in {"InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch"}
