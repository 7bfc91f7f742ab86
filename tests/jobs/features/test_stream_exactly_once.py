"""features: exactly once across SIGKILL. The job runs as its own process (`python -m jobs.features`), is killed at
several points of a micro-batch, rerun, and its final state compared with an uninterrupted run on the same files;
the online store too (both runs write one real Valkey, each under its own namespace)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, write_params


FILES = 3
EVENTS_PER_FILE = 30


def landing_files() -> dict[str, bytes]:
    """Three small files (one micro-batch each), with duplicates across files, a bad line and a zero-byte file."""
    files = {}
    for f in range(FILES):
        lines = [json.dumps({"event_id": f"f{f}-e{j}", "user_id": f"u{(f * 7 + j) % 11}", "item_id": f"i{j % 9}",
                             "event_type": ("view", "click", "purchase")[j % 3], "value": j / 10,
                             "event_time": f"2026-11-01T{f * 3 + j % 3:02d}:{j:02d}:00Z"}) for j in range(EVENTS_PER_FILE)]
        if f > 0:  # the same event delivered again in a later file
            lines.append(json.dumps({"event_id": f"f{f - 1}-e0", "user_id": "u0", "item_id": "i0", "event_type": "view",
                                     "event_time": "2026-11-01T00:00:00Z"}))
        lines.append('{"event_id": "broken", ')
        files[f"events-{f:06d}.jsonl"] = ("\n".join(lines) + "\n").encode()
    files["events-000099.jsonl"] = b""
    return files


def make_home(root: Path, online_url: str, namespace: str) -> dict[str, str]:
    home = root / "home"
    landing = home / "landing" / "events"
    landing.mkdir(parents=True)
    for i, (name, data) in enumerate(landing_files().items()):
        path = landing / name
        path.write_bytes(data)
        # Distinct modification times so the file source takes them in the same order every run.
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
    params = write_params(root / "params.yaml", {"features": {"max_files_per_trigger": 1}})
    return {**os.environ, "TIDAL_HOME": str(home), "TIDAL_PARAMS": str(params), "PYTHONPATH": str(REPO_ROOT),
            "TIDAL_REDIS_URL": online_url, "TIDAL_REDIS_NAMESPACE": namespace}


def start_job(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.features.stream", "--run-id", "exactly-once"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen, condition, timeout_s: float = 120) -> bool:
    """SIGKILL the job as soon as `condition()` holds; False if the job ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("kill condition never held")


def manifests(home: Path) -> dict[int, dict]:
    return {int(p.stem): json.loads(p.read_text()) for p in (home / "features" / "state" / "batches").glob("*.json")}


def final_state(home: Path) -> dict[str, pd.DataFrame]:
    """What downstream readers see, sorted so two runs compare row for row."""
    bronze = pd.read_parquet(home / "bronze" / "events")
    bronze["event_date"] = bronze["event_date"].astype(str)
    bronze["batch_id"] = bronze["batch_id"].astype(int)
    examples = pd.concat([pd.read_parquet(p) for p in sorted((home / "features" / "examples").glob("batch_id=*"))
                          if (p / "_SUCCESS").exists()])
    # One folder per batch id; each file carries its batch_id column too.
    quarantine = pd.concat([pd.read_parquet(p) for p in sorted((home / "quarantine" / "events").glob("batch_id=*"))])
    return {
        "bronze": bronze.drop(columns=["source_file"]).sort_values("event_id").reset_index(drop=True),
        "examples": examples.sort_values("event_id").reset_index(drop=True),
        "quarantine": quarantine.drop(columns=["source_file"]).astype({"batch_id": int})
        .sort_values(["batch_id", "line_number"]).reset_index(drop=True),
    }


@pytest.fixture(scope="module")
def online_server(tmp_path_factory):
    from tests.conftest import ValkeyServer

    server = ValkeyServer(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


def online_keys(url: str, namespace: str) -> dict:
    from tidal.online_store import connect, dump_namespace
    from tidal.config import online_store_settings

    settings = online_store_settings(url, namespace)
    return dump_namespace(connect(settings), settings)


@pytest.fixture(scope="module")
def reference_run(spark, tmp_path_factory, online_server):
    """The same files, processed by one uninterrupted run (in process, on the session's Spark)."""
    from jobs.features.stream import run_features
    from tidal.config import load_settings

    env = make_home(tmp_path_factory.mktemp("uninterrupted"), online_server.url, "uninterrupted")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("TIDAL_HOME", "TIDAL_PARAMS", "TIDAL_REDIS_URL", "TIDAL_REDIS_NAMESPACE"):
            mp.setenv(name, env[name])
        summary = run_features(load_settings())
    return Path(env["TIDAL_HOME"]), summary


def test_sigkill_at_several_points_then_rerun_matches_an_uninterrupted_run(reference_run, online_server, tmp_path):
    ref_home, ref_summary = reference_run
    # One batch per file, then one for the zero-byte file (listed by the source, read as no rows; the ledger
    # quarantined it in batch 0 already).
    assert ref_summary["batch_ids"] == list(range(FILES + 1))
    assert ref_summary["online_store"]["batches_written"] == FILES + 1
    env = make_home(tmp_path, online_server.url, "killed")
    home = Path(env["TIDAL_HOME"])
    examples_dir = home / "features" / "examples"

    def mid_batch() -> bool:
        # A batch has written its examples but not yet its manifest: killed in the middle of the micro-batch.
        done = manifests(home)
        return any(p.name.split("=")[1].isdigit() and int(p.name.split("=")[1]) not in done
                   for p in examples_dir.glob("batch_id=*"))

    kills = []
    # 1: right after batch 0's manifest, before Spark commits the batch (the replay must overwrite, not append).
    kills.append(kill_when(start_job(env), lambda: 0 in manifests(home)))
    # 2: in the middle of the next batch's writes.
    kills.append(kill_when(start_job(env), mid_batch))
    # 3: after a random delay (seeded, so a failure can be replayed).
    proc = start_job(env)
    delay = random.Random(4).uniform(3.0, 15.0)
    started = time.monotonic()
    kills.append(kill_when(proc, lambda: time.monotonic() - started > delay))
    assert kills[:2] == [True, True], "the job must have been killed at the two deterministic points"

    final = start_job(env)
    out, _ = final.communicate(timeout=180)
    assert final.returncode == 0, out.decode()[-3000:]
    assert_same_as_uninterrupted(home, ref_home, online_server.url, "killed")


def assert_same_as_uninterrupted(home: Path, ref_home: Path, online_url: str, namespace: str) -> None:
    """A home whose job was killed and rerun holds what the uninterrupted run left: counts, reasons, every event
    once with the same values, no stale partial output, the same online-store keys."""
    examples_dir = home / "features" / "examples"
    # How a restarted stream cuts the files into micro-batches can differ from the uninterrupted run (after a kill
    # Spark may plan two files into one batch), so compare totals and per-event content, not batch composition.
    got, want = manifests(home), manifests(ref_home)
    for key in ("landed", "accepted", "quarantined", "duplicates"):
        assert sum(m[key] for m in got.values()) == sum(m[key] for m in want.values()), key
    files = sorted(Path(f).name for m in got.values() for f in m["files"])
    assert files == sorted(Path(f).name for m in want.values() for f in m["files"])  # each file in exactly one batch
    reasons = {}
    for m in got.values():
        for r, n in m["quarantine_reasons"].items():
            reasons[r] = reasons.get(r, 0) + n
    assert reasons == {"empty_file": 1, "malformed_json": FILES}
    landed = sum(m["landed"] for m in got.values())
    assert landed == FILES * (EVENTS_PER_FILE + 1) + (FILES - 1) + 1  # events + bad lines + re-sent events + empty file
    assert landed == sum(m["accepted"] + m["quarantined"] + m["duplicates"] for m in got.values())
    assert sum(m["duplicates"] for m in got.values()) == FILES - 1

    # Content: no event lost, none written twice, the same per-event values as the uninterrupted run.
    state, ref_state = final_state(home), final_state(ref_home)
    assert state["bronze"]["event_id"].is_unique and len(state["bronze"]) == FILES * EVENTS_PER_FILE
    per_event = ["event_id", "user_id", "item_id", "event_type", "value", "event_time", "event_weight"]
    # Batch composition may differ after a kill (see above), so the batch columns are compared only
    # for consistency: each row's ingest_batch_id is the folder it was written to (nothing was compacted here).
    assert (state["bronze"]["ingest_batch_id"] == state["bronze"]["batch_id"]).all()
    batch_columns = ["batch_id", "ingest_batch_id"]
    pd.testing.assert_frame_equal(state["bronze"].drop(columns=batch_columns),
                                  ref_state["bronze"].drop(columns=batch_columns), check_dtype=False, obj="bronze")
    pd.testing.assert_frame_equal(state["examples"][per_event], ref_state["examples"][per_event], check_dtype=False,
                                  obj="examples")
    quarantine_cols = ["line_number", "quarantine_reason", "raw_record"]
    pd.testing.assert_frame_equal(
        state["quarantine"][quarantine_cols].sort_values(quarantine_cols[:1] + ["raw_record"]).reset_index(drop=True),
        ref_state["quarantine"][quarantine_cols].sort_values(quarantine_cols[:1] + ["raw_record"]).reset_index(drop=True),
        check_dtype=False, obj="quarantine")
    # The stale partial output of killed attempts was replaced, not left beside the replay.
    assert all((p / "_SUCCESS").exists() for p in examples_dir.glob("batch_id=*"))
    assert sorted(int(p.name.split("=")[1]) for p in examples_dir.glob("batch_id=*")) == sorted(got)
    # The online store: exactly the keys and values of the uninterrupted run (namespaces aside), not empty.
    want_keys = {k.split(":", 1)[1]: v for k, v in online_keys(online_url, "uninterrupted").items()}
    got_keys = {k.split(":", 1)[1]: v for k, v in online_keys(online_url, namespace).items()}
    assert len(want_keys) == 11 + 9 + 1 and got_keys == want_keys  # users, items, the popular-now ranking
