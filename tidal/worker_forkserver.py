"""A fork server for the Spark Connect server's foreachBatch worker: each features task's worker is forked from a
Python process that has already imported pyspark's Connect client, instead of a new interpreter importing it again.

Why: on Spark Connect, every streaming query with a Python foreachBatch callback (one per features task) makes the
server start `python -m pyspark.sql.connect.streaming.worker.foreach_batch_worker` as a new process (Spark's
StreamingPythonRunner never uses its worker daemon). That interpreter spends most of its start importing pyspark's
Connect client (pandas, pyarrow, grpc): a trivial callback's query took 0.90-1.07 s to start on the stack's 2 cores,
0.30-0.38 s with its worker forked from here (benchmarks/features/RESULTS.md, "2026-12-05 (evening): the
foreachBatch worker forked").

How: `scripts/stack.sh up spark` starts `serve` beside the server, in the server's session, and points the server's
PYSPARK_PYTHON at a two-line shell script that runs `launch`. Spark starts every Python process through that
script; `launch` hands the foreachBatch worker's arguments, environment, working folder and standard streams to the
fork server over a Unix socket, and relays the forked worker's exit status (and a SIGTERM from Spark) until it ends.
Anything else Spark starts (a UDF's worker daemon), and every start while the fork server is not answering, runs
the real interpreter exactly as before (`os.execv`), so the fork server is an optimisation, never a dependency.

What is pre-imported is third-party only (pyspark, pandas, pyarrow, grpc): tidal's own modules are imported by each
forked worker when it unpickles the callback, so a changed checkout is picked up by the next task, as before. The
fork server starts no thread before it forks (it checks), and the socket is in Linux's abstract namespace and
answers only processes of its own user (SO_PEERCRED): a worker runs with the environment it is handed, which is as
powerful as running a command as that user.

`launch` runs as `python -I -S <this file> launch ...`: standard library only, no site-packages, a start of a few
milliseconds. Keep this module's top-level imports to the standard library.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import struct
import sys
from typing import Any

# The one module the fork server runs: Spark Connect's foreachBatch worker. Anything else is refused, and the
# launcher then runs it with the real interpreter.
FOREACH_BATCH_WORKER = "pyspark.sql.connect.streaming.worker.foreach_batch_worker"
# Imported once by the fork server. pyspark.sql.connect.session pulls in pandas, pyarrow and grpc (pyspark checks
# them when its Connect client is imported).
PRELOAD = ("pyspark.sql.connect.session", FOREACH_BATCH_WORKER)
# Set before the imports: fork copies only the calling thread, so a library that starts threads on import (numpy's
# OpenBLAS pool, pyarrow's jemalloc purging thread) would leave each forked worker with locks nobody can release.
# The worker does no numeric work: one BLAS thread and jemalloc purging on the allocating thread lose it nothing.
SINGLE_THREADED_IMPORTS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                           "JE_ARROW_MALLOC_CONF": "background_thread:false"}
MAX_REQUEST_BYTES = 1 << 20


def _address(name: str) -> str:
    return "\0" + name


def _send_message(conn: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    payload = struct.pack("!I", len(body)) + body
    if fds:
        conn.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        conn.sendall(payload)


def _receive_message(conn: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One length-prefixed JSON message and the file descriptors that came with it; (None, []) at end of stream."""
    header, fds = b"", []
    while len(header) < 4:
        data, ancillary, _, _ = conn.recvmsg(4 - len(header), socket.CMSG_SPACE(3 * array.array("i").itemsize))
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", raw[: len(raw) - len(raw) % array.array("i").itemsize]))
        if not data:
            for fd in fds:
                os.close(fd)
            return None, []
        header += data
    (length,) = struct.unpack("!I", header)
    if length > MAX_REQUEST_BYTES:
        raise ValueError(f"message of {length} bytes refused (at most {MAX_REQUEST_BYTES})")
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            return None, fds
        body += chunk
    return json.loads(body), fds


# --- launch: what Spark runs as its Python (standard library only) -------------------------------------------------

def launch(name: str, real_python: str, args: list[str]) -> int:
    """Run `python args...` for Spark: forked by the fork server when it serves that module and answers, else the
    real interpreter in this process's place. Returns the worker's exit status. Every `-m MODULE` start is offered
    to the fork server, which refuses what it does not serve."""
    if len(args) < 2 or args[0] != "-m":
        os.execv(real_python, [real_python, *args])
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(_address(name))
        _send_message(conn, {"args": args, "env": dict(os.environ), "cwd": os.getcwd()}, [0, 1, 2])
        reply, _ = _receive_message(conn)
    except (OSError, ValueError):
        reply = None
    if not reply or "pid" not in reply:
        conn.close()
        os.execv(real_python, [real_python, *args])
    child = reply["pid"]

    def forward(signum, _frame):
        # Spark stops a worker by terminating the process it started: this one. The worker must go with it.
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    ended, _ = _receive_message(conn)  # a forwarded signal does not interrupt it (PEP 475)
    # The fork server reports the status as a shell would: the exit code, or 128 + the signal that ended it. No
    # report (the fork server itself died) reads as a failure.
    return ended["status"] if ended else 1


# --- serve: the fork server ----------------------------------------------------------------------------------------

def _run_child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the worker `python -m MODULE` would have been, then run it. Never returns."""
    import runpy
    import traceback

    code = 1
    try:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # `python -m` puts the working folder first, then PYTHONPATH's entries: Spark's PYTHONPATH for the worker
        # may name folders the fork server's path lacks.
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
        sys.path[:0] = [os.getcwd(), *extra]
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        module = request["args"][1]
        sys.argv = [module, *request["args"][2:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - the worker's own failure, reported on its stderr as python would
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _thread_count() -> int:
    """Threads of this process, native ones included (/proc/self/task): fork copies only the calling thread."""
    return len(os.listdir("/proc/self/task"))


def serve(name: str, preload: tuple[str, ...] = PRELOAD, allowed: tuple[str, ...] = (FOREACH_BATCH_WORKER,)) -> int:
    """Pre-import `preload`, then fork a worker for every launcher that asks for one of `allowed` until SIGTERM."""
    import importlib

    os.environ.update(SINGLE_THREADED_IMPORTS)
    for module in preload:
        importlib.import_module(module)
    if _thread_count() != 1:
        print(f"worker fork server: importing {preload} started threads ({_thread_count()}); not serving, so Spark "
              "starts its workers as before", file=sys.stderr, flush=True)
        return 1
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(_address(name))
    listener.listen(16)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    # A worker's exit wakes the loop at once (its launcher, and so Spark, is waiting for the status).
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    print(f"worker fork server: serving {allowed} on @{name} (pid {os.getpid()})", file=sys.stderr, flush=True)
    # pid -> its launcher's connection; None once the launcher has gone and the worker was killed, until it is reaped.
    children: dict[int, socket.socket | None] = {}
    while not stopping:
        launchers = [c for c in children.values() if c is not None]
        ready, _, _ = select.select([listener, wake_read, *launchers], [], [], 5.0)
        for conn in ready:
            if conn == wake_read:
                os.read(wake_read, 512)
            elif conn is listener:
                _accept(listener, children, allowed, (wake_read, wake_write))
            else:
                # A launcher's connection readable means it went away (it sends nothing after its request): its
                # worker must not outlive the process Spark knows it by.
                pid = next(p for p, c in children.items() if c is conn)
                children[pid] = None  # nobody is left to tell its status; no longer watched, so killed once
                conn.close()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _reap(children)
    listener.close()
    for fd in (wake_read, wake_write):
        os.close(fd)
    return 0


def _accept(listener: socket.socket, children: dict[int, socket.socket | None], allowed: tuple[str, ...],
            server_fds: tuple[int, ...]) -> None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        conn.settimeout(5)
        request, fds = _receive_message(conn)
        conn.settimeout(None)
        args = (request or {}).get("args") or []
        if uid != os.getuid() or len(fds) != 3 or len(args) < 2 or args[0] != "-m" or args[1] not in allowed:
            _send_message(conn, {"refused": f"only {allowed} for uid {os.getuid()}, with three streams"})
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            for fd in server_fds:
                os.close(fd)
            listener.close()
            for other in children.values():
                if other is not None:
                    other.close()
            conn.close()
            _run_child(request, fds)
        _send_message(conn, {"pid": pid})
        children[pid] = conn
    except (OSError, ValueError) as err:
        print(f"worker fork server: a launch failed ({err}); that launcher runs the real interpreter",
              file=sys.stderr, flush=True)
        conn.close()
    finally:
        for fd in fds:
            os.close(fd)


def _reap(children: dict[int, socket.socket | None]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        try:
            _send_message(conn, {"status": code})
        except OSError:
            pass
        conn.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["launch"] and len(argv) >= 3:
        return launch(argv[1], argv[2], argv[3:])
    if argv[:1] == ["serve"] and len(argv) == 2:
        return serve(argv[1])
    print("usage: worker_forkserver.py serve NAME | launch NAME REAL_PYTHON ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
