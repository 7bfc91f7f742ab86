"""tidal cycle (jobs/cycle.py): with nothing landed a cycle is idle and runs no step; bad hyperparameters are refused
before anything is read. A full cycle through every step: tests/jobs/test_cli.py."""

from __future__ import annotations

import pytest

from jobs.cycle import run_cycle
from tidal.config import ConfigError
from tidal.storage import StorageLayout


def test_a_cycle_with_nothing_landed_is_idle_and_writes_no_step_summary(tidal_env):
    settings = tidal_env()
    lines: list[str] = []
    result = run_cycle(settings, "idle-run", log=lines.append)
    assert result["idle"] is True and result["steps"] == {} and result["landing"]["idle"] is True
    assert lines == [f"[cycle] idle: no new landing files in {StorageLayout(settings.home).landing_events}; nothing to do"]
    assert not StorageLayout(settings.home).run_reports("idle-run").exists()


def test_bad_hyperparameters_are_refused_before_any_work(tidal_env):
    settings = tidal_env({"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match="params.yaml train: unknown keys \\['epochz'"):
        run_cycle(settings, "bad")
    assert not (StorageLayout(settings.home).root / "landing").exists()
