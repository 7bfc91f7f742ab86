"""One place that builds the local Spark session every Spark job uses (bound to loopback, UI off, UTC)."""

from __future__ import annotations

import os
import sys

from tidal.config import Settings


def spark_session(master: str = "local[2]", shuffle_partitions: int = 4, app_name: str = "tidal",
                  driver_memory: str = "1g"):
    # Imported here so that importing a job module (e.g. from a DAG file) never starts a JVM.
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers (if a plan needs any) must run this interpreter, not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        # A replayed micro-batch rewrites only the partitions it owns.
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        # Read only when this call starts the JVM (features.spark_driver_memory); a running session keeps its heap.
        .config("spark.driver.memory", driver_memory)
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_for(settings: Settings):
    from tidal.spark import spark_session

    fp = settings.params.features
    return spark_session(fp.spark_master, fp.shuffle_partitions, driver_memory=fp.spark_driver_memory)
