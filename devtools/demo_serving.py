"""The demo's view of serving: real requests to the running `tidal serve` before and after the cycles, a user who
first appeared in the new events, and the freshness figures (tidal/freshness.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any


def ask(serving_url: str, user_id: str, k: int = 5) -> dict[str, Any]:
    """GET /v1/recommendations/{user}: the body, with the HTTP status (503 before anything can be served)."""
    url = f"{serving_url.rstrip('/')}/v1/recommendations/{urllib.parse.quote(user_id, safe='')}?k={k}"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return {"status": reply.status, **json.loads(reply.read())}
    except urllib.error.HTTPError as error:
        return {"status": error.code, **json.loads(error.read() or b"{}")}
    except urllib.error.URLError as error:
        return {"status": None, "error": f"serving not reachable at {serving_url} ({error.reason}); "
                                          "`scripts/stack.sh up serving` starts it"}


def wait_until_serving(serving_url: str, version: str | None, timeout_s: float = 30) -> str | None:
    """Until /readyz names `version` (hot-swap takes about a second); the version it names at the end."""
    deadline, named = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{serving_url.rstrip('/')}/readyz", timeout=5) as reply:
                named = json.loads(reply.read()).get("version")
        except (urllib.error.URLError, ValueError):
            named = None
        if version is None or named == version:
            return named
        time.sleep(0.2)
    return named


def users_of(paths: list[Path]) -> Counter:
    """Events per user in landing files (malformed lines skipped)."""
    counts: Counter = Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            try:
                user = json.loads(line).get("user_id")
            except (ValueError, AttributeError):
                continue
            if isinstance(user, str):
                counts[user] += 1
    return counts


def newcomer(fed: list[list[Path]]) -> str | None:
    """A user whose first events are in the last files fed (the most active such user)."""
    if len(fed) < 2:
        return None
    earlier = users_of([p for files in fed[:-1] for p in files])
    last = users_of(fed[-1])
    fresh = [(n, user) for user, n in last.items() if user not in earlier]
    return max(fresh)[1] if fresh else None


def describe(body: dict[str, Any]) -> str:
    if body.get("status") != 200:
        return f"HTTP {body.get('status')}: {body.get('error')}"
    items = ", ".join(item["item_id"] for item in body["items"])
    why = f"; fallback: {body['fallback']}" if body.get("fallback") else ""
    degraded = f"; degraded: {body['degraded']}" if body.get("degraded") else ""
    return f"model {body['model_version']} ({body['source']}) -> {items}{why}{degraded}"


def serving_lines(serving_url: str, before: tuple[str, dict], after: dict, new_user: tuple[str, dict] | None
                  ) -> list[str]:
    user, before_body = before
    lines = [f"serving ({serving_url}/v1/recommendations/<user>?k=5):",
             f"  before the cycles, {user}: {describe(before_body)}",
             f"  after the cycles,  {user}: {describe(after)}"]
    if new_user is not None:
        lines.append(f"  {new_user[0]} (first seen in the last cycle's events): {describe(new_user[1])}")
    return lines


def freshness_lines(report: dict[str, Any]) -> list[str]:
    online, served = report["landed_to_online_s"], report["landed_to_served_s"]

    def cell(stats: dict) -> str:
        return "no data" if not stats["n"] else f"p50 {stats['p50']} s, p95 {stats['p95']} s over {stats['n']} file(s)"

    lines = ["freshness (tidal/freshness.py; a file's mtime -> online store written / served by a model trained on it):",
             f"  landed -> visible in the online store: {cell(online)}",
             f"  landed -> served by a model trained on it: {cell(served)}"]
    if report["not_served_yet"]:
        lines.append(f"  not served yet: {', '.join(report['not_served_yet'])}")
    return lines
