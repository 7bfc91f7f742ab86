"""The full retrain over 2 processes (torch.distributed, gloo, torchrun) against the single-process retrain:
same data, same config, same held-out metrics; its checkpoint is an ordinary one that a single process
fine-tunes; bad settings and a failing process are refused with a message; nothing listens off loopback."""
import subprocess
import threading
import time

import numpy as np
import pytest
import torch

from models.distributed import train_distributed
from models.metrics import evaluate_window
from models.recommender import Checkpoint, TrainConfig, train
from models.synthetic import synthetic_stream

pytestmark = pytest.mark.slow

CFG = TrainConfig(dim=16, epochs=3, batch_size=256, negatives=64, seed=3)
# Stated tolerance: DDP averages the two shards' mean losses, which equals the batch mean up to float rounding
# (and a last, odd-sized batch), so the metrics must agree to 0.005 and the losses to 1e-4.
METRIC_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def data():
    interactions, items = synthetic_stream(n_users=200, n_items=150, n_events=8000, seed=1)
    return interactions.iloc[:6500], interactions.iloc[6500:], items


@pytest.fixture(scope="module")
def single(data):
    history, _, items = data
    torch.set_num_threads(1)
    return train(history, cfg=CFG, items=items)


@pytest.fixture(scope="module")
def distributed(data, tmp_path_factory):
    history, _, items = data
    lines: list[str] = []
    result = train_distributed(history, cfg=CFG, processes=2, workdir=tmp_path_factory.mktemp("ddp"), items=items,
                               timeout_s=600, progress=lines.append)
    return result, lines


def test_two_processes_reach_the_single_process_metrics(data, single, distributed):
    history, held_out, _ = data
    result, lines = distributed
    assert result.finite and result.examples == single.examples == len(history)
    assert result.losses == pytest.approx(single.losses, abs=1e-4)
    assert result.losses[-1] < result.losses[0]
    mine, theirs = evaluate_window(result.checkpoint, history, held_out), evaluate_window(single.checkpoint, history,
                                                                                           held_out)
    assert mine["users"] == theirs["users"] > 0
    assert mine["recall_at_10"] == pytest.approx(theirs["recall_at_10"], abs=METRIC_TOLERANCE)
    assert mine["ndcg_at_10"] == pytest.approx(theirs["ndcg_at_10"], abs=METRIC_TOLERANCE)
    # The scores agree, not every weight: the category vectors and biases sit in a direction the score does not
    # see (every item's biases are item + mean category), where Adam turns summation-order rounding into drift.
    users, items = single.checkpoint.user_ids, single.checkpoint.item_ids
    assert np.abs(result.checkpoint.score(users, items) - single.checkpoint.score(users, items)).max() < 1e-3
    assert torch.allclose(result.checkpoint.weights["user"], single.checkpoint.weights["user"], atol=1e-4)
    # Rank 0 reports the epochs; the CPU is both processes'.
    assert any("[rank 0] epoch 3/3" in line for line in lines)
    assert result.train_cpu_s > 0


def test_its_checkpoint_loads_and_fine_tunes_in_one_process(data, distributed, tmp_path):
    history, held_out, items = data
    result, _ = distributed
    path = tmp_path / "model.pt"
    result.checkpoint.save(path)
    loaded = Checkpoint.load(path)
    assert loaded.user_ids == result.checkpoint.user_ids
    tuned = train(held_out.iloc[:800], cfg=CFG, init_from=loaded, anchor=loaded, replay=history, items=items)
    assert tuned.finite and len(tuned.losses) == CFG.finetune_epochs
    assert tuned.checkpoint.events_seen == loaded.events_seen + 800


@pytest.mark.parametrize("processes", [0, 1, 65, 2.5, "2"])
def test_a_bad_process_count_is_refused_before_any_work(data, tmp_path, processes):
    history, _, _ = data
    with pytest.raises(ValueError, match="processes must be an integer from 2 to 64"):
        train_distributed(history, cfg=CFG, processes=processes, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_failing_process_fails_the_retrain_with_its_output_and_what_to_do(data, tmp_path):
    history, _, _ = data
    bad = history.assign(timestamp="not a time")  # every process fails on the same bad input
    with pytest.raises(RuntimeError, match=r"distributed retrain failed \(torchrun exit 1\)(.|\n)*retrain.processes: 1"):
        train_distributed(bad, cfg=CFG, processes=2, workdir=tmp_path, timeout_s=300)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_every_socket_it_listens_on_is_loopback(data, tmp_path):
    """torchrun's rendezvous store would listen on every interface (pytorch/pytorch#173909); ours must not."""
    history, _, items = data
    seen: list[str] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True).stdout
            seen.extend(line for line in out.splitlines() if "models.distributed" in _cmdlines(line) or
                        "pt_elastic" in line)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        train_distributed(history.iloc[:3000], cfg=CFG, processes=2, workdir=tmp_path, items=items, timeout_s=600)
    finally:
        done.set()
        watcher.join()
    assert seen, "no listening socket of the distributed run was observed"
    local = {line.split()[3].rsplit(":", 1)[0] for line in seen}  # State Recv-Q Send-Q Local Peer
    assert local <= {"127.0.0.1"}, seen


def _cmdlines(ss_line: str) -> str:
    """The command lines of the processes an `ss -p` line names."""
    import re

    text = []
    for pid in re.findall(r"pid=(\d+)", ss_line):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                text.append(fh.read().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return " ".join(text)


def test_a_retrain_past_its_time_limit_is_stopped_with_every_process(data, tmp_path):
    """500 epochs cannot finish in 20 s, and by then the ranks run (torchrun starts each in its own session, so
    killing the launcher's group alone would leave them holding its output open: the call would never return)."""
    import dataclasses

    history, _, items = data
    lines: list[str] = []
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match="did not finish in 20 s"):
        train_distributed(history, cfg=dataclasses.replace(CFG, epochs=500), processes=2, workdir=tmp_path,
                          items=items, timeout_s=20, progress=lines.append)
    assert time.perf_counter() - started < 60
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", f"models.distributed (torchrun 2|rank) {tmp_path}"], capture_output=True,
                          text=True).stdout.split()
    assert left == [], f"processes left running: {left}"


def test_a_last_batch_of_one_row_is_trained_not_a_nan(data, tmp_path):
    """1025 examples in batches of 256: the last batch has 1 row, fewer than the 2 processes (each trains it
    whole); the others split evenly. Same losses as one process, so no shard's mean was over nothing."""
    history, _, items = data
    odd = history.iloc[:1025]
    one = train(odd, cfg=CFG, items=items)
    two = train_distributed(odd, cfg=CFG, processes=2, workdir=tmp_path, items=items, timeout_s=600)
    assert two.finite and two.losses == pytest.approx(one.losses, abs=1e-4)


def test_uneven_shards_weigh_each_row_once():
    from models.recommender import _my_rows

    batch = torch.arange(5)
    rows = [_my_rows(batch, rank, 2) for rank in (0, 1)]
    assert [r.tolist() for r, _ in rows] == [[0, 2, 4], [1, 3]]
    # mean_r(share_r * mean over shard r) == the batch mean, whatever the shard sizes
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    averaged = sum(share * values[r].mean() for r, share in rows) / 2
    assert float(averaged) == pytest.approx(float(values.mean()))
    rows, share = _my_rows(torch.arange(1), 1, 2)  # smaller than the group: every process trains it whole
    assert rows.tolist() == [0] and share == 1.0
