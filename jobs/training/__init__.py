"""Stage 4, training: a candidate for the gate. `finetune` (incremental, from production), `request`, `build` and
`full_retrain` (the full retrain from scratch), `candidate` (what both write), `dvc_stages` (the retrain under
`dvc repro`).
"""

from jobs.training.finetune import run_finetune


__all__ = ["run_finetune"]
