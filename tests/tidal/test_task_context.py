"""tidal.task_context: the reason and path rules the forms and the checks share, and the severe-drift asset event
(drift_events_of, on real asset events: tests/dags/test_retrain_scheduler.py)."""

from __future__ import annotations

import re

import pytest

from tidal.task_context import PATH_LIKE, REASON_PATTERN, severe_drift_event


@pytest.mark.parametrize("reason, ok", [("weekly reset", True), ("", False), ("   ", False), ("../x", False),
                                        ("a/b", False), ("a\\b", False), ("~root", False), (" ~x", False),
                                        ("a~b", True), ("line\n..", False), ("é ü", True)])
def test_reason_pattern(reason, ok):
    assert bool(re.search(REASON_PATTERN, reason)) is ok


@pytest.mark.parametrize("value, path_like", [("30", False), ("all", False), ("../30", True), ("/etc", True),
                                              ("~", True), ("a~", False), ("1..2", True)])
def test_path_like(value, path_like):
    assert bool(PATH_LIKE.search(value)) is path_like


def test_the_severe_drift_event_names_the_run_and_only_the_severe_features():
    summary = {"reference_version": "v000004", "features": [{"feature": "value", "severity": "severe"},
                                                            {"feature": "event_type", "severity": "mild"}]}
    assert severe_drift_event("scheduled__x", summary) == {
        "reason": "severe drift seen by tidal_incremental run scheduled__x", "features": ["value"],
        "reference_version": "v000004"}
