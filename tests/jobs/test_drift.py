"""drift: two-sample KS per feature (real scipy), its plot, and the step against a production reference."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from jobs.drift import ks_drift, plot_drift

ALPHA = 0.01


@pytest.fixture(scope="module")
def samples() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(1234)
    n = 2000
    reference = pd.DataFrame({"x": rng.normal(0.0, 1.0, n), "y": rng.normal(5.0, 2.0, n)})
    same = pd.DataFrame({"x": rng.normal(0.0, 1.0, n), "y": rng.normal(5.0, 2.0, n)})
    shifted = pd.DataFrame({"x": rng.normal(0.5, 1.0, n), "y": rng.normal(5.0, 2.0, n)})
    return {"reference": reference, "same": same, "shifted": shifted}


def test_shifted_normal_is_flagged(samples):
    (x, y) = ks_drift(samples["reference"], samples["shifted"], ("x", "y"), ALPHA)
    assert x["feature"] == "x" and x["drift"] is True
    assert x["p_value"] < 1e-20
    # KS statistic of N(0,1) vs N(0.5,1) is 2*Phi(0.25)-1 ~= 0.197 in the limit
    assert 0.15 < x["statistic"] < 0.25
    assert (x["reference_n"], x["current_n"]) == (2000, 2000)
    assert y["drift"] is False and y["p_value"] >= ALPHA


def test_same_distribution_is_not_flagged(samples):
    results = ks_drift(samples["reference"], samples["same"], ("x", "y"), ALPHA)
    assert [r["drift"] for r in results] == [False, False]
    assert all(r["p_value"] > ALPHA and r["statistic"] < 0.06 for r in results)


def test_result_matches_scipy(samples):
    from scipy.stats import ks_2samp

    (x,) = ks_drift(samples["reference"], samples["shifted"], ("x",), ALPHA)
    expected = ks_2samp(samples["reference"]["x"], samples["shifted"]["x"])
    assert x["statistic"] == pytest.approx(expected.statistic) and x["p_value"] == pytest.approx(expected.pvalue)
    assert json.loads(json.dumps(x)) == x  # plain JSON types


def test_missing_feature_gives_no_decision_with_a_note(samples):
    current = samples["same"].drop(columns=["y"])
    x, y, z = ks_drift(samples["reference"], current, ("x", "y", "z"), ALPHA)
    assert x["statistic"] is not None
    for r, ref_n in ((y, 2000), (z, 0)):
        assert (r["statistic"], r["p_value"], r["drift"]) == (None, None, False)
        assert r["note"] == "no data on one side"
        assert (r["reference_n"], r["current_n"]) == (ref_n, 0)


def test_nans_are_left_out_of_both_samples():
    reference = pd.DataFrame({"value": [1.0, 2.0, None, 3.0, None]})
    current = pd.DataFrame({"value": [None, None, None]})
    (only_nan,) = ks_drift(reference, current, ("value",), ALPHA)
    assert (only_nan["reference_n"], only_nan["current_n"], only_nan["statistic"]) == (3, 0, None)
    (r,) = ks_drift(reference, pd.DataFrame({"value": [1.0, None, 2.0]}), ("value",), ALPHA)
    assert (r["reference_n"], r["current_n"]) == (3, 2)


def test_plot_file_is_written(samples, tmp_path):
    features = ("x", "y", "absent")
    results = ks_drift(samples["reference"], samples["shifted"], features, ALPHA)
    path = tmp_path / "nested" / "drift.png"
    plot_drift(samples["reference"], samples["shifted"], results, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_run_drift_compares_new_batches_with_the_production_reference(tidal_env, tmp_path):
    from jobs.drift import run_drift
    from tidal.registry import METADATA_FILE, MODEL_FILE, REFERENCE_FILE, Registry
    from tidal.storage import StorageLayout

    settings = tidal_env({"drift": {"features": ["hour_of_day", "event_weight"], "alpha": ALPHA}})
    layout = StorageLayout(settings.home).ensure()
    reports = tmp_path / "reports"
    skipped = run_drift(settings, "run-0", [0], reports)
    assert (skipped["status"], skipped["drift"]) == ("skipped", False)
    assert "no production model" in skipped["reason"]
    assert json.loads((reports / "drift.json").read_text())["status"] == "skipped"

    rng = np.random.default_rng(7)
    registry = Registry(layout.registry)
    staged = registry.new_candidate_dir("run-0")
    (staged / MODEL_FILE).write_bytes(b"weights")
    (staged / METADATA_FILE).write_text(json.dumps({"run_id": "run-0", "kind": "full", "last_batch_id": 0}))
    pd.DataFrame({"hour_of_day": rng.integers(0, 12, 500), "event_weight": rng.choice([1.0, 2.0], 500)}) \
        .to_parquet(staged / REFERENCE_FILE, index=False)
    registry.promote_candidate("run-0", reason="first")
    # The new batch: evening hours (drift), same event-type weights (no drift).
    batch = layout.examples_batch(1)
    batch.mkdir(parents=True)
    pd.DataFrame({"event_id": [f"e{n}" for n in range(400)], "timestamp": np.arange(400.0),
                  "hour_of_day": rng.integers(12, 24, 400), "event_weight": rng.choice([1.0, 2.0], 400)}) \
        .to_parquet(batch / "part-0.parquet", index=False)

    summary = run_drift(settings, "run-1", [1], reports)
    assert summary["status"] == "tested" and summary["reference_version"] == "v000001"
    by_feature = {r["feature"]: r for r in summary["features"]}
    assert by_feature["hour_of_day"]["drift"] is True and by_feature["hour_of_day"]["statistic"] == 1.0
    assert by_feature["event_weight"]["drift"] is False
    assert summary["drift"] is True
    assert json.loads((reports / "drift.json").read_text())["features"] == summary["features"]
    assert (reports / "drift.png").stat().st_size > 0
