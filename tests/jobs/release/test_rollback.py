"""Rollback from the CLI: who and why recorded, the alias moved, and the next incremental cycle fine-tunes from the
rolled-back version (real finetune/gate/promote on example batches; no Spark needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT
from tests.jobs.training.test_finetune import cycle, write_examples_batch
from tidal.registry import Registry
from tidal.storage import StorageLayout


def tidal(*args: str, env_user: str = "erin") -> subprocess.CompletedProcess:
    env = {**os.environ, "USER": env_user}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env)


@pytest.fixture
def three_versions(tidal_env):
    settings = tidal_env({"gate": {"recall_tolerance": 1.0}})
    layout = StorageLayout(settings.home).ensure()
    for b in range(3):
        write_examples_batch(layout, b, settings, file_index=b)
        assert cycle(settings, f"run-{b}")["promote"]["promoted"] is True
    return settings, layout


def test_cli_rollback_then_next_incremental_fine_tunes_from_the_rolled_back_version(three_versions):
    settings, layout = three_versions
    registry = Registry(layout.registry)
    assert registry.production().version == "v000003"

    started = time.perf_counter()
    out = tidal("rollback", "--to", "v000001", "--reason", "v3 regressed on purchases")
    wall = time.perf_counter() - started
    assert out.returncode == 0, out.stderr
    moved = json.loads(out.stdout[out.stdout.index("{"):])
    assert (moved["from"], moved["to"], moved["by"]) == ("v000003", "v000001", "erin")
    assert moved["seconds"] < 1.0 and wall < 30
    print(f"rollback: {moved['seconds'] * 1000:.2f} ms in the registry, {wall:.2f} s for the whole CLI process")
    assert registry.production().version == "v000001"

    write_examples_batch(layout, 3, settings, file_index=3)
    nxt = cycle(settings, "run-after-rollback")
    assert nxt["finetune"]["kind"] == "incremental" and nxt["finetune"]["parent"] == "v000001"
    # It trains on everything after v000001's last batch: the rolled-back-over batches 1 and 2 plus the new one.
    assert nxt["finetune"]["batch_ids"] == [1, 2, 3]
    assert nxt["gate"]["production_version"] == "v000001"
    v4 = registry.version(nxt["promote"]["version"])
    assert (v4.version, v4.metadata["parent"], v4.metadata["anchor"]) == ("v000004", "v000001", "v000001")

    served = tidal("registry", "served-at", registry.alias_moves()[2]["at"])
    assert served.returncode == 0 and served.stdout.strip() == "v000003"
    show = json.loads(tidal("registry", "show", "v000003").stdout)
    assert show["retired_at"] == registry.alias_moves()[3]["at"] and show["served"][0]["how"] == "promote"
    listing = tidal("registry", "list").stdout.splitlines()
    assert len(listing) == 5 and listing[4].startswith("v000004") and listing[4].endswith("*production")


def test_cli_refuses_bad_requests_without_touching_production(three_versions):
    settings, layout = three_versions
    before = Registry(layout.registry).alias_path.read_bytes()
    missing_reason = tidal("rollback", "--to", "v000001")
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
    blank = tidal("rollback", "--reason", "   ")
    assert blank.returncode == 2 and "needs a reason" in blank.stderr
    path = tidal("rollback", "--to", "/tmp/model.pt", "--reason", "x")
    assert path.returncode == 2 and "not a version id" in path.stderr
    unknown = tidal("rollback", "--to", "v000042", "--reason", "x")
    assert unknown.returncode == 2 and "v000042" in unknown.stderr
    assert Registry(layout.registry).alias_path.read_bytes() == before


def test_by_overrides_user(three_versions):
    _, layout = three_versions
    out = tidal("rollback", "--reason", "drill", "--by", "oncall-frank")
    assert out.returncode == 0, out.stderr
    assert Registry(layout.registry).events()[-1]["by"] == "oncall-frank"
    assert Registry(layout.registry).production().version == "v000002"
