"""Airflow plugins of tidal (AIRFLOW__CORE__PLUGINS_FOLDER points here): tidal_plugin.py registers the tidal page,
tidal_ui/ is its app. .airflowignore keeps Airflow's plugin loader to the one entry file."""
