"""tidal/celery_config.py: Airflow's Celery defaults, and a Celery worker that imports the steps' libraries in its
main process when Celery initialises it, before its pool forks, so a process forked after that (a pool process, then
a task) starts with them; importing the configuration alone (as the scheduler does) imports none of them."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

# A fresh interpreter, as a worker is. Celery's own WorkController is built (it sends worker_init from
# setup_instance, before the pool is created); nothing connects to a broker until the worker is started, which it is
# not. Then fork a child, as the prefork pool does, and report what it finds imported.
SCRIPT = r"""
import os, sys
from celery import Celery
from celery.worker import WorkController
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from tidal.celery_config import CELERY_CONFIG
from tidal.warm_executor import WARM_IMPORTS

assert CELERY_CONFIG == DEFAULT_CELERY_CONFIG
assert "torch" not in sys.modules and "great_expectations" not in sys.modules, "imported with the configuration"
app = Celery("tidal-test", config_source=CELERY_CONFIG, set_as_current=False)
app.conf.broker_url = "redis://127.0.0.1:1/0"  # never contacted: the worker is built, not started
WorkController(app=app, pool_cls="prefork", concurrency=1)
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


def test_a_celery_workers_forked_processes_start_with_every_warm_import_and_none_of_tidals_own_modules():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("CHILD_HAS=")]
    from tidal.warm_executor import WARM_IMPORTS

    assert line.removeprefix("CHILD_HAS=").split(",") == list(WARM_IMPORTS)
