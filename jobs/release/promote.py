"""promote: move the production alias to a run's candidate if its gate passed; otherwise record the rejection.

Idempotent per run id: a retried task finds the version it already made and leaves the alias where it is.
An incremental candidate is promoted only if production is still its parent: when a full retrain or a rollback
moved the alias while it trained, it is rejected as stale, and the next cycle fine-tunes from the new production.
Run: `tidal promote --run-id RUN`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidal.config import Settings
from tidal.registry import Registry, StaleCandidate
from tidal.step_cli import run_step_main
from tidal.storage import StorageLayout, read_json, record_summary


def run_promote(settings: Settings, run_id: str, gate_summary: dict[str, Any], reports_dir: Path | None = None,
                request: dict[str, Any] | None = None) -> dict[str, Any]:
    """`request`: a full retrain's request (reason, trigger, ...), recorded with a rejection."""
    registry = Registry(StorageLayout(settings.home).registry)
    if gate_summary.get("status") == "skipped":
        summary = {"run_id": run_id, "promoted": False, "reason": gate_summary["reason"]}
    elif not gate_summary["passed"]:
        registry.record_rejection(run_id, reason=gate_summary["reason"], details=gate_summary, request=request)
        summary = {"run_id": run_id, "promoted": False, "reason": gate_summary["reason"]}
    else:
        candidate = registry.candidate_metadata(run_id) or {}
        expect = {"expect_production": candidate.get("parent")} if candidate.get("kind") == "incremental" else {}
        try:
            version = registry.promote_candidate(run_id, reason=gate_summary["reason"], **expect)
        except StaleCandidate as stale:
            registry.record_rejection(run_id, reason=str(stale), details=gate_summary, request=request)
            summary = {"run_id": run_id, "promoted": False, "stale": True, "reason": str(stale)}
        else:
            summary = {"run_id": run_id, "promoted": True, "version": version.version,
                       "kind": version.metadata["kind"], "reason": gate_summary["reason"]}
    production = registry.production()
    summary["production_version"] = production.version if production else None
    print(f"[promote] {'promoted ' + summary['version'] if summary['promoted'] else 'not promoted'}; "
          f"production is {summary['production_version']}", flush=True)
    return record_summary(reports_dir, "promote", summary)


def main(argv: list[str] | None = None) -> int:
    return run_step_main(argv, prog="tidal promote", description="Promote a run's candidate if its gate passed.",
                         run=lambda settings, args, reports: run_promote(settings, args.run_id,
                                                                         read_json(reports / "gate.json"), reports))


if __name__ == "__main__":
    raise SystemExit(main())
