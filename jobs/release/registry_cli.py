"""`tidal registry list | show VERSION | served-at TIME`: what versions exist, which serves, where each came from.

list       one line per version: kind, parent, anchor, batches, its Recall@10 / NDCG@10 on its own held-out slice,
           the gate's margin over the production it replaced (both scored on the same slice), when it was promoted,
           and when it was retired or, for the version serving now, since when and how (promotion or rollback)
show V     the full lineage of one version: metadata (batches, rows, event-time range, metrics, params, code
           version, checksums) plus when it served and when it was retired. V is vNNNNNN, `latest` or `production`
served-at  which version was in production at an instant: `now` or ISO 8601, e.g. `served-at 2026-11-28T10:00Z`

Exit codes: 0 answered, 1 nothing to answer with (no version yet, nothing served then), 2 a request of no allowed form.
"""

from __future__ import annotations

import argparse
import json
import sys

from tidal.config import load_settings
from tidal.registry import ModelVersion, Registry, parse_moment
from tidal.storage import StorageLayout


# "own": each version scored on its own held-out slice, so two rows are not comparable; the gate margin is.
LIST_HEADER = (f"{'version':<9} {'kind':<12} {'parent':<8} {'anchor':<8} {'batches':<9} {'own recall@10':>13} "
               f"{'own ndcg@10':>11} {'gate margin':<20} {'promoted_at':<32} served")


def refuse(message: str, code: int = 2) -> int:
    print(f"tidal registry: {message}", file=sys.stderr)
    return code


def show(registry: Registry, ref: str) -> int:
    try:
        version = registry.resolve(ref)
    except ValueError as err:
        return refuse(str(err))
    except KeyError as err:  # before LookupError: KeyError is one
        return refuse(err.args[0])
    except LookupError as err:
        return refuse(err.args[0], code=1)
    print(json.dumps(registry.lineage(version.version), indent=2))
    return 0


def served_at(registry: Registry, text: str) -> int:
    try:
        moment = parse_moment(text)
    except ValueError as err:
        return refuse(str(err))
    version = registry.served_at(moment)
    if version is None:
        moves = registry.alias_moves()
        first = f"; the first promotion was at {moves[0]['at']}" if moves else "; nothing has been promoted yet"
        return refuse(f"no version was in production at {moment.isoformat()}{first}", code=1)
    print(version)
    return 0


def gate_margin(metadata: dict) -> str:
    """Candidate minus production Recall@k (the gate's k, gate.k) as the gate scored both on the candidate's
    held-out slice."""
    gate = metadata.get("gate") or {}
    candidate, production = gate.get("candidate") or {}, gate.get("production") or {}
    recall = next((key for key in sorted(candidate) if key.startswith("recall_at_") and key in production), None)
    if recall is None:
        return "first model" if gate and not gate.get("production_version") else "-"
    return f"{candidate[recall] - production[recall]:+.4f} vs {gate.get('production_version')}"


def served_column(registry: Registry, mv: ModelVersion, serving: dict | None) -> str:
    if serving is not None and serving["version"] == mv.version:
        by = f" by {serving['by']}" if serving.get("by") else ""
        return f"serving since {serving['since']} ({serving['how']}{by}: {serving['reason']})  *production"
    retired = registry.retired_at(mv.version)
    return f"retired {retired}" if retired else "never served"


def list_line(registry: Registry, mv: ModelVersion, serving: dict | None) -> str:
    m = mv.metadata
    metrics = m.get("metrics") or {}
    batches = m.get("batch_ids") or []
    span = f"{batches[0]}-{batches[-1]}" if batches else "-"
    return (f"{mv.version:<9} {m['kind']:<12} {str(m.get('parent')):<8} {str(m.get('anchor')):<8} {span:<9} "
            f"{metrics.get('recall_at_10', float('nan')):>13.4f} {metrics.get('ndcg_at_10', float('nan')):>11.4f} "
            f"{gate_margin(m):<20} {str(m.get('promoted_at')):<32} {served_column(registry, mv, serving)}")


def list_versions(registry: Registry) -> int:
    versions = registry.versions()
    if not versions:
        print(f"no versions yet under {registry.versions_dir}", file=sys.stderr)
        return 0
    serving = registry.serving()
    print(LIST_HEADER)
    for mv in versions:
        print(list_line(registry, mv, serving))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one line per version, and which serves since when")
    show_parser = sub.add_parser("show", help="the full lineage of one version")
    show_parser.add_argument("version", help="vNNNNNN, latest or production")
    served = sub.add_parser("served-at", help="which version served at a time: now or ISO 8601 (UTC if no offset)")
    served.add_argument("time")
    args = parser.parse_args(argv)
    registry = Registry(StorageLayout(load_settings().home).registry)
    if args.command == "show":
        return show(registry, args.version)
    if args.command == "served-at":
        return served_at(registry, args.time)
    return list_versions(registry)


if __name__ == "__main__":
    raise SystemExit(main())
