"""retrain: request checks (refused before any work), the Spark batch rebuild over a window, register-only, and an
incremental run that trained while a retrain promoted: its stale candidate is rejected and the next incremental
fine-tunes from the retrained model (real Spark local[1], GX, torch, DVC on the stack's SeaweedFS)."""

from __future__ import annotations

import pytest

from jobs.training.request import check_request
from tidal.config import ConfigError


@pytest.mark.parametrize("raw, message", [
    ({"history_days": -3, "reason": "x"}, "history_days: Input should be greater than or equal to 1"),
    ({"history_days": 0, "reason": "x"}, "greater than or equal to 1"),
    ({"history_days": "/data/bronze", "reason": "x"}, "looks like a path"),
    ({"history_days": "two weeks", "reason": "x"}, "not a whole number of days"),
    ({"reason": ""}, "needs a reason"),
    ({}, "reason: Field required"),
    ({"reason": "   "}, "needs a reason"),
    ({"reason": "see /etc/passwd"}, "looks like a path"),
    ({"reason": "x", "epochs": 0}, "epochs"),
    ({"reason": "x", "promote": "yolo"}, "promote"),
    ({"reason": "x", "surprise": 1}, "surprise"),
])
def test_bad_requests_are_refused_with_a_clear_message(tidal_env, raw, message):
    settings = tidal_env()
    with pytest.raises(ConfigError, match="refused before any work") as err:
        check_request(settings, raw)
    assert message in str(err.value)


def test_good_requests_take_params_yaml_defaults(tidal_env):
    settings = tidal_env({"retrain": {"history_days": 14, "promote": "register"}})
    assert check_request(settings, {"reason": " weekly "}) == {
        "history_days": 14, "epochs": None, "reason": "weekly", "promote": "register", "trigger": "manual"}
    assert check_request(settings, {"reason": "x", "history_days": "all", "promote": "auto"})["history_days"] is None
    assert check_request(settings, {"reason": "x", "history_days": "3", "epochs": 2})["history_days"] == 3


def sdk_run_type(value: str):
    """The run type as the task SDK hands it to a task (an enum whose str() is 'DagRunType.SCHEDULED')."""
    from airflow.sdk.api.datamodels._generated import DagRunType

    return DagRunType(value)


def test_scheduled_and_asset_runs_become_valid_requests_with_their_own_reason(tidal_env):
    from jobs.training.request import request_for_run

    settings = tidal_env({"retrain": {"history_days": 30}})
    assert str(sdk_run_type("scheduled")) == "DagRunType.SCHEDULED"  # why a substring test on str() never matched
    weekly = check_request(settings, request_for_run(sdk_run_type("scheduled"), {}, [], manual=False))
    assert (weekly["trigger"], weekly["history_days"]) == ("schedule", 30) and "periodic reset" in weekly["reason"]
    events = [{"extra": {"reason": "severe drift seen by tidal_incremental run scheduled__2026-12-01T10:00:00+00:00"},
               "source_dag_id": "tidal_incremental", "source_run_id": "scheduled__2026-12-01T10:00:00+00:00"},
              {"extra": {}, "source_dag_id": "tidal_incremental", "source_run_id": "manual__x"}]
    drift = check_request(settings, request_for_run(sdk_run_type("asset_triggered"), {}, events, manual=False))
    assert drift["trigger"] == "drift"
    assert drift["reason"] == ("severe drift in manual__x; "
                               "severe drift seen by tidal_incremental run scheduled__2026-12-01T10:00:00+00:00")
    # Free text from an asset event cannot smuggle a path into the reason.
    odd = request_for_run(sdk_run_type("asset_triggered"), {}, [{"extra": {"reason": "see ../../etc"}}], manual=False)
    assert check_request(settings, odd)["reason"] == "see     etc"


def test_a_manual_run_takes_the_forms_values_and_the_scheduled_dag_refuses_one(tidal_env):
    from jobs.training.request import request_for_run

    settings = tidal_env()
    form = {"reason": "new item catalogue", "history_days": 7, "epochs": 3, "promote": "register"}
    assert check_request(settings, request_for_run(sdk_run_type("manual"), form, [], manual=True)) == {
        **form, "trigger": "manual"}
    with pytest.raises(ConfigError, match="no manual runs"):
        request_for_run(sdk_run_type("manual"), {}, [], manual=False)
    with pytest.raises(ConfigError, match="unknown Airflow run type 'sideways'"):
        request_for_run("sideways", {}, [], manual=False)


def test_a_rejected_retrain_says_why_and_what_to_do():
    from jobs.training.request import rejection_message

    assert rejection_message({"promoted": True, "version": "v000004"}) is None
    assert rejection_message({"promoted": False, "registered": True, "version": "v000004"}) is None
    message = rejection_message({"promoted": False, "reason": "candidate recall_at_10 0.30 trails production 0.39",
                                 "production_version": "v000003"})
    assert "trails production 0.39" in message and "Production stays v000003" in message
    assert "promote=register" in message


@pytest.mark.slow
@pytest.mark.stack
def test_window_register_only_and_a_stale_incremental_waiting_behind_a_retrain(tidal_env, spark, s3_env):
    from devtools.generate import generate_stream
    from jobs.features.stream import run_features
    from jobs.release.gate import run_gate
    from jobs.release.promote import run_promote
    from jobs.retrain import run_retrain
    from jobs.training.build import build_training_set
    from jobs.training.finetune import run_finetune
    from tidal.registry import Registry
    from tidal.storage import StorageLayout

    # One landing file per day, so a one-day window holds the newest file only.
    settings = tidal_env({"gate": {"recall_tolerance": 1.0}, "retrain": {"min_examples": 50},
                          "generate": {"file_interval_s": 86400}})
    layout = StorageLayout(settings.home).ensure()
    registry = Registry(layout.registry)
    gen = dict(seed=5, event_types=settings.params.base.event_types)

    def incremental(run_id: str) -> dict:
        reports = layout.run_reports(run_id)
        finetune = run_finetune(settings, run_id, reports)
        gate = run_gate(settings, run_id, reports)
        return {"finetune": finetune, "promote": run_promote(settings, run_id, gate, reports)}

    generate_stream(layout, settings.params.generate, files=3, **gen)
    first_batches = run_features(settings)["batch_ids"]
    assert incremental("inc-1")["promote"]["version"] == "v000001"

    everything = build_training_set(settings, "window-all", None)
    one_day = build_training_set(settings, "window-1d", 1)
    assert everything["batch_ids"] == first_batches and everything["rows"] > one_day["rows"] > 0
    assert one_day["event_time_range"][1] == everything["event_time_range"][1]

    registered = run_retrain(settings, "retrain-register", {"reason": "try it first", "promote": "register",
                                                            "epochs": 1})
    assert registered["promote"]["registered"] is True and registered["promote"]["version"] == "v000002"
    assert registry.production().version == "v000001"  # register only: nothing serves it
    assert registered["version"]["status"] == "pushed"

    # An incremental run trains from v000001 ...
    generate_stream(layout, settings.params.generate, files=1, **gen)
    run_features(settings)
    waiting_run = "inc-waiting"
    waiting = run_finetune(settings, waiting_run, layout.run_reports(waiting_run))
    assert waiting["parent"] == "v000001"
    # ... while a full retrain promotes.
    retrained = run_retrain(settings, "retrain-auto", {"reason": "severe drift", "history_days": "all",
                                                       "trigger": "drift"})
    assert retrained["promote"]["version"] == "v000003" and registry.production().version == "v000003"
    v3 = registry.version("v000003")
    assert (v3.metadata["kind"], v3.metadata["anchor"], v3.metadata["replaces"]) == ("full", "v000003", "v000001")
    # The waiting run's gate passes, but its candidate is stale: promoting it would undo the retrain.
    gate = run_gate(settings, waiting_run, layout.run_reports(waiting_run))
    stale = run_promote(settings, waiting_run, gate, layout.run_reports(waiting_run))
    assert gate["passed"] is True and stale["promoted"] is False and stale["stale"] is True
    assert registry.production().version == "v000003" and registry.events()[-1]["action"] == "reject"

    generate_stream(layout, settings.params.generate, files=1, **gen)
    run_features(settings)
    nxt = incremental("inc-after-retrain")
    assert nxt["finetune"]["parent"] == "v000003"
    v4 = registry.version(nxt["promote"]["version"])
    assert (v4.metadata["parent"], v4.metadata["anchor"]) == ("v000003", "v000003")


def sh(cwd, *argv, env=None, stdout_only: bool = False) -> str:
    import subprocess

    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


@pytest.mark.slow
def test_dvc_repro_reproduces_the_retrain_and_metrics_diff_compares_runs(spark, tmp_path, monkeypatch):
    """dvc.yaml in a copy of the checkout (git + DVC): repro, nothing to redo, a params change reruns only what
    reads it, metrics show/diff and plots work."""
    import json
    import os
    import shutil
    import sys
    from pathlib import Path

    import yaml

    from devtools.generate import generate_stream
    from jobs.features.stream import run_features
    from tests.conftest import REPO_ROOT, write_params
    from tidal.storage import StorageLayout

    project = tmp_path / "checkout"
    project.mkdir()
    for name in ("jobs", "models", "tidal", "expectations"):
        shutil.copytree(REPO_ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", project / "dvc.yaml")
    write_params(project / "params.yaml", {"retrain": {"min_examples": 50}})
    monkeypatch.setenv("TIDAL_HOME", str(project / "data"))
    monkeypatch.setenv("TIDAL_PARAMS", str(project / "params.yaml"))
    from tidal.config import load_settings

    settings = load_settings()
    layout = StorageLayout(settings.home).ensure()
    generate_stream(layout, settings.params.generate, seed=9, files=2, event_types=settings.params.base.event_types)
    run_features(settings)

    env = {k: v for k, v in os.environ.items() if k not in ("TIDAL_HOME", "TIDAL_PARAMS")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    dvc = [sys.executable, "-m", "dvc"]
    sh(project, *git, "init", "-q", env=env)
    (project / ".gitignore").write_text("data/\n__pycache__/\n")
    sh(project, *dvc, "init", "-q", env=env)
    first = sh(project, *dvc, "repro", env=env)
    for stage in ("build_training_set", "validate", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((project / "metrics/retrain.json").read_text())
    assert 0.0 <= metrics["recall_at_10"] <= 1.0 and metrics["users"] > 0
    assert metrics["epochs"] == yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"]
    shown = json.loads(sh(project, *dvc, "metrics", "show", "--json", env=env, stdout_only=True))
    assert json.dumps(shown).count(str(metrics["recall_at_10"])) >= 1
    sh(project, *git, "add", "-A", env=env)
    sh(project, *git, "commit", "-q", "-m", "first retrain", env=env)

    again = sh(project, *dvc, "repro", env=env)
    assert "Running stage" not in again  # nothing changed: nothing reruns

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    second = sh(project, *dvc, "repro", env=env)
    assert "Running stage 'build_training_set'" not in second and "Running stage 'validate'" not in second
    assert "Running stage 'train'" in second and "Running stage 'evaluate'" in second
    diff = json.loads(sh(project, *dvc, "metrics", "diff", "--json", env=env, stdout_only=True))
    changed = diff["metrics/retrain.json"]
    assert changed["epochs"]["old"] == metrics["epochs"] and changed["epochs"]["new"] == 1
    params_diff = json.loads(sh(project, *dvc, "params", "diff", "--json", env=env, stdout_only=True))
    assert params_diff["params.yaml"]["train.epochs"]["new"] == 1

    sh(project, *dvc, "plots", "show", "-o", str(tmp_path / "plots"), env=env)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "quality.csv" in html and "losses.csv" in html
