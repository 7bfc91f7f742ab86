"""scripts/stack.sh and the warm Spark: `up spark` starts a Spark Connect server on loopback at TIDAL_SPARK_PORT, a new
shell gets TIDAL_SPARK_REMOTE, and the features job run through it (as a task would: its own process, twice, new
files landing in between) gives what a local Spark gives for the same landing files: the same bronze rows,
examples, quarantine with reasons, and counts. The server's foreachBatch worker imports the venv's compiled
pyspark, and is forked by the worker fork server in the server's session (tidal/worker_forkserver.py). The job's
process starts no JVM (it runs with no Java at all) and both runs reach the one server (tidal/spark_connect_server.py),
whose pid stays the same, and the second reuses most of the code the first compiled; `down` stops it and the fork
server, and the next env has no remote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pyspark
import pytest

from tests.conftest import REPO_ROOT, write_params
from tests.jobs.features.test_stream_exactly_once import EVENTS_PER_FILE, FILES, final_state, landing_files, manifests
from tests.scripts.stack_run import free_ports, sourced, stack, stack_dir_env
from tidal.spark import CODEGEN_CACHE_ENTRIES, JVM_JAR, JVM_OPTIONS


# The job's environment with a Java that does not exist (spark-submit runs $JAVA_HOME/bin/java when it is set): a
# local Spark cannot start there, a Connect client needs none.
NO_JAVA = {"JAVA_HOME": "/nonexistent-java"}


def land(home: Path, names: list[str]) -> None:
    """Land some of the shared files, with the modification times every home gives them (the same order)."""
    landing = home / "landing" / "events"
    landing.mkdir(parents=True, exist_ok=True)
    for i, (name, data) in enumerate(landing_files().items()):
        if name in names:
            (landing / name).write_bytes(data)
            os.utime(landing / name, (1_700_000_000 + i, 1_700_000_000 + i))


def job_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TIDAL_SPARK_REMOTE", "SPARK_REMOTE", "TIDAL_REDIS_URL")}
    root.mkdir(parents=True, exist_ok=True)
    params = write_params(root / "params.yaml", {"features": {"max_files_per_trigger": 1}})
    return {**env, "TIDAL_HOME": str(root / "home"), "TIDAL_PARAMS": str(params), "PYTHONPATH": str(REPO_ROOT), **extra}


def run_job(env: dict[str, str], run_id: str) -> tuple[dict, float]:
    """`python -m jobs.features.stream` as a task runs it: its summary, and its wall time in seconds."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jobs.features.stream", "--run-id", run_id], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((Path(env["TIDAL_HOME"]) / "reports" / "runs" / run_id / "features.json").read_text())
    return summary, time.monotonic() - started


def two_task_runs(env: dict[str, str], between=lambda: None) -> list[dict]:
    """The first files, one run; the last file and the zero-byte one land; a second run. `between` is called before
    the first run, between the two and after the second."""
    names = list(landing_files())
    home = Path(env["TIDAL_HOME"])
    land(home, names[:2])
    between()
    first, _ = run_job(env, "first")
    between()
    land(home, names[2:])
    second, _ = run_job(env, "second")
    between()
    return [first, second]


def foreach_batch_worker(url: str, folder: Path) -> dict:
    """The server's foreachBatch worker as its callback sees it: where it imported pyspark from, its parent process,
    its session. A one-file stream whose callback, which runs in that worker, writes them down. A process of its own,
    since a Connect client process cannot be a local driver afterwards."""
    folder.mkdir(parents=True)
    (folder / "in").mkdir()
    (folder / "in" / "one.jsonl").write_text("{}\n")
    script = f"""
from pyspark.sql import SparkSession
spark = SparkSession.builder.remote({url!r}).getOrCreate()
def record(batch, batch_id):
    import json, os, pyspark
    worker = {{"pyspark_file": pyspark.__file__, "ppid": os.getppid(), "sid": os.getsid(0)}}
    open({str(folder / "worker.json")!r}, "w").write(json.dumps(worker))
(spark.readStream.format("text").load({str(folder / "in")!r}).writeStream.foreachBatch(record)
 .option("checkpointLocation", {str(folder / "checkpoint")!r}).trigger(availableNow=True).start().awaitTermination())
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "worker.json").read_text())


def classes_compiled(pid: int) -> int:
    """How many classes of generated code Spark's cache holds in the JVM `pid`: Janino loads each class it compiles
    through a class loader of its own, and the cache (up to tidal.spark.CODEGEN_CACHE_ENTRIES) keeps them all alive.
    Read with the JDK's jcmd."""
    done = subprocess.run(["jcmd", str(pid), "VM.classloader_stats"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return sum(line.rstrip().endswith(".ByteArrayClassLoader") for line in done.stdout.splitlines())


@pytest.mark.stack
def test_features_through_the_stacks_spark_connect_equal_a_local_spark_and_start_no_jvm(private_stack, tmp_path):
    ports = free_ports()
    env = stack_dir_env(private_stack, **ports)
    started = stack("up", "spark", env=env, timeout=300)
    assert started.returncode == 0, started.stderr
    url = f"sc://127.0.0.1:{ports['TIDAL_SPARK_PORT']}"
    assert sourced(stack_dir_env(private_stack), "TIDAL_SPARK_REMOTE")["TIDAL_SPARK_REMOTE"] == url
    assert f"Spark Connect at {url}" in stack("status", env=env).stdout
    server = psutil.Process(int((private_stack / "pids" / "spark.pid").read_text()))
    listening = {(c.laddr.ip, c.laddr.port) for c in server.net_connections("tcp") if c.status == "LISTEN"}
    # gRPC on the stack's port; the driver's own RPC and block ports are ephemeral, loopback too.
    assert ("127.0.0.1", int(ports["TIDAL_SPARK_PORT"])) in {(ip.removeprefix("::ffff:"), p) for ip, p in listening}
    assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}
    # A server runs batch after batch: it keeps their compiled code (tidal.spark.CODEGEN_CACHE_ENTRIES says why).
    assert f"spark.sql.codegen.cache.maxEntries={CODEGEN_CACHE_ENTRIES}" in server.cmdline()
    # tidal's jar (the event line reader) and its JVM options (tidal.spark.JVM_OPTIONS says why).
    assert str(JVM_JAR) in server.cmdline() and JVM_OPTIONS in server.cmdline()

    # The foreachBatch worker the server starts for every features task imports the venv's compiled pyspark, not the
    # wheel's pyspark.zip (no bytecode in it: 1.6 s of imports per task instead of 0.65 s; scripts/stack.sh says why).
    worker = foreach_batch_worker(url, tmp_path / "worker")
    assert Path(worker["pyspark_file"]) == Path(pyspark.__file__)
    # ... forked by the fork server, which runs in the server's session (so `down` stops it), not started anew by the
    # JVM (0.6-0.7 s of imports per task; tidal/worker_forkserver.py says why).
    forkserver = psutil.Process(worker["ppid"])
    assert forkserver.cmdline()[1:4] == ["-m", "tidal.worker_forkserver", "serve"], forkserver.cmdline()
    assert worker["sid"] == os.getsid(forkserver.pid) == os.getsid(server.pid)

    local_env = job_env(tmp_path / "local")
    # Without Java a local session cannot start: the check below, that the Connect runs need none, can fail.
    refused = subprocess.run([sys.executable, "-m", "jobs.features.stream", "--run-id", "nojava"], cwd=REPO_ROOT,
                             env={**local_env, **NO_JAVA}, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    local = two_task_runs(local_env)
    compiled = []
    connect = two_task_runs(job_env(tmp_path / "connect", TIDAL_SPARK_REMOTE=url, **NO_JAVA),
                            between=lambda: compiled.append(classes_compiled(server.pid)))
    assert server.is_running() and int((private_stack / "pids" / "spark.pid").read_text()) == server.pid
    # Each task is a new client session, and its streaming query a new session again. The second task reuses what
    # the first compiled and compiles only the few stages that hold its own constants (its batch ids, its clock): the
    # stack's server does not give each session a class loader of its own (tidal/spark_connect_server.py says why).
    # Measured (two micro-batches per task here): 169 then 29 classes; 171 then 64 on the wheel's SparkConnectServer
    # main, 171 then 164 without tidal.spark.CONNECT_SESSION_CONF there.
    first_task, second_task = compiled[1] - compiled[0], compiled[2] - compiled[1]
    assert first_task > 100 and second_task < 0.25 * first_task, (first_task, second_task)

    # The summaries each task run reports: batches, files, counts and quarantine reasons, run for run.
    keep = ("batch_ids", "files", "landed", "accepted", "quarantined", "quarantine_reasons", "duplicates",
            "lines_read_by_line_reader", "outlier_events_excluded", "outlier_users")
    assert [{k: s[k] for k in keep} for s in connect] == [{k: s[k] for k in keep} for s in local]
    # The server has tidal's event line reader (`make jvm`, passed by --jars): it read every well-formed event.
    assert sum(s["lines_read_by_line_reader"] for s in connect) >= FILES * EVENTS_PER_FILE
    assert [s["batch_ids"] for s in local] == [[0, 1], [2, 3]]  # the second run made batches: not a replay of nothing
    assert sum(s["landed"] for s in connect) == FILES * (EVENTS_PER_FILE + 1) + (FILES - 1) + 1
    assert {r: sum(s["quarantine_reasons"].get(r, 0) for s in connect) for r in ("empty_file", "malformed_json")} == \
        {"empty_file": 1, "malformed_json": FILES}
    # The batch manifests the callback wrote on the server, field for field (paths aside).
    paths = ("files", "examples_path")
    got, want = manifests(tmp_path / "connect" / "home"), manifests(tmp_path / "local" / "home")
    assert sorted(got) == sorted(want) == [0, 1, 2, 3]
    for b in want:
        assert {k: v for k, v in got[b].items() if k not in paths} == {k: v for k, v in want[b].items() if k not in paths}
        assert [Path(f).name for f in got[b]["files"]] == [Path(f).name for f in want[b]["files"]]
    # What downstream readers see: bronze, examples with every feature, quarantine with raw records and reasons.
    state, ref = final_state(tmp_path / "connect" / "home"), final_state(tmp_path / "local" / "home")
    assert len(state["bronze"]) == FILES * EVENTS_PER_FILE and state["bronze"]["event_id"].is_unique
    for name in ("bronze", "examples", "quarantine"):
        assert list(state[name].columns) == list(ref[name].columns), name
        pd.testing.assert_frame_equal(state[name], ref[name], check_dtype=False, obj=name)

    assert stack("down", env=env, timeout=180).returncode == 0
    for process in (server, forkserver):
        assert not psutil.pid_exists(process.pid) or process.status() == psutil.STATUS_ZOMBIE
    assert "spark: stopped" in stack("status", env=env).stdout
    # The next `up` of another component no longer points jobs at the stopped server.
    assert stack("up", "valkey", env=env).returncode == 0
    assert sourced(stack_dir_env(private_stack), "TIDAL_SPARK_REMOTE")["TIDAL_SPARK_REMOTE"] == ""
