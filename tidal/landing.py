"""Is there anything for the features job to do? A cheap answer from the file system, without starting Spark.

The features stream records every landing file it has planned into a micro-batch in its file-source log
(checkpoints/stream/sources/0/<batch id>[.compact]: a "v1" line, then one JSON object a file with its `path` as a
percent-encoded file URI). A landing file is pending when it matches the stream's glob and is not in that log; a
planned batch without a commit (a crash mid-batch) is pending work too, since the next run replays it. The
incremental DAG's first task and `tidal cycle` ask this before paying for a Spark start, so an idle run ends in
seconds and says so. `LandingWatch` asks it of newly seen files only, for the landing zone's watcher
(tidal/landing_watch.py) that starts a run as soon as a file lands.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import unquote, urlparse

from tidal.config import Settings
from tidal.storage import StorageLayout


# The stream's pathGlobFilter (*.{jsonl,parquet}); Spark's file listing skips names starting with '.' or '_'.
LANDING_SUFFIXES = (".jsonl", ".parquet")

log = logging.getLogger("tidal.landing")


def is_landing_file(path: Path) -> bool:
    return path.is_file() and path.suffix in LANDING_SUFFIXES and not path.name.startswith((".", "_"))


def consumed_landing_files(layout: StorageLayout) -> set[Path]:
    """Every landing file the stream has planned into a batch, as absolute paths."""
    source_log = layout.stream_checkpoint / "sources" / "0"
    if not source_log.exists():
        return set()
    consumed: set[Path] = set()
    for entry in source_log.iterdir():
        if not entry.name.removesuffix(".compact").isdigit():
            continue  # .crc sidecars and Spark's temporary files
        for line in entry.read_text().splitlines()[1:]:
            if line.strip():
                consumed.add(Path(unquote(urlparse(json.loads(line)["path"]).path)))
    return consumed


def newest_checkpoint_batch(layout: StorageLayout, log: str) -> int | None:
    """The newest batch id in one of the stream checkpoint's logs: `offsets` (planned) or `commits` (committed)."""
    path = layout.stream_checkpoint / log
    return max((int(p.name) for p in path.iterdir() if p.name.isdigit()), default=None) if path.exists() else None


def newest_committed_batch(layout: StorageLayout) -> int | None:
    """The newest batch id the stream checkpoint has committed (commits/<id>). Every batch up to it can never be
    replayed; only the newest commits are kept (spark.sql.streaming.minBatchesToRetain), so older batches are
    known committed by being older, not by their own file."""
    return newest_checkpoint_batch(layout, "commits")


def uncommitted_batch(layout: StorageLayout) -> int | None:
    """The id of a batch the stream planned but never committed (the next run replays it), or None."""
    planned, committed = newest_checkpoint_batch(layout, "offsets"), newest_committed_batch(layout)
    return planned if planned is not None and (committed is None or planned > committed) else None


def pending_landing_files(layout: StorageLayout) -> list[Path]:
    """Landing files the stream has not planned into any batch yet, oldest name first."""
    if not layout.landing_events.exists():
        return []
    consumed = consumed_landing_files(layout)
    return sorted(p for p in layout.landing_events.iterdir() if is_landing_file(p) and p.resolve() not in consumed)


def landing_work(layout: StorageLayout) -> dict:
    """What the next features run would do: the pending files and a batch to replay. `idle` when neither."""
    pending = pending_landing_files(layout)
    replay = uncommitted_batch(layout)
    return {"idle": not pending and replay is None, "pending_files": len(pending),
            "pending_names": [p.name for p in pending[:20]], "replay_batch": replay}


def log_landing_work(work: dict) -> dict:
    if work["idle"]:
        log.info("idle: no new landing files and no batch to replay; the rest of this run is skipped")
    else:
        log.info("%d new landing file(s) %s%s", work["pending_files"], work["pending_names"],
                 f"; batch {work['replay_batch']} to replay" if work["replay_batch"] is not None else "")
    return work


def check_landing(settings: Settings) -> dict:
    """The incremental pipeline's guard: the landing work, logged; {"idle": True, ...} when there is none."""
    return log_landing_work(landing_work(StorageLayout(settings.home)))


class LandingWatch:
    """Remembers the landing files it has seen; `poll()` names the newly seen ones the stream has not consumed.

    A file is announced once, when it first shows up pending; a name that leaves the folder and comes back counts
    as new again. The stream's checkpoint is read only when a new name appears, so a quiet folder costs one listing
    per poll."""

    def __init__(self, layout: StorageLayout):
        self.layout = layout
        self.seen: set[str] = set()

    def poll(self) -> list[str]:
        folder = self.layout.landing_events
        names = {p.name for p in folder.iterdir() if is_landing_file(p)} if folder.exists() else set()
        new, self.seen = names - self.seen, names
        if not new:
            return []
        return sorted(new & {p.name for p in pending_landing_files(self.layout)})
