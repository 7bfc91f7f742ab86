"""tidal/worker_forkserver.py with real processes: a fork server, and launchers run as Spark runs its Python
(`python -I -S worker_forkserver.py launch NAME REAL_PYTHON -m MODULE ARGS...`). A module the server serves runs in
a child of the server with the launcher's arguments, environment, folder and streams, and its exit status comes back
through the launcher; anything else runs on the real interpreter in the launcher's place; a launcher that Spark
terminates or kills takes its worker with it. The stack's wiring is tested in tests/scripts/test_stack_spark.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO_ROOT

FORKSERVER = REPO_ROOT / "tidal" / "worker_forkserver.py"

# What the worker under test reports: who and where it is, what it was given; then it exits with FORK_EXIT, or first
# sleeps FORK_SLEEP seconds (a worker Spark stops while it runs).
PROBE_MODULE = """
import json, os, sys, time
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[1:], "cwd": os.getcwd(),
                  "given": os.environ.get("FORK_GIVEN"), "name": __name__}), flush=True)
print("a line on stderr", file=sys.stderr, flush=True)
time.sleep(float(os.environ.get("FORK_SLEEP", "0")))
sys.exit(int(os.environ.get("FORK_EXIT", "0")))
"""


def fresh_name() -> str:
    return f"tidal-test-forkserver-{uuid.uuid4().hex[:12]}"


def serve_command(name: str, preload: tuple[str, ...]) -> list[str]:
    """`serve` as a process of its own, serving the test's probe module."""
    return [sys.executable, "-c", "import sys; from tidal.worker_forkserver import serve; "
            f"sys.exit(serve({name!r}, preload={preload!r}, allowed=('forkprobe',)))"]


def serve_env(modules: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{modules}"}


def start_server(modules: Path, name: str, preload: tuple[str, ...] = ("json",)) -> subprocess.Popen:
    server = subprocess.Popen(serve_command(name, preload), env=serve_env(modules), stderr=subprocess.PIPE, text=True)
    ready = server.stderr.readline()
    assert "serving" in ready, ready + server.stderr.read()
    return server


@pytest.fixture()
def modules(tmp_path) -> Path:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "forkprobe.py").write_text(PROBE_MODULE)
    (folder / "otherprobe.py").write_text(PROBE_MODULE)
    return folder


@pytest.fixture()
def server(modules):
    name = fresh_name()
    process = start_server(modules, name)
    yield name, process
    process.terminate()
    process.wait(timeout=30)


def launch(name: str, module: str, cwd: Path, modules: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-I", "-S", str(FORKSERVER), "launch", name, sys.executable, "-m", module,
                             "first", "second"],
                            cwd=cwd, env={**os.environ, "PYTHONPATH": str(modules), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_served_module_runs_in_a_child_of_the_fork_server_with_the_launchers_arguments_environment_and_streams(
        server, modules, tmp_path):
    name, process = server
    launcher = launch(name, "forkprobe", tmp_path, modules, FORK_GIVEN="from the launcher", FORK_EXIT="3")
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 3, err
    worker = json.loads(out)
    assert worker["ppid"] == process.pid and worker["pid"] != launcher.pid
    assert worker == {**worker, "argv": ["first", "second"], "cwd": str(tmp_path), "given": "from the launcher",
                      "name": "__main__"}
    assert err.strip() == "a line on stderr"


def test_what_the_fork_server_does_not_serve_runs_on_the_real_interpreter_in_the_launchers_place(
        server, modules, tmp_path):
    name, _ = server
    refused = launch(name, "otherprobe", tmp_path, modules, FORK_EXIT="4")
    out, err = refused.communicate(timeout=60)
    assert refused.returncode == 4, err
    assert json.loads(out)["pid"] == refused.pid  # exec'd, not forked
    # No fork server under that name (none started, or it died): the same.
    alone = launch(fresh_name(), "forkprobe", tmp_path, modules)
    out, err = alone.communicate(timeout=60)
    assert alone.returncode == 0, err
    assert json.loads(out)["pid"] == alone.pid and json.loads(out)["argv"] == ["first", "second"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_a_launcher_stopped_by_spark_takes_its_worker_with_it(server, modules, tmp_path, stop):
    name, _ = server
    launcher = launch(name, "forkprobe", tmp_path, modules, FORK_SLEEP="120")
    worker = psutil.Process(json.loads(launcher.stdout.readline())["pid"])
    assert worker.is_running()
    launcher.send_signal(stop)
    launcher.wait(timeout=30)
    # SIGTERM is passed on and the launcher reports how the worker ended; a SIGKILLed launcher cannot, so the fork
    # server sees its connection close and kills the worker itself.
    assert launcher.returncode == (128 + signal.SIGTERM if stop == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.monotonic() + 20
    while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE


def test_the_fork_server_refuses_to_serve_when_its_imports_start_threads(modules):
    # fork copies only the calling thread: a worker forked from a process with others could hang on their locks.
    (modules / "startsthread.py").write_text("import threading, time\n"
                                              "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    refused = subprocess.run(serve_command(fresh_name(), ("startsthread",)), env=serve_env(modules),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "started threads (2); not serving" in refused.stderr


def test_the_stacks_fork_server_serves_with_the_shipped_preload():
    # pyspark's Connect client imports numpy and pyarrow, whose OpenBLAS pool and jemalloc purging thread start on
    # import unless told not to (tidal.worker_forkserver.SINGLE_THREADED_IMPORTS); with them it would refuse.
    name = fresh_name()
    process = subprocess.Popen([sys.executable, "-m", "tidal.worker_forkserver", "serve", name], cwd=REPO_ROOT,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        ready = process.stderr.readline()
        assert f"serving ('pyspark.sql.connect.streaming.worker.foreach_batch_worker',) on @{name}" in ready, ready
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
