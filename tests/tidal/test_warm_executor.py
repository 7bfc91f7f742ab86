"""tidal/warm_executor.py: the executor's workers, and the task processes they fork, start with the heavy libraries
imported; tidal's own modules are not among them; a library that cannot import does not stop the scheduler."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

# Defined in each script below: fork a child, as a pool or Airflow's supervisor forks a task, and print what it finds
# already imported among the warm libraries and two of tidal's own modules (which must never be among them).
PRINT_WHAT_A_FORKED_CHILD_HAS = r"""
import os, sys
from tidal.warm_executor import WARM_IMPORTS

def print_what_a_forked_child_has():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        found = [name for name in (*WARM_IMPORTS, "jobs.validation.validate", "models.recommender") if name in sys.modules]
        os.write(write, ",".join(found).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    print("CHILD_HAS=" + os.read(read, 65536).decode())
"""


def what_a_forked_child_has(script: str) -> list[str]:
    """Run `script` (after PRINT_WHAT_A_FORKED_CHILD_HAS) in a fresh interpreter; the modules its child reported."""
    done = subprocess.run([sys.executable, "-c", PRINT_WHAT_A_FORKED_CHILD_HAS + script], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("CHILD_HAS=")]
    return line.removeprefix("CHILD_HAS=").split(",")


# A fresh interpreter, as a scheduler is: start the executor (it forks its one worker), then fork a child as Airflow's
# supervisor forks a task from a worker.
SCRIPT = r"""
from airflow.executors.local_executor import LocalExecutor
from tidal.warm_executor import WarmLocalExecutor

assert "great_expectations" not in sys.modules and "torch" not in sys.modules, "imported before start()"
executor = WarmLocalExecutor(parallelism=1)
assert isinstance(executor, LocalExecutor) and executor.is_local
executor.start()
try:
    assert len(executor.workers) == 1, executor.workers
    print_what_a_forked_child_has()
finally:
    executor.end()
"""


def test_a_forked_task_process_starts_with_every_warm_import_and_none_of_tidals_own_modules():
    from tidal.warm_executor import WARM_IMPORTS

    # every library, and no job or model module (those load fresh per task)
    assert what_a_forked_child_has(SCRIPT) == list(WARM_IMPORTS)


def test_a_library_that_does_not_import_is_skipped_and_the_rest_still_load():
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys\nfrom tidal.warm_executor import warm_imports\n"
         "seconds = warm_imports(('csv', 'tidal_no_such_library', 'decimal'))\n"
         "print(json.dumps(sorted(seconds)), 'tidal_no_such_library' in sys.modules)"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == '["csv", "decimal"] False'
    # Airflow's logging writes to stdout or stderr depending on its config; the warning must be in one of them.
    assert "could not pre-import tidal_no_such_library" in done.stdout + done.stderr
