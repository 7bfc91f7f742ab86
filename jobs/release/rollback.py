"""rollback: point production back at an earlier version, recording who asked and why.

The alias file is replaced atomically (write next to it, os.replace) under the registry's lock, so a reader sees
the old version or the new one, never neither. The next incremental cycle fine-tunes from the rolled-back version:
finetune reads production's checkpoint, its last batch id and its anchor, whatever moved the alias there.

Run: `tidal rollback [--to vNNNNNN] --reason "why" [--by NAME]` (default target: the version that served before the
current one; default operator: $USER). The `tidal_rollback` DAG calls `run_rollback` with its Params.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from tidal.config import Settings, load_settings
from tidal.registry import VERSION_PATTERN, Registry
from tidal.storage import StorageLayout


def check_rollback_request(to: str | None, reason: str | None) -> tuple[str | None, str]:
    """Refuse a malformed request before touching the registry."""
    to = (to or "").strip() or None
    if to is not None and not VERSION_PATTERN.match(to):
        raise ValueError(f"--to {to!r} is not a version id such as v000003 (see `tidal registry list`)")
    if not reason or not reason.strip():
        raise ValueError("a rollback needs a reason: say why production is being moved back (--reason)")
    return to, reason.strip()


def run_rollback(settings: Settings, to: str | None, reason: str, by: str | None = None) -> dict[str, Any]:
    to, reason = check_rollback_request(to, reason)
    started = time.perf_counter()
    moved = Registry(StorageLayout(settings.home).registry).rollback(to, reason=reason, by=by)
    moved["seconds"] = round(time.perf_counter() - started, 6)
    print(f"[rollback] production {moved['from']} -> {moved['to']} by {moved['by']}: {reason} "
          f"({moved['seconds'] * 1000:.1f} ms)", flush=True)
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal rollback", description="Point production at an earlier version.")
    parser.add_argument("--to", default=None, help="version id (default: the one that served before the current one)")
    parser.add_argument("--reason", required=True, help="why production is moved back (recorded)")
    parser.add_argument("--by", default=None, help="who asks (default: $USER)")
    args = parser.parse_args(argv)
    try:
        summary = run_rollback(load_settings(), args.to, args.reason, args.by)
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"tidal rollback: {err}", file=__import__("sys").stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
