"""Build the robustness datasets of the prequential benchmark (issue 11) into a directory outside the repository.

    python benchmarks/prequential/variants.py --movielens ../shared/data/ml-latest-small --out /tmp/tidal-variants

Writes, each as `<name>.csv` in the generic schema (user_id, item_id, timestamp), plus `items.csv` for the
MovieLens variants and `synthetic_items.csv`:
- ml-compressed-7mo: every timestamp mapped linearly onto 7 months (order and ties unchanged: 30x faster);
- ml-last-3y: only the events of the last 3 years (a quarter of the events, 137 users);
- ml-half-users: the events of every second user (by id), half the density;
- synthetic-*: `models.synthetic.synthetic_stream` at event rates 1 s and 1 h apart, with and without an abrupt
  drift at 60% or 80% of the stream.
MovieLens data is never copied into the repository (its licence); the variants are regenerated from it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from models.data import load_interactions, load_items
from models.synthetic import synthetic_stream


SEVEN_MONTHS_S = 7 * 30.44 * 86400
SYNTHETIC = {  # name: (seconds between events, drift point as a share of the stream)
    "synthetic-1s": (1.0, None),
    "synthetic-1h": (3600.0, None),
    "synthetic-1s-drift60": (1.0, 0.6),
    "synthetic-1h-drift80": (3600.0, 0.8),
}


def movielens_variants(ratings: pd.DataFrame) -> dict[str, pd.DataFrame]:
    t = ratings["timestamp"]
    compressed = ratings.assign(timestamp=t.min() + (t - t.min()) * (SEVEN_MONTHS_S / (t.max() - t.min())))
    last = ratings[t >= t.max() - 3 * 365.25 * 86400]
    users = sorted(ratings["user_id"].unique(), key=int)
    half = ratings[ratings["user_id"].isin(set(users[::2]))]
    return {"ml-compressed-7mo": compressed, "ml-last-3y": last, "ml-half-users": half}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, required=True, help="directory with ratings.csv and movies.csv")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ratings = load_interactions(args.movielens / "ratings.csv")[["user_id", "item_id", "timestamp"]]
    load_items(args.movielens / "movies.csv").to_csv(args.out / "items.csv", index=False)
    for name, frame in movielens_variants(ratings).items():
        frame.to_csv(args.out / f"{name}.csv", index=False)
        print(f"{name}: {len(frame)} events, {frame['user_id'].nunique()} users, {frame['item_id'].nunique()} items")
    for name, (gap, drift) in SYNTHETIC.items():
        events, items = synthetic_stream(n_users=400, n_items=600, n_events=30000, n_groups=8, seed=11,
                                         seconds_per_event=gap, drift_at=drift)
        events.to_csv(args.out / f"{name}.csv", index=False)
        items.to_csv(args.out / "synthetic_items.csv", index=False)
        print(f"{name}: {len(events)} events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
