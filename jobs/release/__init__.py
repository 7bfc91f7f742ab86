"""Stage 5, release: `gate` (candidate vs production), `promote`, `rollback`, `version` (DVC push, with `dvc` and
the `outbox`), and `registry_cli` (what serves, and when).
"""

from jobs.release.gate import run_gate
from jobs.release.promote import run_promote
from jobs.release.rollback import run_rollback
from jobs.release.version import run_version


__all__ = ["run_gate", "run_promote", "run_rollback", "run_version"]
