"""The graded drift response in force (reports/drift_state.json): written by drift, read by fine-tune.

Mild or severe drift switches "boost" on (fine-tune trains harder); a run that sees no drift switches it off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidal.storage import StorageLayout, atomic_write_json, read_json


def drift_state_path(layout: StorageLayout) -> Path:
    return layout.reports / "drift_state.json"


def read_drift_state(layout: StorageLayout) -> dict[str, Any]:
    """The graded response in force: {"boost": bool, ...}. Fine-tune reads it to train harder after mild drift."""
    path = drift_state_path(layout)
    return read_json(path) if path.exists() else {"boost": False, "level": "none", "run_id": None}


def update_drift_state(layout: StorageLayout, run_id: str, level: str) -> dict[str, Any]:
    """Mild or severe drift switches boost on; a run that sees no drift switches it off."""
    state = {"boost": level != "none", "level": level, "run_id": run_id}
    atomic_write_json(drift_state_path(layout), state)
    return state
