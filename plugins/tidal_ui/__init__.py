"""The tidal page inside the Airflow UI: its FastAPI app (app.py), the JSON it shows (state.py), its plots
(plots.py), what serving reports (serving_probe.py) and the actions made through Airflow's REST API
(airflow_api.py). docs/ui.md describes the page."""
