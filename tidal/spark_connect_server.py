"""The stack's Spark Connect server: a Spark application whose driver serves Spark Connect as a plugin
(`spark.plugins=org.apache.spark.sql.connect.SparkConnectPlugin`), started by `scripts/stack.sh up spark` with
`spark-submit ... tidal/spark_connect_server.py`. Every setting (master, heap, port, loopback binding) comes from
spark-submit's `--conf`; this process only keeps the driver up until it is told to stop.

Why not the wheel's `SparkConnectServer` main class (what `start-connect-server.sh` runs): it forces
`spark.sql.artifact.isolation.alwaysApplyClassLoader=true` on every session, whatever the configuration says. Each
session then runs its queries under a class loader of its own, and Spark's compiled-code cache is keyed by that
loader, so every features task (a new client session, and a new session again for its streaming query) compiled the
same ~44 classes of generated code anew: 0.8-1.6 s of Janino per task before the JIT compiled them again
(benchmarks/features/RESULTS.md, "2026-12-05 (evening)"). Served by the plugin, a session takes the server's
setting (false, as stack.sh passes it and as Spark defaults it): it gets a class loader of its own only once it adds
classes or jars, and otherwise compiles against the server's shared one, so a task reuses what the tasks before it
compiled. Artifact isolation itself stays on.

Run by spark-submit, not by hand: `python -m tidal.spark_connect_server` alone would start a local Spark without the
plugin.
"""

from __future__ import annotations

import signal
import sys
import threading


# The driver plugin that serves Spark Connect (scripts/stack.sh passes it as spark.plugins, read from here).
CONNECT_PLUGIN = "org.apache.spark.sql.connect.SparkConnectPlugin"


def main() -> int:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    conf = spark.sparkContext.getConf()
    if CONNECT_PLUGIN not in conf.get("spark.plugins", ""):
        spark.stop()
        print(f"tidal Spark Connect server: spark.plugins lacks {CONNECT_PLUGIN}; start it with scripts/stack.sh up "
              "spark", file=sys.stderr)
        return 2
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopping.set())
    print(f"tidal Spark Connect server: Spark {spark.version} serving Spark Connect on "
          f"{conf.get('spark.connect.grpc.binding.address', '?')}:{conf.get('spark.connect.grpc.binding.port', '?')}",
          flush=True)
    stopping.wait()
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
