"""retrain: request checks (refused before any work), the Spark batch rebuild over a window, register-only, and an
incremental run that trained while a retrain promoted: its stale candidate is rejected and the next incremental
fine-tunes from the retrained model (real Spark local[1], GX, torch, DVC on the stack's SeaweedFS)."""

from __future__ import annotations

import pytest

from jobs.retrain import check_request
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


@pytest.mark.slow
@pytest.mark.stack
def test_window_register_only_and_a_stale_incremental_waiting_behind_a_retrain(tidal_env, spark, s3_env):
    from jobs.features import run_features
    from jobs.finetune import run_finetune
    from jobs.gate import run_gate
    from jobs.generate import generate_stream
    from jobs.promote import run_promote
    from jobs.retrain import build_training_set, run_retrain
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

