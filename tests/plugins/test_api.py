"""The tidal plugin's API on the real Airflow API server (tests/plugins/conftest.py): after two cycles, a rejected
candidate and a rollback made through the plugin's action (a real tidal_rollback run), every endpoint answers what
the registry and the run reports hold; nothing answers without a login; no request reads outside the reports
folder."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tests.plugins.conftest import CYCLE_RUN_IDS
from tests.plugins.registry_state import QUARANTINE
from tidal.storage import safe_name


pytestmark = [pytest.mark.slow]
REASON = "v000002 regressed on the drifted window"
FOLDERS = [safe_name(run_id) for run_id in CYCLE_RUN_IDS]  # the runs' reports folders


@pytest.fixture(scope="module")
def rolled_back(tidal_airflow):
    """Production back to v000001 through POST /tidal/api/actions/rollback, i.e. a tidal_rollback DAG run."""
    status, run = tidal_airflow.request("POST", "/tidal/api/actions/rollback", {"to": "v000001", "reason": REASON})
    assert status == 200, run
    assert run["dag_id"] == "tidal_rollback" and run["conf"] == {"to": "v000001", "reason": REASON,
                                                                 "by": tidal_airflow.user}
    finished = tidal_airflow.wait_for_run("tidal_rollback", run["dag_run_id"])
    assert finished["state"] == "success", finished
    registry = tidal_airflow.registry()
    assert registry.production().version == "v000001"
    return {"run": run, "registry": registry}


def test_the_rollback_went_through_the_dag_as_the_logged_in_user(tidal_airflow, rolled_back):
    last = rolled_back["registry"].events()[-1]
    assert (last["action"], last["version"], last["previous"], last["by"], last["reason"]) == \
        ("rollback", "v000001", "v000002", tidal_airflow.user, REASON)
    run = tidal_airflow.get(f"/api/v2/dags/tidal_rollback/dagRuns/"
                            f"{urllib.parse.quote(rolled_back['run']['dag_run_id'], safe='')}")
    assert run["conf"]["reason"] == REASON and "from the tidal page by" in (run["note"] or "")


def test_serving_now(tidal_airflow, rolled_back):
    registry = rolled_back["registry"]
    v1 = registry.lineage("v000001")
    serving = tidal_airflow.get("/tidal/api/serving")
    assert {k: serving[k] for k in ("version", "how", "by", "reason", "kind", "anchor", "parent")} == \
        {"version": "v000001", "how": "rollback", "by": tidal_airflow.user, "reason": REASON, "kind": "full",
         "anchor": "v000001", "parent": None}
    assert serving["since"] == registry.serving()["since"] == registry.events()[-1]["at"]
    assert serving["metrics"] == v1["metrics"] == {"recall_at_10": 0.31, "ndcg_at_10": 0.186}
    assert serving["newest_event_time"] == "2026-12-01T10:00:00Z"
    assert serving["servable_since"] == v1["promoted_at"]
    assert serving["run_id"] == CYCLE_RUN_IDS[0]
    probe = serving["serving"]
    assert probe["running"] is False and probe["version"] is None and probe["model_age_seconds"] is None
    assert probe["error"].startswith("serving not running") and probe["url"] == tidal_airflow.serving_url


def test_the_chain_newest_first_with_every_gate_decision_and_the_airflow_run(tidal_airflow, rolled_back):
    registry = rolled_back["registry"]
    rows = tidal_airflow.get("/tidal/api/chain")["rows"]
    assert [(r["row"], r["version"], r["decision"], r["run_id"]) for r in rows] == [
        ("rejected", None, "rejected", CYCLE_RUN_IDS[2]),
        ("version", "v000002", "promoted", CYCLE_RUN_IDS[1]),
        ("version", "v000001", "promoted", CYCLE_RUN_IDS[0])]
    rejected, v2, v1 = rows
    event = next(e for e in registry.events() if e["action"] == "reject")
    assert rejected["gate"] == {"passed": False, "reason": event["reason"], "margin": "-0.1300 vs v000002",
                                "production_version": "v000002"}
    assert "below the 0.02 tolerance" in rejected["gate"]["reason"] and rejected["at"] == event["at"]
    for row in (v2, v1):
        lineage = registry.lineage(row["version"])
        assert {k: row[k] for k in ("kind", "parent", "anchor", "rows", "metrics", "promoted_at", "retired_at",
                                    "serving", "newest_event_time")} == \
            {k: lineage.get(k) for k in ("kind", "parent", "anchor", "rows", "metrics", "promoted_at", "retired_at",
                                         "serving", "newest_event_time")}
        assert row["batches"] == [lineage["batch_ids"][0], lineage["batch_ids"][-1]]
        assert row["gate"]["passed"] is True and row["gate"]["reason"] == lineage["gate"]["reason"]
    assert (v1["serving"], v2["serving"]) == (True, False)
    assert v2["retired_at"] == registry.events()[-1]["at"]  # the rollback retired it
    assert (v1["gate"]["margin"], v2["gate"]["margin"]) == ("first model", "+0.0200 vs v000001")
    for row, run_id in zip(rows, CYCLE_RUN_IDS[::-1]):
        assert row["airflow_run"] == {"dag_id": "tidal_incremental",
                                      "href": f"dags/tidal_incremental/runs/{urllib.parse.quote(run_id, safe='')}"}
        assert tidal_airflow.get(f"/api/v2/dags/tidal_incremental/dagRuns/{urllib.parse.quote(run_id, safe='')}")


def test_version_lineage_is_what_tidal_registry_show_prints(tidal_airflow, rolled_back):
    registry = rolled_back["registry"]
    assert tidal_airflow.get("/tidal/api/versions/v000002") == json.loads(json.dumps(registry.lineage("v000002")))
    assert tidal_airflow.get("/tidal/api/versions/production")["version"] == "v000001"
    assert tidal_airflow.request("GET", "/tidal/api/versions/v2")[0] == 400
    assert tidal_airflow.request("GET", "/tidal/api/versions/v000009")[0] == 404


def test_runs_and_their_step_summaries(tidal_airflow, rolled_back):
    runs = tidal_airflow.get("/tidal/api/runs")["runs"]
    assert [r["run_id"] for r in runs] == CYCLE_RUN_IDS[::-1] and [r["folder"] for r in runs] == FOLDERS[::-1]
    assert [sorted(r["report_urls"]) for r in runs] == [
        ["drift.html", "drift.png"], ["data_docs/index.html", "drift.html", "drift.png"], ["data_docs/index.html"]]
    assert runs[1]["report_urls"]["drift.html"] == f"reports/{FOLDERS[1]}/drift.html"
    assert all(r["airflow_run"]["dag_id"] == "tidal_incremental" for r in runs)
    folder = tidal_airflow.settings.home / "reports" / "runs" / FOLDERS[1]
    run = tidal_airflow.get(f"/tidal/api/runs/{urllib.parse.quote(CYCLE_RUN_IDS[1], safe='')}")
    assert run["steps"] == {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert run["steps"]["drift"]["status"] == "tested" and run["steps"]["features"]["landed"] == 411
    assert tidal_airflow.get(f"/tidal/api/runs/{FOLDERS[1]}")["steps"] == run["steps"]  # by folder name too
    assert tidal_airflow.request("GET", "/tidal/api/runs/manual__2099-01-01T00%3A00%3A00%2B00%3A00")[0] == 404


def test_quarantine_counts_per_reason_and_how_to_replay(tidal_airflow):
    quarantine = tidal_airflow.get("/tidal/api/quarantine")
    assert quarantine["open"] == sum(QUARANTINE.values()) and quarantine["reasons"] == QUARANTINE
    assert "tidal quarantine replay --reason" in quarantine["replay"]


@pytest.mark.parametrize("name", ["quality", "freshness", "rows", "drift"])
def test_plots_are_png_drawn_on_the_server(tidal_airflow, name):
    status, body = tidal_airflow.request("GET", f"/tidal/api/plots/{name}.png")
    assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n" and len(body) > 5000


def test_reports_open_through_the_plugin(tidal_airflow):
    drift = tidal_airflow.get(f"/tidal/reports/{FOLDERS[1]}/drift.html").decode()
    assert drift.startswith("<!doctype html>") and f"tidal drift {CYCLE_RUN_IDS[1]}" in drift
    assert tidal_airflow.get(f"/tidal/reports/{FOLDERS[1]}/drift.png")[:4] == b"\x89PNG"
    index = tidal_airflow.get(f"/tidal/reports/{FOLDERS[0]}/data_docs/index.html").decode()
    page = next(part.split('"')[0] for part in index.split('href="')[1:] if part.startswith("validations/"))
    assert "%3A" in page  # GX names the validation folder after the run id, escaped in the link
    assert b"features.examples" in tidal_airflow.get(f"/tidal/reports/{FOLDERS[0]}/data_docs/{page}")
    assert tidal_airflow.get(f"/tidal/reports/{FOLDERS[0]}/data_docs/static/vendor/bootstrap/css/bootstrap.min.css")


GETS = ["/tidal/", "/tidal/api/serving", "/tidal/api/chain", "/tidal/api/runs", "/tidal/api/quarantine",
        "/tidal/api/versions/v000001", "/tidal/api/plots/quality.png", f"/tidal/reports/{FOLDERS[1]}/drift.html",
        f"/tidal/runs/{FOLDERS[1]}", "/tidal/static/tidal.js", "/tidal/api/actions/retrain/form"]
POSTS = [("/tidal/api/actions/rollback", {"to": "v000002", "reason": "anonymous"}),
         ("/tidal/api/actions/retrain", {"reason": "anonymous"})]


@pytest.mark.parametrize("auth, expected", [(None, 401), ("Bearer not-a-token", 403)], ids=["anonymous", "bad-token"])
def test_nothing_answers_without_a_login(tidal_airflow, rolled_back, auth, expected):
    before = rolled_back["registry"].events()
    answers = {path: tidal_airflow.request("GET", path, auth=auth)[0] for path in GETS}
    answers |= {path: tidal_airflow.request("POST", path, body, auth=auth)[0] for path, body in POSTS}
    assert answers == dict.fromkeys([*GETS, *(p for p, _b in POSTS)], expected)
    forged = tidal_airflow.request("GET", "/tidal/api/serving", auth=None, headers={"Cookie": "_token=forged"})[0]
    assert forged == 403
    assert rolled_back["registry"].events() == before  # no action ran


OUTSIDE = "/tidal/reports/{run}/"
TRAVERSALS = {
    "dot-dot": f"{OUTSIDE}../../../registry/production.json",
    "dot-dot-run": "/tidal/reports/../registry/production.json",
    "encoded-dot-dot": f"{OUTSIDE}%2e%2e/%2e%2e/%2e%2e/registry/production.json",
    "encoded-dot-dot-upper": f"{OUTSIDE}%2E%2E%2F%2E%2E%2Fregistry%2Fproduction.json",
    "encoded-run-dot-dot": "/tidal/reports/%2e%2e/drift.html",
    "encoded-slash": f"{OUTSIDE}..%2F..%2F..%2Fregistry%2Fproduction.json",
    "double-encoded": f"{OUTSIDE}%252e%252e/%252e%252e/registry/production.json",
    "backslash": f"{OUTSIDE}..%5C..%5Cregistry%5Cproduction.json",
    "absolute": f"{OUTSIDE}/etc/passwd",
    "encoded-absolute": f"{OUTSIDE}%2Fetc%2Fpasswd",
    "nul": f"{OUTSIDE}drift.html%00.png",
    "not-a-report-type": f"{OUTSIDE}../../registry/versions/v000001/model.pt",
    "dotfile": f"{OUTSIDE}.drift.json",
    "overlong-path": OUTSIDE + "/".join(["a" * 60] * 12) + ".html",
    "overlong-run": "/tidal/reports/" + "r" * 300 + "/drift.html",
    "bad-run-id": "/tidal/reports/..x../drift.html",
    "bad-version-id": "/tidal/api/versions/..%2F..%2Fregistry",
    "bad-version-form": "/tidal/api/versions/v00001",
    "run-page-dot-dot": "/tidal/api/runs/..",
    "run-page-encoded": "/tidal/api/runs/%2e%2e%2f%2e%2e",
}


@pytest.mark.parametrize("attempt", sorted(TRAVERSALS))
def test_every_path_traversal_attempt_is_refused(tidal_airflow, attempt):
    path = TRAVERSALS[attempt].format(run=FOLDERS[1])
    status, body = tidal_airflow.request("GET", path)
    assert status in (400, 404), (path, status, body)
    text = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert b'"version"' not in text and b"root:" not in text and b"weights of" not in text


def test_a_malformed_action_never_creates_a_run(tidal_airflow, rolled_back):
    def runs() -> dict[str, int]:
        return {dag: tidal_airflow.get(f"/api/v2/dags/{dag}/dagRuns")["total_entries"]
                for dag in ("tidal_rollback", "tidal_full_retrain")}

    runs_before = runs()
    refusals = {
        "no reason": ("rollback", {"to": "v000002", "reason": " "}, 400),
        "bad version id": ("rollback", {"to": "../v000002", "reason": "x"}, 400),
        "unknown version": ("rollback", {"to": "v000042", "reason": "x"}, 404),
        "path as reason": ("retrain", {"reason": "see ../notes"}, 400),
        "bad window": ("retrain", {"reason": "weekly reset", "history_days": "/etc"}, 400),
        "bad promote": ("retrain", {"reason": "weekly reset", "promote": "always"}, 400),
    }
    answers = {name: tidal_airflow.request("POST", f"/tidal/api/actions/{action}", body)[0]
               for name, (action, body, _expected) in refusals.items()}
    assert answers == {name: expected for name, (_a, _b, expected) in refusals.items()}
    assert runs() == runs_before


def test_the_retrain_form_is_the_dags_own_typed_params(tidal_airflow):
    params = tidal_airflow.get("/tidal/api/actions/retrain/form")["params"]
    assert set(params) == {"reason", "history_days", "epochs", "promote"}
    assert params["promote"]["schema"]["enum"] == ["auto", "register"]
    assert params["epochs"]["schema"]["type"] == ["null", "integer"]
    assert all(p["schema"]["title"] and p["description"] for p in params.values())


def test_a_symlink_out_of_the_reports_folder_is_not_followed(tidal_airflow):
    folder = tidal_airflow.settings.home / "reports" / "runs" / FOLDERS[1]
    (folder / "outside.json").symlink_to(tidal_airflow.settings.home / "registry" / "production.json")
    (folder / "elsewhere").symlink_to(tidal_airflow.settings.home / "registry", target_is_directory=True)
    try:
        for name in ("outside.json", "elsewhere/production.json", "elsewhere/events.jsonl"):
            status, body = tidal_airflow.request("GET", f"/tidal/reports/{FOLDERS[1]}/{name}")
            assert status in (400, 404) and b'"version"' not in json.dumps(body).encode(), (name, status, body)
    finally:
        (folder / "outside.json").unlink()
        (folder / "elsewhere").unlink()
