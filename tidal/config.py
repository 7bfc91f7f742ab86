"""Typed configuration: hyperparameters from params.yaml, locations and credentials from the environment.

params.yaml is the one place hyperparameters live (one section per stage plus `base`). The environment only moves
things (TIDAL_HOME, the S3 endpoint) and carries secrets; nothing here holds a credential. Every section is a
pydantic model, so a wrong type or an out-of-range value is refused with a message before any work starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS_PATH = REPO_ROOT / "params.yaml"


class _Section(BaseModel):
    # Unknown keys are refused: a typo in params.yaml must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Section):
    seed: int = 42
    event_types: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "rating")
    max_future_skew_s: int = Field(300, ge=0, description="events later than now + skew are quarantined")
    max_id_length: int = Field(256, ge=1)


class GenerateParams(_Section):
    users: int = Field(400, ge=1)
    items: int = Field(300, ge=1)
    events_per_file: int = Field(2000, ge=1)
    latent_dim: int = Field(8, ge=1)
    popularity_exponent: float = Field(1.1, gt=0)
    new_users_per_file: int = Field(8, ge=0)
    new_items_per_file: int = Field(3, ge=0)
    start_time: str = "2026-11-01T00:00:00Z"
    file_interval_s: int = Field(300, ge=1)
    drift_at_file: int | None = Field(None, ge=0)
    categories: tuple[str, ...] = ("action", "comedy", "drama", "horror", "romance", "scifi", "documentary", "kids")


class FeaturesParams(_Section):
    event_type_weights: dict[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0, "rating": 2.0}
    max_files_per_trigger: int = Field(1000, ge=1)
    allowed_lateness_s: int = Field(172800, ge=0, description="events older than the newest seen minus this are late")
    half_life_s: float = Field(604800.0, gt=0, description="half-life of the decayed user/item/type counts")
    outlier_z: float = Field(6.0, gt=0, description="robust z (median/MAD of log rates) above which an entity is flagged")
    outlier_min_events: int = Field(50, ge=1, description="fewest events in a batch for an entity to be flagged")
    popularity_windows_s: tuple[int, ...] = Field(
        (3600, 86400), min_length=1, description="sliding windows of the item_events_last_<w>s popularity features")
    popularity_bucket_s: int = Field(300, ge=1, description="granularity of the sliding windows (state is per bucket)")
    bronze_files_per_date: int = Field(1, ge=1, description="files a bronze date is compacted into")
    bronze_max_files_open_date: int = Field(
        64, ge=1, description="files a bronze date that can still get events may reach before it is compacted")
    spark_master: str = "local[2]"
    shuffle_partitions: int = Field(4, ge=1)
    max_partition_mb: int = Field(
        32, ge=1, description="most MB of input files one Spark task reads (spark.sql.files.maxPartitionBytes)")
    spark_driver_memory: str = Field("1g", pattern=r"^[1-9][0-9]*[kmgt]$",
                                     description="JVM heap of the local Spark driver (spark.driver.memory), e.g. 8g")
    online_recent_items: int = Field(50, ge=1, description="items kept per user in the online store, newest first")
    online_ttl_s: int = Field(172800, ge=1, description="online feature groups older than this are read as missing")
    online_popular_items: int = Field(200, ge=1, description="length of the online store's popular-now ranking")

    @model_validator(mode="after")
    def _windows_are_whole_buckets(self) -> "FeaturesParams":
        # A window that is not a whole number of buckets would silently be rounded; refuse it instead.
        bad = [w for w in self.popularity_windows_s if w <= 0 or w % self.popularity_bucket_s]
        if bad or len(set(self.popularity_windows_s)) != len(self.popularity_windows_s):
            raise ValueError(f"features.popularity_windows_s must be distinct positive multiples of "
                             f"features.popularity_bucket_s ({self.popularity_bucket_s}); got {self.popularity_windows_s}")
        return self


class ValidateParams(_Section):
    max_bad_row_share: float = Field(0.2, ge=0, le=1)
    suite: str = "features.examples"
    events_suite: str = "events.raw"
    row_count_bounds: tuple[float, float] = Field((0.1, 10.0), description="x median accepted rows of recent batches")


class DriftParams(_Section):
    alpha: float = Field(0.01, gt=0, lt=1, description="false discovery rate (Benjamini-Hochberg across a run's tests)")
    # Per-event features only. Not hour_of_day: a 5-minute window holds one hour. Not user/item_batch_events: every
    # event of an item carries the same count, so the rows are not independent and KS false-alarms (16 of 20
    # stationary synthetic windows); catalogue shifts are caught by the item_id popularity-bucket test instead.
    features: tuple[str, ...] = ("value", "event_weight")
    categorical_features: tuple[str, ...] = ("event_type", "item_id")
    reference_max_rows: int = Field(20000, ge=10)
    d_min: float = Field(0.1, ge=0, le=1, description="smallest KS statistic that counts as drift")
    d_severe: float = Field(0.3, ge=0, le=1, description="KS statistic from which drift is severe")
    psi_min: float = Field(0.1, ge=0, description="smallest PSI that counts as drift")
    psi_severe: float = Field(0.5, ge=0, description="PSI from which drift is severe")
    item_popularity_buckets: int = Field(10, ge=2, description="equal-mass reference popularity buckets for item_id")
    boost_epochs_factor: float = Field(2.0, ge=1, description="fine-tune epochs x this while mild drift lasts")
    boost_lr_factor: float = Field(1.0, gt=0, description="fine-tune learning rate x this while mild drift lasts")

    @property
    def reference_columns(self) -> tuple[str, ...]:
        """The columns the reference sample keeps: every feature the drift tests read."""
        return self.features + self.categorical_features


class FinetuneParams(_Section):
    replay_max_rows: int = Field(20000, ge=0, description="most recent history rows offered to the replay sampler")
    min_examples: int = Field(50, ge=1, description="a cycle with fewer new examples skips training")
    # 1 by default: the model's per-batch ops are small (a batch of 1024 x 64), so a second intra-op thread barely
    # helps on a quiet machine and, when the cores are busy, makes every op wait for it (benchmarks/training).
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads of the fine-tune")


class GateParams(_Section):
    k: int = Field(10, ge=1)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    recall_tolerance: float = Field(0.02, ge=0, description="candidate may trail production by this much Recall@k")


class ScheduleParams(_Section):
    incremental_every_minutes: int = Field(5, ge=1)


class RetrainParams(_Section):
    """Defaults of a full retrain; the DAG's Params (and `tidal retrain` flags) override them per run."""

    history_days: int | None = Field(None, ge=1, description="days of history before the newest event; null = all")
    epochs: int | None = Field(None, ge=1, description="null = train.epochs")
    promote: str = Field("auto", pattern="^(auto|register)$", description="auto: promote if the gate passes")
    min_examples: int = Field(100, ge=1, description="fewer examples in the window refuses the retrain")
    processes: int = Field(1, ge=1, le=64, description="1: train in the task's process; N >= 2: torch.distributed "
                                                          "(gloo) over N processes started with torchrun")
    threads_per_process: int = Field(1, ge=1, description="torch intra-op threads of each training process")


class VersionParams(_Section):
    """Pushing versions to the S3 remote; a failed push goes to the outbox and is retried with backoff."""

    push_attempts: int = Field(3, ge=1, description="tries per push before queueing it in the outbox")
    backoff_s: float = Field(2.0, ge=0, description="first wait between tries; doubles each time")
    max_backoff_s: float = Field(300.0, ge=0)


class ServingParams(_Section):
    """`tidal serve`: the recommendations API (serving/)."""

    default_k: int = Field(10, ge=1, description="k when a request gives none")
    max_k: int = Field(100, ge=1, description="largest k a request may ask for")
    max_user_id_length: int = Field(256, ge=1, description="longer user ids are refused (400)")
    watch_interval_s: float = Field(0.5, gt=0, le=10, description="how often serving checks the production alias")
    candidates_per_user: int = Field(
        200, ge=1, description="top items kept per known user when a model is warmed (>= max_k + seen items filtered)")
    popular_refresh_s: float = Field(5.0, gt=0, description="how often the popular-now ranking is reread")
    store_retry_s: float = Field(2.0, gt=0, description="after an online-store error, wait this long before asking again")

    @model_validator(mode="after")
    def _default_within_max(self) -> "ServingParams":
        if self.default_k > self.max_k:
            raise ValueError(f"serving.default_k ({self.default_k}) must be <= serving.max_k ({self.max_k})")
        return self


class Params(_Section):
    base: BaseParams = BaseParams()
    generate: GenerateParams = GenerateParams()
    features: FeaturesParams = FeaturesParams()
    validation: ValidateParams = ValidateParams()
    drift: DriftParams = DriftParams()
    # The model's hyperparameters, by the names of models.recommender.TrainConfig; jobs.training.finetune turns them into
    # a TrainConfig, which refuses unknown names (config sits below models and does not import it).
    train: dict[str, int | float | None] = {}
    finetune: FinetuneParams = FinetuneParams()
    gate: GateParams = GateParams()
    schedule: ScheduleParams = ScheduleParams()
    retrain: RetrainParams = RetrainParams()
    version: VersionParams = VersionParams()
    serving: ServingParams = ServingParams()


class S3Settings(_Section):
    """Where artifacts are pushed. Credentials are read by boto3/DVC from AWS_* variables, never stored here."""

    endpoint_url: str | None
    bucket: str
    prefix: str = "dvc"

    @property
    def remote_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class OnlineStoreSettings(_Section):
    """Where the online feature store is: a Redis-protocol server (the stack's Valkey, or any Redis/Valkey).

    `url` None means no online store: the features job keeps only the offline state. The password travels inside
    the URL (redis://:PASSWORD@host:port/db), so `display_url` is the form to print."""

    url: str | None = None
    namespace: str = Field("tidal", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="prefix of every key")

    @property
    def display_url(self) -> str | None:
        """The URL without its password, for logs and summaries."""
        return redact_url(self.url) if self.url else None


class Settings(_Section):
    home: Path
    params: Params
    s3: S3Settings
    online_store: OnlineStoreSettings = OnlineStoreSettings()
    # A Spark Connect server (sc://HOST:PORT) the Spark jobs run on instead of starting a local JVM each; None = local.
    spark_remote: str | None = None

    @field_validator("home")
    @classmethod
    def _absolute(cls, home: Path) -> Path:
        return home.expanduser().resolve()


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and what to do."""


def redact_url(url: str) -> str:
    """scheme://user:***@host:port/db: the URL with any password replaced."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


def online_store_settings(url: str | None, namespace: str | None = None) -> OnlineStoreSettings:
    """TIDAL_REDIS_URL (and TIDAL_REDIS_NAMESPACE) checked before any work starts: a URL the client would
    misread is refused with what a valid one looks like, never with the password in the message."""
    if not url:
        return OnlineStoreSettings(namespace=namespace or "tidal")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number or out of range
        db = parts.path.strip("/")
        problem = (f"scheme '{parts.scheme}' is not redis, rediss or unix" if parts.scheme not in ("redis", "rediss", "unix")
                   else "it names no host" if parts.scheme != "unix" and not parts.hostname
                   else "it names no socket path" if parts.scheme == "unix" and not parts.path
                   else f"database '{db}' is not a number" if parts.scheme != "unix" and db and not db.isdigit()
                   else None)
    except ValueError as err:
        problem = str(err)
    if problem is None:
        try:
            return OnlineStoreSettings(url=url, namespace=namespace or "tidal")
        except ValidationError as err:
            raise ConfigError(f"TIDAL_REDIS_NAMESPACE={namespace!r} is not a key prefix: give 1-64 letters, digits,"
                              f" '_', '.' or '-' ({err.errors()[0]['msg']})") from None
    raise ConfigError(f"TIDAL_REDIS_URL {redact_url(url)!r} is not a Redis URL: {problem}. Give redis://[:PASSWORD@]HOST:PORT/DB, "
                      "e.g. the stack's (source \"$(scripts/stack.sh env)\"), or unset it to run without an online store")


def spark_remote_setting(url: str | None) -> str | None:
    """TIDAL_SPARK_REMOTE (or pyspark's own SPARK_REMOTE) checked before any work starts: sc://HOST:PORT, or unset
    for a local Spark. pyspark's own local-mode forms ("local", "local[2]") are refused: they start a server inside
    the job, which is the per-task JVM start this setting exists to avoid."""
    if not url:
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as err:
        port, problem = None, str(err)
    else:
        problem = (f"scheme '{parts.scheme}' is not sc" if parts.scheme != "sc"
                   else "it names no host" if not parts.hostname
                   else "it names no port" if port is None
                   else f"path '{parts.path}' is not empty (parameters go after ';', e.g. sc://host:15002/;user_id=x)"
                   if parts.path not in ("", "/") and not parts.path.startswith("/;") else None)
    if problem is None:
        return url
    raise ConfigError(f"TIDAL_SPARK_REMOTE {url!r} is not a Spark Connect URL: {problem}. Give sc://HOST:PORT, e.g. the "
                      "stack's (source \"$(scripts/stack.sh env)\"), or unset it to run a local Spark")


def load_params(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (or TIDAL_PARAMS) and apply {section: {key: value}} overrides, validating everything."""
    params_path = Path(path or os.environ.get("TIDAL_PARAMS", DEFAULT_PARAMS_PATH))
    if not params_path.is_file():
        raise ConfigError(f"params file {params_path} not found; set TIDAL_PARAMS or run from the checkout")
    raw = yaml.safe_load(params_path.read_text()) or {}
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"invalid parameters in {params_path}:\n{err}") from None


def load_settings(params_path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """The whole configuration: params plus locations from the environment, each with a default."""
    return Settings(
        home=Path(os.environ.get("TIDAL_HOME", REPO_ROOT / "data")),
        params=load_params(params_path, overrides),
        s3=S3Settings(
            endpoint_url=os.environ.get("TIDAL_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL"),
            bucket=os.environ.get("TIDAL_S3_BUCKET", "tidal"),
            prefix=os.environ.get("TIDAL_S3_PREFIX", "dvc"),
        ),
        online_store=online_store_settings(os.environ.get("TIDAL_REDIS_URL"), os.environ.get("TIDAL_REDIS_NAMESPACE")),
        # SPARK_REMOTE too: pyspark itself would route a local builder to it and refuse the master beside it.
        spark_remote=spark_remote_setting(os.environ.get("TIDAL_SPARK_REMOTE") or os.environ.get("SPARK_REMOTE")),
    )
