"""One private cluster profile for the whole run of tests/cluster: `scripts/cluster.sh up` on a temporary directory and a free block
of ports, `down` at the end (every process it started, by PID)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.cluster.cluster_run import cluster, cluster_env, free_port_base, sourced


@pytest.fixture(scope="session")
def cluster_profile():
    """The running profile's environment, as `source "$(scripts/cluster.sh env)"` gives it."""
    # Not under pytest's 0700 temp root: as root, PostgreSQL runs as an unprivileged user that must reach its data.
    cluster_dir = Path(tempfile.mkdtemp(prefix="tidal-cluster-"))
    cluster_dir.chmod(0o755)
    env = cluster_env(cluster_dir, free_port_base(),
                      # The tests trigger every run themselves: no tick, no run started by a landing file.
                      TIDAL_INCREMENTAL_EVERY_MINUTES="1440", TIDAL_INCREMENTAL_TRIGGER="schedule")
    try:
        started = cluster("up", env=env)
        assert started.returncode == 0, started.stdout + started.stderr[-6000:]
        yield {**env, **sourced(env)}
    finally:
        stopped = cluster("down", env=env, timeout=300)
        assert stopped.returncode == 0, stopped.stderr[-6000:]
        shutil.rmtree(cluster_dir, ignore_errors=True)
