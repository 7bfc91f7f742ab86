"""devtools/demo_serving.py: which user the demo shows as new, and how an answer and the freshness read."""

from __future__ import annotations

import json

from devtools.demo_serving import describe, freshness_lines, newcomer, users_of


def write(path, users):
    path.write_text("\n".join(json.dumps({"user_id": u}) for u in users) + "\nnot json\n")
    return path


def test_the_newcomer_is_the_most_active_user_first_seen_in_the_last_files(tmp_path):
    first = [write(tmp_path / "a.jsonl", ["u1", "u2", "u2"])]
    last = [write(tmp_path / "b.jsonl", ["u2", "u9", "u7", "u7", "u1"])]
    assert users_of(first) == {"u1": 1, "u2": 2}  # the malformed line is skipped
    assert newcomer([first, last]) == "u7"
    assert newcomer([first]) is None
    assert newcomer([first, [write(tmp_path / "c.jsonl", ["u1"])]]) is None


def test_an_answer_and_a_refusal_read_as_one_line():
    body = {"status": 200, "model_version": "v000003", "source": "recent_items", "fallback": None, "degraded": None,
            "items": [{"item_id": "i1"}, {"item_id": "i2"}]}
    assert describe(body) == "model v000003 (recent_items) -> i1, i2"
    assert describe({"status": 503, "error": "no model"}) == "HTTP 503: no model"


def test_freshness_lines_say_p50_and_p95_or_no_data():
    report = {"landed_to_online_s": {"n": 3, "p50": 40.0, "p95": 52.1, "max": 53.0},
              "landed_to_served_s": {"n": 0, "p50": None, "p95": None, "max": None}, "not_served_yet": ["f.jsonl"]}
    lines = freshness_lines(report)
    assert lines[1].endswith("p50 40.0 s, p95 52.1 s over 3 file(s)") and lines[2].endswith("no data")
    assert lines[3] == "  not served yet: f.jsonl"
