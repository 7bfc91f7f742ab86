"""version: the release step that puts a promoted model in the object store (jobs.release.dvc), or queues its push
in the outbox (jobs.release.outbox) while the store is down, after first retrying what earlier cycles queued.

Run: `tidal version --run-id RUN`, `tidal version --version v000003`, `tidal version --drain`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from jobs.release.dvc import dvc_file_md5, push_tracked, track_version
from jobs.release.outbox import drain_outbox, outbox_entries, push_with_retries
from tidal.config import Settings, load_settings
from tidal.registry import VERSION_PATTERN, Registry
from tidal.storage import StorageLayout, record_summary


def version_model(settings: Settings, version: str) -> dict[str, Any]:
    dvc_file = track_version(settings, version)
    push_tracked(settings, dvc_file)
    return {"version": version, "dvc_file": str(dvc_file), "md5": dvc_file_md5(dvc_file),
            "remote": settings.s3.remote_url, "endpoint": settings.s3.endpoint_url}


def run_version(settings: Settings, run_id: str, reports_dir: Path | None = None) -> dict[str, Any]:
    drained = drain_outbox(settings)  # earlier cycles' pushes first, oldest version first
    promoted = Registry(StorageLayout(settings.home).registry).version_for_run(run_id)
    if promoted is None:
        summary = {"run_id": run_id, "status": "skipped", "reason": "this run promoted no model"}
    else:
        summary = {"run_id": run_id, **push_with_retries(settings, promoted.version)}
        if summary["status"] == "pushed":
            print(f"[version] {promoted.version} pushed to {summary['remote']} (md5 {summary['md5']})", flush=True)
    summary["outbox"] = {"drained": drained, "waiting": [e["version"] for e in outbox_entries(settings)]}
    return record_summary(reports_dir, "version", summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidal version", description="Track and push a promoted model with DVC.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--run-id")
    group.add_argument("--version", help="a version id such as v000003")
    group.add_argument("--drain", action="store_true", help="retry every queued push now (the outbox)")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.drain:
        results = drain_outbox(settings, force=True)
        print(json.dumps(results, indent=2))
        return 0 if all(r["status"] == "pushed" for r in results) else 1
    if args.version is not None:
        if not VERSION_PATTERN.fullmatch(args.version):
            print(f"tidal version: --version {args.version!r} is not a version id; give one such as v000003 "
                  "(`tidal registry list` shows them)", file=sys.stderr)
            return 2
        summary = version_model(settings, args.version)
    else:
        summary = run_version(settings, args.run_id, StorageLayout(settings.home).run_reports(args.run_id))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
