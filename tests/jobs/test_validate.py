"""validate: the GX suite from expectations/ on training examples (real Great Expectations, ephemeral context)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from jobs.features import batch_manifest_path
from jobs.validate import UNBOUNDED_EXAMPLE_ROWS, ValidationFailed, load_suite_json, run_validate, validate_examples
from tidal.storage import StorageLayout, atomic_write_json

TYPES = ["view", "click", "add_to_cart", "purchase", "rating"]
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0, "rating": 2.0}


def clean_examples(n: int) -> pd.DataFrame:
    """Examples as features writes them, every row within the suite (clicks and carts have no value)."""
    times = pd.date_range("2026-11-01T00:00:00", periods=n, freq="7min")
    types = [TYPES[i % len(TYPES)] for i in range(n)]
    values = [{"view": 0.5, "purchase": 19.99, "rating": 4.0}.get(t, np.nan) for t in types]
    users = [f"u{i % 7}" for i in range(n)]
    items = [f"i{i % 11}" for i in range(n)]
    frame = pd.DataFrame({
        "event_id": [f"e{i:04d}" for i in range(n)], "user_id": users, "item_id": items, "event_type": types,
        "value": values, "event_time": times, "timestamp": times.astype("int64") / 1e9,
        "event_weight": [WEIGHTS[t] for t in types], "hour_of_day": times.hour.astype("int32"),
    })
    frame["user_batch_events"] = frame.groupby("user_id")["event_id"].transform("count")
    frame["item_batch_events"] = frame.groupby("item_id")["event_id"].transform("count")
    return frame


@pytest.fixture(scope="module")
def suite() -> dict:
    return load_suite_json("features.examples")


def test_suite_is_versioned_json_named_after_its_dataset(suite):
    assert suite["name"] == "features.examples"
    columns = {e["kwargs"].get("column") for e in suite["expectations"]}
    assert {"event_id", "user_id", "item_id", "event_type", "hour_of_day", "timestamp"} <= columns
    with pytest.raises(FileNotFoundError, match="expectations"):
        load_suite_json("no.such.suite")


def test_clean_examples_pass_with_no_failing_rows(suite, tmp_path):
    report = validate_examples(clean_examples(60), suite, tmp_path / "docs", UNBOUNDED_EXAMPLE_ROWS)
    assert report["success"] is True
    assert report["failing_rows"] == 0 and report["failed_expectations"] == []
    assert report["data_docs"] == str(tmp_path / "docs" / "index.html")
    assert (tmp_path / "docs" / "index.html").is_file()


def test_bad_rows_are_counted_once_each_and_documented(suite, tmp_path):
    frame = clean_examples(60)
    frame.loc[3, "user_id"] = None
    frame.loc[5, "hour_of_day"] = 24
    frame.loc[7, "event_type"] = "teleport"
    frame.loc[9, ["user_id", "hour_of_day"]] = [None, -1]  # two broken rules, one failing row
    report = validate_examples(frame, suite, tmp_path / "docs", UNBOUNDED_EXAMPLE_ROWS)
    assert report["success"] is False
    assert report["failing_rows"] == 4
    failed = {(f["expectation"], f["column"]): f["unexpected_count"] for f in report["failed_expectations"]}
    assert failed == {("expect_column_values_to_not_be_null", "user_id"): 2,
                      ("expect_column_values_to_be_between", "hour_of_day"): 2,
                      ("expect_column_values_to_be_in_set", "event_type"): 1}
    docs = tmp_path / "docs"
    assert (docs / "index.html").is_file()
    assert any(p.suffix == ".html" for p in (docs / "validations").rglob("*"))


def write_batch(settings, batch_id: int, examples: pd.DataFrame, landed: int, reasons: dict[str, int]) -> None:
    """One micro-batch's output as features leaves it: the examples parquet and the batch manifest."""
    layout = StorageLayout(settings.home).ensure()
    path = layout.examples_batch(batch_id)
    path.mkdir(parents=True)
    examples.to_parquet(path / "part-00000.parquet", index=False)
    (path / "_SUCCESS").touch()
    quarantined = sum(reasons.values())
    atomic_write_json(batch_manifest_path(layout, batch_id), {
        "batch_id": batch_id, "files": ["file:/landing/events-000000.jsonl"], "landed": landed,
        "accepted": landed - quarantined, "quarantined": quarantined, "quarantine_reasons": reasons,
        "duplicates": 0})


@pytest.fixture
def dirty_batch(tidal_env):
    """100 landed records: 5 quarantined, 95 examples of which one breaks the suite -> 6% bad."""
    examples = clean_examples(95)
    examples.loc[10, "hour_of_day"] = 30
    settings = tidal_env()
    write_batch(settings, 0, examples, landed=100, reasons={"malformed_json": 3, "unknown_event_type": 2})
    return tidal_env


def test_run_validate_passes_under_the_threshold(dirty_batch, tmp_path):
    settings = dirty_batch({"validation": {"max_bad_row_share": 0.2}})
    summary = run_validate(settings, "run-1", [0], tmp_path / "reports")
    assert summary["status"] == "passed"
    assert (summary["landed"], summary["quarantined"], summary["examples"]) == (100, 5, 95)
    assert summary["failing_example_rows"] == 1
    assert summary["bad_row_share"] == 0.06
    assert summary["quarantine_reasons"] == {"malformed_json": 3, "unknown_event_type": 2}
    written = json.loads((tmp_path / "reports" / "validate.json").read_text())
    assert written["status"] == "passed" and written["bad_row_share"] == 0.06
    assert (tmp_path / "reports" / "data_docs" / "index.html").is_file()


def test_run_validate_fails_over_the_threshold_with_a_readable_message(dirty_batch, tmp_path):
    settings = dirty_batch({"validation": {"max_bad_row_share": 0.05}})
    with pytest.raises(ValidationFailed) as err:
        run_validate(settings, "run-1", [0], tmp_path / "reports")
    message = str(err.value)
    docs = tmp_path / "reports" / "data_docs" / "index.html"
    assert "6 of 100 records are bad (6.0% > limit 5%)" in message
    assert str(docs) in message and docs.is_file()
    assert "malformed_json" in message and "hour_of_day" in message
    assert "max_bad_row_share" in message
    written = json.loads((tmp_path / "reports" / "validate.json").read_text())
    assert (written["status"], written["bad_row_share"], written["max_bad_row_share"]) == ("failed", 0.06, 0.05)


def test_run_validate_without_new_batches_is_skipped(tidal_env, tmp_path):
    summary = run_validate(tidal_env(), "run-1", [], tmp_path / "reports")
    assert (summary["status"], summary["reason"]) == ("skipped", "no new micro-batches")
    assert json.loads((tmp_path / "reports" / "validate.json").read_text())["status"] == "skipped"


def test_failure_message_states_a_fractional_limit_exactly(tidal_env, tmp_path):
    settings = tidal_env({"validation": {"max_bad_row_share": 0.015}})
    write_batch(settings, 0, clean_examples(984), landed=1000, reasons={"malformed_json": 16})
    with pytest.raises(ValidationFailed) as err:
        run_validate(settings, "run-1", [0], tmp_path / "reports")
    assert "(1.6% > limit 1.5%)" in str(err.value)


def test_raw_suite_is_versioned_json_with_run_time_parameters():
    raw = load_suite_json("events.raw")
    assert raw["name"] == "events.raw"
    params = {json.dumps(e["kwargs"]) for e in raw["expectations"]}
    assert any('"$PARAMETER": "max_timestamp"' in p for p in params)
    assert any('"$PARAMETER": "min_rows"' in p for p in params)


def test_row_level_quarantine_moves_failing_rows_out_and_lets_the_rest_go_on(tidal_env, tmp_path):
    """Rows breaking either suite leave the examples for quarantine/validation/ with the expectations they broke."""
    from jobs.features import batch_clock_path

    settings = tidal_env({"validation": {"max_bad_row_share": 0.2}})
    layout = StorageLayout(settings.home)
    history = clean_examples(40)
    write_batch(settings, 0, history, landed=40, reasons={})
    examples = clean_examples(50)
    examples["event_id"] = [f"n{i:04d}" for i in range(50)]
    clock = examples["timestamp"].max()
    examples.loc[3, "timestamp"] = clock + 3600  # an hour past the batch clock (skew is 300 s): events.raw
    examples.loc[7, "event_type"] = "teleport"   # both suites
    examples.loc[9, "hour_of_day"] = 24          # features.examples only
    write_batch(settings, 1, examples, landed=50, reasons={})
    atomic_write_json(batch_clock_path(layout, 1), {"batch_id": 1, "now_epoch_s": float(clock)})

    summary = run_validate(settings, "run-1", [1], tmp_path / "reports")
    assert summary["status"] == "passed"
    assert (summary["failing_example_rows"], summary["validation_quarantined"]) == (3, 3)
    assert summary["row_count_bounds"] == [4, 400]  # 0.1x and 10x the median of the one earlier batch (40)
    quarantined = pd.read_parquet(layout.root / "quarantine" / "validation" / "batch_id=1").set_index("event_id")
    assert sorted(quarantined.index) == ["n0003", "n0007", "n0009"]
    assert json.loads(quarantined.loc["n0003", "failed_expectations"]) == ["expect_column_values_to_be_between(timestamp)"]
    assert json.loads(quarantined.loc["n0007", "failed_expectations"]) == ["expect_column_values_to_be_in_set(event_type)"]
    assert json.loads(quarantined.loc["n0009", "failed_expectations"]) == ["expect_column_values_to_be_between(hour_of_day)"]
    kept = pd.read_parquet(layout.examples_batch(1))
    assert len(kept) == 47 and not kept["event_id"].isin(quarantined.index).any()

    again = run_validate(settings, "run-1", [1], tmp_path / "reports")  # a retry: nothing left to move
    assert (again["failing_example_rows"], again["validation_quarantined"]) == (0, 0)
    assert len(pd.read_parquet(layout.root / "quarantine" / "validation" / "batch_id=1")) == 3


def test_row_count_far_above_recent_batches_breaks_both_suites(tidal_env, tmp_path):
    settings = tidal_env({"validation": {"max_bad_row_share": 0.5}})
    write_batch(settings, 0, clean_examples(10), landed=10, reasons={})
    big = clean_examples(150)
    big["event_id"] = [f"b{i:04d}" for i in range(150)]
    write_batch(settings, 1, big, landed=150, reasons={})
    summary = run_validate(settings, "run-1", [1], tmp_path / "reports")
    assert summary["row_count_bounds"] == [1, 100]
    assert summary["example_row_count_bounds"] == [1, 100]
    # events.raw bounds the accepted records, features.examples (suite None here) the training examples.
    assert {(f["expectation"], f.get("suite")) for f in summary["failed_expectations"]} == \
        {("expect_table_row_count_to_be_between", "events.raw"), ("expect_table_row_count_to_be_between", None)}


def test_examples_row_count_far_below_recent_batches_breaks_the_examples_suite(tidal_env, tmp_path):
    """features.examples bounds the training examples by recent batches' examples (accepted minus outliers)."""
    settings = tidal_env({"validation": {"max_bad_row_share": 0.5}})
    for batch_id in range(3):
        history = clean_examples(100)
        history["event_id"] = [f"h{batch_id}-{i:04d}" for i in range(100)]
        write_batch(settings, batch_id, history, landed=100, reasons={})
    small = clean_examples(8)
    small["event_id"] = [f"s{i:04d}" for i in range(8)]
    write_batch(settings, 3, small, landed=8, reasons={})
    summary = run_validate(settings, "run-1", [3], tmp_path / "reports")
    assert summary["example_row_count_bounds"] == [10, 1000]
    failed = {(f["expectation"], f.get("suite"), f["observed_value"]) for f in summary["failed_expectations"]}
    assert ("expect_table_row_count_to_be_between", None, 8) in failed   # None: the features.examples suite


def test_example_row_bounds_follow_training_examples_not_accepted_records(tidal_env, tmp_path):
    """Batches whose outliers (bots) were left out of the examples set the examples suite's bounds lower."""
    settings = tidal_env({"validation": {"max_bad_row_share": 0.5}})
    layout = StorageLayout(settings.home)
    for batch_id in range(3):
        history = clean_examples(60)
        history["event_id"] = [f"h{batch_id}-{i:04d}" for i in range(60)]
        write_batch(settings, batch_id, history, landed=100, reasons={})
        manifest = json.loads(batch_manifest_path(layout, batch_id).read_text())
        atomic_write_json(batch_manifest_path(layout, batch_id), {**manifest, "outlier_events_excluded": 40})
    write_batch(settings, 3, clean_examples(60), landed=60, reasons={})
    summary = run_validate(settings, "run-1", [3], tmp_path / "reports")
    assert summary["row_count_bounds"] == [10, 1000]
    assert summary["example_row_count_bounds"] == [6, 600]
    assert summary["failed_expectations"] == []
