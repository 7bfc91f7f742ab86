"""tidal/spark.py: which session a setting gives, decided before any JVM or server is involved."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT


def test_an_unreachable_spark_connect_server_fails_at_once_saying_what_to_do():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    started = time.monotonic()
    # Its own process: a Connect session marks the whole process as a Connect client (see tidal/spark.py).
    done = subprocess.run([sys.executable, "-c", "from tidal.config import load_settings\n"
                           "from tidal.spark import spark_for\nspark_for(load_settings())"],
                          cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", "TIDAL_SPARK_REMOTE": f"sc://127.0.0.1:{port}"},
                          capture_output=True, text=True, timeout=120)
    # Without the check the gRPC client retries for minutes; a task must fail with the reason instead.
    assert time.monotonic() - started < 60
    assert done.returncode != 0
    assert f"no Spark Connect server at sc://127.0.0.1:{port}" in done.stderr
    assert "scripts/stack.sh up spark" in done.stderr and "unset TIDAL_SPARK_REMOTE" in done.stderr
