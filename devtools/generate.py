"""Synthetic interaction stream: a seeded world of users and items that the demo and the tests feed to tidal.

The world has latent preferences (users like items close to them), power-law item popularity, item categories
that agree with the latent space (so content features help cold start), new users and items arriving with every
file, and an optional drift point after which tastes and popularity shift. File k is a pure function of
(params, seed, k): regenerating a file gives the same bytes, and files continue where the landing zone stops.

Run: `tidal generate --files 3` (or `python -m devtools.generate --files 3`).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tidal.config import GenerateParams, load_settings
from tidal.storage import StorageLayout, atomic_write_bytes, atomic_write_json


LANDING_FILE_PATTERN = re.compile(r"^events-(\d{6})\.jsonl$")
# Mix of event types a real catalogue sees: mostly views, few purchases.
EVENT_TYPE_MIX = {"view": 0.60, "click": 0.24, "add_to_cart": 0.08, "purchase": 0.05, "rating": 0.03}
# Malformed variants injected when bad_fraction > 0, so the demo shows quarantine at work.
BAD_LINE_KINDS = ("broken_json", "missing_user_id", "wrong_type", "unknown_event_type", "future_timestamp")


@dataclass(frozen=True)
class GeneratedFile:
    index: int
    path: Path
    events: int
    bad_lines: int


class SyntheticWorld:
    """Latent users and items. Row i of every array is stable whatever the capacity, so ids never change meaning."""

    def __init__(self, params: GenerateParams, seed: int, files: int):
        self.params = params
        capacity_users = params.users + params.new_users_per_file * files
        capacity_items = params.items + params.new_items_per_file * files
        # Each array has its own random stream and is drawn element by element, so row i is the same whatever the
        # capacity: a user or item keeps its tastes from one `tidal generate` call to the next.
        def stream(k: int) -> np.random.Generator:
            return np.random.default_rng([seed, k])

        n_cat = len(params.categories)
        self.category_centres = stream(1).normal(size=(n_cat, params.latent_dim))  # (C, D)
        self.item_category = stream(2).integers(0, n_cat, size=capacity_items)  # (I,)
        self.item_vectors = self.category_centres[self.item_category] + 0.5 * stream(3).normal(
            size=(capacity_items, params.latent_dim))  # (I, D)
        self.user_vectors = stream(4).normal(size=(capacity_users, params.latent_dim))  # (U, D)
        # Zipf-like popularity: item i behaves as rank 1 + u_i * items of the initial catalogue, weight rank^-exponent
        # (u_i uniform), so new items are drawn from the same power law as the first ones.
        def zipf_log_weights(rng: np.random.Generator) -> np.ndarray:
            return -params.popularity_exponent * np.log1p(rng.random(capacity_items) * params.items)

        self.item_log_popularity = zipf_log_weights(stream(5))
        self.user_activity = stream(6).pareto(1.5, size=capacity_users) + 1.0
        # After the drift point users want other things and a different head of the catalogue is popular.
        self.drifted_user_vectors = stream(7).normal(size=(capacity_users, params.latent_dim))
        self.drifted_item_log_popularity = zipf_log_weights(stream(8))

    def users_at(self, file_index: int) -> int:
        return self.params.users + self.params.new_users_per_file * file_index

    def items_at(self, file_index: int) -> int:
        return self.params.items + self.params.new_items_per_file * file_index


def user_id(index: int) -> str:
    return f"u{index:06d}"


def item_id(index: int) -> str:
    return f"i{index:06d}"


def generate_file_events(world: SyntheticWorld, file_index: int, seed: int, events_per_file: int,
                         event_types: tuple[str, ...]) -> list[dict]:
    """The events of one landing file, ordered by event time."""
    params = world.params
    rng = np.random.default_rng([seed, 1000 + file_index])
    n_users, n_items = world.users_at(file_index), world.items_at(file_index)
    drifted = params.drift_at_file is not None and file_index >= params.drift_at_file
    user_vectors = world.drifted_user_vectors if drifted else world.user_vectors
    log_pop = world.drifted_item_log_popularity if drifted else world.item_log_popularity

    activity = world.user_activity[:n_users] / world.user_activity[:n_users].sum()
    users = rng.choice(n_users, size=events_per_file, p=activity)  # (E,)
    logits = user_vectors[users] @ world.item_vectors[:n_items].T / np.sqrt(params.latent_dim) + log_pop[:n_items]  # (E, I)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    # Inverse-CDF sampling, one item per row.
    items = (probs.cumsum(axis=1) > rng.random((events_per_file, 1))).argmax(axis=1)

    mix_types = [t for t in EVENT_TYPE_MIX if t in event_types] or list(event_types)
    mix = np.array([EVENT_TYPE_MIX.get(t, 1.0) for t in mix_types])
    types = rng.choice(len(mix_types), size=events_per_file, p=mix / mix.sum())
    start = datetime.fromisoformat(params.start_time.replace("Z", "+00:00")).timestamp()
    offsets = np.sort(rng.uniform(0, params.file_interval_s, size=events_per_file))
    events = []
    for j in range(events_per_file):
        event_type = mix_types[types[j]]
        value = None
        if event_type == "rating":
            value = float(rng.integers(1, 6))
        elif event_type == "view":
            value = round(float(rng.uniform(0.05, 1.0)), 3)
        elif event_type == "purchase":
            value = round(float(rng.lognormal(2.5, 0.6)), 2)
        ts = datetime.fromtimestamp(start + file_index * params.file_interval_s + offsets[j], tz=timezone.utc)
        events.append({
            "event_id": f"s{seed}-f{file_index:06d}-e{j:05d}",
            "user_id": user_id(int(users[j])),
            "item_id": item_id(int(items[j])),
            "event_type": event_type,
            "value": value,
            "event_time": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "context": {"source": "synthetic", "file": file_index},
        })
    return events


def corrupt_event(event: dict, kind: str) -> str:
    """One malformed landing line of the given kind (the contract breaches quarantine must catch)."""
    if kind == "broken_json":
        return json.dumps(event)[:-7]
    bad = dict(event)
    if kind == "missing_user_id":
        bad.pop("user_id")
    elif kind == "wrong_type":
        bad["value"] = "not-a-number"
    elif kind == "unknown_event_type":
        bad["event_type"] = "teleport"
    elif kind == "future_timestamp":
        bad["event_time"] = "2999-01-01T00:00:00Z"
    return json.dumps(bad)


def next_file_index(landing_dir: Path) -> int:
    indices = [int(m.group(1)) for p in landing_dir.glob("events-*.jsonl") if (m := LANDING_FILE_PATTERN.match(p.name))]
    return max(indices, default=-1) + 1


def write_item_metadata(world: SyntheticWorld, upto_file: int, items_dir: Path) -> Path:
    lines = ["item_id,categories,title"]
    for i in range(world.items_at(upto_file)):
        lines.append(f"{item_id(i)},{world.params.categories[world.item_category[i]]},Item {i}")
    path = items_dir / "items.csv"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def generate_stream(layout: StorageLayout, params: GenerateParams, *, seed: int, files: int, event_types: tuple[str, ...],
                    bad_fraction: float = 0.0) -> list[GeneratedFile]:
    """Append `files` landing files after the last one present; return what was written."""
    if files < 1:
        raise ValueError("files must be at least 1")
    if not 0.0 <= bad_fraction < 1.0:
        raise ValueError("bad_fraction must be in [0, 1)")
    layout.landing_events.mkdir(parents=True, exist_ok=True)
    first = next_file_index(layout.landing_events)
    world = SyntheticWorld(params, seed, first + files)
    written = []
    for index in range(first, first + files):
        events = generate_file_events(world, index, seed, params.events_per_file, event_types)
        rng = np.random.default_rng([seed, index, 7])
        bad_rows = set(np.flatnonzero(rng.random(len(events)) < bad_fraction).tolist())
        lines = [corrupt_event(e, BAD_LINE_KINDS[n % len(BAD_LINE_KINDS)]) if n in bad_rows else json.dumps(e)
                 for n, e in enumerate(events)]
        path = layout.landing_events / f"events-{index:06d}.jsonl"
        # A hidden temp name then rename: the file source never lists a half-written file.
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
        written.append(GeneratedFile(index=index, path=path, events=len(events), bad_lines=len(bad_rows)))
    write_item_metadata(world, first + files - 1, layout.landing_items)
    atomic_write_json(layout.root / "landing" / "generator.json",
                      {"seed": seed, "next_file_index": first + files, "params": params.model_dump()})
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal generate", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1, help="landing files to append (default 1)")
    parser.add_argument("--events-per-file", type=int, help="override generate.events_per_file")
    parser.add_argument("--drift-at-file", type=int, help="file index from which preferences shift")
    parser.add_argument("--bad-fraction", type=float, default=0.0, help="share of lines made malformed (default 0)")
    parser.add_argument("--seed", type=int, help="override base.seed")
    args = parser.parse_args(argv)
    overrides: dict = {"generate": {}}
    if args.events_per_file is not None:
        overrides["generate"]["events_per_file"] = args.events_per_file
    if args.drift_at_file is not None:
        overrides["generate"]["drift_at_file"] = args.drift_at_file
    settings = load_settings(overrides=overrides)
    layout = StorageLayout(settings.home).ensure()
    seed = settings.params.base.seed if args.seed is None else args.seed
    written = generate_stream(layout, settings.params.generate, seed=seed, files=args.files,
                              event_types=settings.params.base.event_types, bad_fraction=args.bad_fraction)
    for f in written:
        print(f"wrote {f.path} ({f.events} events, {f.bad_lines} malformed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
