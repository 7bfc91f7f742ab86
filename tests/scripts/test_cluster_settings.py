"""scripts/cluster.sh refuses a setting it cannot honour before it starts anything."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO_ROOT


def test_a_celery_warm_setting_other_than_0_or_1_is_refused_before_anything_starts(tmp_path):
    cluster_dir = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDAL_", "AIRFLOW_"))}
    refused = subprocess.run([str(REPO_ROOT / "scripts" / "cluster.sh"), "up"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=60,
                             env={**env, "TIDAL_CLUSTER_DIR": str(cluster_dir), "TIDAL_CELERY_WARM": "yes"})
    assert refused.returncode == 2
    assert "TIDAL_CELERY_WARM=yes: give 1 (workers pre-import the steps' libraries) or 0" in refused.stderr
    assert not list((cluster_dir / "pids").glob("*.pid")) and not (cluster_dir / "cluster.env").exists()
