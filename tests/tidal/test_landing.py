"""tidal.landing: which landing files the features stream has not consumed, read from the real Spark checkpoint
a real features run leaves, so the idle check agrees with what the stream would do."""

from __future__ import annotations

import pytest

from tidal.landing import landing_work, pending_landing_files
from tidal.storage import StorageLayout


def test_an_empty_home_is_idle(tidal_env):
    layout = StorageLayout(tidal_env().home)
    assert pending_landing_files(layout) == []
    assert landing_work(layout) == {"idle": True, "pending_files": 0, "pending_names": [], "replay_batch": None}


@pytest.mark.slow
def test_pending_files_follow_the_streams_own_checkpoint(tidal_env):
    from devtools.generate import generate_stream
    from jobs.features.stream import run_features

    settings = tidal_env()
    layout = StorageLayout(settings.home).ensure()
    generate_stream(layout, settings.params.generate, files=2, seed=3, event_types=settings.params.base.event_types)
    (layout.landing_events / ".partial.jsonl").write_text("{}\n")  # hidden: Spark never lists it
    (layout.landing_events / "notes.txt").write_text("not an event file\n")
    assert [p.name for p in pending_landing_files(layout)] == ["events-000000.jsonl", "events-000001.jsonl"]

    assert run_features(settings)["files"] == 2
    assert landing_work(layout)["idle"] is True

    # Spark percent-encodes the paths it logs: a name with a space and a '%' must match itself, nothing else.
    odd = layout.landing_events / "late file 100%.jsonl"
    odd.write_text((layout.landing_events / "events-000000.jsonl").read_text().replace('"event_id": "', '"event_id": "odd-'))
    (layout.landing_events / "empty.jsonl").write_bytes(b"")
    assert [p.name for p in pending_landing_files(layout)] == ["empty.jsonl", "late file 100%.jsonl"]
    run_features(settings)
    assert landing_work(layout)["idle"] is True

    # A batch the stream planned but never committed (a crash mid-batch leaves exactly this on disk) is work too.
    commits = layout.stream_checkpoint / "commits"
    newest = max(int(p.name) for p in commits.iterdir() if p.name.isdigit())
    (commits / str(newest)).unlink()
    (commits / f".{newest}.crc").unlink(missing_ok=True)
    work = landing_work(layout)
    assert work == {"idle": False, "pending_files": 0, "pending_names": [], "replay_batch": newest}
    run_features(settings)  # replays it
    assert landing_work(layout)["idle"] is True
