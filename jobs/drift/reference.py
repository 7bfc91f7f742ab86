"""The two sides a drift test compares: production's stored reference sample and the current window.

Every configured feature must be a column of both sides: a missing one raises MissingDriftFeature, naming the
feature, the side and the columns there, never a silent "no drift". Both sides use the feature store's names
(`event_weight`, see tidal.datasets). A training run stores its reference with `drift_reference_sample`.
"""

from __future__ import annotations

import pandas as pd

from tidal.config import DriftParams
from tidal.datasets import load_examples, with_feature_store_names
from tidal.registry import REFERENCE_FILE, ModelVersion
from tidal.storage import StorageLayout


OLD_REFERENCE_REMEDY = (
    ". A reference stored before tidal kept every drift feature (older versions lack "
    "event_weight) is not rewritten, since a version never changes: run a full retrain (`tidal retrain --reason "
    "\"...\"` or trigger the tidal_full_retrain DAG) so that production stores a complete reference, or remove the "
    "feature from params.yaml drift")


class MissingDriftFeature(ValueError):
    """A feature that params.yaml's drift section names is not a column of one side of the comparison."""


def require_features(frame: pd.DataFrame, features: tuple[str, ...], side: str, remedy: str = "") -> None:
    """Raise MissingDriftFeature naming every configured feature that `frame` (the `side`) lacks."""
    missing = [f for f in features if f not in frame.columns]
    if not missing:
        return
    names = ", ".join(repr(f) for f in missing)
    what = f"feature {names} (params.yaml drift.features / categorical_features) is not a column" if len(missing) == 1 \
        else f"features {names} (params.yaml drift.features / categorical_features) are not columns"
    raise MissingDriftFeature(f"configured drift {what} of the {side}; its columns are "
                              f"{sorted(map(str, frame.columns))}{remedy}")


def production_reference(production: ModelVersion, params: DriftParams) -> pd.DataFrame:
    """The production version's stored reference sample, refused if it lacks a configured feature."""
    path = production.path / REFERENCE_FILE
    reference = pd.read_parquet(path)
    require_features(reference, params.reference_columns, f"reference of production {production.version} ({path})",
                     OLD_REFERENCE_REMEDY)
    return reference


def current_window(layout: StorageLayout, batch_ids: list[int], params: DriftParams) -> pd.DataFrame:
    current = with_feature_store_names(load_examples(layout, batch_ids))
    if len(current):
        require_features(current, params.reference_columns, f"current window (examples of batches {batch_ids})")
    return current


def drift_reference_sample(examples: pd.DataFrame, features: tuple[str, ...], max_rows: int, seed: int) -> pd.DataFrame:
    """The drift reference stored with a model: its training examples' drift features, under the feature store's
    names (the training frames call event_weight `weight`), at most `max_rows` of them. Every feature must be there:
    a reference without one would make every later drift run of the chain skip that feature."""
    from jobs.drift.reference import require_features
    from tidal.datasets import with_feature_store_names

    examples = with_feature_store_names(examples)
    require_features(examples, features, "training examples")
    sample = examples[list(features)]
    return sample.sample(n=max_rows, random_state=seed) if len(sample) > max_rows else sample
