"""The tidal page's FastAPI app, mounted by the Airflow API server at /tidal (plugins/tidal_plugin.py).

Every route needs an Airflow login (the UI's session cookie or a bearer token from POST /auth/token): anonymous
requests get 401, an invalid token 403 (Airflow's own `get_user`). The actions also need the right to trigger the
DAG they start, and are then made as the caller through Airflow's REST API (plugins/tidal_ui/airflow_api.py).

    GET  /                          the page (nav entry "tidal")
    GET  /runs/{run_id}             one run's step summaries and reports (the DAG-run external view)
    GET  /api/serving | /api/chain | /api/runs | /api/quarantine | /api/versions/{version} | /api/runs/{run_id}
    GET  /api/plots/{name}.png      quality, freshness, rows, drift (plugins/tidal_ui/plots.py)
    GET  /reports/{run}/{path}      a run's report file: drift.html, drift.png, data_docs/... (tidal.run_reports)
    GET  /api/actions/retrain/form  tidal_full_retrain's Params, as Airflow serves them
    POST /api/actions/rollback      {to, reason}: a tidal_rollback run; `by` is the Airflow user
    POST /api/actions/retrain       {reason, history_days, epochs, promote}: a tidal_full_retrain run
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from plugins.tidal_ui import airflow_api, plots, serving_probe, state
from tidal.config import load_settings
from tidal.registry import Registry
from tidal.run_reports import ReportRequestError, check_run_id, report_path, step_summaries
from tidal.storage import StorageLayout


STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"tidal.js": "text/javascript", "tidal.css": "text/css"}
ALLOWED_ESCAPES = re.compile(rb"%(3a|2b)", re.I)


def layout() -> StorageLayout:
    return StorageLayout(load_settings().home)


def refused(err: Exception) -> HTTPException:
    """400 for a request of no allowed form, 404 for a well-formed name that names nothing."""
    if isinstance(err, (FileNotFoundError, KeyError, LookupError)) and not isinstance(err, ReportRequestError):
        return HTTPException(404, err.args[0] if err.args else "not found")
    return HTTPException(400, str(err))


def page(request: Request, title: str, **data: str) -> HTMLResponse:
    """The page shell; static/tidal.js fills it from the JSON routes. <base> makes every link relative to the app."""
    root = html.escape(request.scope.get("root_path", "").rstrip("/") + "/")
    attributes = " ".join(f'data-{k}="{html.escape(v)}"' for k, v in data.items())
    return HTMLResponse(f"""<!doctype html><html><head><meta charset="utf-8"><base href="{root}">
<title>{html.escape(title)}</title><link rel="stylesheet" href="static/tidal.css"></head>
<body {attributes}><main id="tidal">loading...</main><script src="static/tidal.js"></script></body></html>""")


def with_run_links(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's link to the Airflow run that made it (none for a CLI run)."""
    try:
        dags = airflow_api.dag_of_runs([r["run_id"] for r in rows if r.get("run_id")])
    except Exception:  # the metadata DB unreachable: the page still shows the chain
        dags = {}
    for row in rows:
        dag_id = dags.get(row.get("run_id"))
        row["airflow_run"] = {"dag_id": dag_id, "href": airflow_api.run_link(dag_id, row["run_id"])} if dag_id else None
    return rows


def add_pages(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        return page(request, "tidal: models", page="index")

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str):
        try:
            check_run_id(run_id)
        except ReportRequestError as err:
            raise refused(err)
        return page(request, f"tidal run {run_id}", page="run", run=run_id)

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])


def add_reads(app: FastAPI) -> None:
    @app.get("/api/serving")
    def serving():
        return state.serving_now(Registry(layout().registry), serving_probe.probe())

    @app.get("/api/chain")
    def chain():
        return {"rows": with_run_links(state.chain(Registry(layout().registry)))}

    @app.get("/api/versions/{version}")
    def version(version: str):
        registry = Registry(layout().registry)
        try:
            return registry.lineage(registry.resolve(version).version)  # as `tidal registry show` answers
        except (ValueError, LookupError) as err:
            raise refused(err)

    @app.get("/api/runs")
    def run_list():
        return {"runs": with_run_links(state.run_list(layout()))}

    @app.get("/api/runs/{run_id}")
    def run(run_id: str):
        try:
            summaries = step_summaries(layout(), run_id)
        except (ValueError, FileNotFoundError) as err:
            raise refused(err)
        reports = [r for r in ("drift.html", "drift.png", "data_docs/index.html")
                   if (layout().run_reports(run_id) / r).is_file()]
        row = with_run_links([{"run_id": run_id}])[0]
        return {"run_id": run_id, "steps": summaries, "report_urls": state.report_urls(run_id, reports),
                "airflow_run": row["airflow_run"]}

    @app.get("/api/quarantine")
    def quarantine():
        return state.quarantine(layout())

    @app.get("/api/plots/{name}.png")
    def plot(name: str):
        if name not in plots.PLOTS:
            raise HTTPException(404, f"no plot {name[:40]!r}; plots: {', '.join(plots.PLOTS)}")
        return Response(plots.plot_png(name, layout()), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @app.get("/reports/{run_id}/{relative:path}")
    def report(request: Request, run_id: str, relative: str):
        # Report names need no escape but ':' and '+' (GX's run-id folders): any other encoded byte ('%2e%2e',
        # '%2F', '%5C', '%00') is an attempt to escape the folder.
        if b"%" in ALLOWED_ESCAPES.sub(b"", request.scope.get("raw_path", b"")):
            raise HTTPException(400, "encoded characters are not allowed in a report path")
        try:
            return FileResponse(report_path(layout(), run_id, relative))
        except (ValueError, FileNotFoundError) as err:
            raise refused(err)


def trigger_as_caller(request: Request, dag_id: str, conf: dict[str, Any], note: str) -> dict[str, Any]:
    token = airflow_api.caller_token(request.headers, request.cookies)
    if not token:
        raise HTTPException(401, "Not authenticated")
    status, answer = airflow_api.trigger(dag_id, conf, token, note)
    if status >= 300:
        raise HTTPException(status, answer.get("detail", answer) if isinstance(answer, dict) else answer)
    run_id = answer["dag_run_id"]
    return {"dag_id": dag_id, "dag_run_id": run_id, "state": answer.get("state"), "conf": conf,
            "airflow_run": {"dag_id": dag_id, "href": airflow_api.run_link(dag_id, run_id)}}


def add_actions(app: FastAPI) -> None:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import get_user, requires_access_dag

    @app.post("/api/actions/rollback",
              dependencies=[Depends(requires_access_dag("POST", DagAccessEntity.RUN, "tidal_rollback"))])
    def rollback(request: Request, user: Any = Depends(get_user), body: dict[str, Any] = Body(...)):
        from jobs.release.rollback import check_rollback_request

        try:
            to, reason = check_rollback_request(body.get("to"), body.get("reason"))  # as `tidal rollback` checks
            if to is not None:
                Registry(layout().registry).resolve(to)
        except (ValueError, LookupError) as err:
            raise refused(err)
        return trigger_as_caller(request, "tidal_rollback", {"to": to or "", "reason": reason, "by": user.get_name()},
                                 f"rollback from the tidal page by {user.get_name()}: {reason}")

    @app.post("/api/actions/retrain",
              dependencies=[Depends(requires_access_dag("POST", DagAccessEntity.RUN, "tidal_full_retrain"))])
    def retrain(request: Request, user: Any = Depends(get_user), body: dict[str, Any] = Body(...)):
        from jobs.training.request import check_request, request_for_run

        conf = {k: body[k] for k in ("reason", "history_days", "epochs", "promote") if k in body}
        try:  # what the DAG's request step checks, before a run exists
            check_request(load_settings(), request_for_run("manual", conf, [], manual=True))
        except ValueError as err:
            raise refused(err)
        return trigger_as_caller(request, "tidal_full_retrain", conf,
                                 f"full retrain from the tidal page by {user.get_name()}: {conf.get('reason')}")

    @app.get("/api/actions/retrain/form")
    def retrain_form(request: Request):
        token = airflow_api.caller_token(request.headers, request.cookies)
        status, params = airflow_api.dag_params("tidal_full_retrain", token or "")
        if status != 200:
            raise HTTPException(status, params)
        return {"dag_id": "tidal_full_retrain", "params": params}


def create_app() -> FastAPI:
    from airflow.api_fastapi.core_api.security import requires_authenticated

    app = FastAPI(title="tidal", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(requires_authenticated())])
    add_pages(app)
    add_reads(app)
    add_actions(app)
    return app
