"""tidal.landing_watch and tidal.landing.LandingWatch: the scheduling settings are checked, a landing file is announced
once when it shows up pending, and the trigger yields an event for it within its poll interval (the trigger under
the real triggerer and scheduler: tests/dags/test_incremental_scheduler.py)."""

from __future__ import annotations

import asyncio
import json
import re
import os

import pytest

from tidal.landing import LandingWatch
from tidal.landing_watch import IncrementalSchedule, LandingFilesTrigger, incremental_schedule
from tidal.storage import StorageLayout


def test_the_defaults_are_event_driven_with_a_five_minute_fallback():
    assert incremental_schedule({}) == IncrementalSchedule(trigger="landing", every_minutes=5, poll_interval_s=2.0)
    assert incremental_schedule({}).event_driven is True


def test_settings_from_the_environment():
    schedule = incremental_schedule({"TIDAL_INCREMENTAL_TRIGGER": "schedule", "TIDAL_INCREMENTAL_EVERY_MINUTES": "1440",
                                     "TIDAL_LANDING_POLL_S": "0.5"})
    assert schedule == IncrementalSchedule(trigger="schedule", every_minutes=1440, poll_interval_s=0.5)
    assert schedule.event_driven is False


@pytest.mark.parametrize("name, value, allowed", [
    ("TIDAL_INCREMENTAL_TRIGGER", "asset", "give one of landing, schedule"),
    ("TIDAL_INCREMENTAL_TRIGGER", "Landing", "give one of landing, schedule"),
    ("TIDAL_INCREMENTAL_EVERY_MINUTES", "0", "give whole minutes from 1 to 1440"),
    ("TIDAL_INCREMENTAL_EVERY_MINUTES", "1441", "give whole minutes from 1 to 1440"),
    ("TIDAL_INCREMENTAL_EVERY_MINUTES", "2.5", "give whole minutes from 1 to 1440"),
    ("TIDAL_INCREMENTAL_EVERY_MINUTES", "-3", "give whole minutes from 1 to 1440"),
    ("TIDAL_LANDING_POLL_S", "0.1", "give seconds from 0.5 to 60"),
    ("TIDAL_LANDING_POLL_S", "nan", "give seconds from 0.5 to 60"),
    ("TIDAL_LANDING_POLL_S", "fast", "give seconds from 0.5 to 60"),
])
def test_a_bad_setting_is_refused_with_what_is_allowed(name, value, allowed):
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}: {allowed}")):
        incremental_schedule({name: value})


def test_the_trigger_refuses_a_bad_poll_interval_and_serializes_to_an_importable_class():
    with pytest.raises(ValueError, match="poll_interval_s=0: give seconds from 0.5 to 60"):
        LandingFilesTrigger(poll_interval_s=0)
    classpath, kwargs = LandingFilesTrigger(poll_interval_s=3).serialize()
    assert (classpath, kwargs) == ("tidal.landing_watch.LandingFilesTrigger", {"poll_interval_s": 3.0})
    from airflow._shared.module_loading import import_string  # the triggerer's own loader

    # What the triggerer does with the stored row.
    assert import_string(classpath)(**kwargs).poll_interval_s == 3.0


def consume(layout: StorageLayout, *names: str) -> None:
    """Record files as planned into a batch, the way Spark's file-source log does (tidal.landing reads it back)."""
    log = layout.stream_checkpoint / "sources" / "0"
    log.mkdir(parents=True, exist_ok=True)
    batch = len([p for p in log.iterdir() if p.name.isdigit()])
    lines = ["v1"] + [json.dumps({"path": (layout.landing_events / n).resolve().as_uri(), "timestamp": 0, "batchId": batch})
                      for n in names]
    (log / str(batch)).write_text("\n".join(lines) + "\n")


def land(layout: StorageLayout, name: str) -> None:
    hidden = layout.landing_events / f".{name}.tmp"
    hidden.write_text('{"event_id": "e1"}\n')
    os.replace(hidden, layout.landing_events / name)


def test_a_landing_file_is_announced_once_when_it_shows_up_pending(tidal_env):
    layout = StorageLayout(tidal_env().home).ensure()
    land(layout, "events-000000.jsonl")
    consume(layout, "events-000000.jsonl")  # consumed before the watch started: nothing to announce
    watch = LandingWatch(layout)
    assert watch.poll() == []

    land(layout, "events-000001.jsonl")
    land(layout, "events-000002.parquet")
    (layout.landing_events / ".events-000003.jsonl.tmp").write_text("{}\n")  # still being written: not a landing file
    (layout.landing_events / "notes.txt").write_text("not an event file\n")
    assert watch.poll() == ["events-000001.jsonl", "events-000002.parquet"]
    assert watch.poll() == []  # still pending, but already announced

    land(layout, "events-000004.jsonl")
    consume(layout, "events-000001.jsonl", "events-000002.parquet", "events-000004.jsonl")
    assert watch.poll() == []  # consumed between two polls: no run needed for it

    # A file that leaves the folder and lands again (same name) is new again.
    (layout.landing_events / "events-000001.jsonl").unlink()
    assert watch.poll() == []
    land(layout, "events-000001.jsonl")
    assert watch.poll() == []  # the stream already planned that path: Spark would not read it again


def test_a_watch_on_a_home_without_a_landing_folder_waits(tidal_env):
    assert LandingWatch(StorageLayout(tidal_env().home)).poll() == []


def test_the_trigger_yields_one_event_per_new_pending_file_within_its_poll_interval(tidal_env):
    layout = StorageLayout(tidal_env().home).ensure()
    land(layout, "events-000000.jsonl")  # pending before the trigger starts: announced at its first poll

    async def events() -> list[dict]:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        async def pump() -> None:  # what the triggerer does: take every event the trigger yields
            async for event in LandingFilesTrigger(poll_interval_s=0.5).run():
                await queue.put((loop.time(), event.payload))

        pumping = asyncio.create_task(pump())
        try:
            found = [(await asyncio.wait_for(queue.get(), timeout=10))[1]]
            await asyncio.sleep(1.5)
            assert queue.empty()  # nothing new: no event
            land(layout, "events-000001.jsonl")
            land(layout, "events-000002.jsonl")
            landed = loop.time()
            fired_at, payload = await asyncio.wait_for(queue.get(), timeout=10)
            assert fired_at - landed < 0.5 + 2  # one poll interval, plus a thread hop on a busy machine
            return found + [payload]
        finally:
            pumping.cancel()

    assert asyncio.run(events()) == [{"landing_files": ["events-000000.jsonl"], "pending": 1},
                                     {"landing_files": ["events-000001.jsonl", "events-000002.jsonl"], "pending": 2}]


def test_an_unreadable_checkpoint_is_retried_not_fatal(tidal_env):
    """A read that fails (here a source log that is not JSON) logs and retries; the file is announced once it reads."""
    layout = StorageLayout(tidal_env().home).ensure()
    log = layout.stream_checkpoint / "sources" / "0"
    log.mkdir(parents=True)
    (log / "0").write_text("v1\n{not json\n")
    land(layout, "events-000000.jsonl")

    async def first_event() -> dict:
        stream = LandingFilesTrigger(poll_interval_s=0.5).run()
        pending = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(1.2)
        assert not pending.done()  # two failed polls, no event, no crash
        (log / "0").write_text("v1\n")
        event = await asyncio.wait_for(pending, timeout=10)
        await stream.aclose()
        return event.payload

    assert asyncio.run(first_event()) == {"landing_files": ["events-000000.jsonl"], "pending": 1}
