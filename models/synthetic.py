"""A small synthetic interaction stream for tests: latent taste groups, power-law popularity, and popularity
that moves over time, so both "who likes what" and "what is popular now" carry signal.

    interactions, items = synthetic_stream(n_users=60, n_items=80, n_events=3000, seed=0)
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_stream(n_users: int = 60, n_items: int = 80, n_events: int = 3000, n_groups: int = 4,
                     seed: int = 0, affinity: float = 0.8, seconds_per_event: float = 60.0,
                     drift_at: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions (user_id, item_id, timestamp) and items (item_id, categories, title).

    Each user belongs to one taste group; with probability `affinity` an event picks an item of the user's
    group (genre), otherwise any item. Within the choice, items are drawn by a power-law popularity whose
    ranking rotates over time (drift). Timestamps are `seconds_per_event` apart from 2024-01-01 (the event
    rate). With `drift_at` (a share of the events), tastes shift abruptly there: every user moves to the next
    taste group and the popularity ranking jumps by half the catalog.
    """
    rng = np.random.default_rng(seed)
    user_group = rng.integers(0, n_groups, n_users)
    item_group = np.arange(n_items) % n_groups
    base_pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users = rng.integers(0, n_users, n_events)
    rows_u, rows_i = [], []
    drift_event = n_events if drift_at is None else int(drift_at * n_events)
    for t, u in enumerate(users):
        # Popularity ranking shifts by one item every n_events / n_items events: recent popularity matters.
        shift = int(t * n_items / n_events) + (n_items // 2 if t >= drift_event else 0)
        pop = np.roll(base_pop, shift)
        group = (user_group[u] + (1 if t >= drift_event else 0)) % n_groups
        if rng.random() < affinity:
            pool = np.flatnonzero(item_group == group)
        else:
            pool = np.arange(n_items)
        p = pop[pool] / pop[pool].sum()
        rows_u.append(f"u{u}")
        rows_i.append(f"i{rng.choice(pool, p=p)}")
    start = 1_704_067_200.0
    interactions = pd.DataFrame({"user_id": rows_u, "item_id": rows_i,
                                 "timestamp": start + seconds_per_event * np.arange(n_events)})
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n_items)],
                          "categories": [f"g{g}|all" for g in item_group],
                          "title": [f"item {j}" for j in range(n_items)]})
    return interactions, items
