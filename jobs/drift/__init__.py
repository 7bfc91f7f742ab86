"""Stage 3, drift: the new window against production's reference. `statistics` (the tests and the graded
decision), `reference` (the two sides), `report` (log lines, plot, HTML), `run` (the step).
"""

from jobs.drift.run import run_drift


__all__ = ["run_drift"]
