"""scripts/stack.sh against the SeaweedFS that `make test` started: reuse, loopback binding, checked credentials."""

from __future__ import annotations

import os
import re
import subprocess

import boto3
import botocore.exceptions
import pytest

from tests.conftest import REPO_ROOT

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


def test_wrong_credentials_are_refused(s3_env):
    good = boto3.client("s3", endpoint_url=s3_env["endpoint"])
    good.put_object(Bucket=s3_env["bucket"], Key=f"{s3_env['prefix']}/probe", Body=b"ok")
    bad = boto3.client("s3", endpoint_url=s3_env["endpoint"], aws_access_key_id="intruder",
                       aws_secret_access_key=os.urandom(8).hex())
    with pytest.raises(botocore.exceptions.ClientError) as err:
        bad.get_object(Bucket=s3_env["bucket"], Key=f"{s3_env['prefix']}/probe")
    assert err.value.response["Error"]["Code"] in {"InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch"}
