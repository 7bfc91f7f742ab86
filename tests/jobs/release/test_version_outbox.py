"""The S3 outage: a private SeaweedFS (`weed mini` on its own ports, own data dir) is stopped mid-run and started
again. Promotion goes on locally, pushes wait in the outbox, go through once the store is back, nothing is lost or
pushed twice, and a pulled version is verified by sha256 before it can be loaded."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest

from jobs.release.dvc import pull_version
from jobs.release.outbox import drain_outbox, outbox_entries
from jobs.release.version import run_version
from tests.conftest import REPO_ROOT
from tests.jobs.release.test_version import promote_dummy
from tidal.registry import ChecksumMismatch, Registry
from tidal.storage import StorageLayout


pytestmark = pytest.mark.stack
WEED = REPO_ROOT / ".venv" / "bin" / "weed"
BASE = 21400  # away from the shared stack's 19300/18333 block
S3_PORT = BASE + 33 + 100


class PrivateSeaweed:
    def __init__(self, root: Path, bucket: str):
        self.root, self.bucket, self.proc = root, bucket, None
        self.endpoint = f"http://127.0.0.1:{S3_PORT}"
        root.mkdir(parents=True, exist_ok=True)
        identities = root / "identities.json"
        identities.write_text(json.dumps({"identities": [{"name": "t", "credentials": [
            {"accessKey": os.environ["AWS_ACCESS_KEY_ID"], "secretKey": os.environ["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        identities.chmod(0o600)
        b = BASE
        self.argv = [str(WEED), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                     "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                     "-s3.port.lance=0", f"-master.port={b + 33}", f"-master.port.grpc={b + 10033}",
                     f"-volume.port={b + 80}", f"-volume.port.grpc={b + 10080}", f"-filer.port={b + 88}",
                     f"-filer.port.grpc={b + 10088}", f"-admin.port={b + 46}", f"-admin.port.grpc={b + 10046}",
                     f"-s3.port={S3_PORT}", f"-s3.port.grpc={S3_PORT + 10000}", f"-s3.config={identities}",
                     f"-bucket={bucket}"]

    def start(self) -> None:
        (self.root / "data").mkdir(exist_ok=True)
        self.log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        client = boto3.client("s3", endpoint_url=self.endpoint)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "weed.log").read_text()[-2000:]
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception:
                time.sleep(0.5)
        raise TimeoutError("private weed mini did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only what this test started
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", S3_PORT)) != 0, "S3 port still answers after stop"


@pytest.fixture
def seaweed(tmp_path, monkeypatch):
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        pytest.fail("no credentials in the environment: run with the stack env (make test)")
    store = PrivateSeaweed(tmp_path / "weed", "outage")
    store.start()
    monkeypatch.setenv("TIDAL_S3_ENDPOINT", store.endpoint)
    monkeypatch.setenv("TIDAL_S3_BUCKET", "outage")
    monkeypatch.setenv("TIDAL_S3_PREFIX", "dvc")
    yield store
    store.stop()


def remote_keys(store: PrivateSeaweed) -> list[str]:
    reply = boto3.client("s3", endpoint_url=store.endpoint).list_objects_v2(Bucket="outage", Prefix="dvc/")
    return sorted(o["Key"] for o in reply.get("Contents", []))


def test_outage_queues_pushes_and_recovery_pushes_each_version_once(tidal_env, seaweed, tmp_path):
    settings = tidal_env({"version": {"push_attempts": 2, "backoff_s": 0.1, "max_backoff_s": 4.0}})
    layout = StorageLayout(settings.home).ensure()
    v1 = promote_dummy(layout, "run-1", b"weights-one")
    assert run_version(settings, "run-1")["status"] == "pushed"
    before_outage = remote_keys(seaweed)

    seaweed.stop()  # the object store goes down mid-stream
    started = time.monotonic()
    v2 = promote_dummy(layout, "run-2", b"weights-two")
    down = run_version(settings, "run-2")
    v3 = promote_dummy(layout, "run-3", b"weights-three")
    down3 = run_version(settings, "run-3")
    outage_s = time.monotonic() - started
    assert (down["status"], down["attempts"], down3["status"]) == ("queued", 2, "queued")
    assert Registry(layout.registry).production().version == v3  # promotion went on locally
    assert [e["version"] for e in outbox_entries(settings)] == [v2, v3]
    # Backoff: v2 failed twice (0.1 s, then its next try is 0.2 s after queueing); run-3 either found it not yet
    # due or retried it once more; either way it stays queued with its attempts counted.
    v2_entry = outbox_entries(settings)[0]
    drained_v2 = down3["outbox"]["drained"][0]
    assert drained_v2["version"] == v2 and drained_v2["status"] in ("waiting", "queued")
    assert v2_entry["attempts"] == (2 if drained_v2["status"] == "waiting" else 3)
    assert down3["outbox"]["waiting"] == [v2, v3]

    seaweed.start()
    due = max(datetime.fromisoformat(e["next_attempt_at"]) for e in outbox_entries(settings))
    time.sleep(max(0.0, (due - datetime.now(timezone.utc)).total_seconds()) + 0.1)  # both entries are due
    recovered = run_version(settings, "run-4-promoted-nothing")
    assert recovered["status"] == "skipped"
    assert [(r["version"], r["status"]) for r in recovered["outbox"]["drained"]] == [(v2, "pushed"), (v3, "pushed")]
    assert outbox_entries(settings) == []
    keys = remote_keys(seaweed)
    # Exactly the content of v1..v3: each file and each directory manifest once, keyed by its md5.
    expected = set(before_outage)
    for version in (v2, v3):
        path = Registry(layout.registry).version(version).path
        for f in path.iterdir():
            md5 = hashlib.md5(f.read_bytes()).hexdigest()
            expected.add(f"dvc/files/md5/{md5[:2]}/{md5[2:]}")
        dir_md5 = (path.parent / f"{version}.dvc").read_text().split("md5: ")[1].split()[0]
        expected.add(f"dvc/files/md5/{dir_md5[:2]}/{dir_md5[2:]}")
    assert set(keys) == expected and len(keys) == len(set(keys))
    assert drain_outbox(settings, force=True) == [] and remote_keys(seaweed) == keys  # nothing pushed twice
    print(f"outage: {outage_s:.1f} s to promote two versions with the store down; both pushed after restart")

    # A pulled version is checked before use; a corrupted remote object is caught.
    pulled = pull_version(settings, v2, tmp_path / "pull-ok")
    assert (pulled / "model.pt").read_bytes() == b"weights-two"
    md5 = hashlib.md5(b"weights-two").hexdigest()
    boto3.client("s3", endpoint_url=seaweed.endpoint).put_object(
        Bucket="outage", Key=f"dvc/files/md5/{md5[:2]}/{md5[2:]}", Body=b"weights-tw0")
    with pytest.raises(ChecksumMismatch, match="model.pt"):
        pull_version(settings, v2, tmp_path / "pull-corrupt")


def test_credentials_from_an_airflow_connection_when_the_environment_has_none(tidal_env, s3_env, monkeypatch):
    """No AWS_* and no endpoint in the environment: the `tidal_s3` Airflow connection (here from AIRFLOW_CONN_*)
    supplies them to DVC; a wrong secret in the connection is refused by the store and the push is queued."""
    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    endpoint = s3_env["endpoint"]
    settings = tidal_env({"version": {"push_attempts": 1, "backoff_s": 0.0}})
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TIDAL_S3_ENDPOINT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    layout = StorageLayout(settings.home).ensure()

    def connection(password: str) -> str:
        return json.dumps({"conn_type": "aws", "login": key, "password": password,
                           "extra": {"endpoint_url": endpoint}})

    monkeypatch.setenv("AIRFLOW_CONN_TIDAL_S3", connection("not-the-secret"))
    promote_dummy(layout, "run-1", b"weights-conn")
    refused = run_version(settings, "run-1")
    assert refused["status"] == "queued" and [e["version"] for e in outbox_entries(settings)] == ["v000001"]

    monkeypatch.setenv("AIRFLOW_CONN_TIDAL_S3", connection(secret))
    pushed = drain_outbox(settings, force=True)
    assert pushed == [{"version": "v000001", "status": "pushed", "md5": refused["md5"]}]
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_env["bucket"], Prefix=s3_env["prefix"] + "/")["Contents"]]
    md5 = hashlib.md5(b"weights-conn").hexdigest()
    assert f"{s3_env['prefix']}/files/md5/{md5[:2]}/{md5[2:]}" in keys
    assert "AWS" not in (layout.root / ".dvc" / "config").read_text()  # nothing secret written to DVC's config
