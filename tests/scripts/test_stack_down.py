"""`scripts/stack.sh down` stops the whole process tree of what it started, across process groups and sessions.

A stand-in for Airflow's tree, recorded under the pid file `up` writes: a session leader whose grandchild moved to
its own session (as an Airflow task's Spark JVM sits in the task's own process group) and an orphan already
reparented away from the tree but still in the session. The real Airflow case is in test_stack_airflow.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

from tests.scripts.stack_run import clean_env, process_tree, stack, still_alive

# root bash -> child bash -> `setsid sleep 301` (own session); root -> subshell -> `sleep 302`, orphaned at once.
TREE = "bash -c 'setsid sleep 301 & wait' & (sleep 302 &); wait"


def sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return []


def tree_and_session(root: int) -> dict[int, float]:
    in_session = {p.pid: p.create_time() for p in psutil.process_iter() if sid(p.pid) == root}
    return {**process_tree(root), **in_session}


def wait_for_stand_in(root: int) -> dict[int, float]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        recorded = tree_and_session(root)
        sleeps = sorted(c for pid in recorded if (c := " ".join(cmdline(pid))).startswith("sleep"))
        if len(recorded) == 4 and sleeps == ["sleep 301", "sleep 302"]:  # root, child bash and the two sleeps
            return recorded
        time.sleep(0.1)
    raise AssertionError(f"the stand-in tree never got its 4 processes: {tree_and_session(root)}")


def test_down_stops_a_descendant_in_its_own_session_and_an_orphan_of_the_session(tmp_path):
    stack_dir = tmp_path / "stack"
    (stack_dir / "pids").mkdir(parents=True)
    root = subprocess.Popen(["bash", "-c", TREE], start_new_session=True)
    recorded: dict[int, float] = {}
    try:
        (stack_dir / "pids" / "airflow.pid").write_text(f"{root.pid}\n")
        recorded = wait_for_stand_in(root.pid)
        descendants = process_tree(root.pid)
        assert any(sid(pid) == pid for pid in descendants if pid != root.pid), "no descendant in its own session"
        assert any(pid not in descendants for pid in recorded), "no orphan left in the session"

        done = stack("down", env=clean_env(TIDAL_STACK_DIR=str(stack_dir)), timeout=90)

        assert done.returncode == 0, done.stderr
        assert still_alive(recorded) == []
        assert "airflow stopped (pid" in done.stderr and not (stack_dir / "pids" / "airflow.pid").exists()
    finally:
        for line in still_alive(recorded):
            os.kill(int(line.split()[0]), signal.SIGKILL)
        root.kill()
        root.wait(timeout=10)
