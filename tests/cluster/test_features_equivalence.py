"""The features job on the Spark standalone cluster (two 1-core workers) gives what it gives on `local[2]` for the
same landing files: the same bronze rows, the same examples (every feature within 1e-6) and the same quarantine.
Only the params file differs (features.spark_master), as in the profile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT


pytestmark = [pytest.mark.cluster, pytest.mark.slow]

FEATURE_TOLERANCE = 1e-6


def run_features(env: dict[str, str], home: Path, params: Path) -> dict:
    """`tidal features` as a task runs it, in its own process (one Spark driver per process)."""
    run_env = {**env, "TIDAL_HOME": str(home), "TIDAL_PARAMS": str(params)}
    done = subprocess.run([sys.executable, "-m", "jobs.features.stream", "--run-id", "equivalence"], env=run_env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads((home / "reports" / "runs" / "equivalence" / "features.json").read_text())


def table(path: Path, home: Path, keys: list[str]) -> pd.DataFrame:
    """Every Parquet file under PATH, read file by file (a partition column can also be a data column, which a
    dataset read refuses), with its partition folder as a column, sorted by KEYS; the home's own path (in
    source_file) is cut so two homes compare."""
    import pyarrow.parquet as pq

    frames = []
    for file in sorted(path.rglob("*.parquet")):
        frame = pq.read_table(file).to_pandas()
        frame["partition"] = str(file.parent.relative_to(path))
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    if "source_file" in frame.columns:
        frame["source_file"] = frame["source_file"].str.replace(str(home), "<home>", regex=False)
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def assert_same(left: pd.DataFrame, right: pd.DataFrame, what: str) -> None:
    assert list(left.columns) == list(right.columns), what
    assert len(left) == len(right) and len(left) > 0, (what, len(left), len(right))
    for column in left.columns:
        a, b = left[column], right[column]
        if pd.api.types.is_float_dtype(a):
            assert np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=0, atol=FEATURE_TOLERANCE, equal_nan=True), \
                (what, column, float(np.nanmax(np.abs(a.to_numpy(float) - b.to_numpy(float)))))
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist(), (what, column)


def test_features_on_the_spark_cluster_equal_local(cluster_profile, tmp_path):
    from devtools.generate import generate_stream
    from tidal.config import load_params
    from tidal.storage import StorageLayout

    env = cluster_profile
    params = load_params(REPO_ROOT / "params.yaml")
    source = StorageLayout(tmp_path / "source").ensure()
    generate_stream(source, params.generate, seed=11, files=4, event_types=params.base.event_types, bad_fraction=0.05)
    homes = {}
    for name in ("local", "cluster"):
        homes[name] = tmp_path / name
        shutil.copytree(source.landing_events, StorageLayout(homes[name]).ensure().landing_events, dirs_exist_ok=True)

    local = run_features(env, homes["local"], REPO_ROOT / "params.yaml")
    on_cluster = run_features(env, homes["cluster"], Path(env["TIDAL_PARAMS"]))
    assert load_params(env["TIDAL_PARAMS"]).features.spark_master == env["TIDAL_SPARK_MASTER_URL"]
    for key in ("files", "landed", "accepted", "quarantined", "duplicates", "quarantine_reasons", "batch_ids"):
        assert local[key] == on_cluster[key], key
    assert local["quarantined"] > 0 and local["accepted"] > 0

    def both(what: str, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        return tuple(table(getattr(StorageLayout(homes[name]), what), homes[name], keys) for name in ("local", "cluster"))

    assert_same(*both("bronze_events", ["event_id"]), "bronze")
    assert_same(*both("feature_examples", ["event_id"]), "examples")
    assert_same(*both("quarantine_events", ["source_file", "line_number"]), "quarantine")
