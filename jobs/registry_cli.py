"""`tidal registry list | show VERSION`: what versions exist, which serves, and where each came from."""

from __future__ import annotations

import argparse
import json

from tidal.config import load_settings
from tidal.registry import Registry
from tidal.storage import StorageLayout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal registry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one line per version")
    show = sub.add_parser("show", help="the full metadata of one version")
    show.add_argument("version")
    args = parser.parse_args(argv)
    registry = Registry(StorageLayout(load_settings().home).registry)
    if args.command == "show":
        print(json.dumps(registry.version(args.version).metadata, indent=2))
        return 0
    production = registry.production()
    print(f"{'version':<9} {'kind':<12} {'parent':<8} {'anchor':<8} {'recall@10':>9} {'ndcg@10':>8}  promoted_at")
    for mv in registry.versions():
        m = mv.metadata
        metrics = m.get("metrics") or {}
        marker = " *production" if production and production.version == mv.version else ""
        print(f"{mv.version:<9} {m['kind']:<12} {str(m.get('parent')):<8} {str(m.get('anchor')):<8} "
              f"{metrics.get('recall_at_10', float('nan')):>9.4f} {metrics.get('ndcg_at_10', float('nan')):>8.4f}  "
              f"{m.get('promoted_at')}{marker}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
