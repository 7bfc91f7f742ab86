"""benchmarks/prequential/table.py: the paired bootstrap interval of one strategy's recall over another's."""
from __future__ import annotations

import math

from benchmarks.prequential.table import ratio_interval


def windows(*recalls: float) -> list[dict]:
    return [{"recall_at_10": r} for r in recalls]


def test_a_constant_ratio_has_no_width():
    low, high = ratio_interval(windows(0.2, 0.4, 0.1, 0.3), windows(0.1, 0.2, 0.05, 0.15))
    assert math.isclose(low, 2.0) and math.isclose(high, 2.0)


def test_windows_without_users_are_left_out():
    low, high = ratio_interval(windows(0.2, float("nan"), 0.4), windows(0.2, 0.3, float("nan")))
    assert math.isclose(low, 1.0) and math.isclose(high, 1.0)


def test_one_lucky_window_gives_a_wide_interval_around_the_ratio_of_means():
    numerator, denominator = windows(*[0.05] * 19, 0.05), windows(*[0.05] * 19, 0.5)
    low, high = ratio_interval(numerator, denominator)
    point = 0.05 / ((19 * 0.05 + 0.5) / 20)
    assert low < point < high <= 1.0
    assert high - low > 0.3
    assert ratio_interval(numerator, denominator) == (low, high)   # seeded: the table does not move between runs
