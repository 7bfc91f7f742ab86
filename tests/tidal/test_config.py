"""tidal.config: params.yaml -> typed, validated settings; the environment moves locations."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from tidal.config import DEFAULT_PARAMS_PATH, REPO_ROOT, ConfigError, Params, load_params, load_settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("TIDAL_HOME", "TIDAL_PARAMS", "TIDAL_S3_ENDPOINT", "AWS_ENDPOINT_URL", "TIDAL_S3_BUCKET",
                 "TIDAL_S3_PREFIX", "TIDAL_SPARK_REMOTE", "SPARK_REMOTE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_load_from_the_repo_params_yaml(clean_env):
    raw = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    params = load_params()
    assert DEFAULT_PARAMS_PATH == REPO_ROOT / "params.yaml"
    assert params.base.seed == raw["base"]["seed"] == 42
    assert params.base.event_types == tuple(raw["base"]["event_types"])
    assert params.generate.events_per_file == raw["generate"]["events_per_file"]
    assert params.validation.max_bad_row_share == raw["validation"]["max_bad_row_share"]
    assert params.drift.features == tuple(raw["drift"]["features"])
    assert params.gate.recall_tolerance == raw["gate"]["recall_tolerance"]
    # PyYAML reads `1e-05` (no dot) as a string; the typed section turns it into the float it means.
    assert params.train == {k: float(v) if isinstance(v, str) else v for k, v in raw["train"].items()}
    assert params.train["l2"] == 1e-05
    # every section of the file is read, none is ignored
    dumped = params.model_dump()
    for section, values in raw.items():
        for key, value in values.items():
            got = dumped[section][key]
            want = float(value) if section == "train" and isinstance(value, str) else value
            assert (list(got) if isinstance(got, tuple) else got) == want, f"{section}.{key}"


def test_overrides_are_applied_and_validated(clean_env):
    params = load_params(overrides={"gate": {"k": 5}, "drift": {"alpha": 0.05}})
    assert params.gate.k == 5 and params.drift.alpha == 0.05
    assert params.gate.recall_tolerance == 0.02  # the rest of the section still comes from the file


@pytest.mark.parametrize("overrides, field", [
    ({"generate": {"users": "many"}}, "users"),                # wrong type
    ({"drift": {"alpha": -0.5}}, "alpha"),                     # out of range
    ({"validation": {"max_bad_row_share": 1.5}}, "max_bad_row_share"),
    ({"gate": {"tolerance": 0.1}}, "tolerance"),               # unknown key (typo of recall_tolerance)
    ({"gating": {"k": 3}}, "gating"),                          # unknown section
    ({"train": {"dim": "wide"}}, "dim"),
], ids=["wrong_type", "negative_alpha", "share_above_one", "unknown_key", "unknown_section", "train_wrong_type"])
def test_invalid_values_are_refused_naming_the_field(clean_env, overrides, field):
    with pytest.raises(ConfigError, match=field) as err:
        load_params(overrides=overrides)
    assert str(DEFAULT_PARAMS_PATH) in str(err.value)


def test_invalid_params_file_named_by_tidal_params_is_refused(clean_env, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base": {"max_future_skew_s": -1}}))
    clean_env.setenv("TIDAL_PARAMS", str(path))
    with pytest.raises(ConfigError, match="max_future_skew_s"):
        load_settings()
    clean_env.setenv("TIDAL_PARAMS", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        load_params()


def test_a_partial_params_file_falls_back_to_defaults(clean_env, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"gate": {"k": 20}}))
    params = load_params(path)
    assert params.gate.k == 20
    assert params.generate == Params().generate


def test_tidal_home_moves_the_storage_root(clean_env, tmp_path):
    assert load_settings().home == (REPO_ROOT / "data").resolve()
    clean_env.setenv("TIDAL_HOME", str(tmp_path / "elsewhere"))
    assert load_settings().home == (tmp_path / "elsewhere").resolve()
    clean_env.chdir(tmp_path)
    clean_env.setenv("TIDAL_HOME", "relative/home")
    home = load_settings().home
    assert home.is_absolute() and home == tmp_path.resolve() / "relative" / "home"


def test_s3_settings_come_from_the_environment(clean_env):
    default = load_settings().s3
    assert (default.endpoint_url, default.bucket, default.prefix) == (None, "tidal", "dvc")
    clean_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    clean_env.setenv("TIDAL_S3_ENDPOINT", "http://127.0.0.1:8333")
    clean_env.setenv("TIDAL_S3_BUCKET", "models")
    clean_env.setenv("TIDAL_S3_PREFIX", "runs")
    s3 = load_settings().s3
    assert s3.endpoint_url == "http://127.0.0.1:8333"  # TIDAL_S3_ENDPOINT wins over AWS_ENDPOINT_URL
    assert s3.remote_url == "s3://models/runs"


def test_spark_remote_is_local_by_default_and_comes_from_the_environment(clean_env):
    assert load_settings().spark_remote is None  # no setting: every job starts its own local Spark
    clean_env.setenv("SPARK_REMOTE", "sc://127.0.0.1:15002")  # pyspark's own variable is honoured...
    assert load_settings().spark_remote == "sc://127.0.0.1:15002"
    clean_env.setenv("TIDAL_SPARK_REMOTE", "sc://127.0.0.1:18415/;user_id=tidal")  # ...and tidal's wins over it
    assert load_settings().spark_remote == "sc://127.0.0.1:18415/;user_id=tidal"


@pytest.mark.parametrize("url, problem", [
    ("local[2]", "scheme '' is not sc"),  # pyspark's in-process server: the JVM start per task this setting avoids
    ("http://127.0.0.1:18415", "scheme 'http' is not sc"),
    ("sc://:18415", "it names no host"),
    ("sc://127.0.0.1", "it names no port"),
    ("sc://127.0.0.1:99999", "Port out of range"),
    ("sc://127.0.0.1:18415/db", "path '/db' is not empty"),
])
def test_a_spark_remote_that_is_not_a_connect_url_is_refused_saying_what_to_give(clean_env, url, problem):
    clean_env.setenv("TIDAL_SPARK_REMOTE", url)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert problem in str(refused.value) and "Give sc://HOST:PORT" in str(refused.value)


def test_settings_are_frozen(clean_env):
    settings = load_settings()
    with pytest.raises(Exception):
        settings.params.gate.k = 3  # type: ignore[misc]
    assert settings.params.gate.k == 10


def test_train_config_refuses_an_unknown_train_key(tidal_env):
    from jobs.training.finetune import train_config

    with pytest.raises(ConfigError, match="embedding_size"):
        train_config(tidal_env({"train": {"embedding_size": 32}}))


def test_train_config_takes_train_values_and_the_base_seed(tidal_env):
    from jobs.training.finetune import train_config

    cfg = train_config(tidal_env({"train": {"dim": 24, "finetune_lr": None}, "base": {"seed": 5}}))
    assert cfg.dim == 24 and cfg.seed == 5 and cfg.finetune_lr is None
    assert isinstance(cfg.l2, float) and cfg.l2 == 1e-05


def test_params_train_keys_are_exactly_the_train_config_fields():
    from models.recommender import TrainConfig

    raw = yaml.safe_load(Path(DEFAULT_PARAMS_PATH).read_text())
    assert set(raw["train"]) == {f.name for f in fields(TrainConfig)} - {"seed"}
