"""What the page says about serving: its metrics read from Prometheus text (as serving/metrics.py writes them),
and "serving not running" when nothing answers at TIDAL_SERVING_URL (fast: no Airflow)."""

from __future__ import annotations

from plugins.tidal_ui import serving_probe
from tests.conftest import free_port


METRICS = """# HELP tidal_model_version_info The model version serving.
# TYPE tidal_model_version_info gauge
tidal_model_version_info{version="v000003"} 1
# HELP tidal_model_age_seconds Seconds since the newest event the serving model was trained on.
# TYPE tidal_model_age_seconds gauge
tidal_model_age_seconds 1.2345e+06
# TYPE tidal_model_servable_age_seconds gauge
tidal_model_servable_age_seconds 93.5
tidal_serving_requests_total{route="/v1/recommendations",status="200"} 12
"""


def test_the_loaded_version_and_its_age_come_from_the_metrics_text():
    assert serving_probe.parse_metrics(METRICS) == {"version": "v000003", "model_age_seconds": 1234500.0,
                                                    "servable_age_seconds": 93.5}


def test_a_metric_serving_does_not_export_is_unknown():
    assert serving_probe.parse_metrics("tidal_serving_errors_total 3\n") == \
        {"version": None, "model_age_seconds": None, "servable_age_seconds": None}


def test_nothing_listening_is_serving_not_running(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("TIDAL_SERVING_URL", url)
    probe = serving_probe.probe()
    assert (probe["url"], probe["running"], probe["ready"], probe["version"]) == (url, False, False, None)
    assert probe["error"].startswith("serving not running")
