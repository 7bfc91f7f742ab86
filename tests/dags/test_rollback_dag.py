"""tidal_rollback through `dag.test()`: the Param picks the target, the move is recorded with who and why, and a
bad Param is refused when the run is created."""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT
from tests.tidal.test_registry_lineage import promote_chain


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("tidal_rollback")


def test_params_have_titles_and_descriptions(dag):
    assert type(dag.timetable).__name__ == "NullTimetable"  # manual only
    for name in ("to", "reason", "by"):
        param = dag.params.get_param(name)
        assert param.schema["title"] and param.description


@pytest.mark.parametrize("conf, message", [
    ({"to": "/tmp/model.pt", "reason": "x"}, "to"),
    ({"to": "v000001", "reason": ""}, "reason"),
    ({"to": "v000001", "reason": "see ../../notes"}, "reason"),
])
def test_bad_params_refused(dag, conf, message):
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dag.params)
    with pytest.raises(Exception, match=message):
        params.update(conf)
        params.validate()


def test_rollback_round_trip_through_the_dag(dag, tidal_env):
    from tidal.registry import Registry
    from tidal.storage import StorageLayout

    settings = tidal_env()
    registry = Registry(StorageLayout(settings.home).ensure().registry)
    v1, v2, v3 = promote_chain(registry, 3)
    run = dag.test(run_conf={"to": v1, "reason": "v3 and v2 regressed", "by": "oncall-gina"})
    assert run.state == "success"
    assert registry.production().version == v1
    last = registry.events()[-1]
    assert (last["action"], last["previous"], last["by"], last["reason"]) == \
        ("rollback", v3, "oncall-gina", "v3 and v2 regressed")
    back = dag.test(run_conf={"to": "", "reason": "undo the drill", "by": "oncall-gina"})
    assert back.state == "success" and registry.production().version == v3
    missing = dag.test(run_conf={"to": "v000099", "reason": "typo", "by": "x"})
    assert missing.state == "failed" and registry.production().version == v3
