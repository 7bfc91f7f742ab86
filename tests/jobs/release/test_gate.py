"""gate: the pure promotion rule (finite weights, first model, tolerance against production)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from jobs.release.gate import gate_decision


def metrics(recall: float, k: int = 10) -> dict:
    return {f"recall_at_{k}": recall, f"ndcg_at_{k}": recall / 2, "users": 12}


# Tolerance and recalls are exact binary fractions, so the boundary case is exact.
TOL = 0.125


@pytest.mark.parametrize("candidate, production, finite, passed", [
    (metrics(0.5), metrics(0.25), False, False),      # non-finite weights fail even when metrics look better
    (metrics(0.5), None, False, False),               # ... and even for the first model
    (None, None, True, False),                        # no candidate metrics
    (metrics(0.0), None, True, True),                 # first model: nothing to compare with
    (metrics(0.5), metrics(0.5), True, True),         # equal
    (metrics(0.75), metrics(0.5), True, True),        # better
    (metrics(0.4375), metrics(0.5), True, True),      # worse, within tolerance
    (metrics(0.375), metrics(0.5), True, True),       # worse by exactly the tolerance
    (metrics(0.3125), metrics(0.5), True, False),     # worse beyond tolerance
    (metrics(0.0), metrics(0.5), True, False),
], ids=["nonfinite", "nonfinite_first", "no_candidate", "first_model", "equal", "better", "within",
        "at_tolerance", "beyond", "collapsed"])
def test_gate_truth_table(candidate, production, finite, passed):
    ok, reason = gate_decision(candidate, production, finite=finite, recall_tolerance=TOL, k=10)
    assert ok is passed
    assert isinstance(reason, str) and reason


def test_gate_reasons_say_why():
    assert "not finite" in gate_decision(metrics(0.5), None, finite=False, recall_tolerance=TOL, k=10)[1]
    assert "first model" in gate_decision(metrics(0.5), None, finite=True, recall_tolerance=TOL, k=10)[1]
    ok, reason = gate_decision(metrics(0.25), metrics(0.5), finite=True, recall_tolerance=TOL, k=10)
    assert not ok and "0.2500" in reason and "0.5000" in reason and "trails" in reason


def test_zero_tolerance_requires_no_regression():
    assert gate_decision(metrics(0.5), metrics(0.5), finite=True, recall_tolerance=0.0, k=10)[0] is True
    assert gate_decision(metrics(0.4999), metrics(0.5), finite=True, recall_tolerance=0.0, k=10)[0] is False


def test_gate_reads_the_metric_of_its_k():
    cand, prod = {"recall_at_5": 0.1, "recall_at_10": 0.9}, {"recall_at_5": 0.5, "recall_at_10": 0.1}
    assert gate_decision(cand, prod, finite=True, recall_tolerance=0.0, k=5)[0] is False
    assert gate_decision(cand, prod, finite=True, recall_tolerance=0.0, k=10)[0] is True


def test_nan_candidate_recall_fails_against_a_measured_production():
    ok, _ = gate_decision(metrics(math.nan), metrics(0.5), finite=True, recall_tolerance=TOL, k=10)
    assert ok is False


class _PopularityScorer:
    """A real scorer for evaluate_window: every user gets the same item scores."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def score(self, users, items):
        return np.tile(np.array([self.scores.get(i, 0.0) for i in items]), (len(users), 1))


def test_gate_decision_accepts_evaluate_window_metrics_for_k_5():
    from models.metrics import evaluate_window

    history = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "c"], "timestamp": [1.0, 2.0, 3.0]})
    window = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["c", "a"], "timestamp": [4.0, 5.0]})
    got = evaluate_window(_PopularityScorer({"a": 3.0, "b": 2.0, "c": 1.0}), history, window, k=5)
    ok, _ = gate_decision(got, got, finite=True, recall_tolerance=0.0, k=5)
    assert ok is True
