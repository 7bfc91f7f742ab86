"""tidal/spark_connect_server.py, the driver program of the stack's Spark Connect server. Served as
`scripts/stack.sh up spark` starts it, it is tested end to end in tests/scripts/test_stack_spark.py (features results
equal to a local Spark's, code compiled once for the tasks that follow). Here: started any other way, without the
Connect plugin, it refuses instead of idling as a Spark application that serves nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_without_the_connect_plugin_the_server_refuses_and_says_how_to_start_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_REMOTE", "TIDAL_SPARK_REMOTE"))}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tidal" / "spark_connect_server.py")], cwd=REPO_ROOT,
                          env={**env, "PYTHONPATH": str(REPO_ROOT), "SPARK_LOCAL_IP": "127.0.0.1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "spark.plugins lacks org.apache.spark.sql.connect.SparkConnectPlugin" in done.stderr
    assert "scripts/stack.sh up spark" in done.stderr
