"""Stage 2, validation: Great Expectations suites on a run's examples (`validate`), with an offline Data Docs site
(`data_docs`).
"""

from jobs.validation.validate import run_validate


__all__ = ["run_validate"]
