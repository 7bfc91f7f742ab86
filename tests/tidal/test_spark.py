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


def codegen_compilations(spark) -> int:
    """How many classes of generated code the session's JVM has compiled so far (Spark's own codegen metric)."""
    return spark.sparkContext._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount()


def test_a_long_lived_session_compiles_a_features_batch_once_not_per_batch(spark, tidal_env):
    """A micro-batch compiles more classes than Spark keeps by default (100), so without tidal.spark's cache size a
    session running batch after batch (this test session; a catch-up run's batches on the stack's warm server)
    compiled every one of them again per batch. With it, a batch of the same shape reuses them and compiles only a
    few (the stages holding the batch's own id as a constant, Spark inlining numeric literals)."""
    from devtools.generate import generate_stream
    from jobs.features.stream import run_features
    from tidal.spark import CODEGEN_CACHE_ENTRIES
    from tidal.storage import StorageLayout

    assert spark.conf.get("spark.sql.codegen.cache.maxEntries") == str(CODEGEN_CACHE_ENTRIES)
    settings = tidal_env({"generate": {"events_per_file": 100}})
    layout = StorageLayout(settings.home).ensure()
    compiled = []
    for batch_id, seed in enumerate((1, 2, 3)):
        generate_stream(layout, settings.params.generate, seed=seed, files=2, bad_fraction=0.1,
                        event_types=settings.params.base.event_types)
        before = codegen_compilations(spark)
        summary = run_features(settings, now_epoch_s=2_000_000_000)
        compiled.append(codegen_compilations(spark) - before)
        assert summary["batch_ids"] == [batch_id] and summary["quarantined"] > 0
    # The second batch is the first with state to read (its plans differ from the first's); the third has its shape.
    assert compiled[2] <= 20, compiled


def test_a_file_scan_is_cut_into_tasks_of_at_most_max_partition_mb(spark, tidal_env, tmp_path):
    """features.max_partition_mb reaches the session (spark_for), and Spark packs fewer files into each task. Ten
    1.5 MB files count as 55 MB (Spark adds 4 MB per file for opening it); on one core Spark aims at one task of
    all 55 MB, which a 64 MB cap allows, where a 2 MB cap gives each file a task of its own."""
    from tidal.spark import spark_for

    files = tmp_path / "landing"
    files.mkdir()
    for i in range(10):
        (files / f"events-{i:02d}.jsonl").write_bytes(b"x" * 1_500_000)
    before = spark.conf.get("spark.sql.files.maxPartitionBytes")
    try:
        tasks = {}
        for cap_mb in (64, 2):
            session = spark_for(tidal_env({"features": {"max_partition_mb": cap_mb}}))
            assert session.conf.get("spark.sql.files.maxPartitionBytes") == str(cap_mb * 1024 * 1024)
            tasks[cap_mb] = session.read.format("binaryFile").load(str(files)).rdd.getNumPartitions()
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", before)
    assert tasks == {64: 1, 2: 10}


def test_a_local_session_compiles_huge_methods_and_has_tidals_jar(spark):
    """The JVM runs with tidal.spark.JVM_OPTIONS (whole-stage codegen's method for the features job's first stage is
    over HotSpot's 8,000-byte limit, and would otherwise be interpreted), and the session lists tidal's jar."""
    from tidal.spark import JVM_JAR, JVM_OPTIONS

    arguments = list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert JVM_OPTIONS in arguments, arguments
    assert spark.conf.get("spark.executor.extraJavaOptions") == JVM_OPTIONS
    assert str(JVM_JAR) in spark.sparkContext.getConf().get("spark.jars", "")
