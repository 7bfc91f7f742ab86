"""tidal/celery_config.py: Airflow's Celery defaults, and a Celery worker that imports the steps' libraries in its
main process when Celery initialises it, before its pool forks, so a process forked after that (a pool process, then
a task) starts with them; importing the configuration alone (as the scheduler does) imports none of them."""

from __future__ import annotations

from tests.tidal.test_warm_executor import what_a_forked_child_has

# A fresh interpreter, as a worker is. Celery's own WorkController is built (it sends worker_init from
# setup_instance, before the pool is created); nothing connects to a broker until the worker is started, which it is
# not. Then a child is forked, as the prefork pool does.
SCRIPT = r"""
from celery import Celery
from celery.worker import WorkController
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from tidal.celery_config import CELERY_CONFIG

assert CELERY_CONFIG == DEFAULT_CELERY_CONFIG
assert "torch" not in sys.modules and "great_expectations" not in sys.modules, "imported with the configuration"
app = Celery("tidal-test", config_source=CELERY_CONFIG, set_as_current=False)
app.conf.broker_url = "redis://127.0.0.1:1/0"  # never contacted: the worker is built, not started
WorkController(app=app, pool_cls="prefork", concurrency=1)
print_what_a_forked_child_has()
"""


def test_a_celery_workers_forked_processes_start_with_every_warm_import_and_none_of_tidals_own_modules():
    from tidal.warm_executor import WARM_IMPORTS

    assert what_a_forked_child_has(SCRIPT) == list(WARM_IMPORTS)
