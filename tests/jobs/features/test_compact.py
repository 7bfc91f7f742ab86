"""compact: closed, committed bronze dates are rewritten as one file, with every row and its lineage kept."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from jobs.features.compact import (STAGING_PREFIX, TRASH_DIR, compact_bronze, dates_to_compact, exchange_paths,
                                   purge_trash)


NOW = datetime(2026, 11, 10, tzinfo=timezone.utc).timestamp()


def event(event_id: str, when: str, user: str = "u1", item: str = "i1") -> str:
    return json.dumps({"event_id": event_id, "user_id": user, "item_id": item, "event_type": "view", "value": 1.0,
                       "event_time": when})


def bronze_rows(bronze: Path) -> pd.DataFrame:
    table = pd.read_parquet(bronze)  # pyarrow skips _trash and _compacting-* like Spark does
    return table.drop(columns=["event_date", "batch_id"]).sort_values("event_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def compacted(spark, tmp_path_factory):
    """Three runs, one file each, allowed lateness 1 h: day 1 and day 2 close once day 3's events arrive."""
    from jobs.features.stream import run_features
    from tests.conftest import private_home
    from tidal.storage import StorageLayout

    tmp = tmp_path_factory.mktemp("compact")
    with private_home(tmp, {"features": {"allowed_lateness_s": 3600}, "retrain": {"min_examples": 10}}) as settings:
        layout = StorageLayout(settings.home).ensure()
        landing, bronze = layout.landing_events, layout.bronze_events
        files = [
            [event(f"a{n}", f"2026-11-01T{n:02d}:00:00Z", user=f"u{n % 3}") for n in range(8)],
            [event(f"b{n}", f"2026-11-01T23:{n:02d}:00Z") for n in range(3)]
            + [event(f"c{n}", f"2026-11-02T0{n}:00:00Z", item=f"i{n}") for n in range(5)],
            [event(f"d{n}", f"2026-11-03T1{n}:00:00Z") for n in range(4)],
        ]
        snapshots, summaries = [], []
        for k, lines in enumerate(files):
            (landing / f"events-{k:06d}.jsonl").write_text("\n".join(lines) + "\n")
            summaries.append(run_features(settings, now_epoch_s=NOW))
            snapshots.append({d.name: sorted(p.name for p in d.glob("batch_id=*")) for d in bronze.glob("event_date=*")})
        yield {"settings": settings, "layout": layout, "bronze": bronze, "summaries": summaries,
               "snapshots": snapshots, "spark": spark}


def test_a_date_is_compacted_once_closed_and_open_dates_are_left_alone(compacted):
    # After run 2 the newest event is 11-02 04:00, watermark 03:00: 11-01 is closed and both its batches are
    # committed, so it is compacted; 11-02 is still open.
    assert compacted["summaries"][0]["compaction"]["compacted"] == []
    second = compacted["summaries"][1]["compaction"]["compacted"]
    assert [c["event_date"] for c in second] == ["2026-11-01"]
    assert second[0]["batches"] == [0, 1] and second[0]["rows"] == 11 and second[0]["files_after"] == 1
    assert compacted["snapshots"][1]["event_date=2026-11-02"] == ["batch_id=1"]


def test_closed_dates_end_as_one_file_with_every_row_and_its_batch(compacted):
    bronze = compacted["bronze"]
    third = compacted["summaries"][2]["compaction"]["compacted"]
    assert [c["event_date"] for c in third] == []  # 11-02 has one file from one batch: nothing to merge
    day1 = list((bronze / "event_date=2026-11-01").glob("batch_id=*/*.parquet"))
    assert len(day1) == 1 and day1[0].parent.name == "batch_id=1"
    rows = bronze_rows(bronze)
    assert len(rows) == 8 + 3 + 5 + 4 and rows["event_id"].is_unique
    by_id = rows.set_index("event_id")
    assert by_id.loc["a0", "ingest_batch_id"] == 0 and by_id.loc["b2", "ingest_batch_id"] == 1
    assert by_id.loc["d3", "ingest_batch_id"] == 2
    assert by_id.loc["a5", "user_id"] == "u2" and by_id.loc["c4", "item_id"] == "i4"


def test_compaction_rewrites_the_date_only_once(compacted):
    again = compact_bronze(compacted["spark"], compacted["settings"])
    assert again["compacted"] == []
    assert not list(compacted["bronze"].glob(f"{STAGING_PREFIX}*"))
    assert len(list((compacted["bronze"] / TRASH_DIR).iterdir())) == 1  # the swapped-out folder, kept for readers


def test_full_retrain_still_sees_each_rows_micro_batch(compacted):
    from jobs.training.build import build_training_set

    built = build_training_set(compacted["settings"], "retrain-after-compaction", history_days=None)
    frame = pd.read_parquet(built["examples_path"]).set_index("event_id")
    assert built["rows"] == 20 and built["batch_ids"] == [0, 1, 2]
    assert frame.loc["a0", "batch_id"] == 0 and frame.loc["b0", "batch_id"] == 1
    # Per-micro-batch counts, as the streaming job computed them: a0's user u0 had 3 events in batch 0.
    assert frame.loc["a0", "user_batch_events"] == 3


def test_a_crash_before_the_swap_leaves_the_live_date_whole(spark, tidal_env):
    """A half-built folder from a crashed compaction is ignored by readers and removed by the next run."""
    from tidal.storage import StorageLayout

    settings = tidal_env({"features": {"allowed_lateness_s": 0}})
    layout = StorageLayout(settings.home).ensure()
    bronze = layout.bronze_events
    live = bronze / "event_date=2026-11-01"
    for batch in (0, 1):
        (live / f"batch_id={batch}").mkdir(parents=True)
        pd.DataFrame({"event_id": [f"e{batch}"], "ingest_batch_id": [batch]}).to_parquet(
            live / f"batch_id={batch}" / "part-0.parquet")
    half_built = bronze / f"{STAGING_PREFIX}event_date=2026-11-01" / "batch_id=1"
    half_built.mkdir(parents=True)
    pd.DataFrame({"event_id": ["e0"], "ingest_batch_id": [0]}).to_parquet(half_built / "part-0.parquet")
    assert sorted(pd.read_parquet(bronze)["event_id"]) == ["e0", "e1"]  # readers never see the staging folder

    # No manifest yet: no watermark, so nothing is compacted, but the leftover is cleared.
    result = compact_bronze(spark, settings)
    assert result["compacted"] == [] and not (bronze / f"{STAGING_PREFIX}event_date=2026-11-01").exists()
    assert sorted(pd.read_parquet(bronze)["event_id"]) == ["e0", "e1"]


def test_dates_to_compact_needs_closed_committed_and_fragmented(tmp_path):
    bronze = tmp_path / "bronze"
    for day, batches in (("2026-11-01", (0, 1)), ("2026-11-02", (1, 2)), ("2026-11-03", (2,))):
        for b in batches:
            (bronze / f"event_date={day}" / f"batch_id={b}").mkdir(parents=True)
            (bronze / f"event_date={day}" / f"batch_id={b}" / "part-0.parquet").touch()
    watermark = datetime(2026, 11, 3, 12, tzinfo=timezone.utc)
    names = lambda todo: [d.name for d, _ in todo]  # noqa: E731
    closed_two = ["event_date=2026-11-01", "event_date=2026-11-02"]
    assert names(dates_to_compact(bronze, watermark, 2, 1, 64)) == closed_two
    assert names(dates_to_compact(bronze, watermark, 1, 1, 64)) == ["event_date=2026-11-01"]  # batch 2 may replay
    assert names(dates_to_compact(bronze, watermark, 2, 2, 64)) == []                         # small enough
    assert names(dates_to_compact(bronze, watermark, None, 1, 64)) == []                      # nothing committed
    open_all = datetime(2026, 11, 1, 23, tzinfo=timezone.utc)
    assert names(dates_to_compact(bronze, open_all, 2, 1, 64)) == []
    assert dates_to_compact(bronze, None, 2, 1, 64) == []
    # Open dates too, once they pass their own (larger) limit.
    assert names(dates_to_compact(bronze, open_all, 2, 1, 1)) == closed_two
    assert names(dates_to_compact(bronze, None, 2, 1, 1)) == closed_two
    # Spark keeps only the newest commit files: a batch older than the newest commit is committed without its own.
    assert names(dates_to_compact(bronze, watermark, 500, 1, 64)) == closed_two


def test_a_live_folder_parked_by_the_fallback_swap_is_put_back(tmp_path):
    from jobs.features.compact import PARKED_PREFIX, restore_parked

    bronze = tmp_path / "bronze"
    (bronze / f"{PARKED_PREFIX}event_date=2026-11-01" / "batch_id=0").mkdir(parents=True)  # crash: live missing
    (bronze / f"{PARKED_PREFIX}event_date=2026-11-02").mkdir()                              # crash: new in place
    (bronze / "event_date=2026-11-02").mkdir()
    restore_parked(bronze)
    assert (bronze / "event_date=2026-11-01" / "batch_id=0").is_dir()
    assert sorted(p.name for p in bronze.iterdir()) == [TRASH_DIR, "event_date=2026-11-01", "event_date=2026-11-02"]


def test_exchange_swaps_two_folders_and_trash_is_purged_after_its_grace(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "new").touch(), (b / "old").touch()
    exchange_paths(a, b)
    assert [p.name for p in b.iterdir()] == ["new"] and [p.name for p in a.iterdir()] == ["old"]
    trash = tmp_path / TRASH_DIR
    (trash / "event_date=2026-11-01-1000").mkdir(parents=True)
    (trash / f"event_date=2026-11-02-{int(NOW * 1000)}").mkdir()
    assert purge_trash(tmp_path, now_s=NOW + 60, grace_s=3600) == 1
    assert [p.name for p in trash.iterdir()] == [f"event_date=2026-11-02-{int(NOW * 1000)}"]
    assert os.path.isdir(trash)
