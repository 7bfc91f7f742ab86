"""Airflow's LocalExecutor with the pipeline's heavy libraries imported once, before it forks its workers.

On Linux every Airflow task process is a bare `os.fork()` of a LocalExecutor worker, itself forked from the scheduler
when the executor starts. Whatever the scheduler has imported by then, every task starts with. The incremental steps
import their libraries inside their functions (so parsing a DAG stays cheap), which made every task pay for them
again: on the 2-core dev box Great Expectations alone takes 6-8 s to import, torch 3 s, scipy.stats 1.4 s, the Spark
Connect client 1 s. That was most of the validate step and a fifth of finetune and gate, on every cycle.

Only third-party libraries are imported here, never tidal's own modules: those keep loading fresh in each task, so an
edit to `jobs/` or `models/` takes effect at the next task, as before, without restarting the stack.

The stack selects it with AIRFLOW__CORE__EXECUTOR=tidal.warm_executor.WarmLocalExecutor (scripts/stack.sh). It is
the LocalExecutor in every other respect (`is_local`, so `airflow standalone` keeps it).
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)

# What the incremental and retrain steps import inside their functions, slowest first. None of these starts a Python
# thread or opens a socket at import (threading.enumerate() is only the main thread after importing them all). They
# do start native threads, which `threading` cannot see: two of OpenBLAS's pool (numpy) and jemalloc's background
# thread (pyarrow), as /proc/self/task shows. A forked task has none of them, and both libraries handle that with
# pthread_atfork handlers: OpenBLAS stops its pool before a fork and starts one again on its next call, jemalloc
# takes its locks across the fork so the child's arenas are consistent. So the fork stays safe; a fork of a process
# running Python threads would not be.
WARM_IMPORTS: tuple[str, ...] = (
    "great_expectations",  # validate
    "torch",  # finetune, gate, retrain
    "scipy.stats",  # drift
    "pyspark.sql.connect.session",  # features, through the stack's warm Spark (TIDAL_SPARK_REMOTE)
    "pyspark.sql",
    "pandas",
    "pyarrow.parquet",
    "matplotlib.pyplot",  # drift's plot (MPLBACKEND=Agg, set below, the backend the drift report sets)
    "dvc.repo",  # version
)


def warm_imports(modules: tuple[str, ...] = WARM_IMPORTS) -> dict[str, float]:
    """Import each module; returns the seconds each took. A module that fails to import is logged and skipped: a
    task that needs it will fail on its own with the real error, and the scheduler must start either way."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # headless, as jobs/drift/report.py draws (no import outside the try)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # as jobs/validation/validate.py imports it
    seconds: dict[str, float] = {}
    for name in modules:
        started = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - reported, and the task that imports it reports it again
            log.warning("tidal: could not pre-import %s; tasks will import it themselves", name, exc_info=True)
            continue
        seconds[name] = round(time.perf_counter() - started, 2)
    return seconds


class WarmLocalExecutor(LocalExecutor):
    """LocalExecutor whose workers, and so every task they fork, start with WARM_IMPORTS already imported."""

    def start(self) -> None:
        started = time.perf_counter()
        seconds = warm_imports()
        log.info("tidal: pre-imported %d libraries for task processes in %.1f s: %s", len(seconds),
                 time.perf_counter() - started, seconds)
        super().start()
