"""What the tidal page shows, as JSON: serving now, the chain of versions and gate decisions, the runs and their
reports, the quarantine. Built from the functions the CLI answers with (tidal.registry.Registry.serving, lineage
and events as `tidal registry list/show` read them, registry_cli.gate_margin, jobs.features.quarantine.open_records
as `tidal quarantine list` reads it, tidal.run_reports), never from a second reading of the files.
"""

from __future__ import annotations

from typing import Any

from jobs.release.registry_cli import gate_margin
from tidal.registry import Registry
from tidal.run_reports import runs, same_run
from tidal.storage import StorageLayout


REPLAY_HOW = ("Fix the producer or the rule, then land the records again through the real features job: "
              "`tidal quarantine replay --reason REASON` (all open records of that reason), "
              "`tidal quarantine export --out FILE` then `tidal quarantine replay --fixed FILE` (records edited by "
              "hand). File-level entries (empty_file, unreadable files) have no line to replay: fix the file and "
              "land it again.")


def serving_now(registry: Registry, probe: dict[str, Any]) -> dict[str, Any]:
    """The production version from the alias (registry.serving), its lineage, and what serving itself reports."""
    alias = registry.serving()
    if alias is None:
        return {"version": None, "serving": probe}
    lineage = registry.lineage(alias["version"])
    return {**alias, "kind": lineage.get("kind"), "anchor": lineage.get("anchor"), "parent": lineage.get("parent"),
            "metrics": lineage.get("metrics"), "newest_event_time": lineage.get("newest_event_time"),
            "servable_since": lineage.get("promoted_at"), "run_id": lineage.get("run_id"), "serving": probe}


def version_row(lineage: dict[str, Any]) -> dict[str, Any]:
    """One version of the chain: its lineage, and the gate's decision that let it in."""
    gate = lineage.get("gate") or {}
    batches = lineage.get("batch_ids") or []
    first_served = (lineage.get("served") or [{}])[0]
    return {"row": "version", "version": lineage["version"], "kind": lineage.get("kind"),
            "parent": lineage.get("parent"), "anchor": lineage.get("anchor"),
            "batches": [batches[0], batches[-1]] if batches else None, "rows": lineage.get("rows"),
            "metrics": lineage.get("metrics"), "newest_event_time": lineage.get("newest_event_time"),
            "promoted_at": lineage.get("promoted_at"), "retired_at": lineage.get("retired_at"),
            "serving": lineage.get("serving"), "served": lineage.get("served"), "run_id": lineage.get("run_id"),
            "decision": "promoted" if lineage.get("served") else "registered",
            "gate": {"passed": gate.get("passed", True if lineage.get("served") else None),
                     "reason": gate.get("reason") or first_served.get("reason"), "margin": gate_margin(lineage),
                     "production_version": gate.get("production_version")},
            "at": lineage.get("promoted_at")}


def rejection_row(event: dict[str, Any]) -> dict[str, Any]:
    """A candidate the gate (or the stale-candidate check) refused: it never became a version."""
    details = event.get("details") or {}
    return {"row": "rejected", "version": None, "run_id": event.get("run_id"), "decision": "rejected",
            "metrics": details.get("candidate"), "at": event.get("at"),
            "gate": {"passed": False, "reason": event.get("reason"), "margin": gate_margin({"gate": details}),
                     "production_version": details.get("production_version")},
            "request": event.get("request")}


def chain(registry: Registry) -> list[dict[str, Any]]:
    """Every version and every rejected candidate, newest first."""
    rows = [version_row(registry.lineage(mv.version)) for mv in registry.versions()]
    rows += [rejection_row(e) for e in registry.events() if e.get("action") == "reject"]
    return sorted(rows, key=lambda r: r.get("at") or "", reverse=True)


def quarantine(layout: StorageLayout) -> dict[str, Any]:
    """Open quarantined records per reason (what `tidal quarantine list` prints) and how to replay them."""
    from jobs.features.quarantine import open_records

    records = open_records(layout)
    counts = records["quarantine_reason"].value_counts().sort_index()
    return {"open": len(records), "reasons": {k: int(v) for k, v in counts.items()}, "replay": REPLAY_HOW}


def run_list(layout: StorageLayout) -> list[dict[str, Any]]:
    """The runs with reports, newest first, each with the URLs (relative to the plugin) of its reports."""
    found = runs(layout)
    for run in found:
        run["report_urls"] = {name: f"reports/{run['folder']}/{name}" for name in run["reports"]}
    return found[::-1]


def report_urls(run_id: str, reports: list[str]) -> dict[str, str]:
    return {name: f"reports/{same_run(run_id)}/{name}" for name in reports}
