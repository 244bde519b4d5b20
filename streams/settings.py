"""One frozen, typed settings object, read from `HEADWATER_*` environment variables.

Nothing reads the environment at import time: call `Settings()` at the edge (the CLI,
a test) and pass the object down.

>>> s = Settings(topic_prefix="t1-", partitions=2)
>>> s.topic("sensor-events"), s.partitions
('t1-sensor-events', 2)
>>> "hunter2" in repr(Settings(sasl_password="hunter2", labels_token="hunter2"))
False
"""

from __future__ import annotations

import json
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.curation import Budget, Curator, Slice
from models.engagement import EngagementConfig
from models.features import SensorConfig, parse_duration
from models.head import HeadConfig

__all__ = ["SINGLE_PARTITION", "TOPICS", "Settings"]

_ROOT = Path(__file__).resolve().parent.parent
#: state lives in the checkout's git-ignored .cache/, or in ~/.cache/headwater when installed
_CACHE = (_ROOT / ".cache" if (_ROOT / "pyproject.toml").exists()
          else Path.home() / ".cache" / "headwater")

#: Every topic headwater uses (DESIGN.md §2), before the prefix.
TOPICS = (
    "sensor-events",
    "engagement-events",
    "sensor-batches",
    "engagement-batches",
    "labels",
    "features",
    "predictions",
    "curation",
    "model-updates",
    "metrics",
    "alerts",
    "dead-letters",
    "training",
    "checkpoints",
)
#: topics with one partition whatever `partitions` says: the learn stage's single writer
SINGLE_PARTITION = frozenset({"training", "checkpoints"})


class Settings(BaseSettings):
    """Everything configurable, with the default a local single-machine run needs."""

    model_config = SettingsConfigDict(env_prefix="HEADWATER_", frozen=True, extra="ignore")

    # -- Kafka --------------------------------------------------------------------
    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    topic_prefix: str = Field("", description="Prefix for every topic name")
    partitions: int = Field(4, ge=1, description="Partitions of each topic created")
    replication: int = Field(1, ge=1, description="Replication factor of topics created")
    retention_ms: int = Field(7 * 24 * 3600 * 1000, description="Retention of data topics")
    security_protocol: Literal["PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    producer_linger_ms: int = Field(5, ge=0, description="Producer linger (DESIGN.md §8)")
    session_timeout_ms: int = Field(10_000, ge=1000, description="Consumer session timeout")

    # -- the worker ---------------------------------------------------------------
    app_id: str = Field("headwater", description="Faust app id and consumer group prefix")
    web_host: str = Field("127.0.0.1", description="Worker web server bind address")
    web_port: int = Field(6066, description="Worker web server port (/metrics)")
    labels_token: SecretStr | None = Field(
        None, description="Bearer token of POST /labels; unset: the endpoint refuses all")
    data_dir: Path = Field(_CACHE / "worker", description="Worker state directory")
    ingest_max_records: int = Field(4096, ge=1, description="Events per ingest batch, at most")
    ingest_max_wait_ms: int = Field(20, ge=0, description="Longest ingest poll wait")
    feature_windows: str = Field("1m,15m,1h", description="Sensor event-time windows")
    feature_half_lives: str = Field("5m,1h", description="Sensor EWMA half-lives")
    feature_lateness: str = Field("5m", description="How late a sensor event may arrive")
    max_future: str = Field("1d", description="How far past its ingest time an event may be")
    reading_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Physical range per reading, as JSON")
    reading_abs_max: float = Field(1e12, gt=0, description="Largest |reading| of any reading")
    engagement_half_lives: str = Field("10m,1h,1d", description="Engagement decay half-lives")
    engagement_prior: tuple[float, float] = Field(
        (1.0, 1.0), description="Beta prior (alpha, beta) of engagement rates, as JSON")
    positive_rating: float = Field(4.0, description="A rating at least this is a positive")
    featurize_max_wait_ms: int = Field(
        25, ge=0, description="Longest wait to gather sensor batch messages to featurize "
        "together (a take's size, and so the stage's rate under load, grows with it)")
    infer_max_rows: int = Field(4096, ge=1, description="Rows per inference micro-batch")
    infer_max_wait_ms: int = Field(5, ge=0, description="Longest wait to fill a micro-batch")
    tail_idle_s: float = Field(
        10.0, gt=0, description="An agent input partition idle this long is checked for "
        "messages Faust read but dropped, which are read back")
    predictions_format: Literal["json", "arrow"] = Field(
        "json", description="One JSON message per event, or one Arrow batch per micro-batch")
    dead_letter_max_raw: int = Field(65536, description="Raw bytes kept in a dead letter")
    log_format: Literal["text", "json"] = Field(
        "text", description="Worker logs: human-readable, or one JSON object per line")
    dead_letter_log_s: float = Field(30.0, gt=0, description="Dead-letter summary log interval")

    # -- models -------------------------------------------------------------------
    registry_dir: Path = Field(_CACHE / "registry", description="Model registry")
    sensor_model: str = Field("shuttle", description="Registry name of the sensor model")
    engagement_model: str = Field(
        "", description="Registry name of the engagement model; empty: engagement unscored")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Inference precision on CUDA (CPU always runs fp32)")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    torch_threads: int = Field(1, ge=1, description="PyTorch CPU threads in the worker")

    # -- online learning (the learn stage) ------------------------------------------
    learn: bool = Field(True, description="Run the online heads (learn) and serve them (infer)")
    head_spec: str = Field("StandardScaler | LogisticRegression",
                           description="river learner of each online head (models.online)")
    sensor_head_features: str = Field(
        "*.last,*.z_15m", description="Sensor features the sensor head learns on besides "
        "the deep score: all, or comma-separated glob patterns (a river head costs about "
        "1.5 us per feature and label)")
    engagement_head_features: str = Field(
        "all", description="Engagement features the engagement head learns on besides the "
        "deep score: all, or comma-separated glob patterns")
    head_horizon: str = Field("1h", description="How long features wait for their label")
    head_rolling: int = Field(1000, ge=1, description="Labels in the rolling metrics")
    drift_detector: Literal["ADWIN", "PageHinkley", "none"] = Field(
        "ADWIN", description="Drift detector on each head's errors")
    drift_action: Literal["none", "reset", "boost-lr", "curate"] = Field(
        "none", description="What a head does on drift (besides the alert)")
    engagement_negative_window: str = Field(
        "0s", description="An engagement event with no label within this becomes a "
        "negative (0s: off)")
    head_max_pending: int = Field(100_000, ge=1, description="Events kept for labels, at most")
    learn_max_buffer: int = Field(20_000, ge=1,
                                  description="Questions or labels held for ordering, at most")
    learn_snapshot_updates: int = Field(1000, ge=1,
                                        description="Publish a head after this many labels")
    learn_snapshot_s: float = Field(5.0, gt=0, description="... or after this many seconds")
    learn_report_s: float = Field(5.0, gt=0, description="Metrics report interval")
    learn_checkpoint_s: float = Field(10.0, gt=0, description="Learner checkpoint interval")
    learn_idle_flush_ms: int = Field(
        2000, ge=1, description="Idle this long, the learner releases what it holds")

    curate: bool = Field(True, description="Run the curate stage (predictions to curation)")
    curate_strategy: Literal["least-confidence", "margin", "entropy", "ensemble",
                             "variable-uncertainty", "random"] = Field(
        "least-confidence", description="How curate scores predictions (models.curation)")
    curate_budget: str = Field(
        "1%", description="Labelling budget: a fraction of events (1%, 0.01) or labels an "
        "hour (120/h, shared out by the partitions each worker holds)")
    curate_window: str = Field("1h", description="Event time the budget is held over")
    curate_slices: str = Field(
        "[]", description='Named slices with a share of the budget each, as JSON: '
        '[{"name": "night", "where": "hour < 6", "share": 0.3, "drift_boost": 2}]')
    curate_drift_boost: str = Field(
        "1h", description="How long (event time) a drift alert raises the share of slices "
        "with a drift_boost")
    curate_max_weight: int = Field(
        10, ge=1, le=100, description="Most times a random pick's label is learned (about "
        "1/P(picked)); 1 learns every curated label once")

    # -- local broker (ops/) --------------------------------------------------------
    kafka_home: Path = Field(_CACHE / "kafka", description="Local broker files")
    kafka_port: int = Field(9092, description="Local broker port")
    kafka_controller_port: int = Field(9093, description="Local KRaft controller port")
    kafka_sasl_port: int = Field(
        9094, description="Local broker SASL_SSL port (`headwater kafka start --sasl`)")

    def sensor_features(self) -> SensorConfig:
        """The sensor feature set these settings configure.

        >>> Settings(feature_windows="30s,2m").sensor_features().windows_ms
        (30000, 120000)
        """
        return SensorConfig(
            windows_ms=tuple(parse_duration(w) for w in self.feature_windows.split(",")),
            half_lives_ms=tuple(parse_duration(h) for h in self.feature_half_lives.split(",")),
            lateness_ms=parse_duration(self.feature_lateness),
            max_future_ms=parse_duration(self.max_future),
            ranges=dict(self.reading_ranges), abs_max=self.reading_abs_max)

    def engagement_features(self) -> EngagementConfig:
        """The engagement feature set these settings configure."""
        return EngagementConfig(
            half_lives_s=tuple(parse_duration(h) / 1000
                               for h in self.engagement_half_lives.split(",")),
            prior_alpha=self.engagement_prior[0], prior_beta=self.engagement_prior[1],
            positive_rating=self.positive_rating)

    def head_config(self, family: str) -> HeadConfig:
        """The online head of feature-set family `family` (`sensor`, `engagement`).

        >>> Settings(head_horizon="10m").head_config("sensor").horizon_ms
        600000
        """
        window = parse_duration(self.engagement_negative_window) \
            if family == "engagement" else 0
        return HeadConfig(spec=self.head_spec, horizon_ms=parse_duration(self.head_horizon),
                          rolling=self.head_rolling, drift=self.drift_detector,
                          drift_action=self.drift_action, negative_window_ms=window,
                          max_pending=self.head_max_pending)

    def curator(self, share: float = 1.0) -> Curator:
        """The curator of one model's predictions; `share`: the part of the partitions
        this worker holds, which a labels-an-hour budget is shared out by.

        >>> c = Settings(curate_budget="120/h", curate_window="30m").curator(share=0.25)
        >>> c.budget.per_hour, c.budget.window_ms, c.strategy
        (30.0, 1800000, 'least-confidence')
        >>> Settings(curate_slices='[{"name": "n", "where": "hour <", "share": 1}]').curator()
        Traceback (most recent call last):
        ...
        ValueError: slice predicate 'hour <': invalid syntax
        """
        budget = Budget.parse(self.curate_budget, parse_duration(self.curate_window))
        if budget.per_hour is not None:
            budget = replace(budget, per_hour=budget.per_hour * share)
        try:
            raw = json.loads(self.curate_slices)
        except json.JSONDecodeError as exc:
            raise ValueError(f"HEADWATER_CURATE_SLICES is not JSON: {exc}") from None
        slices = [Slice(**s) for s in raw]
        return Curator(self.curate_strategy, budget, slices,
                       max_weight=self.curate_max_weight)

    def served_models(self) -> list[str]:
        """Registry names of the models the worker serves.

        >>> Settings(engagement_model="movielens").served_models()
        ['shuttle', 'movielens']
        """
        return [n for n in (self.sensor_model, self.engagement_model) if n]

    def topic(self, name: str) -> str:
        """The full name of topic `name`, with the prefix."""
        return f"{self.topic_prefix}{name}"

    def to_env(self) -> dict[str, str]:
        """The HEADWATER_* variables that rebuild these settings in a child process.

        >>> Settings(partitions=2).to_env()["HEADWATER_PARTITIONS"]
        '2'
        """
        env = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, dict | tuple):
                value = json.dumps(value)
            if value is not None:
                env[f"HEADWATER_{name.upper()}"] = str(value)
        return env

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the broker connection, or None on PLAINTEXT."""
        if self.security_protocol == "PLAINTEXT":
            return None
        return ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None)

    def kafka_options(self) -> dict[str, object]:
        """Connection keyword arguments for aiokafka clients (security included)."""
        opts: dict[str, object] = {"bootstrap_servers": self.bootstrap,
                                   "security_protocol": self.security_protocol}
        if self.security_protocol != "PLAINTEXT":
            opts["ssl_context"] = self.ssl_context()
        if self.sasl_username:
            opts["sasl_mechanism"] = "SCRAM-SHA-512"
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = (self.sasl_password.get_secret_value()
                                           if self.sasl_password else "")
        return opts
