"""validate: the GX suite from expectations/ on training examples (real Great Expectations, ephemeral context)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

from jobs.validation.data_docs import OPTIONAL_CDN_ASSETS, offline_html
from jobs.validation.validate import (UNBOUNDED_EXAMPLE_ROWS, ValidationFailed, examples_asset_name, load_suite_json,
                                      run_validate, validate_examples, validate_suites)
from tidal.manifests import batch_manifest_path
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


def test_events_suite_is_versioned_json_with_run_time_parameters():
    raw = load_suite_json("events.raw")
    assert raw["name"] == "events.raw"
    params = {json.dumps(e["kwargs"]) for e in raw["expectations"]}
    assert any('"$PARAMETER": "max_timestamp"' in p for p in params)
    assert any('"$PARAMETER": "min_rows"' in p for p in params)


def test_row_level_quarantine_moves_failing_rows_out_and_lets_the_rest_go_on(tidal_env, tmp_path):
    """Rows breaking either suite leave the examples for quarantine/validation/ with the expectations they broke."""
    from tidal.manifests import batch_clock_path

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


AIRFLOW_RUN_ID = "scheduled__2026-11-01T00:00:00+00:00"


@pytest.fixture
def validated_site(tidal_env, tmp_path):
    """One run_validate over batches 3 and 4 under an Airflow run id: its summary and its Data Docs folder."""
    settings = tidal_env({"validation": {"max_bad_row_share": 0.5}})
    for batch_id in (3, 4):
        examples = clean_examples(30)
        examples["event_id"] = [f"b{batch_id}-{i:03d}" for i in range(30)]
        write_batch(settings, batch_id, examples, landed=30, reasons={})
    summary = run_validate(settings, AIRFLOW_RUN_ID, [3, 4], tmp_path / "reports")
    return summary, tmp_path / "reports" / "data_docs"


class PageParser(HTMLParser):
    """A page's visible text and the assets it loads: (tag, rel, url) of scripts, links and images."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.assets: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self._skip: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        url = attrs.get("src") if tag in ("script", "img") else attrs.get("href") if tag == "link" else None
        if url:
            self.assets.append((tag, attrs.get("rel") or "", url))
        if tag in ("script", "style"):
            self._skip = tag

    def handle_endtag(self, tag):
        if tag == self._skip:
            self._skip = None

    def handle_data(self, data):
        if self._skip == "style":
            self.styles.append(data)
        elif self._skip is None:
            self.text.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text())
    return parser


def page_text(path: Path) -> str:
    return re.sub(r"\s+", " ", " ".join(parse_page(path).text))


def test_data_docs_show_both_suites_of_one_run(validated_site):
    """Both suites go into one site: the second suite's build used to delete the first one's pages."""
    summary, docs = validated_site
    validation_pages = sorted((docs / "validations").rglob("*.html"))
    assert [p.relative_to(docs).parts[:3] for p in validation_pages] == [
        ("validations", "events", "raw"), ("validations", "features", "examples")]
    assert (docs / "expectations" / "features" / "examples.html").is_file()
    assert (docs / "expectations" / "events" / "raw.html").is_file()
    pages = {suite: Path(page) for suite, page in summary["data_docs_pages"].items()}
    assert sorted(pages.values()) == validation_pages
    for suite, page in pages.items():
        assert f"Expectation Suite: {suite}" in page_text(page)
    index = docs / "index.html"
    assert summary["data_docs"] == str(index)
    linked = {unquote(url) for url in re.findall(r'<a href="([^"]+)"', index.read_text())}
    assert {p.relative_to(docs).as_posix() for p in validation_pages} <= linked
    assert {"expectations/features/examples.html", "expectations/events/raw.html"} <= linked
    index_text = page_text(index)
    assert "Failed features.examples" not in index_text
    assert "Succeeded features.examples" in index_text and "Succeeded events.raw" in index_text


def test_data_docs_render_from_local_assets_only(validated_site):
    """No page loads a stylesheet, script or image from the internet; every local one it loads is in the site."""
    _, docs = validated_site
    pages = sorted(docs.rglob("*.html"))
    loaded_css = set()
    for page in pages:
        parsed = parse_page(page)
        online = [url for _, _, url in parsed.assets if re.match(r"https?://", url)]
        # OPTIONAL_CDN_ASSETS (Vega) stay only on pages that draw charts; tidal's suites draw none.
        assert online == [], f"{page.relative_to(docs)} loads {online}"
        inline_urls = re.findall(r"url\(['\"]?([^'\")]+)", "".join(parsed.styles))
        for _, _, url in parsed.assets + [("style", "", u) for u in inline_urls]:
            target = (page.parent / unquote(url.split("?")[0])).resolve()
            assert target.is_file() and target.is_relative_to(docs.resolve()), f"{page.relative_to(docs)}: {url}"
            if target.suffix == ".css":
                loaded_css.add(target)
        assert "static/vendor/bootstrap/js/bootstrap.bundle.min.js" in page.read_text() or page.name == "index.html"
    assert len(pages) == 5  # the index, two suite pages, two validation pages
    assert {p.name for p in loaded_css} == {"bootstrap.min.css", "all.min.css"}
    for css in loaded_css:
        for url in re.findall(r"url\(['\"]?([^'\")]+)", css.read_text()):
            assert not re.match(r"https?://", url), f"{css.name} loads {url}"
            if not url.startswith("data:"):  # inline images
                assert (css.parent / url.split("?")[0].split("#")[0]).is_file(), f"{css.name}: {url}"
    vendor = docs / "static" / "vendor"
    assert "Bootstrap v4.5.3" in (vendor / "bootstrap" / "css" / "bootstrap.min.css").read_text()[:200]
    assert "jQuery v3.7.1" in (vendor / "jquery" / "jquery.min.js").read_text()[:200]
    assert "Font Awesome Free 6.2.1" in (vendor / "font-awesome" / "css" / "all.min.css").read_text()[:200]


def test_a_page_with_charts_keeps_only_the_optional_chart_scripts_online():
    page = ('<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>'
            '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>'
            '<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" integrity="sha384-x" '
            'crossorigin="anonymous"></script><script>vegaEmbed("#c", spec)</script>')
    charted = offline_html(page, Path("validations/a/b.html"))
    assert charted == ('<link rel="stylesheet" href="../../static/vendor/bootstrap/css/bootstrap.min.css"/>'
                       '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>'
                       '<script src="../../static/vendor/bootstrap/js/bootstrap.bundle.min.js"></script>'
                       '<script>vegaEmbed("#c", spec)</script>')
    assert "https://cdn.jsdelivr.net/npm/vega@5".startswith(OPTIONAL_CDN_ASSETS)
    plain = offline_html(page.replace('vegaEmbed("#c", spec)', ""), Path("index.html"))
    assert "vega" not in plain and 'href="./static/vendor/bootstrap/css/bootstrap.min.css"' in plain


def test_data_docs_name_the_airflow_run_and_the_examples_batches(validated_site):
    """Pages used to say "Data asset: None" and "Run Name __none__"."""
    summary, docs = validated_site
    pages = sorted((docs / "validations").rglob("*.html"))
    assert pages
    for page in pages:
        text = page_text(page)
        assert f"Run Name {AIRFLOW_RUN_ID}" in text
        assert "Data asset: features.examples batches 3-4" in text
        assert page.relative_to(docs).parts[3] == AIRFLOW_RUN_ID
    assert sorted(Path(p) for p in summary["data_docs_pages"].values()) == pages
    index_text = page_text(docs / "index.html")
    assert f"Data Docs: run {AIRFLOW_RUN_ID}" in (docs / "index.html").read_text()
    assert index_text.count(f"features.examples batches 3-4 {AIRFLOW_RUN_ID}") == 2


def test_examples_asset_name_names_the_batches():
    assert examples_asset_name([3]) == "features.examples batch 3"
    assert examples_asset_name([4, 3]) == "features.examples batches 3-4"
    assert examples_asset_name([1, 3]) == "features.examples batches 1,3"


def test_validate_suites_refuses_the_same_suite_twice(suite, tmp_path):
    with pytest.raises(ValueError, match="distinct suites, got \\['features.examples', 'features.examples'\\]"):
        validate_suites(clean_examples(10), [suite, suite], tmp_path / "docs", UNBOUNDED_EXAMPLE_ROWS)
