"""drift: two-sample KS per feature (real scipy), its plot, and the step against a production reference."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from jobs.drift.report import plot_drift
from jobs.drift.statistics import ks_drift


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


def test_a_configured_feature_missing_on_either_side_is_an_error_naming_feature_side_and_columns(samples):
    from jobs.drift.reference import MissingDriftFeature
    from jobs.drift.statistics import drift_tests

    params = drift_params(features=("x", "y"))
    with pytest.raises(MissingDriftFeature) as err:
        drift_tests(samples["reference"], samples["same"].drop(columns=["y"]), params)
    assert str(err.value) == ("configured drift feature 'y' (params.yaml drift.features / categorical_features) is "
                              "not a column of the current window; its columns are ['x']")
    with pytest.raises(MissingDriftFeature, match=r"'event_type' .* not a column of the reference; its columns are "
                                                  r"\['x', 'y'\]"):
        drift_tests(samples["reference"], samples["same"], drift_params(categorical_features=("event_type",)))


def test_nans_are_left_out_of_both_samples():
    reference = pd.DataFrame({"value": [1.0, 2.0, None, 3.0, None]})
    current = pd.DataFrame({"value": [None, None, None]})
    (only_nan,) = ks_drift(reference, current, ("value",), ALPHA)
    assert (only_nan["reference_n"], only_nan["current_n"], only_nan["statistic"]) == (3, 0, None)
    (r,) = ks_drift(reference, pd.DataFrame({"value": [1.0, None, 2.0]}), ("value",), ALPHA)
    assert (r["reference_n"], r["current_n"]) == (3, 2)


def test_plot_file_is_written(samples, tmp_path):
    results = ks_drift(samples["reference"], samples["shifted"], ("x", "y"), ALPHA)
    path = tmp_path / "nested" / "drift.png"
    plot_drift(samples["reference"], samples["shifted"], results, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_histogram_bins_of_a_heavy_tailed_feature_spread_the_mass():
    """Equal-width bins put ~all of a log-normal(2.5, 2) in the first bin; pooled quantile bins do not."""
    from jobs.drift.statistics import bin_shares, histogram_bins

    rng = np.random.default_rng(8)
    reference, current = rng.lognormal(2.5, 2.0, 5000), rng.lognormal(3.5, 2.0, 2000)
    equal_width, _ = np.histogram(np.concatenate([reference, current]), bins=30)
    assert equal_width.max() / equal_width.sum() > 0.9  # the old plot: one tall bar, 29 empty ones
    edges = histogram_bins(reference, current, max_bins=30)
    assert len(edges) == 31 and edges[0] == min(reference.min(), current.min()) and edges[-1] == max(
        reference.max(), current.max())
    pooled = bin_shares(np.concatenate([reference, current]), edges)
    assert pooled.sum() == pytest.approx(1.0) and pooled.max() <= 2 / 30
    # The shift shows: the current window has more mass in the top bins than the reference.
    assert bin_shares(current, edges)[-10:].sum() > bin_shares(reference, edges)[-10:].sum() + 0.1


def test_histogram_bins_of_a_discrete_feature_are_one_bin_per_value():
    from jobs.drift.statistics import bin_shares, histogram_bins

    reference, current = np.array([1.0] * 70 + [2.0] * 20 + [5.0] * 10), np.array([1.0] * 50 + [3.0] * 50)
    edges = histogram_bins(reference, current, max_bins=30)
    assert list(edges) == [0.5, 1.5, 2.5, 4.0, 6.0]
    assert list(bin_shares(reference, edges)) == pytest.approx([0.7, 0.2, 0.0, 0.1])
    assert list(bin_shares(current, edges)) == pytest.approx([0.5, 0.0, 0.5, 0.0])
    assert list(histogram_bins(np.array([4.0, 4.0]), np.array([4.0]), 30)) == [3.5, 4.5]  # a constant feature


def test_plot_draws_a_heavy_tailed_feature_on_the_quantile_bins(tmp_path):
    from jobs.drift.statistics import bin_shares, histogram_bins

    rng = np.random.default_rng(9)
    reference = pd.DataFrame({"value": rng.pareto(1.2, 4000)})
    current = pd.DataFrame({"value": rng.pareto(1.2, 1000)})
    results = ks_drift(reference, current, ("value",), ALPHA)
    panels = plot_drift(reference, current, results, tmp_path / "drift.png")
    edges = histogram_bins(reference["value"].to_numpy(), current["value"].to_numpy())
    assert panels["value"]["edges"] == pytest.approx(list(edges))
    assert panels["value"]["reference"] == pytest.approx(list(bin_shares(reference["value"].to_numpy(), edges)))
    assert max(panels["value"]["reference"]) <= 2 / (len(edges) - 1)
    assert max(panels["value"]["current"]) <= 3 / (len(edges) - 1)


def promote_reference(layout, reference: pd.DataFrame) -> None:
    """A production v000001 whose stored drift reference is `reference`."""
    from tidal.registry import METADATA_FILE, MODEL_FILE, REFERENCE_FILE, Registry

    registry = Registry(layout.registry)
    staged = registry.new_candidate_dir("run-0")
    (staged / MODEL_FILE).write_bytes(b"weights")
    (staged / METADATA_FILE).write_text(json.dumps({"run_id": "run-0", "kind": "full", "last_batch_id": 0}))
    reference.to_parquet(staged / REFERENCE_FILE, index=False)
    registry.promote_candidate("run-0", reason="first")


def write_examples(layout, batch_id: int, examples: pd.DataFrame) -> None:
    """An examples batch in the feature store, with the features job's column names (event_weight, not weight)."""
    batch = layout.examples_batch(batch_id)
    batch.mkdir(parents=True)
    examples.assign(event_id=[f"e{batch_id}-{n}" for n in range(len(examples))],
                    timestamp=np.arange(float(len(examples)))).to_parquet(batch / "part-0.parquet", index=False)
    (batch / "_SUCCESS").touch()


def store_examples(rng, n: int, hours: tuple[int, int]) -> pd.DataFrame:
    return pd.DataFrame({"hour_of_day": rng.integers(*hours, n), "event_weight": rng.choice([1.0, 2.0], n),
                         "event_type": rng.choice(["view", "click"], n), "item_id": rng.choice(["a", "b", "c"], n)})


def test_run_drift_compares_new_batches_with_the_production_reference(tidal_env, tmp_path):
    from jobs.drift.run import run_drift
    from tidal.storage import StorageLayout

    settings = tidal_env({"drift": {"features": ["hour_of_day", "event_weight"], "alpha": ALPHA}})
    layout = StorageLayout(settings.home).ensure()
    reports = tmp_path / "reports"
    skipped = run_drift(settings, "run-0", [0], reports)
    assert (skipped["status"], skipped["drift"]) == ("skipped", False)
    assert "no production model" in skipped["reason"]
    assert json.loads((reports / "drift.json").read_text())["status"] == "skipped"

    rng = np.random.default_rng(7)
    promote_reference(layout, store_examples(rng, 500, (0, 12)))
    # The new batch: evening hours (drift), same event-type weights, types and items (no drift).
    write_examples(layout, 1, store_examples(rng, 400, (12, 24)))

    summary = run_drift(settings, "run-1", [1], reports)
    assert summary["status"] == "tested" and summary["reference_version"] == "v000001"
    by_feature = {r["feature"]: r for r in summary["features"]}
    assert list(by_feature) == ["hour_of_day", "event_weight", "event_type", "item_id"]
    assert by_feature["hour_of_day"]["drift"] is True and by_feature["hour_of_day"]["statistic"] == 1.0
    # event_weight reaches the test on both sides (the feature store's name, though load_examples says `weight`).
    weight = by_feature["event_weight"]
    assert (weight["reference_n"], weight["current_n"], weight["drift"]) == (500, 400, False)
    assert 0.0 <= weight["statistic"] < 0.1 and weight["p_value"] > ALPHA and "note" not in weight
    assert all(r["statistic"] is not None and (r["reference_n"], r["current_n"]) == (500, 400)
               for r in summary["features"])
    assert summary["drift"] is True
    # KS = 1.0 is beyond drift.d_severe: the DAG triggers a full retrain, and fine-tune trains harder meanwhile.
    assert (summary["response"], summary["boost"]) == ("severe", True)
    assert json.loads((reports / "drift.json").read_text())["features"] == summary["features"]
    assert (reports / "drift.png").stat().st_size > 0
    page = (reports / "drift.html").read_text()
    assert "<h1>Drift: severe</h1>" in page and "hour_of_day" in page and "data:image/png;base64,iVBOR" in page


def test_each_verdict_is_one_log_line_of_the_tidal_drift_logger(tidal_env, tmp_path, caplog):
    import logging

    from jobs.drift.run import run_drift
    from tidal.storage import StorageLayout

    settings = tidal_env({"drift": {"features": ["hour_of_day", "event_weight"], "alpha": ALPHA}})
    layout = StorageLayout(settings.home).ensure()
    rng = np.random.default_rng(7)
    promote_reference(layout, store_examples(rng, 500, (0, 12)))
    write_examples(layout, 1, store_examples(rng, 400, (12, 24)))
    with caplog.at_level(logging.INFO, logger="tidal.drift"):
        summary = run_drift(settings, "run-1", [1], tmp_path / "reports")

    lines = [r.getMessage() for r in caplog.records if r.name == "tidal.drift"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "tidal.drift")
    assert len(lines) == 5  # one per configured feature, then the run's response
    for line, r in zip(lines, summary["features"]):
        assert line == (f"drift {r['feature']}: {r['test']} statistic={r['statistic']:.4g} effect={r['effect']:.4g} "
                        f"p={r['p_value']:.3g} q={r['q_value']:.3g} n ref={r['reference_n']} cur={r['current_n']} "
                        f"-> {r['severity']}")
    assert lines[0].startswith("drift hour_of_day: ks statistic=1 effect=1 p=") and lines[0].endswith(
        "n ref=500 cur=400 -> severe")
    assert lines[1].startswith("drift event_weight: ks statistic=0.0") and "n ref=500 cur=400" in lines[1]
    assert lines[4] == f"drift response: severe (reference v000001); report: {summary['html']}"


def test_a_reference_written_before_event_weight_was_kept_is_refused_with_the_remedy(tidal_env, tmp_path):
    """References stored by versions before the fix have no event_weight column: say so, and how to get a new one."""
    from jobs.drift.reference import MissingDriftFeature
    from jobs.drift.run import run_drift
    from tidal.storage import StorageLayout

    settings = tidal_env()
    layout = StorageLayout(settings.home).ensure()
    rng = np.random.default_rng(7)
    old = store_examples(rng, 500, (0, 12)).drop(columns=["event_weight"]).assign(value=rng.normal(0, 1, 500))
    promote_reference(layout, old)
    write_examples(layout, 1, store_examples(rng, 400, (0, 12)).assign(value=rng.normal(0, 1, 400)))
    with pytest.raises(MissingDriftFeature) as err:
        run_drift(settings, "run-1", [1], tmp_path / "reports")
    message = str(err.value)
    assert "'event_weight'" in message and "reference of production v000001" in message
    assert "['event_type', 'hour_of_day', 'item_id', 'value']" in message
    assert "tidal retrain --reason" in message and "tidal_full_retrain" in message
    assert not (tmp_path / "reports" / "drift.json").exists()  # no half-made verdict


# ---- the decision rule: Benjamini-Hochberg + minimum effect, categorical tests, graded response ----------------

def test_benjamini_hochberg_adjusts_in_input_order():
    from jobs.drift.statistics import benjamini_hochberg

    # sorted p: .005 .01 .03 .04 -> x m/rank: .02 .02 .04 .04 -> running min from the top, back in input order
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert benjamini_hochberg([0.9, 0.8]) == pytest.approx([0.9, 0.9])
    assert benjamini_hochberg([]) == []


def drift_params(**changes):
    from tidal.config import DriftParams

    return DriftParams(**{"alpha": 0.01, "d_min": 0.1, "d_severe": 0.3, "features": ("x",), "categorical_features": (),
                          **changes})


def test_big_windows_a_trivial_shift_is_significant_but_not_drift():
    from jobs.drift.statistics import drift_tests

    rng = np.random.default_rng(3)
    n = 200_000
    reference = pd.DataFrame({"x": rng.normal(0, 1, n)})
    trivial = pd.DataFrame({"x": rng.normal(0.03, 1, n)})  # KS ~ 0.012: real but irrelevant
    real = pd.DataFrame({"x": rng.normal(0.5, 1, n)})     # KS ~ 0.197
    (r,), level = drift_tests(reference, trivial, drift_params())
    assert r["q_value"] < 1e-6 and r["effect"] < 0.02
    assert (r["drift"], level) == (False, "none")
    (r,), level = drift_tests(reference, real, drift_params())
    assert r["drift"] is True and (r["severity"], level) == ("mild", "mild")
    (r,), level = drift_tests(reference, pd.DataFrame({"x": rng.normal(1.5, 1, n)}), drift_params())
    assert (r["severity"], level) == ("severe", "severe")


def test_tiny_windows_noise_is_not_drift_where_raw_p_values_would_flag_it():
    """20 stationary features on windows of 25 rows, 40 runs: plain p < alpha flags some run, BH + d_min none."""
    from jobs.drift.statistics import drift_tests

    features = tuple(f"f{k}" for k in range(20))
    raw_flagged = decided = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        reference = pd.DataFrame({f: rng.normal(0, 1, 500) for f in features})
        current = pd.DataFrame({f: rng.normal(0, 1, 25) for f in features})
        results, level = drift_tests(reference, current, drift_params(features=features))
        raw_flagged += any(r["p_value"] < 0.01 for r in results)
        decided += level != "none"
    assert raw_flagged >= 3  # the multiple-testing problem is real at this size
    assert decided == 0


def test_event_type_mix_shift_is_caught_by_chi_square_and_psi():
    from jobs.drift.statistics import drift_tests

    rng = np.random.default_rng(5)
    types = ["view", "click", "purchase"]
    reference = pd.DataFrame({"event_type": rng.choice(types, 5000, p=[0.7, 0.25, 0.05])})
    same = pd.DataFrame({"event_type": rng.choice(types, 1000, p=[0.7, 0.25, 0.05])})
    shifted = pd.DataFrame({"event_type": rng.choice(types, 1000, p=[0.4, 0.4, 0.2])})
    params = drift_params(features=(), categorical_features=("event_type",))
    (r,), level = drift_tests(reference, same, params)
    assert (r["drift"], level) == (False, "none") and r["effect"] < 0.02
    (r,), level = drift_tests(reference, shifted, params)
    assert r["drift"] is True and r["effect"] > 0.25 and level in ("mild", "severe")
    assert r["current_shares"]["purchase"] == pytest.approx(0.2, abs=0.03)


def test_popularity_buckets_split_reference_mass_evenly():
    from jobs.drift.statistics import popularity_buckets

    items = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 10 + ["d"] * 6 + ["e"] * 4)
    assert popularity_buckets(items, 2) == {"a": "b00", "b": "b01", "c": "b01", "d": "b01", "e": "b01"}
    assert popularity_buckets(items, 10)["a"] == "b04" and popularity_buckets(items, 10)["e"] == "b09"


@pytest.fixture(scope="module")
def synthetic_windows(spark):
    """32 files of the synthetic stream, tastes and popularity shifting at file 30; the examples of each file
    (one file = one cycle's window) computed by the features job's own transform."""
    from pyspark.sql import functions as F

    from devtools.generate import SyntheticWorld, generate_file_events
    from jobs.features.transforms import training_examples
    from tidal.config import GenerateParams, load_params

    gen = GenerateParams(events_per_file=1000, drift_at_file=30)
    world = SyntheticWorld(gen, seed=11, files=32)
    types = load_params().base.event_types
    rows = [{**e, "file": k, "value": e["value"]} for k in range(32)
            for e in generate_file_events(world, k, 11, gen.events_per_file, types)]
    frame = pd.DataFrame(rows).drop(columns=["context"])
    events = spark.createDataFrame(frame).withColumn("event_time", F.to_timestamp("event_time"))
    weights = load_params().features.event_type_weights
    examples = training_examples(events, weights, window_keys=("file",)).toPandas()
    examples["file"] = examples["event_id"].str.extract(r"-f(\d+)-")[0].astype(int)
    return {k: g for k, g in examples.groupby("file")}


def test_synthetic_stream_drift_detected_within_two_cycles_and_no_false_alarm_in_20_stationary_windows(
        synthetic_windows):
    from jobs.drift.reference import drift_reference_sample
    from jobs.drift.statistics import drift_tests
    from tidal.config import load_params

    params = load_params().drift  # the shipped thresholds, not test-tuned ones
    anchor_training = pd.concat([synthetic_windows[k] for k in range(10)])
    reference = drift_reference_sample(anchor_training, params.reference_columns, params.reference_max_rows, 42)
    levels = {k: drift_tests(reference, synthetic_windows[k], params)[1] for k in range(10, 32)}
    false_alarms = [k for k in range(10, 30) if levels[k] != "none"]
    assert len(false_alarms) <= 1, (false_alarms, levels)
    detected = [k for k in (30, 31) if levels[k] != "none"]
    assert detected and detected[0] - 30 <= 1, levels
    print(f"\ndrift levels by file: {levels}; false alarms {len(false_alarms)}/20; detection delay "
          f"{detected[0] - 30} cycle(s)")


def test_drift_state_switches_boost_on_mild_and_off_on_none(tidal_env):
    from dataclasses import replace

    from jobs.training.finetune import boosted_for_drift, train_config
    from tidal.drift_state import read_drift_state, update_drift_state
    from tidal.storage import StorageLayout

    settings = tidal_env({"drift": {"boost_epochs_factor": 3.0, "boost_lr_factor": 2.0}})
    layout = StorageLayout(settings.home).ensure()
    cfg = replace(train_config(settings), finetune_epochs=2, finetune_lr=None, lr=0.01)
    assert read_drift_state(layout)["boost"] is False
    assert boosted_for_drift(cfg, layout, settings.params.drift) == (cfg, False)
    update_drift_state(layout, "run-1", "mild")
    boosted, on = boosted_for_drift(cfg, layout, settings.params.drift)
    assert on is True and (boosted.finetune_epochs, boosted.finetune_lr) == (6, pytest.approx(0.02))
    update_drift_state(layout, "run-2", "none")
    assert boosted_for_drift(cfg, layout, settings.params.drift) == (cfg, False)
