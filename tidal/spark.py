"""One place that builds the Spark session every Spark job uses: a local JVM (bound to loopback, UI off, UTC), or a
Spark Connect session on a server that is already warm (TIDAL_SPARK_REMOTE, e.g. the stack's `sc://127.0.0.1:18415`).

Connect exists so a task does not pay a JVM start: `scripts/stack.sh up spark` keeps one server up for the stack's
life and writes its URL into stack.env, so the DAG's tasks and `tidal cycle` run on it. Without the setting every
caller gets a local session as before.

A process is either a Connect client or a local driver, never both: pyspark marks the whole process as Connect
(SPARK_CONNECT_MODE_ENABLED) once a Connect session exists, and `pyspark.sql.functions` then builds Connect
columns only. Tests that compare the two run each in its own process.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path

from tidal.config import Settings

log = logging.getLogger(__name__)

# tidal's own JVM code (jvm/src, built by `make jvm`): the features job's event line reader. Every session tidal starts
# puts it on the classpath when it has been built (a local or cluster session by spark.jars, whose driver serves it to
# the executors; the stack's Connect server by --jars); without it the features job reads every line with Spark's
# variant functions alone.
JVM_JAR = Path(__file__).resolve().parents[1] / "build" / "tidal-spark.jar"
EVENT_LINE_READER = "tidal_event_line"
EVENT_LINE_READER_CLASS = "tidal.spark.EventLineReader"
EVENT_LINE_READER_TYPE = ("struct<event_id:string,user_id:string,item_id:string,event_type:string,value:double,"
                          "time_text:string,time_seconds:double,context:string>")


# How many compiled classes of generated code Spark keeps (an LRU keyed by the code and the session's class loader; a
# static setting, read when the JVM starts). Spark's default, 100, is below what one features micro-batch compiles
# (about 180 distinct classes), so a session running batch after batch (a catch-up run's micro-batches in one query on
# the stack's Connect server, a test session) evicted each batch's classes before the next batch needed them and
# compiled all of them again, and the JIT then compiled the new classes once more: benchmarks/features/codegen_cache.py.
# 1,000 holds several batches' worth plus the other jobs' plans. On the Connect server the classes are also reused
# from task to task, given CONNECT_SESSION_CONF below.
CODEGEN_CACHE_ENTRIES = 1000


# JVM options for every JVM tidal starts for Spark (a local driver, the stack's Connect server, the cluster
# profile's executors). HotSpot does not JIT-compile a method over 8,000 bytes of bytecode, and whole-stage codegen
# makes the features job's first stage (read, split, classify, the dedupe shuffle's write) one such method, which then
# ran in the interpreter: 16 executor CPU s of a 1M-event batch against 9-11 with the option, passes of 22.8 s against
# 17.9-19.8 s (benchmarks/features/RESULTS.md, "2026-12-05 (night): tidal's event line reader"). One word, no spaces:
# scripts/stack.sh passes it to spark-submit as one argument.
JVM_OPTIONS = "-XX:-DontCompileHugeMethods"


# Session settings that a Connect client may set per session (the server's static ones, such as the UI, the driver's
# address and heap, are fixed when scripts/stack.sh starts it).
def session_conf(shuffle_partitions: int, max_partition_mb: int = 32) -> dict[str, str]:
    return {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        # A replayed micro-batch rewrites only the partitions it owns.
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        # Spark packs a file scan into tasks of up to 128 MB by default, and makes only as many as the cores when the
        # input is smaller: a million events in 50 landing files became 4 tasks of 15, 15, 15 and 5 files on 2 cores,
        # and one core idled through the slow stage's last third. Smaller tasks end a stage with the cores evenly
        # busy, on any number of cores (benchmarks/features/RESULTS.md, "2026-12-05 (later): smaller read tasks").
        "spark.sql.files.maxPartitionBytes": str(max_partition_mb * 1024 * 1024),
    }


def spark_session(master: str = "local[2]", shuffle_partitions: int = 4, app_name: str = "tidal",
                  driver_memory: str = "1g", max_partition_mb: int = 32):
    # Imported here so that importing a job module (e.g. from a DAG file) never starts a JVM.
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers (if a plan needs any) must run this interpreter, not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        # Read only when this call starts the JVM (features.spark_driver_memory); a running session keeps its heap.
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.codegen.cache.maxEntries", str(CODEGEN_CACHE_ENTRIES))
        .config("spark.driver.extraJavaOptions", JVM_OPTIONS)
        .config("spark.executor.extraJavaOptions", JVM_OPTIONS)
    )
    if JVM_JAR.exists():
        builder = builder.config("spark.jars", str(JVM_JAR))
    for key, value in session_conf(shuffle_partitions, max_partition_mb).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# Session settings for a Connect client only, for a stock Connect server (`start-connect-server.sh`, a cluster's).
# That server turns on artifact isolation for every session it serves and forces each to run its queries under a
# class loader of its own; Spark's compiled-code cache is keyed by that loader, so every task compiled the whole
# features job again (~170 classes) and the JIT then compiled those classes again, on every cycle
# (benchmarks/features/RESULTS.md, "2026-12-04 late: compiled code kept from task to task"). These settings bring that
# to ~45 classes per task there. tidal's jobs add no artifacts (jars, files, Python packages) to their sessions, so
# sharing the server's own loader loses nothing; other clients' sessions keep their isolation. The stack's own server
# (tidal/spark_connect_server.py) does not force the loader, and a task there compiles ~2 classes with or without
# these ("2026-12-05 (evening)").
CONNECT_SESSION_CONF = {
    "spark.sql.artifact.isolation.enabled": "false",
    "spark.sql.artifact.isolation.alwaysApplyClassLoader": "false",
}


def connect_session(remote: str, shuffle_partitions: int = 4, max_partition_mb: int = 32):
    """A session on the Spark Connect server at `remote` (sc://HOST:PORT): no JVM in this process. The session
    settings are applied on every call, as getOrCreate returns the process's existing session."""
    import socket
    from urllib.parse import urlsplit

    from pyspark.sql import SparkSession

    # A plain connect first: the gRPC client retries an unreachable server with backoff for minutes (measured: still
    # waiting after 5), which would hang a task instead of failing it with a reason.
    url = urlsplit(remote)
    try:
        socket.create_connection((url.hostname, url.port), timeout=10).close()
    except OSError as err:
        raise RuntimeError(f"no Spark Connect server at {remote} ({err}): start the stack's with "
                           "`scripts/stack.sh up spark`, or unset TIDAL_SPARK_REMOTE to run a local Spark") from None
    builder = SparkSession.builder.remote(remote)
    for key, value in {**session_conf(shuffle_partitions, max_partition_mb), **CONNECT_SESSION_CONF}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if spark.session_id not in _released_at_exit:
        # The server keeps a session until its idle timeout; every task is a new process with a new session, so
        # each gives its own back when it exits (a SIGKILLed one is left to that timeout).
        _released_at_exit.add(spark.session_id)
        atexit.register(spark.stop)
    return spark


_released_at_exit: set[str] = set()


def spark_for(settings: Settings):
    fp = settings.params.features
    if settings.spark_remote:
        return connect_session(settings.spark_remote, fp.shuffle_partitions, fp.max_partition_mb)
    return spark_session(fp.spark_master, fp.shuffle_partitions, driver_memory=fp.spark_driver_memory,
                         max_partition_mb=fp.max_partition_mb)


def event_line_reader(spark) -> str | None:
    """Registers tidal's event line reader (jvm/src/tidal/spark/EventLineReader.java) in `spark` and returns its
    name for jobs.features.transforms.classify_events, or None where the session's JVM does not have the class (the
    jar was not built, or the server was started without it): the features job is then correct, only slower."""
    try:
        spark.udf.registerJavaFunction(EVENT_LINE_READER, EVENT_LINE_READER_CLASS, EVENT_LINE_READER_TYPE)
    except Exception as err:  # noqa: BLE001 - any failure to register means the same: the slower path
        if EVENT_LINE_READER_CLASS not in _missing_reader_reported:
            _missing_reader_reported.add(EVENT_LINE_READER_CLASS)
            log.warning("the features job reads lines without tidal's event line reader (%s): %s. Build it with "
                        "`make jvm`, then restart whatever runs Spark (the stack: `scripts/stack.sh down` and `up`)",
                        EVENT_LINE_READER_CLASS, str(err).splitlines()[0][:200])
        return None
    return EVENT_LINE_READER


_missing_reader_reported: set[str] = set()


def is_connect(spark) -> bool:
    """Whether `spark` is a Spark Connect session (a client of a server) rather than a local driver."""
    return type(spark).__module__.startswith("pyspark.sql.connect")
