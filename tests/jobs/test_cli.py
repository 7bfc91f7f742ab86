"""The `tidal` command line: `tidal cycle --json` runs every step without Airflow and prints one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tidal.pipelines import INCREMENTAL


STEP_ORDER = INCREMENTAL.step_names


def tidal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, cwd=REPO_ROOT)


@pytest.mark.stack
def test_cycle_json_runs_all_steps_and_prints_only_json(tidal_env, s3_env):
    settings = tidal_env()
    assert tidal("generate", "--files", "2", "--bad-fraction", "0.02").returncode == 0
    proc = tidal("cycle", "--json", "--run-id", "cli-test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout holds the JSON and nothing else; progress went to stderr
    assert list(result["steps"]) == list(STEP_ORDER) and set(result["seconds"]) == set(STEP_ORDER)
    features = result["steps"]["features"]
    assert features["files"] == 2 and features["landed"] == 2 * settings.params.generate.events_per_file
    assert features["landed"] == features["accepted"] + features["quarantined"] + features["duplicates"]
    assert features["quarantined"] > 0 and set(features["quarantine_reasons"]) <= {
        "malformed_json", "missing_user_id", "wrong_type_value", "unknown_event_type", "future_event_time"}
    assert result["steps"]["gate"]["passed"] is True
    assert result["steps"]["promote"]["version"] == "v000001"
    assert result["steps"]["version"]["status"] == "pushed"
    assert "[cycle] features" in proc.stderr


def test_unknown_command_and_bad_params_are_refused_before_any_work(tidal_env, tmp_path):
    settings = tidal_env()
    unknown = tidal("retrain-everything")
    assert unknown.returncode == 2 and "unknown command" in unknown.stderr
    settings = tidal_env({"train": {"learning_rate_typo": 0.1}})
    proc = tidal("cycle")
    assert proc.returncode != 0 and "learning_rate_typo" in proc.stderr
    assert not (settings.home / "checkpoints").exists()  # refused before the features job touched anything


def test_help_lists_every_step():
    proc = tidal("--help")
    assert proc.returncode == 0
    for step in STEP_ORDER:
        assert step in proc.stdout
