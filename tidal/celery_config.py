"""Airflow's Celery configuration for the cluster profile: its defaults, plus the warm imports of
tidal/warm_executor.py in every Celery worker.

The same mechanism as the embedded stack's WarmLocalExecutor, one level down: a Celery worker's prefork pool forks its
pool processes from the worker's main process, and Airflow's task supervisor forks each task from a pool process. So
what the main process imports before the pool starts, every task on that worker starts with. Celery sends
`worker_init` in the main process right before it builds the pool; the handler below imports the steps' third-party
libraries there (never tidal's own modules, so an edit to `jobs/` still takes effect at the next task).

scripts/cluster.sh selects it with AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=tidal.celery_config.CELERY_CONFIG
(TIDAL_CELERY_WARM=0 keeps Airflow's own). The scheduler, which also reads this configuration to send tasks, imports
this module too; `worker_init` is never sent there, so it imports nothing more.
"""

from __future__ import annotations

import logging
import time

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

from tidal.warm_executor import warm_imports

log = logging.getLogger(__name__)

# Airflow's configuration unchanged ([celery] extra_celery_config is still merged over it by Airflow).
CELERY_CONFIG: dict = dict(DEFAULT_CELERY_CONFIG)


@worker_init.connect
def preimport_for_tasks(**_) -> dict[str, float]:
    """Import WARM_IMPORTS in the worker's main process, before its pool forks; returns the seconds each took."""
    started = time.perf_counter()
    seconds = warm_imports()
    log.info("tidal: pre-imported %d libraries for this worker's tasks in %.1f s: %s", len(seconds),
             time.perf_counter() - started, seconds)
    return seconds
