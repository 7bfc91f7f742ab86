"""Loaders that turn interaction and item files into the frames `models` works on.

Interactions (generic schema): a header row, then `user_id`, `item_id`, `timestamp` (unix seconds or
ISO-8601), optional `value` and `event_type`; CSV or Parquet. The MovieLens layout (`userId`, `movieId`,
`rating`, `timestamp`) is recognised too. Output columns: user_id (str), item_id (str), timestamp (float, unix
seconds), plus value / event_type when present.

Items: `item_id`, `categories` joined with `|`, optional `title`; or MovieLens `movies.csv`
(`movieId`, `title`, `genres`). Output columns: item_id (str), categories (str, "a|b"), title (str, optional).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

_MOVIELENS_INTERACTIONS = {"userId": "user_id", "movieId": "item_id", "rating": "value"}
_MOVIELENS_ITEMS = {"movieId": "item_id", "genres": "categories"}
_NO_CATEGORY = {"", "(no genres listed)"}


def _read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix.lower() in {".parquet", ".pq"} or path.is_dir():
        return pd.read_parquet(path)
    # ids stay strings: "007" and "7" are different items.
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def to_unix_seconds(values: pd.Series) -> pd.Series:
    """Unix seconds (float) from numbers, numeric strings, ISO-8601 strings or datetimes; UTC assumed."""
    if pd.api.types.is_datetime64_any_dtype(values):
        dt = pd.to_datetime(values, utc=True)
        return (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype(float)
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        return numeric.astype(float)
    dt = pd.to_datetime(values, utc=True, format="ISO8601")
    return (dt - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype(float)


def normalize_interactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Generic-schema frame with typed columns; MovieLens column names are mapped."""
    frame = frame.rename(columns={k: v for k, v in _MOVIELENS_INTERACTIONS.items() if k in frame.columns})
    missing = {"user_id", "item_id", "timestamp"} - set(frame.columns)
    if missing:
        raise ValueError(f"interactions lack columns {sorted(missing)}; got {list(frame.columns)}")
    out = pd.DataFrame({
        "user_id": frame["user_id"].astype(str),
        "item_id": frame["item_id"].astype(str),
        "timestamp": to_unix_seconds(frame["timestamp"]),
    })
    if "value" in frame.columns:
        out["value"] = pd.to_numeric(frame["value"], errors="coerce")
    if "event_type" in frame.columns:
        out["event_type"] = frame["event_type"].astype(str)
    if "weight" in frame.columns:
        out["weight"] = pd.to_numeric(frame["weight"], errors="coerce").astype(float)
    return out


def load_interactions(path: str | Path) -> pd.DataFrame:
    """Interactions from CSV/Parquet (generic schema or MovieLens `ratings.csv`), in file order."""
    return normalize_interactions(_read_table(path))


def normalize_items(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.rename(columns={k: v for k, v in _MOVIELENS_ITEMS.items() if k in frame.columns})
    if "item_id" not in frame.columns:
        raise ValueError(f"item metadata lacks item_id; got {list(frame.columns)}")
    cats = frame["categories"] if "categories" in frame.columns else pd.Series("", index=frame.index)
    cats = cats.fillna("").astype(str).map(
        lambda s: "|".join(c.strip() for c in s.split("|") if c.strip() not in _NO_CATEGORY))
    out = pd.DataFrame({"item_id": frame["item_id"].astype(str), "categories": cats})
    if "title" in frame.columns:
        out["title"] = frame["title"].astype(str)
    return out.drop_duplicates("item_id", keep="last").reset_index(drop=True)


def load_items(path: str | Path) -> pd.DataFrame:
    """Item metadata from CSV/Parquet (generic schema or MovieLens `movies.csv`)."""
    return normalize_items(_read_table(path))


def sort_by_time(interactions: pd.DataFrame) -> pd.DataFrame:
    """Stable sort on timestamp: ties keep file order, as the protocol requires."""
    order = np.argsort(interactions["timestamp"].to_numpy(), kind="stable")
    return interactions.iloc[order].reset_index(drop=True)


def event_ages(timestamps) -> np.ndarray:
    """Age of each event in events, the stream's own clock: how many of the given events are newer (ties: a
    later row is newer). (n,) -> (n,) float."""
    order = np.argsort(np.asarray(timestamps, dtype=float), kind="stable")
    ages = np.empty(len(order), dtype=float)
    ages[order] = np.arange(len(order) - 1, -1, -1, dtype=float)
    return ages
