"""Configuration: one YAML file, overridable from the environment.

The file's layout is fixed by DESIGN.md (``kafka``, ``influx``, ``models``); the
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

ENV_OVERRIDES: Mapping[str, tuple[str, ...]] = {
    "DRIFTWARDEN_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "DRIFTWARDEN_KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
    "DRIFTWARDEN_KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
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
    {("influx", "token"), ("kafka", "sasl_password")}
)

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
    sasl_username: str = ""
    sasl_password: Secret = Secret("")
    batch_size: int = 2000
    """Most messages in one micro-batch: a batch is whatever has arrived, up to this many."""
    batch_timeout: float = 0.2
    """Longest wait, in seconds, for messages when none is waiting."""
    merge_by_event_time: bool = True
    """Fair consumption: hand a partition's predictions and feedback on merged by event time (as
    ``replay`` does), waiting while a topic with a backlog has nothing fetched yet; false: in
    fetch order."""


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
    method: str = "auto"
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


@dataclass(frozen=True)
class JoinConfig:
    ttl_seconds: float = 7 * 24 * 3600.0
    """How long (event time) a prediction waits for its label, and a label for its prediction."""
    max_entries: int = 1_000_000
    """Most entries of one partition's join table; beyond it the oldest are evicted. This, not
    traffic × TTL, bounds the join's memory: ~0.6 KB per entry (README, "Memory and speed")."""


@dataclass(frozen=True)
class ValidationConfig:
    type_errors: str = "reject"
    """``reject``: a feature with the wrong JSON type dead-letters the event;
    ``count``: the value is treated as missing and counted as a ``type_error`` data-quality violation."""


@dataclass(frozen=True)
class AlertsConfig:
    webhook_url: str = ""
    webhook_timeout: float = 5.0
    webhook_retries: int = 3


@dataclass(frozen=True)
class RetrainConfig:
    reports_dir: Path = Path("reports")
    trainer: str = "sklearn-logistic"


@dataclass(frozen=True)
class WorkerConfig:
    state_dir: Path = Path(".driftwarden")
    echo_windows: bool = False
    """Print a one-line summary of every closed window to stdout (the demo turns it on)."""


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
        kafka = _build(KafkaConfig, "kafka", kafka_raw)
        kafka = replace(kafka, sasl_password=Secret(kafka.sasl_password))
        influx = _build(InfluxConfig, "influx", _section(merged, "influx"))
        influx = replace(influx, token=Secret(influx.token))
        retrain = _build(RetrainConfig, "retrain", _section(merged, "retrain"))
        retrain = replace(retrain, reports_dir=_resolve(base_dir, retrain.reports_dir))
        worker = _build(WorkerConfig, "worker", _section(merged, "worker"))
        worker = replace(worker, state_dir=_resolve(base_dir, worker.state_dir))
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


def _join(raw: Mapping[str, Any]) -> JoinConfig:
    cfg = _build(JoinConfig, "join", raw)
    given = raw.get("max_entries", cfg.max_entries)
    if isinstance(given, bool) or (isinstance(given, float) and not given.is_integer()) or cfg.max_entries < 1:
        raise ConfigError(f"join.max_entries: expected a positive whole number of entries, got {given!r}")
    return cfg


def _validation(raw: Mapping[str, Any]) -> ValidationConfig:
    cfg = _build(ValidationConfig, "validation", raw)
    if cfg.type_errors not in ("reject", "count"):
        raise ConfigError(f"validation.type_errors: expected 'reject' or 'count', got {cfg.type_errors!r}")
    return cfg


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
        positive_label=str(raw.get("positive_label", 1)),
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
    """Coerce strings from the environment to the type of the default."""
    if default is None or isinstance(default, (Topics, Mapping)):
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(value, bool):
        try:
            return type(default)(value)
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
                  "sasl_password": "***" if cfg.kafka.sasl_password else ""},
        "influx": {"url": cfg.influx.url, "org": cfg.influx.org, "bucket": cfg.influx.bucket,
                   "token": "***" if cfg.influx.token else "", "enabled": cfg.influx.enabled},
        "models": sorted(cfg.models),
    }


def example_config_path() -> Path:
    """The example configuration shipped with the package (used by the demo and the tests)."""
    return Path(__file__).parent / "examples" / "driftwarden.yaml"


__all__: Sequence[str] = (
    "Config", "ConfigError", "ENV_OVERRIDES", "ModelConfig", "WindowConfig", "Secret", "redacted",
    "example_config_path",
)
