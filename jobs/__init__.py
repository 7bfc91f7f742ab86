"""The pipeline's jobs, one subpackage per stage: features, validation, drift, training, release.

Each job is a pure function of the settings and its inputs (`run_*`) behind a thin `main(argv)`; the order they run
in is declared once, in tidal/pipelines.py. Top level: the runners (`cycle`, `retrain`), the CLI and the
prequential benchmark entry point.
"""
