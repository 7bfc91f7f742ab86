"""A full retrain over several processes: torch.distributed (gloo, CPU) started with torchrun.

`train_distributed` is `models.recommender.train(..., init_from=None)` spread over `processes` processes: it writes
the inputs to a work folder, runs `torchrun --nproc-per-node N -m models.distributed <folder>` and reads back the
checkpoint that rank 0 wrote. Every process runs the same `train`; inside the process group its loop
(`recommender._fit`) wraps the model in DistributedDataParallel and takes every N-th row of each batch, so a step
is the single-process step up to float rounding. The checkpoint is an ordinary one: it loads and fine-tunes in a
single process.

Why processes and not threads: the model's per-batch tensors are small (a batch of 1024 x 64 floats), so intra-op
threads mostly wait on each other; separate processes each run a whole shard.

Everything binds to loopback: the rendezvous store on 127.0.0.1 and gloo on the `lo` interface.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from models.recommender import Checkpoint, TrainConfig, TrainResult, train

MAX_PROCESSES = 64
_RESULT = "result.json"
_CHECKPOINT = "checkpoint.pt"


def train_distributed(interactions: pd.DataFrame, *, cfg: TrainConfig, processes: int, workdir: str | Path,
                      items: pd.DataFrame | None = None, selection: np.ndarray | None = None,
                      threads_per_process: int = 1, timeout_s: float | None = None,
                      progress: Callable[[str], None] | None = None) -> TrainResult:
    """A full retrain on `processes` processes; same arguments and result as `train(..., init_from=None)`.

    workdir: an empty or new folder for the inputs and the checkpoint (the caller owns and removes it)."""
    if not isinstance(processes, int) or not 2 <= processes <= MAX_PROCESSES:
        raise ValueError(f"processes must be an integer from 2 to {MAX_PROCESSES} (1 is models.recommender.train), "
                         f"got {processes!r}")
    if len(interactions) == 0:
        raise ValueError("a full retrain needs at least one interaction")
    say = progress or (lambda _msg: None)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    interactions.reset_index(drop=True).to_parquet(work / "interactions.parquet", index=False)
    if items is not None:
        items.to_parquet(work / "items.parquet", index=False)
    if selection is not None:
        np.save(work / "selection.npy", np.asarray(selection, dtype=np.float64))
    (work / "config.json").write_text(json.dumps(asdict(cfg)))
    (work / "threads.json").write_text(json.dumps({"torch_threads": threads_per_process}))

    command = [sys.executable, "-m", "models.distributed", "torchrun", str(processes), str(work)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": _loopback_interface(), "OMP_NUM_THREADS": str(threads_per_process)}
    started = time.perf_counter()
    say(f"torchrun: {processes} processes x {threads_per_process} thread(s), gloo on {env['GLOO_SOCKET_IFNAME']}")
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        # The output is read to its end below, so the time limit is a timer that kills every process of the run.
        timer = threading.Timer(timeout_s, _kill_tree, (proc.pid,)) if timeout_s else None
        if timer:
            timer.start()
        tail: list[str] = []
        try:
            for line in proc.stdout:
                line = line.rstrip()
                tail = (tail + [line])[-20:]
                say(line)
            rc = proc.wait()
        finally:
            if timer:
                timer.cancel()
    if rc == -signal.SIGKILL and timeout_s:
        raise TimeoutError(f"distributed retrain did not finish in {timeout_s} s: stopped; its last lines:\n"
                           + "\n".join(tail))
    if rc != 0 or not (work / _RESULT).exists():
        raise RuntimeError(f"distributed retrain failed (torchrun exit {rc}); its last lines:\n" + "\n".join(tail)
                           + "\nRun with retrain.processes: 1 to train in one process.")
    result = json.loads((work / _RESULT).read_text())
    return TrainResult(checkpoint=Checkpoint.load(work / _CHECKPOINT), finite=result["finite"],
                       losses=result["losses"], train_cpu_s=result["train_cpu_s"], examples=result["examples"],
                       wall_s=time.perf_counter() - started)


def _kill_tree(pid: int) -> None:
    """SIGKILL the launcher and every process under it. torchrun starts each rank in a session of its own, so
    killing the launcher's process group would leave the ranks running and holding its output open."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _torchrun_on_loopback(processes: int, work: Path) -> None:
    """torchrun (`torch.distributed.run.main`) in this process, its rendezvous store listening on 127.0.0.1 only.

    torchrun's static rendezvous creates its TCPStore server on every interface whatever --master-addr says
    (pytorch/pytorch#173909). So this process first creates that server itself on a socket bound to 127.0.0.1
    (`master_listen_fd`), as a multi-tenant store: torchrun's own TCPStore for the same port, created later in
    this same process, then shares it instead of opening another."""
    from torch.distributed import TCPStore
    from torch.distributed.run import main as torchrun

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    store = TCPStore("127.0.0.1", port, None, True, wait_for_workers=False, multi_tenant=True,  # noqa: F841
                     master_listen_fd=listener.fileno())
    torchrun(["--nnodes", "1", "--nproc-per-node", str(processes), "--master-addr", "127.0.0.1",
              "--master-port", str(port), "-m", "models.distributed", "rank", str(work)])


def _loopback_interface() -> str:
    """The name of the loopback interface (lo on Linux), for gloo's GLOO_SOCKET_IFNAME."""
    for _, name in socket.if_nameindex():
        if name.startswith("lo"):
            return name
    return "lo"


def _run_rank(work: Path) -> None:
    """One process of the group: train on its shard of every batch; rank 0 writes the checkpoint, then the
    result file last (its presence means the checkpoint is complete)."""
    import torch.distributed as dist

    torch.set_num_threads(json.loads((work / "threads.json").read_text())["torch_threads"])
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        cfg = TrainConfig(**json.loads((work / "config.json").read_text()))
        interactions = pd.read_parquet(work / "interactions.parquet")
        items = pd.read_parquet(work / "items.parquet") if (work / "items.parquet").exists() else None
        selection = np.load(work / "selection.npy") if (work / "selection.npy").exists() else None
        say = (lambda msg: print(f"[rank 0] {msg}", flush=True)) if rank == 0 else None
        result = train(interactions, cfg=cfg, items=items, selection=selection, progress=say)
        if say:
            say(f"trained in {result.wall_s:.2f} s")  # without torchrun's start and the inputs' round trip
        # The CPU the retrain cost is every process's, not rank 0's alone.
        cpu = torch.tensor([result.train_cpu_s], dtype=torch.float64)
        dist.all_reduce(cpu)
        if rank == 0:
            result.checkpoint.save(work / _CHECKPOINT)
            summary = {"finite": result.finite, "losses": result.losses, "train_cpu_s": float(cpu.item()),
                       "examples": result.examples, "processes": dist.get_world_size()}
            tmp = work / f".{_RESULT}.tmp"
            tmp.write_text(json.dumps(summary))
            os.replace(tmp, work / _RESULT)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    # `torchrun N <folder>`: the launcher (train_distributed runs it); `rank <folder>`: one process, as torchrun
    # starts it.
    usage = "usage: python -m models.distributed {torchrun N | rank} <work folder>"
    if len(sys.argv) < 3 or not Path(sys.argv[-1]).is_dir():
        raise SystemExit(usage)
    if sys.argv[1] == "torchrun" and len(sys.argv) == 4:
        _torchrun_on_loopback(int(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1] == "rank" and len(sys.argv) == 3:
        _run_rank(Path(sys.argv[2]))
    else:
        raise SystemExit(usage)
