"""The page's actions go through Airflow's own REST API, with the caller's own credential: a rollback or a full
retrain is a DAG run that Airflow authorizes, validates against the DAG's Params and records, never a side door.
Also: which Airflow DAG run made a version (from Airflow's metadata DB), for the link to that run.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT_S = 30
TIDAL_DAGS = ("tidal_incremental", "tidal_full_retrain", "tidal_scheduled_retrain", "tidal_rollback")


def base_url() -> str:
    from airflow.configuration import conf

    url = conf.get("api", "base_url", fallback="") or f"http://127.0.0.1:{conf.get('api', 'port', fallback='8080')}"
    return url.rstrip("/")


def caller_token(headers: Any, cookies: Any) -> str | None:
    """The credential this request came with: its bearer token, else the UI's session cookie."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    return cookies.get(COOKIE_NAME_JWT_TOKEN)


def call(method: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, JSON answer) of one Airflow REST call made as the caller."""
    request = urllib.request.Request(base_url() + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, {"detail": text}


def trigger(dag_id: str, conf: dict[str, Any], token: str, note: str) -> tuple[int, Any]:
    """POST /api/v2/dags/{dag_id}/dagRuns: Airflow checks the caller's rights and the conf against the Params."""
    return call("POST", f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns", token,
                {"logical_date": None, "conf": conf, "note": note})


def dag_params(dag_id: str, token: str) -> tuple[int, Any]:
    """The DAG's Params (schema, title, description, default) as Airflow serves them for its trigger form."""
    status, details = call("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id)}/details", token)
    return status, (details.get("params") if status == 200 and isinstance(details, dict) else details)


def dag_of_runs(run_ids: list[str]) -> dict[str, str]:
    """{run_id: dag_id} of the tidal DAG runs among run_ids (a CLI cycle has none)."""
    if not run_ids:
        return {}
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(select(DagRun.run_id, DagRun.dag_id).where(
            DagRun.run_id.in_(sorted(set(run_ids))), DagRun.dag_id.in_(TIDAL_DAGS))).all()
    return {run_id: dag_id for run_id, dag_id in rows}


def run_link(dag_id: str, run_id: str) -> str:
    """The Airflow UI's page of a DAG run, relative to the UI's root."""
    return f"dags/{urllib.parse.quote(dag_id, safe='')}/runs/{urllib.parse.quote(run_id, safe='')}"
