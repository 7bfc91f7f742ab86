"""The classification A/B tool refuses to time two classifications that disagree: the same checkout passes with
every kind of bad line classified, and a base whose contract differs by one reason's name is refused."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.features import classify_ab

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--lines", "300", "--fuzzed", "200", "--rounds", "1"]


def test_the_same_classification_passes_and_meets_every_kind_of_bad_line(spark, capsys):
    assert classify_ab.main([str(REPO), *SMALL], spark) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["same_output"] is True
    assert result["lines"] == 300 + 10 * len(classify_ab.bad_lines({"event_id": "e"})) + 200
    # The bad lines reach the contract's rules, not only the parser: each of these reasons is seen.
    for reason in ("malformed_json", "not_a_json_object", "missing_event_id", "wrong_type_user_id", "empty_user_id",
                   "oversized_item_id", "unknown_event_type", "unparseable_event_time", "future_event_time",
                   "event_time_before_1970", "wrong_type_value", "wrong_type_context"):
        assert result["reasons"].get(reason, 0) > 0, reason
    assert result["reasons"]["accepted"] >= 300
    assert set(result["sides"]) == {"base", "this"}


def test_a_base_whose_classification_differs_is_refused_before_timing(spark, capsys, tmp_path):
    base = tmp_path / "base"
    (base / "jobs" / "features").mkdir(parents=True)
    source = (REPO / "jobs" / "features" / "transforms.py").read_text()
    assert '"malformed_json"' in source
    (base / "jobs" / "features" / "transforms.py").write_text(source.replace('"malformed_json"', '"bad_json"'))
    assert classify_ab.main([str(base), *SMALL], spark) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["same_output"] is False
    assert result["rows_only_in_base"] == result["rows_only_in_this"] > 0
    assert "sides" not in result


def one_char_removed(longer: str, shorter: str) -> bool:
    return len(longer) == len(shorter) + 1 and any(longer[:i] + longer[i + 1:] == shorter for i in range(len(longer)))


def test_fuzzed_lines_are_reproducible_single_edits_of_the_given_lines():
    lines = ['{"a": 1}', '{"b": "two"}']
    once = classify_ab.fuzzed(lines, 50)
    assert once == classify_ab.fuzzed(lines, 50) and len(once) == 50
    for line in once:  # one character deleted, one inserted, or the rest of the line cut
        assert any(one_char_removed(source, line) or one_char_removed(line, source) or source.startswith(line)
                   for source in lines), line
    assert set(once) - set(lines), "every line was left as it was"
