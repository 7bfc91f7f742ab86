"""What the serving process reports, when it runs: GET $TIDAL_SERVING_URL/readyz and /metrics (Prometheus text).

Read: `tidal_model_version_info{version="..."} 1` (the version loaded), `tidal_model_age_seconds` (since the newest
event it trained on) and `tidal_model_servable_age_seconds` (since it became servable), as serving/metrics.py
writes them. A serving process
that does not answer within a second is "serving not running"; a metric it does not export is None ("unknown").
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from typing import Any

DEFAULT_SERVING_URL = "http://127.0.0.1:18400"
TIMEOUT_S = 1.0
VERSION_INFO = re.compile(r'^tidal_model_version_info\{[^}]*version="([^"]+)"[^}]*\}\s+(\S+)', re.M)
MODEL_AGE = re.compile(r"^tidal_model_age_seconds(?:\{[^}]*\})?\s+(\S+)", re.M)
SERVABLE_AGE = re.compile(r"^tidal_model_servable_age_seconds(?:\{[^}]*\})?\s+(\S+)", re.M)


def serving_url() -> str:
    return os.environ.get("TIDAL_SERVING_URL") or DEFAULT_SERVING_URL


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
            return reply.status, reply.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read(4096).decode(errors="replace")


def parse_metrics(text: str) -> dict[str, Any]:
    """The two metrics the page shows, from Prometheus text (None when absent)."""
    versions = [v for v, value in VERSION_INFO.findall(text) if value not in ("0", "0.0")]
    age, servable = MODEL_AGE.search(text), SERVABLE_AGE.search(text)
    return {"version": versions[-1] if versions else None, "model_age_seconds": float(age.group(1)) if age else None,
            "servable_age_seconds": float(servable.group(1)) if servable else None}


def probe() -> dict[str, Any]:
    """{url, running, ready, version, model_age_seconds, error}."""
    base = serving_url().rstrip("/")
    try:
        ready_status, _ = _get(f"{base}/readyz")
    except (OSError, ValueError) as err:
        return {"url": base, "running": False, "ready": False, "version": None, "model_age_seconds": None,
                "servable_age_seconds": None, "error": f"serving not running ({type(err).__name__})"}
    try:
        status, text = _get(f"{base}/metrics")
        metrics = parse_metrics(text if status == 200 else "")
    except (OSError, ValueError):
        metrics = parse_metrics("")
    return {"url": base, "running": True, "ready": ready_status == 200, **metrics, "error": None}
