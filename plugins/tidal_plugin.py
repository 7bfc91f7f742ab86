"""The tidal page inside the Airflow UI (Airflow 3.1+ plugin interface): a FastAPI app mounted at /tidal, a
"tidal" entry in the navigation that opens it, and a "tidal" tab on every DAG run with that run's step summaries
and reports. The app needs an Airflow login like the rest of the UI; docs/ui.md describes the page.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from plugins.tidal_ui.app import create_app


class TidalPlugin(AirflowPlugin):
    name = "tidal"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/tidal", "name": "tidal"}]
    # href without a leading slash: the UI resolves it against its own base URL (works behind a path prefix).
    external_views = [
        {"name": "tidal", "href": "tidal/", "destination": "nav", "url_route": "tidal"},
        {"name": "tidal run", "href": "tidal/runs/{RUN_ID}?dag_id={DAG_ID}", "destination": "dag_run",
         "url_route": "tidal-run"},
    ]
