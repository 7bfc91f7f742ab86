"""`tidal registry`: list after a rollback says which version serves since when, show takes latest/production,
served-at takes now, and bad input is refused with exit code 2 and a message naming what is allowed. Registries are
built through the real Registry API; the listing test's versions come from real finetune/gate/promote cycles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobs.release.registry_cli import main
from tests.conftest import REPO_ROOT
from tests.jobs.training.test_finetune import cycle, write_examples_batch
from tidal.registry import METADATA_FILE, MODEL_FILE, Registry
from tidal.storage import StorageLayout


def stage_and_promote(registry: Registry, n: int) -> None:
    for i in range(n):
        path = registry.new_candidate_dir(f"run-{i}")
        (path / MODEL_FILE).write_bytes(f"w{i}".encode())
        (path / METADATA_FILE).write_text(json.dumps({"run_id": f"run-{i}", "kind": "full" if i == 0 else "incremental",
                                                      "parent": None, "anchor": None, "last_batch_id": i}))
        registry.promote_candidate(f"run-{i}", reason=f"cycle {i}")


@pytest.fixture
def registry(tidal_env) -> Registry:
    return Registry(StorageLayout(tidal_env().home).registry)


@pytest.fixture
def rolled_back(tidal_env) -> Registry:
    """Three versions from real cycles (each gated against the one before), then a rollback to the first."""
    settings = tidal_env({"gate": {"recall_tolerance": 1.0}})
    layout = StorageLayout(settings.home).ensure()
    for b in range(3):
        write_examples_batch(layout, b, settings, file_index=b)
        assert cycle(settings, f"run-{b}")["promote"]["promoted"] is True
    registry = Registry(layout.registry)
    registry.rollback(to="v000001", reason="v3 regressed on purchases", by="erin")
    return registry


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_after_a_rollback_shows_which_version_serves_since_when(rolled_back, capsys):
    code, out, _ = cli(capsys, "list")
    assert code == 0
    header, v1, v2, v3 = out.splitlines()
    since = rolled_back.alias_moves()[-1]["at"]
    assert v1.startswith("v000001") and v1.endswith(
        f"serving since {since} (rollback by erin: v3 regressed on purchases)  *production")
    assert v2.startswith("v000002") and v2.endswith(f"retired {rolled_back.retired_at('v000002')}")
    assert v3.startswith("v000003") and v3.endswith(f"retired {since}")
    assert "*production" not in v2 + v3
    # The margin the gate saw: both models scored on v000002's own held-out slice.
    gate = rolled_back.version("v000002").metadata["gate"]
    margin = gate["candidate"]["recall_at_10"] - gate["production"]["recall_at_10"]
    assert f"{margin:+.4f} vs v000001" in v2
    assert "first model" in v1 and "gate margin" in header


def test_served_at_now_and_an_instant_before_the_rollback(rolled_back, capsys):
    assert cli(capsys, "served-at", "now") == (0, "v000001\n", "")
    moves = rolled_back.alias_moves()
    assert cli(capsys, "served-at", moves[2]["at"]) == (0, "v000003\n", "")
    code, out, err = cli(capsys, "served-at", "2000-01-01T00:00Z")
    assert (code, out) == (1, "")
    assert f"no version was in production at 2000-01-01T00:00:00+00:00; the first promotion was at {moves[0]['at']}" in err


def test_show_latest_and_production(rolled_back, capsys):
    code, out, _ = cli(capsys, "show", "latest")
    latest = json.loads(out)
    assert code == 0 and (latest["version"], latest["serving"]) == ("v000003", False)
    assert latest["retired_at"] == rolled_back.alias_moves()[-1]["at"]
    code, out, _ = cli(capsys, "show", "production")
    production = json.loads(out)
    assert code == 0 and (production["version"], production["serving"], production["retired_at"]) == ("v000001", True, None)
    assert [(s["how"], s["by"]) for s in production["served"]] == [("promote", None), ("rollback", "erin")]
    assert json.loads(cli(capsys, "show", "v000002")[1])["run_id"] == "run-1"


@pytest.mark.parametrize("argv, says", [
    (("show", "../x"), "'../x' is not a version: give a version id vNNNNNN such as v000003, `latest`"),
    (("show", "/tmp/model.pt"), "'/tmp/model.pt' is not a version: give a version id vNNNNNN"),
    (("show", "v000042"), "no version v000042 in "),
    (("served-at", "yesterday"), "'yesterday' is not a time: give `now` or an ISO 8601 time such as 2026-11-28T10:00Z"),
    (("served-at", "2026-13-01T00:00Z"), "'2026-13-01T00:00Z' is not a time: give `now` or an ISO 8601 time"),
], ids=["parent_path", "absolute_path", "unknown_version", "word_time", "month_13"])
def test_bad_input_is_refused_with_exit_2_and_what_is_allowed(registry, capsys, argv, says):
    stage_and_promote(registry, 2)
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("tidal registry: ") and says in err
    if argv[1] == "v000042":
        assert "(versions: v000001 .. v000002)" in err


def test_an_empty_registry_answers_with_exit_1(registry, capsys):
    assert cli(capsys, "show", "latest")[::2] == (1, "tidal registry: no versions yet under "
                                                     f"{registry.versions_dir}; `latest` needs one\n")
    code, _, err = cli(capsys, "show", "production")
    assert code == 1 and "nothing is in production yet" in err
    code, _, err = cli(capsys, "served-at", "now")
    assert code == 1 and "nothing has been promoted yet" in err
    assert cli(capsys, "list") == (0, "", f"no versions yet under {registry.versions_dir}\n")


def test_the_tidal_command_refuses_bad_input_without_a_traceback(registry):
    stage_and_promote(registry, 1)
    for argv in (["show", "../x"], ["served-at", "soon"], ["show"]):
        done = subprocess.run([sys.executable, "-m", "jobs.cli", "registry", *argv], capture_output=True, text=True,
                              cwd=REPO_ROOT)
        assert done.returncode == 2, done
        assert "Traceback" not in done.stderr and done.stdout == ""
    ok = subprocess.run([sys.executable, "-m", "jobs.cli", "registry", "show", "production"], capture_output=True,
                        text=True, cwd=REPO_ROOT)
    assert ok.returncode == 0 and json.loads(ok.stdout)["version"] == "v000001"


def test_the_gate_margin_reads_the_gates_own_k():
    from jobs.release.registry_cli import gate_margin

    gate = {"production_version": "v000001", "candidate": {"recall_at_5": 0.30, "ndcg_at_5": 0.2},
            "production": {"recall_at_5": 0.25, "ndcg_at_5": 0.2}}
    assert gate_margin({"gate": gate}) == "+0.0500 vs v000001"
    assert gate_margin({"gate": {"production_version": None, "candidate": {"recall_at_5": 0.3}}}) == "first model"
    assert gate_margin({}) == "-"
