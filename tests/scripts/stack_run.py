"""Running scripts/stack.sh as a user would, against a private stack directory and moved ports.

Every private stack gets an environment with none of the caller's TIDAL_*, AIRFLOW_* or AWS_* variables (the
suite itself runs with the default stack's settings sourced), so a test sees only the settings it gives.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from pathlib import Path

import psutil

from tests.conftest import REPO_ROOT


STACK = REPO_ROOT / "scripts" / "stack.sh"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
# Moved ports that keep clear of the default stack's (18333, 18090, 19300 and what they derive), for tests that
# start nothing; a test that starts a server takes free_ports().
TEST_PORTS = {"TIDAL_S3_PORT": "21333", "TIDAL_AIRFLOW_PORT": "21090", "TIDAL_WEED_PORT_BASE": "20300",
              "TIDAL_REDIS_PORT": "21379", "TIDAL_SERVING_PORT": "21400", "TIDAL_SPARK_PORT": "21415"}


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDAL_", "AIRFLOW_", "AWS_"))}
    return {**env, "TIDAL_VENV_BIN": str(VENV_BIN), **settings}


def stack(*args: str, env: dict[str, str], script: Path = STACK, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=timeout)


def sourced(env: dict[str, str], *names: str, script: Path = STACK) -> dict[str, str]:
    """What a new shell sees after the documented `source "$(scripts/stack.sh env)"`."""
    lines = "; ".join(f'echo "{n}=${n}"' for n in names)
    out = subprocess.run(["bash", "-c", f'set -a; source "$("{script}" env)"; set +a; {lines}'],
                         env=env, capture_output=True, text=True, check=True, timeout=60).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def process_tree(root: int) -> dict[int, float]:
    """pid -> create time of ROOT and every descendant (through parents, so across sessions)."""
    proc = psutil.Process(root)
    return {p.pid: p.create_time() for p in [proc, *proc.children(recursive=True)]}


def still_alive(pids: dict[int, float]) -> list[str]:
    """The recorded processes that still run (a zombie has exited; a reused pid is another process)."""
    alive = []
    for pid, created in pids.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return alive


def stack_dir_env(stack_dir: Path, **settings: str) -> dict[str, str]:
    """A shell for a private stack in STACK_DIR: its own TIDAL_HOME and only the given settings."""
    return clean_env(TIDAL_STACK_DIR=str(stack_dir), TIDAL_HOME=str(stack_dir / "home"), **settings)


def ports_in_block(base: int) -> dict[str, str]:
    """Every port of a stack within base..base+99 and base+10000..base+10099."""
    return {"TIDAL_WEED_PORT_BASE": str(base), "TIDAL_S3_PORT": str(base + 20), "TIDAL_AIRFLOW_PORT": str(base + 10),
            "TIDAL_REDIS_PORT": str(base + 30), "TIDAL_SERVING_PORT": str(base + 40), "TIDAL_SPARK_PORT": str(base + 50)}


def free_ports() -> dict[str, str]:
    """Moved ports that are all free now, as `scripts/stack.sh ports` checks them: another suite on this machine
    (a clean checkout's `make test`) may be running its own private stacks at the same time."""
    for base in random.sample(range(20000, 28000, 100), 20):
        with tempfile.TemporaryDirectory() as stack_dir:
            if stack("ports", env=clean_env(TIDAL_STACK_DIR=stack_dir, **ports_in_block(base))).returncode == 0:
                return ports_in_block(base)
    raise AssertionError("no free block of ports in 20000..38099 for a private stack")
