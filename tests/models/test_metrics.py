"""Recall@k, NDCG@k and the window rules of the prequential protocol, against hand-computed cases."""
import math

import numpy as np
import pandas as pd
import pytest

from models.metrics import evaluate_window, ndcg_at_k, recall_at_k


def test_recall_counts_hits_over_all_truth():
    # 2 of 3 truth items in the top 3; the third truth item is ranked 4th, outside k.
    assert recall_at_k(["a", "x", "b", "c"], {"a", "b", "c"}, k=3) == pytest.approx(2 / 3)
    # |truth| > k: the denominator stays |truth| (protocol), so the best possible is k/|truth|.
    assert recall_at_k(["a", "b"], {"a", "b", "c", "d"}, k=2) == pytest.approx(0.5)
    assert recall_at_k(["x", "y"], {"a"}, k=2) == 0.0


def test_ndcg_binary_with_ideal_over_min_k_truth():
    # hits at ranks 1 and 3 (0-based 0 and 2); truth size 2 -> ideal = 1 + 1/log2(3).
    dcg = 1.0 + 1.0 / math.log2(4)
    ideal = 1.0 + 1.0 / math.log2(3)
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}, k=3) == pytest.approx(dcg / ideal)
    # truth larger than k: ideal uses k hits only, so a perfect top-2 scores 1.
    assert ndcg_at_k(["a", "b"], {"a", "b", "c"}, k=2) == pytest.approx(1.0)
    # a single hit at rank 2 of a single-item truth: 1/log2(3).
    assert ndcg_at_k(["x", "a"], {"a"}, k=10) == pytest.approx(1 / math.log2(3))


def test_empty_truth_is_an_error():
    with pytest.raises(ValueError):
        recall_at_k(["a"], set())


class FixedScorer:
    """Scores items by a fixed table, the same for every user; records what it was asked."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def score(self, user_ids, item_ids):
        self.calls.append((list(user_ids), list(item_ids)))
        return np.array([[self.table.get(i, 0.0) for i in item_ids] for _ in user_ids])


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_evaluate_window_applies_protocol_rules():
    history = frame([("u1", "a", 1), ("u1", "b", 2), ("u2", "c", 3), ("u3", "a", 4), ("u2", "d", 5)])
    window = frame([
        ("u1", "c", 6), ("u1", "new", 7), ("u1", "c", 8),   # truth {c, new}: "new" is unreachable but counts
        ("u2", "c", 9),                                      # only an already-seen item -> empty truth, skipped
        ("u4", "a", 10),                                     # no history -> not evaluated
        ("u3", "b", 11),                                     # truth {b}
    ])
    scorer = FixedScorer({"a": 9.0, "b": 1.0, "c": 5.0, "d": 3.0})
    result = evaluate_window(scorer, history, window, k=2)
    # Candidates: items of history in first-appearance order; only u1 and u3 scored.
    users, cands = scorer.calls[0]
    assert sorted(users) == ["u1", "u3"]
    assert cands == ["a", "b", "c", "d"]
    # u1: excludes a, b -> ranks c, d -> hit c of {c, new}: recall 1/2; ndcg (1)/(1 + 1/log2 3).
    # u3: excludes a -> ranks c, d -> misses b: 0.
    assert result["users"] == 2
    assert result["recall_at_2"] == pytest.approx((0.5 + 0.0) / 2)
    assert result["ndcg_at_2"] == pytest.approx((1.0 / (1.0 + 1.0 / math.log2(3)) + 0.0) / 2)


def test_evaluate_window_ties_keep_candidate_order_and_nan_never_ranks():
    history = frame([("u1", "a", 1), ("u2", "b", 2), ("u2", "c", 3), ("u2", "z", 4)])
    window = frame([("u1", "c", 5)])
    # b and c tie; b appears first in history, so it ranks first; z is NaN and must not take the top.
    scorer = FixedScorer({"b": 1.0, "c": 1.0, "z": float("nan")})
    assert evaluate_window(scorer, history, window, k=1)["recall_at_1"] == 0.0
    assert evaluate_window(scorer, history, window, k=2)["recall_at_2"] == 1.0


def test_evaluate_window_with_no_eligible_user():
    history = frame([("u1", "a", 1)])
    window = frame([("u2", "a", 2)])
    out = evaluate_window(FixedScorer({}), history, window)
    assert out["users"] == 0 and math.isnan(out["recall_at_10"])


def test_top_k_without_full_sort_equals_the_stable_sort():
    from models.metrics import _top_k_rows

    rng = np.random.default_rng(0)
    for trial in range(200):
        n_users, n_items = int(rng.integers(1, 20)), int(rng.integers(1, 2000))
        scores = rng.integers(0, int(rng.integers(1, 30)), size=(n_users, n_items)).astype(float)  # many ties
        if trial % 3 == 0:
            scores = rng.normal(size=(n_users, n_items))
        scores[rng.random(scores.shape) < 0.3] = -np.inf
        np.testing.assert_array_equal(_top_k_rows(scores, 10), np.argsort(-scores, axis=1, kind="stable")[:, :10])


def test_fast_evaluation_agrees_with_the_reference_one():
    from models.metrics import evaluate_scores, evaluate_scores_fast, prepare_window

    rng = np.random.default_rng(1)
    n = 3000
    events = pd.DataFrame({"user_id": [f"u{j}" for j in rng.integers(0, 60, n)],
                           "item_id": [f"i{j}" for j in rng.zipf(1.3, n) % 400],
                           "timestamp": np.arange(n, dtype=float)})
    task = prepare_window(events.iloc[:2500], events.iloc[2500:])
    assert len(task.users) > 10
    for trial in range(20):
        scores = rng.integers(0, 5, size=(len(task.users), len(task.candidates))).astype(float)
        if trial % 2:
            scores = rng.normal(size=scores.shape)
        scores[0, :3] = np.nan
        slow, fast = evaluate_scores(scores, task), evaluate_scores_fast(scores, task)
        assert slow["users"] == fast["users"]
        assert abs(slow["recall_at_10"] - fast["recall_at_10"]) < 1e-12
        assert abs(slow["ndcg_at_10"] - fast["ndcg_at_10"]) < 1e-12
