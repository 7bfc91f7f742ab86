"""Serving tests: real checkpoints trained on a synthetic stream, promoted into a real registry, served by a real
uvicorn process (`python -m serving.server`) and asked over real loopback HTTP; the online store is a real Valkey."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, free_port, write_params


CFG = {"dim": 16, "epochs": 6, "negatives": 64, "batch_size": 256, "finetune_epochs": 1}


@dataclass(frozen=True)
class Trained:
    paths: list[Path]           # checkpoint files: a full retrain, then fine-tunes, in order
    newest: list[float]         # the newest event each learned from (unix s)
    interactions: pd.DataFrame  # the whole stream (user_id, item_id, timestamp)
    items: pd.DataFrame


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """One full retrain on the first 60% of a synthetic stream, then three fine-tunes on the next slices."""
    from models.recommender import TrainConfig, finetune, train
    from models.synthetic import synthetic_stream

    folder = tmp_path_factory.mktemp("checkpoints")
    interactions, items = synthetic_stream(n_users=60, n_items=80, n_events=3000, seed=1, affinity=0.9)
    cfg = TrainConfig(**CFG)
    cuts = [1800, 2200, 2600, 3000]
    result = train(interactions.iloc[:cuts[0]], cfg=cfg, items=items)
    paths, newest, anchor = [], [], result.checkpoint
    for j, cut in enumerate(cuts):
        if j:
            result = finetune(result.checkpoint, interactions.iloc[cuts[j - 1]:cut], cfg=cfg, anchor=anchor,
                              history=interactions.iloc[:cuts[j - 1]], items=items)
        assert result.finite
        path = folder / f"model-{j}.pt"
        result.checkpoint.save(path)
        paths.append(path)
        newest.append(float(interactions["timestamp"].iloc[cut - 1]))
    return Trained(paths, newest, interactions, items)


def promote(home: Path, checkpoint: Path, run_id: str, newest_s: float, kind: str = "incremental") -> str:
    """A version with this checkpoint through the registry's own promotion (checksums, alias move)."""
    from tidal.registry import Registry
    from tidal.storage import atomic_write_json

    registry = Registry(home / "registry")
    staged = registry.new_candidate_dir(run_id)
    shutil.copyfile(checkpoint, staged / "model.pt")
    newest = pd.Timestamp(newest_s, unit="s", tz="UTC").isoformat()
    atomic_write_json(staged / "metadata.json", {"run_id": run_id, "kind": kind, "newest_event_time": newest})
    return registry.promote_candidate(run_id, reason="test").version


class ServingProcess:
    """`python -m serving.server` as its own process group on a free loopback port; stopped by PID."""

    def __init__(self, folder: Path, home: Path, online_url: str | None, params: dict | None = None):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TIDAL_HOME": str(home), "PYTHONPATH": str(REPO_ROOT),
                    "TIDAL_PARAMS": str(write_params(folder / "params.yaml", params)),
                    "TIDAL_REDIS_NAMESPACE": "serve"}
        self.env.pop("TIDAL_REDIS_URL", None)
        if online_url:
            self.env["TIDAL_REDIS_URL"] = online_url
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServingProcess":
        log = (self.folder / "serving.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--port", str(self.port)],
                                     env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"serving did not answer /healthz within 60 s:\n{self.log()}")

    def wait_ready(self, version: str | None = None, timeout_s: float = 30) -> dict:
        """Until /readyz is 200 (and names `version`, when given); returns its body."""
        deadline = time.monotonic() + timeout_s
        body = None
        while time.monotonic() < deadline:
            reply = httpx.get(f"{self.url}/readyz", timeout=2)
            body = reply.json()
            if reply.status_code == 200 and (version is None or body["version"] == version):
                return body
            time.sleep(0.05)
        raise AssertionError(f"not ready with {version} after {timeout_s} s: {body}\n{self.log()}")

    def get(self, path: str, **params) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, timeout=10)

    def log(self) -> str:
        path = self.folder / "serving.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def serving_home(tmp_path) -> Path:
    home = tmp_path / "home"
    (home / "registry").mkdir(parents=True)
    return home


@pytest.fixture
def start_serving(tmp_path, serving_home):
    """start_serving(online_url=None, params=None) -> a started ServingProcess over `serving_home`."""
    started: list[ServingProcess] = []

    def start(online_url: str | None = None, params: dict | None = None) -> ServingProcess:
        folder = tmp_path / f"serving-{len(started)}"
        folder.mkdir()
        process = ServingProcess(folder, serving_home, online_url, params)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def write_online(server_url: str, users: dict[str, list[str]], popular: list[str], now_s: float) -> None:
    """The online store as the features job leaves it: users' recent items, the popular-now ranking."""
    from tidal.config import online_store_settings
    from tidal.online_store import GroupRow, connect, write_groups

    store = online_store_settings(server_url, "serve")
    rows = [GroupRow("user", user, "recent", {"items": items, "last_event_s": now_s}, now_s)
            for user, items in users.items()]
    rows.append(GroupRow("global", "now", "popular", {"items": popular}, now_s))
    write_groups(connect(store), store, rows)
