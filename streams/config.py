"""Configuration: one YAML file, overridable from the environment.

The file's layout is fixed by docs/design.md (``kafka``, ``influx``, ``models``); the
rest has documented defaults. Secrets (the InfluxDB token, Kafka SASL
password) come from the environment only: a secret written in the file is a
configuration error, and no secret ever appears in ``repr`` or a log line.

>>> cfg = Config.from_mapping({"models": [{"id": "m", "task": "binary",
...     "features": {"x": "numeric"}, "window": {"events": 10}}]}, environ={})
>>> cfg.models["m"].window.events, cfg.kafka.topics.predictions, cfg.influx.bucket
(10, 'predictions', 'monitoring')
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from detectors.drift import DEFAULT_METHOD
from detectors.profile import category_text
from streams.events import Limits

ENV_OVERRIDES: Mapping[str, tuple[str, ...]] = {
    "DRIFTWARDEN_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "DRIFTWARDEN_KAFKA_SECURITY_PROTOCOL": ("kafka", "security_protocol"),
    "DRIFTWARDEN_KAFKA_SASL_MECHANISM": ("kafka", "sasl_mechanism"),
    "DRIFTWARDEN_KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
    "DRIFTWARDEN_KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
    "DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": ("kafka", "ssl_key_password"),
    "DRIFTWARDEN_INFLUX_URL": ("influx", "url"),
    "DRIFTWARDEN_INFLUX_TOKEN": ("influx", "token"),
    "DRIFTWARDEN_INFLUX_ORG": ("influx", "org"),
    "DRIFTWARDEN_INFLUX_BUCKET": ("influx", "bucket"),
    "DRIFTWARDEN_WEBHOOK_URL": ("alerts", "webhook_url"),
    "DRIFTWARDEN_REPORTS_DIR": ("retrain", "reports_dir"),
    "DRIFTWARDEN_STATE_DIR": ("worker", "state_dir"),
}
"""Environment variable → config key path. Docker-compose and the docs use these names."""

SECRET_KEYS: frozenset[tuple[str, str]] = frozenset(
    {("influx", "token"), ("kafka", "sasl_password"), ("kafka", "ssl_key_password")}
)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
"""``kafka.security_protocol`` values, as every Kafka client names them."""
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""``kafka.sasl_mechanism`` values. OAUTHBEARER and GSSAPI need code (a token provider, Kerberos) rather
than configuration, so they are refused with a reason (see :func:`_kafka`)."""

TASKS = ("binary", "multiclass", "regression")
FEATURE_TYPES = ("numeric", "categorical")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending key."""


class Secret(str):
    """A string that never shows itself in ``repr``/``str`` formatting of the config."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    @property
    def value(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class Topics:
    predictions: str = "predictions"
    feedback: str = "feedback"
    alerts: str = "alerts"
    retrain_jobs: str = "retrain-jobs"
    dead_letters: str = "dead-letters"
    model_updates: str = "model-updates"
    labelled: str = "labelled"


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"
    topics: Topics = field(default_factory=Topics)
    partitions: int = 1
    """Partitions of the topics driftwarden creates (``broker``, ``simulate``)."""
    group_id: str = "driftwarden"
    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL: the same for every Kafka client driftwarden opens."""
    sasl_mechanism: str = ""
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; required with the SASL protocols."""
    sasl_username: str = ""
    """From ``DRIFTWARDEN_KAFKA_SASL_USERNAME``."""
    sasl_password: Secret = Secret("")
    """From ``DRIFTWARDEN_KAFKA_SASL_PASSWORD`` only."""
    ssl_cafile: Path | None = None
    """PEM file of the CA(s) that signed the brokers' certificates; the system's CAs when not set."""
    ssl_certfile: Path | None = None
    """PEM client certificate (mTLS); it may hold the key too."""
    ssl_keyfile: Path | None = None
    """PEM client key (mTLS), encrypted or not."""
    ssl_key_password: Secret = Secret("")
    """The client key's password, from ``DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD`` only."""
    batch_size: int = 2000
    """Most messages in one micro-batch: a batch is whatever has arrived, up to this many."""
    batch_timeout: float = 0.2
    """Longest wait, in seconds, for messages when none is waiting."""
    connect_timeout_seconds: float = 8.0
    """How long a command waits at start for a bootstrap server to accept a connection before it
    exits 3 with one line naming the address (a broker still starting is waited for)."""
    merge_by_event_time: bool = True
    """Fair consumption: hand a partition's predictions and feedback on merged by event time (as
    ``replay`` does), waiting while a topic with a backlog has nothing fetched yet; false: in
    fetch order."""
    idle_timeout: float = 30.0
    """Seconds a source partition that is caught up must be silent before stage 1 marks it idle on
    the internal topic, so that it stops holding the model windows' watermark back (Flink's
    ``withIdleness``); its next event makes it count again. Stage 2 adds at most this much latency
    when a partition stops receiving events."""
    panes_codec: int = 2
    """The codec stage 1 writes the internal topic's partials in: 2 (JSON and Zstandard), or 1 (JSON
    and zlib) while a rolling upgrade from a version before codec 2 still runs old workers, whose
    stage 2 reads codec 1 only. Stage 2 reads both."""
    panes_retention_hours: float = 24.0
    """Retention (delete, not compacted) of the internal topic ``<group_id>-panes`` when driftwarden
    creates it: how long stage 2 may be down before the partials it has not merged are deleted."""


@dataclass(frozen=True)
class InfluxConfig:
    url: str = "http://127.0.0.1:8086"
    org: str = "ml"
    bucket: str = "monitoring"
    token: Secret = Secret("")
    enabled: bool = True
    batch_size: int = 5000
    """Most points per write request (a batch's points are written before its state is saved)."""
    retry_max_seconds: float = 10.0
    """Longest pause between two attempts while InfluxDB is unreachable (the back-off doubles up to it;
    attempts go on until it answers: points are never dropped for an outage)."""
    warn_every_seconds: float = 30.0
    """While InfluxDB is unreachable, a WARNING this often (URL, how long, points waiting)."""
    verify_ssl: bool = True
    """Check the server's certificate on an https ``url`` (turn off only for a test server)."""
    ssl_ca_cert: Path | None = None
    """PEM file of the CA that signed the server's certificate, when it is not one the system trusts."""


@dataclass(frozen=True)
class WindowConfig:
    """A tumbling window of ``events`` events or ``seconds`` of event time; optional ``slide``."""

    events: int | None = 1000
    seconds: float | None = None
    slide: int | float | None = None
    allowed_lateness: float = 5.0
    """Event-time seconds a pane waits past its end for late events (the watermark is the
    minimum over the source partitions); an event later than that is counted ``late``."""

    @property
    def kind(self) -> str:
        return "events" if self.events is not None else "seconds"


@dataclass(frozen=True)
class DriftMethod:
    """A drift test and its threshold (``None``: the test's default). The default method is the
    one the worker runs when a model names none: :data:`detectors.drift.DEFAULT_METHOD` (PSI);
    ``auto`` picks Evidently's test by type and size."""

    method: str = DEFAULT_METHOD[0]
    threshold: float | None = None


@dataclass(frozen=True)
class CusumConfig:
    enabled: bool = True
    """Run the CUSUM streams against the reference profile on every micro-batch (detectors/cusum.py)."""
    false_alarms_per_million: float = 1.0
    """Target false alarms per million predictions for all CUSUM streams of the model together."""


@dataclass(frozen=True)
class ModelConfig:
    id: str
    task: str = "binary"
    positive_label: str = "1"
    reference: Path | None = None
    features: Mapping[str, str] = field(default_factory=dict)
    attributes: tuple[str, ...] = ()
    intersections: tuple[tuple[str, ...], ...] = ()
    window: WindowConfig = field(default_factory=WindowConfig)
    drift: Mapping[str, DriftMethod] = field(default_factory=dict)
    """Per-feature drift method and threshold; ``*`` applies to every feature not named."""
    min_group_size: int = 30
    policies: tuple[Mapping[str, Any], ...] | None = None
    cusum: CusumConfig = field(default_factory=CusumConfig)

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    def drift_method(self, feature: str) -> DriftMethod:
        return self.drift.get(feature) or self.drift.get("*") or DriftMethod()


MAX_FULL_SNAPSHOT_EVERY = 499
"""Largest ``join.full_snapshot_every``: recovery may need every delta since the previous complete
snapshot (two intervals, when a crash cut the newest one short), and the changelog keeps the
deltas of the last ``streams.state.DELTA_SLOTS`` (1000) batches only, so two intervals must stay below it."""


@dataclass(frozen=True)
class JoinConfig:
    ttl_seconds: float = 7 * 24 * 3600.0
    """How long (event time) a prediction waits for its label, and a label for its prediction."""
    max_entries: int = 1_000_000
    """Most entries of one partition's join table; beyond it the oldest are evicted. This, not
    traffic × TTL, bounds the join's memory: ~130 B per entry (README, "Memory and speed")."""
    full_snapshot_every: int = 200
    """Batches between two full snapshots of a partition's join table in the state changelog (one
    delta per batch in between): recovery loads the newest snapshot and applies the deltas after
    it, so a lower value means fewer deltas to replay and more bytes written. At most
    :data:`MAX_FULL_SNAPSHOT_EVERY`."""


@dataclass(frozen=True)
class ValidationConfig(Limits):
    """What input the worker accepts. Every bound has a default; input beyond one is dead-lettered
    with a reason naming the key and counted as monitor ``stat=rejected_<key>`` (README, "Limits").

    The parser's bounds on a message (``max_message_bytes``, ``max_array_length``, ``max_fields``,
    ``max_string_length``, ``max_depth``) are declared once, in :class:`streams.events.Limits`;
    this section is those and the bounds the pipeline checks around the parser."""

    type_errors: str = "reject"
    """``reject``: a feature with the wrong JSON type dead-letters the event;
    ``count``: the value is treated as missing and counted as a ``type_error`` data-quality violation."""
    max_future_seconds: float = 300.0
    """How far an event's timestamp may be ahead of its partition's watermark (the largest event
    time accepted so far) or of the wall clock, whichever is later."""
    max_past_seconds: float | None = None
    """How far an event's timestamp may be behind its partition's watermark; ``null``: the join's
    TTL (``join.ttl_seconds``), beyond which an event could not be joined anyway."""
    dead_letter_payload_bytes: int = 65_536
    """Most bytes of the original message a dead letter carries; a longer message is truncated, with
    its size and SHA-256 (and its topic/partition/offset, as every dead letter has)."""


@dataclass(frozen=True)
class AlertsConfig:
    webhook_url: str = ""
    webhook_timeout: float = 5.0
    webhook_retries: int = 3


@dataclass(frozen=True)
class RetrainConfig:
    """The ``retrain:`` section: job reports (worker) and the retrain service (``retrain-worker``).

    A retrain job names its *training span*: the labelled pairs whose prediction time is at
    most the trigger's window end and at most ``train_seconds`` before it, the latest
    ``train_pairs`` of them (either may be ``null``, not both). The retrain service reads
    that span from ``labelled``, waits up to ``label_wait_seconds`` for labels still in
    flight, and defers a job with fewer than ``min_pairs`` pairs (retrying as labels
    arrive, for up to ``defer_seconds``) instead of failing it.
    """

    reports_dir: Path = Path("reports")
    trainer: str = "sklearn-logistic"
    profiles_dir: Path | None = None
    """Where new versions' profiles and models go; default ``profiles/`` beside ``reports_dir``."""
    train_pairs: int | None = 1000
    train_seconds: float | None = 3600.0
    min_pairs: int = 200
    holdout: float = 0.2
    """Share of the span (the latest pairs) held out to measure the new and the serving model."""
    label_wait_seconds: float = 30.0
    defer_seconds: float = 3600.0

    @property
    def resolved_profiles_dir(self) -> Path:
        return self.profiles_dir if self.profiles_dir is not None else Path(self.reports_dir).parent / "profiles"


@dataclass(frozen=True)
class WorkerConfig:
    state_dir: Path = Path(".driftwarden")
    echo_windows: bool = False
    """Print a one-line summary of every closed window to stdout (the demo turns it on)."""
    metrics_file: Path | None = None
    """Also append every point, as line protocol, to this file (the demo's page reads it)."""


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    influx: InfluxConfig = field(default_factory=InfluxConfig)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    join: JoinConfig = field(default_factory=JoinConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    policies: tuple[Mapping[str, Any], ...] | None = None
    """Rules for every model that names none; ``None`` means the documented defaults."""
    source: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
        """Read ``path`` (YAML), apply environment overrides and validate."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_mapping(raw, environ=environ, base_dir=path.parent, source=path)

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        environ: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
        source: Path | None = None,
    ) -> Config:
        if not isinstance(raw, Mapping):
            raise ConfigError("config: expected a mapping at the top level")
        environ = os.environ if environ is None else environ
        base_dir = base_dir or Path.cwd()
        for section, key in SECRET_KEYS:
            if isinstance(raw.get(section), Mapping) and raw[section].get(key):
                env = next(n for n, p in ENV_OVERRIDES.items() if p == (section, key))
                raise ConfigError(
                    f"{section}.{key}: secrets come from the environment only; remove it from the file and set {env}"
                )
        merged: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
        for env, path in ENV_OVERRIDES.items():
            if environ.get(env):
                if merged.get(path[0]) is None:
                    merged[path[0]] = {}
                if not isinstance(merged[path[0]], dict):
                    raise ConfigError(f"{path[0]}: expected a mapping")
                merged[path[0]][path[1]] = environ[env]
        _check_keys("config", merged, {f.name for f in fields(cls)} - {"source"})
        kafka_raw = dict(_section(merged, "kafka"))
        topics = _build(Topics, "kafka.topics", _section(kafka_raw, "topics"))
        kafka_raw["topics"] = topics
        kafka = _kafka(_build(KafkaConfig, "kafka", kafka_raw), base_dir)
        influx = _build(InfluxConfig, "influx", _section(merged, "influx"))
        influx = replace(influx, token=Secret(influx.token),
                         ssl_ca_cert=_existing_file("influx.ssl_ca_cert", influx.ssl_ca_cert, base_dir))
        retrain = _retrain(_section(merged, "retrain"), base_dir)
        worker = _build(WorkerConfig, "worker", _section(merged, "worker"))
        worker = replace(worker, state_dir=_resolve(base_dir, worker.state_dir))
        if worker.metrics_file is not None:
            worker = replace(worker, metrics_file=_resolve(base_dir, Path(worker.metrics_file)))
        models_raw = merged.get("models") or []
        if not isinstance(models_raw, list):
            raise ConfigError("models: expected a list of models")
        models: dict[str, ModelConfig] = {}
        for i, m in enumerate(models_raw):
            model = _model(f"models[{i}]", m, base_dir)
            if model.id in models:
                raise ConfigError(f"models[{i}].id: duplicate model id {model.id!r}")
            models[model.id] = model
        policies = merged.get("policies")
        if policies is not None and not isinstance(policies, list):
            raise ConfigError("policies: expected a list of rules")
        return cls(
            kafka=kafka,
            influx=influx,
            models=models,
            join=_join(_section(merged, "join")),
            validation=_validation(_section(merged, "validation")),
            alerts=_build(AlertsConfig, "alerts", _section(merged, "alerts")),
            retrain=retrain,
            worker=worker,
            policies=tuple(policies) if policies is not None else None,
            source=source,
        )


def _kafka(cfg: KafkaConfig, base_dir: Path) -> KafkaConfig:
    """Check the security keys together; resolve the certificate paths against the config's directory."""
    if cfg.panes_codec not in (1, 2):
        raise ConfigError(f"kafka.panes_codec: expected 2, or 1 while workers older than codec 2 still run "
                          f"(their stage 2 reads codec 1 only), got {cfg.panes_codec!r}")
    protocol = str(cfg.security_protocol).upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol: expected one of {', '.join(SECURITY_PROTOCOLS)}, "
                          f"got {cfg.security_protocol!r}")
    mechanism = str(cfg.sasl_mechanism).upper()
    sasl, tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
    if sasl and not mechanism:
        raise ConfigError(f"kafka.sasl_mechanism: required with security_protocol {protocol}: "
                          f"one of {', '.join(SASL_MECHANISMS)}")
    if mechanism in ("OAUTHBEARER", "GSSAPI"):
        raise ConfigError(f"kafka.sasl_mechanism: {mechanism} is not supported (it needs a token provider or "
                          f"Kerberos set up in code, not configuration); use one of {', '.join(SASL_MECHANISMS)}")
    if mechanism and mechanism not in SASL_MECHANISMS:
        raise ConfigError(f"kafka.sasl_mechanism: expected one of {', '.join(SASL_MECHANISMS)}, "
                          f"got {cfg.sasl_mechanism!r}")
    if mechanism and not sasl:
        raise ConfigError(f"kafka.sasl_mechanism: only used with security_protocol SASL_PLAINTEXT or SASL_SSL "
                          f"(it is {protocol})")
    if cfg.sasl_username and not sasl:
        raise ConfigError(f"kafka.security_protocol: DRIFTWARDEN_KAFKA_SASL_USERNAME is set but {protocol} sends "
                          "no credentials; set security_protocol to SASL_PLAINTEXT or SASL_SSL and sasl_mechanism, "
                          "or unset the variable")
    files = {}
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(cfg, key)
        if value is not None and not tls:
            raise ConfigError(f"kafka.{key}: only used with security_protocol SSL or SASL_SSL (it is {protocol})")
        files[key] = _existing_file(f"kafka.{key}", value, base_dir)
    if files["ssl_keyfile"] is not None and files["ssl_certfile"] is None:
        raise ConfigError("kafka.ssl_keyfile: needs kafka.ssl_certfile, the client certificate it belongs to")
    return replace(cfg, security_protocol=protocol, sasl_mechanism=mechanism, **files,
                   sasl_password=Secret(cfg.sasl_password), ssl_key_password=Secret(cfg.ssl_key_password))


def _existing_file(where: str, value: Any, base_dir: Path) -> Path | None:
    """``value`` as a path relative to the config's directory, which must name an existing file."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{where}: expected a file path, got {value!r}")
    path = _resolve(base_dir, Path(value))
    if not path.is_file():
        raise ConfigError(f"{where}: file not found: {path}")
    return path


def _retrain(raw: Mapping[str, Any], base_dir: Path) -> RetrainConfig:
    unbounded = {name: None for name in ("train_pairs", "train_seconds") if name in raw and raw[name] is None}
    cfg = replace(_build(RetrainConfig, "retrain", {k: v for k, v in raw.items() if k not in unbounded}), **unbounded)
    for name in ("train_pairs", "min_pairs"):
        value = getattr(cfg, name)
        if value is None and name == "train_pairs":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ConfigError(f"retrain.{name}: expected a whole number of pairs >= 2, got {value!r}")
    for name in ("train_seconds", "label_wait_seconds", "defer_seconds"):
        value = getattr(cfg, name)
        if value is None and name == "train_seconds":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ConfigError(f"retrain.{name}: expected a number of seconds >= 0, got {value!r}")
    if cfg.train_pairs is None and cfg.train_seconds is None:
        raise ConfigError("retrain: give train_pairs or train_seconds (or both): the span a retrain job trains on")
    if cfg.train_pairs is not None and cfg.train_pairs < cfg.min_pairs:
        raise ConfigError(f"retrain.train_pairs ({cfg.train_pairs}) is below retrain.min_pairs ({cfg.min_pairs}): "
                          "no job could ever train; raise train_pairs or lower min_pairs")
    if isinstance(cfg.holdout, bool) or not isinstance(cfg.holdout, (int, float)) or not 0 <= cfg.holdout < 1:
        raise ConfigError(f"retrain.holdout: expected a share in [0, 1), got {cfg.holdout!r}")
    profiles = None if cfg.profiles_dir is None else _resolve(base_dir, Path(cfg.profiles_dir))
    return replace(cfg, reports_dir=_resolve(base_dir, cfg.reports_dir), profiles_dir=profiles,
                   holdout=float(cfg.holdout))


def _join(raw: Mapping[str, Any]) -> JoinConfig:
    cfg = _build(JoinConfig, "join", raw)  # whole numbers, by _coerce
    if cfg.max_entries < 1:
        raise ConfigError(f"join.max_entries: expected a positive whole number of entries, got {cfg.max_entries!r}")
    if not 1 <= cfg.full_snapshot_every <= MAX_FULL_SNAPSHOT_EVERY:
        raise ConfigError(f"join.full_snapshot_every: expected a whole number of batches from 1 to "
                          f"{MAX_FULL_SNAPSHOT_EVERY} (the changelog keeps the deltas of the last 1000 batches, and "
                          f"recovery may need two intervals of them), got {cfg.full_snapshot_every!r}")
    return cfg


_WHOLE_LIMITS = {"max_message_bytes": 1, "max_array_length": 1, "max_fields": 1, "max_string_length": 1,
                 "max_depth": 2, "dead_letter_payload_bytes": 0}
"""Whole-number ``validation`` keys and their smallest sensible value."""


def _validation(raw: Mapping[str, Any]) -> ValidationConfig:
    cfg = _build(ValidationConfig, "validation", raw)
    if cfg.type_errors not in ("reject", "count"):
        raise ConfigError(f"validation.type_errors: expected 'reject' or 'count', got {cfg.type_errors!r}")
    for key, least in _WHOLE_LIMITS.items():  # whole numbers, by _coerce
        value = getattr(cfg, key)
        if value < least:
            raise ConfigError(f"validation.{key}: expected a whole number >= {least}, got {value!r}")
    if cfg.max_depth > 512:
        raise ConfigError(f"validation.max_depth: at most 512 (the JSON decoder's own limit is 1024), "
                          f"got {cfg.max_depth!r}")
    if cfg.dead_letter_payload_bytes > 700_000:
        raise ConfigError("validation.dead_letter_payload_bytes: at most 700000, so that a dead letter (its payload "
                          f"in base64 and its reason) stays under the broker's 1 MB limit; got {cfg.dead_letter_payload_bytes!r}")
    future = cfg.max_future_seconds
    if isinstance(future, bool) or not isinstance(future, (int, float)) or not 0 <= future < 1e11:
        raise ConfigError(f"validation.max_future_seconds: expected a number of seconds >= 0, got {future!r}")
    past = cfg.max_past_seconds
    if past is not None:
        try:
            past = float(past)
        except (TypeError, ValueError):
            raise ConfigError(f"validation.max_past_seconds: expected a number of seconds >= 0 or null, "
                              f"got {cfg.max_past_seconds!r}") from None
        if isinstance(cfg.max_past_seconds, bool) or not 0 <= past < 1e11:
            raise ConfigError(f"validation.max_past_seconds: expected a number of seconds >= 0 or null, "
                              f"got {cfg.max_past_seconds!r}")
    return replace(cfg, max_future_seconds=float(future), max_past_seconds=past)


def _model(where: str, raw: Any, base_dir: Path) -> ModelConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    _check_keys(where, raw, {f.name for f in fields(ModelConfig)})
    if not raw.get("id") or not isinstance(raw["id"], str):
        raise ConfigError(f"{where}.id: required, a non-empty string")
    where = f"models[{raw['id']}]"
    task = raw.get("task", "binary")
    if task not in TASKS:
        raise ConfigError(f"{where}.task: expected one of {', '.join(TASKS)}, got {task!r}")
    features = raw.get("features") or {}
    if not isinstance(features, Mapping) or not features:
        raise ConfigError(f"{where}.features: required, a mapping of feature name to numeric|categorical")
    for name, kind in features.items():
        if kind not in FEATURE_TYPES:
            raise ConfigError(f"{where}.features.{name}: expected numeric or categorical, got {kind!r}")
    attributes = raw.get("attributes") or []
    if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
        raise ConfigError(f"{where}.attributes: expected a list of attribute names")
    intersections = raw.get("intersections") or []
    for j, combo in enumerate(intersections):
        if not isinstance(combo, list) or len(combo) < 2 or any(a not in attributes for a in combo):
            raise ConfigError(f"{where}.intersections[{j}]: expected a list of two or more names from attributes")
    window_raw = raw.get("window") or {"events": 1000}
    if not isinstance(window_raw, Mapping):
        raise ConfigError(f"{where}.window: expected {{events: N}} or {{seconds: S}}")
    _check_keys(f"{where}.window", window_raw, {"events", "seconds", "slide", "allowed_lateness"})
    events, seconds = window_raw.get("events"), window_raw.get("seconds")
    if (events is None) == (seconds is None):
        raise ConfigError(f"{where}.window: give exactly one of events or seconds")
    if events is not None and (isinstance(events, bool) or not isinstance(events, int) or events < 1):
        raise ConfigError(f"{where}.window.events: expected a positive integer, got {events!r}")
    if seconds is not None and (not isinstance(seconds, (int, float)) or seconds <= 0):
        raise ConfigError(f"{where}.window.seconds: expected a positive number, got {seconds!r}")
    slide = window_raw.get("slide")
    size = events if events is not None else seconds
    if slide is not None and (not isinstance(slide, (int, float)) or slide <= 0 or slide > size):
        raise ConfigError(f"{where}.window.slide: expected a positive number no larger than the window")
    if slide is not None and events is not None and (isinstance(slide, bool) or not isinstance(slide, int)):
        raise ConfigError(f"{where}.window.slide: an events window slides by a whole number of events")
    if slide is not None and abs(size / slide - round(size / slide)) > 1e-9:
        raise ConfigError(f"{where}.window.slide: the window ({size}) must be a whole multiple of the slide ({slide})")
    lateness = window_raw.get("allowed_lateness", 5.0)
    if isinstance(lateness, bool) or not isinstance(lateness, (int, float)) or not (0 <= lateness < math.inf):
        raise ConfigError(f"{where}.window.allowed_lateness: expected seconds >= 0, got {lateness!r}")
    drift: dict[str, DriftMethod] = {}
    for name, spec in (raw.get("drift") or {}).items():
        if name != "*" and name not in features:
            raise ConfigError(f"{where}.drift.{name}: not a feature of this model")
        if isinstance(spec, str):
            spec = {"method": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}.drift.{name}: expected a method name or {{method, threshold}}")
        drift[name] = _build(DriftMethod, f"{where}.drift.{name}", spec)
    reference = raw.get("reference")
    policies = raw.get("policies")
    if policies is not None and not isinstance(policies, list):
        raise ConfigError(f"{where}.policies: expected a list of rules")
    min_group = raw.get("min_group_size", 30)
    if not isinstance(min_group, int) or min_group < 1:
        raise ConfigError(f"{where}.min_group_size: expected a positive integer")
    cusum_raw = raw.get("cusum") or {}
    if not isinstance(cusum_raw, Mapping):
        raise ConfigError(f"{where}.cusum: expected {{enabled, false_alarms_per_million}}")
    cusum = _build(CusumConfig, f"{where}.cusum", cusum_raw)
    if not isinstance(cusum.enabled, bool):
        raise ConfigError(f"{where}.cusum.enabled: expected true or false, got {cusum.enabled!r}")
    rate = cusum.false_alarms_per_million
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0 < rate < 1e6):
        raise ConfigError(f"{where}.cusum.false_alarms_per_million: expected a positive number, got {rate!r}")
    return ModelConfig(
        id=raw["id"],
        task=task,
        positive_label=category_text(raw.get("positive_label", 1)) or "1",
        reference=_resolve(base_dir, Path(reference)) if reference else None,
        features=dict(features),
        attributes=tuple(attributes),
        intersections=tuple(tuple(c) for c in intersections),
        window=WindowConfig(events=events, seconds=float(seconds) if seconds is not None else None, slide=slide,
                            allowed_lateness=float(lateness)),
        drift=drift,
        min_group_size=min_group,
        policies=tuple(policies) if policies is not None else None,
        cusum=cusum,
    )


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping")
    return value


def _check_keys(where: str, raw: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _build(cls: type, where: str, raw: Mapping[str, Any]) -> Any:
    allowed = {f.name: f for f in fields(cls)}
    _check_keys(where, raw, set(allowed))
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = getattr(cls(), key) if _has_defaults(cls) else None
        values[key] = _coerce(f"{where}.{key}", value, default)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _has_defaults(cls: type) -> bool:
    try:
        cls()
    except TypeError:
        return False
    return True


def _coerce(where: str, value: Any, default: Any) -> Any:
    """Coerce strings from the environment to the type of the default; a key whose default is a
    whole number takes whole numbers only (``2.5`` or ``true`` is an error naming the key, not 2 or 1)."""
    if default is None or isinstance(default, (Topics, Mapping)):
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(default, int):  # a count: never truncated (2.5 is not 2), never a boolean
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(default, Path):
        return Path(value)
    if isinstance(default, str):
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _resolve(base_dir: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base_dir / path)


def redacted(cfg: Config) -> dict[str, Any]:
    """The configuration as a loggable mapping, with every secret masked."""
    return {
        "kafka": {"bootstrap": cfg.kafka.bootstrap, "topics": vars(cfg.kafka.topics).copy(),
                  "security_protocol": cfg.kafka.security_protocol, "sasl_mechanism": cfg.kafka.sasl_mechanism,
                  "sasl_username": cfg.kafka.sasl_username,
                  "sasl_password": "***" if cfg.kafka.sasl_password else "",
                  "ssl_cafile": str(cfg.kafka.ssl_cafile or ""), "ssl_certfile": str(cfg.kafka.ssl_certfile or ""),
                  "ssl_keyfile": str(cfg.kafka.ssl_keyfile or ""),
                  "ssl_key_password": "***" if cfg.kafka.ssl_key_password else ""},
        "influx": {"url": cfg.influx.url, "org": cfg.influx.org, "bucket": cfg.influx.bucket,
                   "token": "***" if cfg.influx.token else "", "enabled": cfg.influx.enabled,
                   "verify_ssl": cfg.influx.verify_ssl, "ssl_ca_cert": str(cfg.influx.ssl_ca_cert or "")},
        "models": sorted(cfg.models),
    }


def example_config_path() -> Path:
    """The example configuration shipped with the package (used by the demo and the tests)."""
    return Path(__file__).parent / "examples" / "driftwarden.yaml"


__all__: Sequence[str] = (
    "Config", "ConfigError", "ENV_OVERRIDES", "ModelConfig", "WindowConfig", "Secret", "redacted",
    "SASL_MECHANISMS", "SECURITY_PROTOCOLS",
    "example_config_path",
)
