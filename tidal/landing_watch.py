"""The landing zone's watcher: what starts tidal_incremental as soon as an event file lands, not at the next tick.

`LandingFilesTrigger` is an Airflow event trigger (BaseEventTrigger) behind an AssetWatcher on the
`tidal://landing/events` asset, which tidal_incremental is scheduled on together with its fallback timetable. It runs
in Airflow's triggerer, lists landing/events/ every `poll_interval_s` seconds and yields one event each time a file
shows up that the features stream has not consumed (tidal.landing.LandingWatch: the same test `check_landing`
makes). Each event is an asset event: the scheduler starts a run at once, or, while a run is active
(max_active_runs=1), keeps the events queued and starts one run for all of them when it ends. The fallback tick still
runs every few minutes, for a quiet period and for a batch to replay after a crash, which no new file announces.

`incremental_schedule()` reads the DAG's scheduling settings from the environment (the DAG file reads no
params.yaml at parse time), typed and checked, each with a default:

- TIDAL_INCREMENTAL_TRIGGER: `landing` (default: a new landing file starts a run, plus the fallback tick) or
  `schedule` (the tick only: what tidal did before; the freshness benchmark's baseline);
- TIDAL_INCREMENTAL_EVERY_MINUTES: the tick, whole minutes from 1 to 1440 (default 5);
- TIDAL_LANDING_POLL_S: how often the watcher lists the landing folder, 0.5 to 60 seconds (default 2).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


LANDING_URI = "tidal://landing/events"
TRIGGER_MODES = ("landing", "schedule")
POLL_RANGE_S = (0.5, 60.0)
EVERY_MINUTES_RANGE = (1, 1440)
# An event names at most this many files (its payload is stored with the asset event); `pending` counts them all.
NAMES_PER_EVENT = 20


@dataclass(frozen=True)
class IncrementalSchedule:
    """How tidal_incremental is started: by a landing file and a fallback tick, or by the tick alone."""

    trigger: str = "landing"
    every_minutes: int = 5
    poll_interval_s: float = 2.0

    @property
    def event_driven(self) -> bool:
        return self.trigger == "landing"


def incremental_schedule(env: Mapping[str, str] | None = None) -> IncrementalSchedule:
    """The settings from the environment (os.environ by default); a bad value is refused with what is allowed."""
    env = os.environ if env is None else env
    trigger = env.get("TIDAL_INCREMENTAL_TRIGGER", "").strip() or "landing"
    if trigger not in TRIGGER_MODES:
        raise ValueError(f"TIDAL_INCREMENTAL_TRIGGER={trigger!r}: give one of {', '.join(TRIGGER_MODES)} "
                         "(landing: a new landing file starts a run, plus the fallback tick; schedule: the tick only)")
    every = env.get("TIDAL_INCREMENTAL_EVERY_MINUTES", "").strip() or "5"
    low, high = EVERY_MINUTES_RANGE
    if not re.fullmatch(r"[0-9]{1,4}", every) or not low <= int(every) <= high:
        raise ValueError(f"TIDAL_INCREMENTAL_EVERY_MINUTES={every!r}: give whole minutes from {low} to {high}")
    poll = env.get("TIDAL_LANDING_POLL_S", "").strip() or "2"
    try:
        poll_s = float(poll)
    except ValueError:
        poll_s = float("nan")
    if not POLL_RANGE_S[0] <= poll_s <= POLL_RANGE_S[1]:  # NaN fails this too
        raise ValueError(f"TIDAL_LANDING_POLL_S={poll!r}: give seconds from {POLL_RANGE_S[0]:g} to {POLL_RANGE_S[1]:g}")
    return IncrementalSchedule(trigger=trigger, every_minutes=int(every), poll_interval_s=poll_s)


class LandingFilesTrigger(BaseEventTrigger):
    """Fires once for every landing file that shows up pending; never ends (the triggerer cancels it)."""

    def __init__(self, poll_interval_s: float = 2.0):
        super().__init__()
        if not POLL_RANGE_S[0] <= float(poll_interval_s) <= POLL_RANGE_S[1]:
            raise ValueError(f"poll_interval_s={poll_interval_s!r}: give seconds from {POLL_RANGE_S[0]:g} to "
                             f"{POLL_RANGE_S[1]:g}")
        self.poll_interval_s = float(poll_interval_s)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.{type(self).__name__}", {"poll_interval_s": self.poll_interval_s}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The landing folder is the one the tasks use: TIDAL_HOME of the triggerer, which the stack starts with the
        # same environment as its tasks. File system reads go to a thread, off the triggerer's event loop.
        from tidal.config import load_settings
        from tidal.landing import LandingWatch
        from tidal.storage import StorageLayout

        settings = await asyncio.to_thread(load_settings)
        watch = LandingWatch(StorageLayout(settings.home))
        while True:
            try:
                new = await asyncio.to_thread(watch.poll)
            except (OSError, ValueError) as err:  # a listing or checkpoint read that failed: the next poll retries
                self.log.warning("could not read the landing folder or the stream checkpoint (%s); retrying", err)
                watch.seen.clear()  # so the files of this poll are looked at again
                new = []
            if new:
                self.log.info("%d new landing file(s): %s", len(new), new[:NAMES_PER_EVENT])
                yield TriggerEvent({"landing_files": new[:NAMES_PER_EVENT], "pending": len(new)})
            await asyncio.sleep(self.poll_interval_s)
