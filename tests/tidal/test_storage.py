"""tidal.storage: the one atomic write (a crash mid-write leaves the old file, never half of a new one), partition
folder names, and the layout's paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tidal.storage import (StorageLayout, atomic_write, atomic_write_bytes, atomic_write_json, partition_value,
                           read_json, safe_name)


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "model.pt"
    atomic_write_bytes(target, b"old weights")

    def crash_after_half(tmp: Path) -> None:
        tmp.write_bytes(b"half of the new wei")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash_after_half)
    assert target.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_write_replaces_the_file_whole_and_makes_its_folder(tmp_path):
    target = tmp_path / "deep" / "er" / "summary.json"
    atomic_write_json(target, {"b": 2, "a": 1})
    assert read_json(target) == {"a": 1, "b": 2}
    assert target.read_text().index('"a"') < target.read_text().index('"b"')  # sorted keys: stable diffs
    inode = os.stat(target).st_ino
    atomic_write_json(target, {"a": 3})
    assert read_json(target) == {"a": 3} and os.stat(target).st_ino != inode  # a new file, renamed over


def test_the_writer_gets_a_path_next_to_the_target(tmp_path):
    seen = []
    atomic_write(tmp_path / "x.parquet", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"1")))
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".x.parquet.")
    assert (tmp_path / "x.parquet").read_bytes() == b"1"


@pytest.mark.parametrize("name, value", [("batch_id=0", 0), ("batch_id=12", 12), ("event_date=2026", 2026)])
def test_partition_value(name, value):
    assert partition_value(Path("/a") / name) == value


def test_partition_value_refuses_a_folder_that_is_not_a_partition():
    with pytest.raises(IndexError):
        partition_value(Path("/a/_SUCCESS"))


def test_run_reports_folders_are_portable_and_stay_inside_reports(tmp_path):
    layout = StorageLayout(tmp_path)
    assert safe_name("scheduled__2026-01-01T00:05:00+00:00") == "scheduled__2026-01-01T00_05_00_00_00"
    for run_id in ("../../etc", "..", ".", "", "a/../../b"):
        assert layout.run_reports(run_id).parent == layout.reports / "runs", run_id
        assert layout.run_reports(run_id).name not in ("", ".", "..")
    assert layout.examples_batch(3) == tmp_path / "features" / "examples" / "batch_id=3"
