"""`tidal registry list | show VERSION | served-at TIME`: what versions exist, which serves, where each came from.

list       one line per version: kind, parent, anchor, metrics, promoted and retired times, the serving marker
show V     the full lineage of one version: metadata (batches, rows, event-time range, metrics, params, code
           version, checksums) plus when it served and when it was retired
served-at  which version was in production at an instant, e.g. `tidal registry served-at 2026-11-28T10:00Z`
"""

from __future__ import annotations

import argparse
import json
import sys

from tidal.config import load_settings
from tidal.registry import Registry
from tidal.storage import StorageLayout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one line per version")
    show = sub.add_parser("show", help="the full lineage of one version")
    show.add_argument("version")
    served = sub.add_parser("served-at", help="which version served at an ISO 8601 time (UTC if no offset)")
    served.add_argument("time")
    args = parser.parse_args(argv)
    registry = Registry(StorageLayout(load_settings().home).registry)
    if args.command == "show":
        try:
            print(json.dumps(registry.lineage(args.version), indent=2))
        except KeyError as err:
            print(f"tidal registry: {err.args[0]}", file=sys.stderr)
            return 2
        return 0
    if args.command == "served-at":
        try:
            version = registry.served_at(args.time)
        except ValueError as err:
            print(f"tidal registry: {err}", file=sys.stderr)
            return 2
        if version is None:
            print(f"no version was in production at {args.time}", file=sys.stderr)
            return 1
        print(version)
        return 0
    production = registry.production()
    print(f"{'version':<9} {'kind':<12} {'parent':<8} {'anchor':<8} {'batches':<9} {'recall@10':>9} {'ndcg@10':>8}  "
          f"{'promoted_at':<32} retired_at")
    for mv in registry.versions():
        m = mv.metadata
        metrics = m.get("metrics") or {}
        batches = m.get("batch_ids") or []
        span = f"{batches[0]}-{batches[-1]}" if batches else "-"
        marker = "  *production" if production and production.version == mv.version else ""
        print(f"{mv.version:<9} {m['kind']:<12} {str(m.get('parent')):<8} {str(m.get('anchor')):<8} {span:<9} "
              f"{metrics.get('recall_at_10', float('nan')):>9.4f} {metrics.get('ndcg_at_10', float('nan')):>8.4f}  "
              f"{str(m.get('promoted_at')):<32} {registry.retired_at(mv.version)}{marker}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
