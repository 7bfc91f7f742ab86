"""Stage 1, features: landing files -> bronze events, training examples and quarantine (Spark Structured Streaming).

`transforms` (pure DataFrame functions), `state` (per-entity feature state), `stream` (the micro-batch wiring),
`compact` (bronze compaction), `quarantine` (list, export, replay).
"""

from jobs.features.stream import run_features


__all__ = ["run_features"]
