"""What a full retrain is asked to do, checked before any work: the request schema and where a request comes from.

A request is the run-time switches of one retrain (window, epochs, reason, promote mode, trigger); everything
else lives in params.yaml. It comes from the operator (the tidal_full_retrain form, `tidal retrain`), from the
schedule or the severe-drift asset (tidal_scheduled_retrain), or from `dvc repro`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tidal.config import ConfigError, Settings
from tidal.task_context import PATH_LIKE, REASON_MAX_LENGTH, REASON_PATTERN


class RetrainRequest(BaseModel):
    """One retrain's run-time switches (the DAG's Params). Anything else lives in params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    history_days: int | None = Field(None, ge=1, description="days before the newest event; None = all history")
    epochs: int | None = Field(None, ge=1, le=1000)
    reason: str = Field(min_length=1, max_length=REASON_MAX_LENGTH)
    promote: Literal["auto", "register"] = "auto"
    trigger: Literal["manual", "schedule", "drift", "cli", "dvc"] = "manual"

    @field_validator("history_days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
            return None
        if isinstance(value, str):
            if PATH_LIKE.search(value):
                raise ValueError(f"history window {value!r} looks like a path; give a number of days or 'all'")
            if not value.strip().isdigit():
                raise ValueError(f"history window {value!r} is not a whole number of days or 'all'")
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"history window {value!r} is not a whole number of days")
        return value

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a full retrain needs a reason (free text: why retrain now)")
        if not re.search(REASON_PATTERN, value):  # the pattern the Params form checks, so both refuse the same
            raise ValueError(f"reason {value!r} looks like a path; write a sentence ('/', '\\\\', '..' and a "
                             "leading '~' are refused)")
        return value.strip()


# Airflow run types -> the trigger a retrain records. The task SDK hands run_type over as an enum whose str() is
# 'DagRunType.SCHEDULED', so compare values, never str().
TRIGGER_OF_RUN_TYPE = {"scheduled": "schedule", "backfill": "schedule", "asset_triggered": "drift",
                       "manual": "manual", "operator_triggered": "manual", "asset_materialization": "manual"}


def request_for_run(run_type: Any, params: dict[str, Any], drift_events: list[dict[str, Any]], *,
                    manual: bool) -> dict[str, Any]:
    """The raw request of a retrain DAG run, before check_request.

    `manual` (tidal_full_retrain): the Params form's values; the reason is the operator's. Otherwise
    (tidal_scheduled_retrain): params.yaml's window and epochs, and a reason that says what started the run: the
    schedule, or the severe-drift asset events (naming the runs that emitted them).
    """
    value = getattr(run_type, "value", run_type)
    if value not in TRIGGER_OF_RUN_TYPE:
        raise ConfigError(f"unknown Airflow run type {value!r}; known: {sorted(TRIGGER_OF_RUN_TYPE)}")
    trigger = TRIGGER_OF_RUN_TYPE[value]
    if manual:
        return {"history_days": params.get("history_days"), "epochs": params.get("epochs"),
                "reason": params.get("reason"), "promote": params.get("promote"), "trigger": "manual"}
    if trigger == "manual":
        raise ConfigError("the scheduled retrain takes no manual runs; trigger tidal_full_retrain with a reason")
    if trigger == "drift":
        sources = sorted({str(e.get("extra", {}).get("reason") or f"severe drift in {e.get('source_run_id')}")
                          for e in drift_events}) or ["severe drift (asset event without a source)"]
        reason = "; ".join(sources)[:REASON_MAX_LENGTH]
    else:
        reason = "scheduled full retrain (periodic reset)"
    # Free text from an asset event must still pass the reason rule; a path-like character becomes a space.
    return {"reason": PATH_LIKE.sub(" ", reason.replace("~", " ")), "trigger": trigger}


def rejection_message(promote_summary: dict[str, Any]) -> str | None:
    """Why a retrain that was asked to serve its model does not serve it (None when it serves or was registered)."""
    if promote_summary.get("promoted") or promote_summary.get("registered"):
        return None
    hint = ("" if "registered" in promote_summary else " To keep it as a version anyway, retrain with "
            "promote=register; serve that version later with `tidal rollback --to <version>`.")
    return (f"the full retrain's candidate was not promoted: {promote_summary.get('reason')}. Production stays "
            f"{promote_summary.get('production_version')}; the rejection is in registry/events.jsonl.{hint}")


def check_request(settings: Settings, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a request against params.yaml's defaults; raise ConfigError with every problem, before any work."""
    defaults = settings.params.retrain
    merged = {"history_days": defaults.history_days, "epochs": defaults.epochs, "promote": defaults.promote,
              **{k: v for k, v in raw.items() if v is not None or k == "history_days"}}
    try:
        return RetrainRequest.model_validate(merged).model_dump()
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in err.errors())
        raise ConfigError(f"full retrain refused before any work: {problems}") from None
