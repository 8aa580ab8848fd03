"""Configuration: defaults, environment overrides, secrets, validation messages, paths."""

from __future__ import annotations

import json
import logging
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.config import (
    ENV_OVERRIDES,
    Config,
    ConfigError,
    DriftMethod,
    Secret,
    WindowConfig,
    example_config_path,
    redacted,
)

TOKEN = "s3cr3t-T0KEN-4f9a"
PASSWORD = "hunter2-Pa55word-zz"


def model(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"id": "m", "task": "binary", "features": {"x": "numeric", "c": "categorical"},
                           "attributes": ["sex", "race"], "window": {"events": 10}}
    raw.update(overrides)
    return raw


def config(*models: dict[str, Any], **sections: Any) -> Config:
    raw: dict[str, Any] = dict(sections)
    if models:
        raw["models"] = list(models)
    return Config.from_mapping(raw, environ={}, base_dir=Path("/base"))


def config_error(*models: dict[str, Any], **sections: Any) -> str:
    with pytest.raises(ConfigError) as info:
        config(*models, **sections)
    return str(info.value)


# -- defaults -------------------------------------------------------------------------------


def test_defaults_follow_design() -> None:
    cfg = Config.from_mapping({}, environ={}, base_dir=Path("/base"))
    assert cfg.kafka.bootstrap == "127.0.0.1:9092"
    topics = cfg.kafka.topics
    assert (topics.predictions, topics.feedback, topics.alerts, topics.retrain_jobs, topics.dead_letters,
            topics.model_updates) == ("predictions", "feedback", "alerts", "retrain-jobs", "dead-letters", "model-updates")
    assert (cfg.influx.url, cfg.influx.org, cfg.influx.bucket) == ("http://127.0.0.1:8086", "ml", "monitoring")
    assert cfg.influx.token == "" and isinstance(cfg.influx.token, Secret)
    assert cfg.kafka.sasl_password == "" and isinstance(cfg.kafka.sasl_password, Secret)
    assert cfg.join.ttl_seconds == 7 * 24 * 3600
    assert cfg.join.max_entries == 1_000_000
    assert cfg.validation.type_errors == "reject"
    assert cfg.models == {} and cfg.policies is None and cfg.source is None
    assert cfg.retrain.reports_dir == Path("/base/reports")
    assert cfg.worker.state_dir == Path("/base/.driftwarden")


def test_model_defaults() -> None:
    cfg = config({"id": "m", "features": {"x": "numeric"}})
    m = cfg.models["m"]
    assert (m.task, m.positive_label, m.reference, m.attributes, m.intersections) == ("binary", "1", None, (), ())
    assert m.window == WindowConfig(events=1000, seconds=None, slide=None) and m.window.kind == "events"
    assert m.min_group_size == 30 and m.policies is None
    assert (m.cusum.enabled, m.cusum.false_alarms_per_million) == (True, 1.0)
    assert m.drift_method("x") == DriftMethod("psi", None)  # what the worker runs: detectors.drift.DEFAULT_METHOD
    assert m.is_classification


def test_model_values_are_typed() -> None:
    m = config(model(task="regression", positive_label=1, window={"seconds": 60, "slide": 15},
                     intersections=[["sex", "race"]], drift={"*": "psi", "x": {"method": "ks", "threshold": 0.01}})).models["m"]
    assert m.task == "regression" and not m.is_classification
    assert m.positive_label == "1"
    assert m.window == WindowConfig(events=None, seconds=60.0, slide=15) and m.window.kind == "seconds"
    assert m.intersections == (("sex", "race"),)
    assert m.drift_method("x") == DriftMethod("ks", 0.01)
    assert m.drift_method("c") == DriftMethod("psi", None)


def test_models_keep_file_order() -> None:
    cfg = config(model(id="b"), model(id="a"), model(id="c"))
    assert list(cfg.models) == ["b", "a", "c"]


# -- environment ----------------------------------------------------------------------------

ENV_VALUES = {
    "DRIFTWARDEN_KAFKA_BOOTSTRAP": "kafka-0.internal:9093",
    "DRIFTWARDEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "DRIFTWARDEN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "DRIFTWARDEN_KAFKA_SASL_USERNAME": "svc-driftwarden",
    "DRIFTWARDEN_KAFKA_SASL_PASSWORD": PASSWORD,
    "DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": "key-" + PASSWORD,
    "DRIFTWARDEN_INFLUX_URL": "https://influx.example:8086",
    "DRIFTWARDEN_INFLUX_TOKEN": TOKEN,
    "DRIFTWARDEN_INFLUX_ORG": "ml-platform",
    "DRIFTWARDEN_INFLUX_BUCKET": "models",
    "DRIFTWARDEN_WEBHOOK_URL": "https://hooks.example/alert",
    "DRIFTWARDEN_REPORTS_DIR": "/srv/reports",
    "DRIFTWARDEN_STATE_DIR": "/var/lib/driftwarden",
}


def test_every_override_has_a_test_value() -> None:
    assert set(ENV_VALUES) == set(ENV_OVERRIDES)


def value_at(cfg: Config, path: tuple[str, ...]) -> Any:
    value: Any = cfg
    for part in path:
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("name", sorted(ENV_OVERRIDES))
def test_env_override(name: str) -> None:
    path = ENV_OVERRIDES[name]
    raw = {"kafka": {"bootstrap": "file:1", "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
           "influx": {"url": "http://file", "org": "file", "bucket": "file"},
           "alerts": {"webhook_url": "http://file"}, "retrain": {"reports_dir": "file-reports"},
           "worker": {"state_dir": "file-state"}}
    before = value_at(Config.from_mapping(raw, environ={}, base_dir=Path("/base")), path)
    cfg = Config.from_mapping(raw, environ={name: ENV_VALUES[name]}, base_dir=Path("/base"))
    value = value_at(cfg, path)
    expected = ENV_VALUES[name]
    if isinstance(value, Path):
        assert value == Path(expected)
    elif isinstance(value, Secret):
        assert value.value == expected and repr(value) == "Secret('***')"
    else:
        assert value == expected
    assert value != before


def test_relative_path_overrides_resolve_against_the_config_directory() -> None:
    cfg = Config.from_mapping({}, environ={"DRIFTWARDEN_REPORTS_DIR": "out/reports", "DRIFTWARDEN_STATE_DIR": "st"},
                              base_dir=Path("/etc/dw"))
    assert cfg.retrain.reports_dir == Path("/etc/dw/out/reports")
    assert cfg.worker.state_dir == Path("/etc/dw/st")


def test_empty_environment_value_keeps_the_file_value() -> None:
    cfg = Config.from_mapping({"kafka": {"bootstrap": "file:1"}}, environ={"DRIFTWARDEN_KAFKA_BOOTSTRAP": ""})
    assert cfg.kafka.bootstrap == "file:1"


def test_environ_argument_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTWARDEN_INFLUX_URL", "http://from-os")
    assert Config.from_mapping({}, environ={}).influx.url == "http://127.0.0.1:8086"
    assert Config.from_mapping({}).influx.url == "http://from-os"


def test_overrides_keep_the_rest_of_the_section() -> None:
    cfg = Config.from_mapping({"influx": {"url": "http://file", "org": "o", "bucket": "b"}},
                              environ={"DRIFTWARDEN_INFLUX_BUCKET": "env"})
    assert (cfg.influx.url, cfg.influx.org, cfg.influx.bucket) == ("http://file", "o", "env")


def test_env_override_into_an_empty_yaml_section(tmp_path: Path) -> None:
    path = tmp_path / "dw.yaml"
    path.write_text("influx:   # token from DRIFTWARDEN_INFLUX_TOKEN\n")
    cfg = Config.load(path, environ={"DRIFTWARDEN_INFLUX_TOKEN": TOKEN})
    assert cfg.influx.token.value == TOKEN


# -- secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize("section, key, env", [("influx", "token", "DRIFTWARDEN_INFLUX_TOKEN"),
                                                ("kafka", "sasl_password", "DRIFTWARDEN_KAFKA_SASL_PASSWORD")])
def test_secret_in_the_file_is_an_error_naming_the_variable(tmp_path: Path, section: str, key: str, env: str) -> None:
    path = tmp_path / "dw.yaml"
    path.write_text(f"{section}:\n  {key}: {TOKEN}\n")
    with pytest.raises(ConfigError) as info:
        Config.load(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{section}.{key}:")
    assert env in message
    assert TOKEN not in message
    # the environment does not make a file secret acceptable
    with pytest.raises(ConfigError, match=env):
        Config.load(path, environ={env: "other"})


def test_secrets_never_show() -> None:
    cfg = Config.from_mapping({"models": [model()]}, environ={"DRIFTWARDEN_INFLUX_TOKEN": TOKEN,
                                                              "DRIFTWARDEN_KAFKA_SASL_PASSWORD": PASSWORD})
    assert cfg.influx.token.value == TOKEN and cfg.kafka.sasl_password.value == PASSWORD
    shown = [repr(cfg), str(cfg), f"{cfg}", "%s" % (cfg,), "%r" % (cfg,), repr(cfg.influx), str(cfg.influx),
             repr(cfg.kafka), str(cfg.kafka), repr(cfg.influx.token), repr(redacted(cfg)), json.dumps(redacted(cfg))]
    for text in shown:
        assert TOKEN not in text and PASSWORD not in text
    assert "Secret('***')" in repr(cfg.influx)
    assert redacted(cfg)["influx"]["token"] == "***"
    assert redacted(cfg)["kafka"]["sasl_password"] == "***"
    assert redacted(cfg)["influx"]["url"] == cfg.influx.url


def test_secrets_never_reach_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    cfg = Config.from_mapping({}, environ={"DRIFTWARDEN_INFLUX_TOKEN": TOKEN})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("config %s %r %s", cfg, cfg.influx, redacted(cfg))
    assert TOKEN not in caplog.text
    assert "***" in caplog.text


def test_redacted_without_secrets_shows_empty() -> None:
    r = redacted(config(model()))
    assert r["influx"]["token"] == "" and r["kafka"]["sasl_password"] == ""
    assert r["models"] == ["m"]


# -- unknown keys ---------------------------------------------------------------------------

UNKNOWN = [
    ({"bogus": 1}, "config.bogus"),
    ({"kafka": {"bootstrp": "x"}}, "kafka.bootstrp"),
    ({"kafka": {"topics": {"predictionz": "p"}}}, "kafka.topics.predictionz"),
    ({"influx": {"tokn": "x"}}, "influx.tokn"),
    ({"join": {"ttl": 5}}, "join.ttl"),
    ({"validation": {"type_error": "count"}}, "validation.type_error"),
    ({"alerts": {"webhook": "x"}}, "alerts.webhook"),
    ({"retrain": {"report_dir": "x"}}, "retrain.report_dir"),
    ({"worker": {"statedir": "x"}}, "worker.statedir"),
    ({"models": [model(window={"evnts": 10})]}, "models[m].window.evnts"),
    ({"models": [model(drift={"x": {"metod": "psi"}})]}, "models[m].drift.x.metod"),
]


@pytest.mark.parametrize("raw, path", UNKNOWN, ids=[p for _, p in UNKNOWN])
def test_unknown_key_names_its_path(raw: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw, environ={})
    assert str(info.value).startswith(f"{path}: unknown key"), str(info.value)


def test_unknown_model_key_names_its_path() -> None:
    message = config_error(model(featurs={"x": "numeric"}))
    assert re.match(r"models\[(0|m)\]\.featurs: unknown key", message), message


# -- invalid values -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, "0", "-3"])
def test_join_max_entries_must_be_a_positive_whole_number(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^join\.max_entries: expected a positive whole number of entries, got"):
        Config.from_mapping({"join": {"max_entries": value}}, environ={})


@pytest.mark.parametrize("value", [None, "many", [1]])
def test_join_max_entries_must_be_a_number(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^join\.max_entries: expected a whole number, got"):
        Config.from_mapping({"join": {"max_entries": value}}, environ={})


def test_join_max_entries_from_yaml_numbers() -> None:
    assert Config.from_mapping({"join": {"max_entries": 5000}}, environ={}).join.max_entries == 5000
    assert Config.from_mapping({"join": {"max_entries": 2e5}}, environ={}).join.max_entries == 200_000
    assert Config.from_mapping({"join": {"max_entries": "7"}}, environ={}).join.max_entries == 7


def test_join_full_snapshot_every_defaults_to_200_and_reads_whole_numbers() -> None:
    assert Config.from_mapping({}, environ={}).join.full_snapshot_every == 200
    assert Config.from_mapping({"join": {"full_snapshot_every": 3}}, environ={}).join.full_snapshot_every == 3
    assert Config.from_mapping({"join": {"full_snapshot_every": "499"}}, environ={}).join.full_snapshot_every == 499


@pytest.mark.parametrize("value", [0, -1, 500, 10_000])
def test_join_full_snapshot_every_must_leave_room_for_two_intervals_of_deltas(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^join\.full_snapshot_every: expected a whole number of batches from 1 "
                                          r"to 499 .*got"):
        Config.from_mapping({"join": {"full_snapshot_every": value}}, environ={})


WHOLE_NUMBER_KEYS = [("kafka", "partitions"), ("kafka", "batch_size"), ("kafka", "panes_codec"),
                     ("influx", "batch_size"), ("join", "max_entries"), ("join", "full_snapshot_every"),
                     ("validation", "max_fields"), ("alerts", "webhook_retries")]


@pytest.mark.parametrize("section,key", WHOLE_NUMBER_KEYS)
@pytest.mark.parametrize("value", [2.5, True, False, "2.5", "many"])
def test_a_whole_number_key_is_never_truncated_nor_a_boolean(section: str, key: str, value: Any) -> None:
    """A count given as 2.5 or true is an error naming the key: it was read as 2 or 1 before."""
    with pytest.raises(ConfigError, match=rf"^{section}\.{key}: expected a whole number, got {re.escape(repr(value))}$"):
        Config.from_mapping({section: {key: value}}, environ={})


@pytest.mark.parametrize("section,key", WHOLE_NUMBER_KEYS)
def test_a_whole_number_key_takes_whole_floats_and_strings(section: str, key: str) -> None:
    """YAML's ``2.0`` or ``2e0`` and the environment's ``"2"`` are the whole number 2."""
    for value in (2.0, "2"):
        cfg = Config.from_mapping({section: {key: value}}, environ={})
        got = getattr(getattr(cfg, section), key)
        assert got == 2 and type(got) is int


def test_kafka_panes_codec_defaults_to_2_and_takes_1_for_a_rolling_upgrade() -> None:
    assert Config.from_mapping({}, environ={}).kafka.panes_codec == 2
    assert Config.from_mapping({"kafka": {"panes_codec": 1}}, environ={}).kafka.panes_codec == 1


@pytest.mark.parametrize("value", [0, 3, -1])
def test_kafka_panes_codec_is_1_or_2_and_says_when_1_is_for(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^kafka\.panes_codec: expected 2, or 1 while workers older than codec 2 "
                                          r"still run .*got"):
        Config.from_mapping({"kafka": {"panes_codec": value}}, environ={})


INVALID_MODELS = [
    (model(task="ranking"), "models[m].task: expected one of binary, multiclass, regression, got 'ranking'"),
    (model(features={"x": "text"}), "models[m].features.x: expected numeric or categorical, got 'text'"),
    (model(features={}), "models[m].features: required"),
    (model(features=["x"]), "models[m].features: required"),
    (model(window={"events": 10, "seconds": 60}), "models[m].window: give exactly one of events or seconds"),
    (model(window={"slide": 5}), "models[m].window: give exactly one of events or seconds"),
    (model(window={"events": 0}), "models[m].window.events: expected a positive integer, got 0"),
    (model(window={"events": -5}), "models[m].window.events: expected a positive integer, got -5"),
    (model(window={"events": 2.5}), "models[m].window.events: expected a positive integer, got 2.5"),
    (model(window={"events": "10"}), "models[m].window.events: expected a positive integer, got '10'"),
    (model(window={"seconds": 0}), "models[m].window.seconds: expected a positive number, got 0"),
    (model(window={"seconds": -60}), "models[m].window.seconds: expected a positive number, got -60"),
    (model(window={"seconds": "1m"}), "models[m].window.seconds: expected a positive number, got '1m'"),
    (model(window=[10]), "models[m].window: expected"),
    (model(window={"events": 10, "slide": 3}), "models[m].window.slide: the window (10) must be a whole multiple of the slide (3)"),
    (model(window={"seconds": 60, "slide": 25}), "models[m].window.slide: the window (60) must be a whole multiple of the slide (25)"),
    (model(window={"events": 10, "slide": 20}), "models[m].window.slide: expected a positive number no larger than the window"),
    (model(window={"events": 10, "slide": 0}), "models[m].window.slide: expected a positive number no larger than the window"),
    (model(window={"seconds": 10, "slide": -2}), "models[m].window.slide: expected a positive number no larger than the window"),
    (model(intersections=[["sex", "age"]]), "models[m].intersections[0]: expected a list of two or more names from attributes"),
    (model(intersections=[["sex", "race"], ["sex"]]), "models[m].intersections[1]: expected a list of two or more names from attributes"),
    (model(intersections=["sex"]), "models[m].intersections[0]: expected a list of two or more names from attributes"),
    (model(attributes="sex"), "models[m].attributes: expected a list of attribute names"),
    (model(drift={"zz": "psi"}), "models[m].drift.zz: not a feature of this model"),
    (model(drift={"x": 3}), "models[m].drift.x: expected a method name or {method, threshold}"),
    (model(min_group_size=0), "models[m].min_group_size: expected a positive integer"),
    (model(cusum={"false_alarms_per_million": 0}), "models[m].cusum.false_alarms_per_million: expected a positive"),
    (model(cusum={"false_alarms_per_million": -1.0}), "models[m].cusum.false_alarms_per_million: expected a positive"),
    (model(cusum={"enabled": "sometimes"}), "models[m].cusum.enabled"),
    (model(cusum={"delta": 0.5}), "models[m].cusum.delta: unknown key"),
    (model(cusum=[1]), "models[m].cusum: expected {enabled, false_alarms_per_million}"),
    (model(policies={"rule": 1}), "models[m].policies: expected a list of rules"),
    (model(id=""), "models[0].id: required"),
    (model(id=7), "models[0].id: required"),
    ("not a mapping", "models[0]: expected a mapping"),
]


@pytest.mark.parametrize("raw, message", INVALID_MODELS, ids=[m for _, m in INVALID_MODELS])
def test_invalid_model(raw: Any, message: str) -> None:
    assert config_error(raw).startswith(message)


def test_duplicate_model_ids() -> None:
    assert config_error(model(), model(id="other"), model()) == "models[2].id: duplicate model id 'm'"


INVALID_SECTIONS = [
    ({"models": {"m": model()}}, "models: expected a list of models"),
    ({"kafka": "localhost"}, "kafka: expected a mapping"),
    ({"kafka": {"partitions": "many"}}, "kafka.partitions: expected a whole number, got 'many'"),
    ({"influx": {"enabled": "maybe"}}, "influx.enabled: expected true or false, got 'maybe'"),
    ({"influx": {"url": ["a"]}}, "influx.url: expected a string, got ['a']"),
    ({"validation": {"type_errors": "ignore"}}, "validation.type_errors: expected 'reject' or 'count', got 'ignore'"),
    ({"policies": {"a": 1}}, "policies: expected a list of rules"),
]


@pytest.mark.parametrize("raw, message", INVALID_SECTIONS, ids=[m for _, m in INVALID_SECTIONS])
def test_invalid_section(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(raw, environ={})
    assert str(info.value) == message


def test_valid_slides_and_coercions() -> None:
    assert config(model(window={"events": 10, "slide": 5})).models["m"].window == WindowConfig(10, None, 5)
    assert config(model(window={"events": 10, "slide": 10})).models["m"].window.slide == 10
    assert config(model(window={"seconds": 60, "slide": 15})).models["m"].window == WindowConfig(None, 60.0, 15)
    cfg = Config.from_mapping({"influx": {"enabled": "no"}, "kafka": {"partitions": "3"}, "join": {"ttl_seconds": "60"}},
                              environ={})
    assert cfg.influx.enabled is False and cfg.kafka.partitions == 3 and cfg.join.ttl_seconds == 60.0


def test_events_window_slide_must_be_an_integer() -> None:
    assert "slide" in config_error(model(window={"events": 10, "slide": 2.5}))


def test_seconds_window_with_decimal_slide() -> None:
    assert config(model(window={"seconds": 1, "slide": 0.2})).models["m"].window.slide == 0.2


def test_boolean_window_events_is_rejected() -> None:
    assert config_error(model(window={"events": True})).startswith("models[m].window.events")


# -- files and paths ------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


CONFIG_TEXT = """\
    models:
      - id: m
        reference: profiles/m.json
        features: {x: numeric}
        window: {events: 5}
      - id: abs
        reference: /opt/profiles/abs.json
        features: {x: numeric}
    retrain: {reports_dir: out/reports}
    worker: {state_dir: state}
    """


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    path = write(tmp_path / "conf" / "dw.yaml", CONFIG_TEXT)
    cfg = Config.load(path, environ={})
    assert cfg.models["m"].reference == tmp_path / "conf" / "profiles" / "m.json"
    assert cfg.models["abs"].reference == Path("/opt/profiles/abs.json")
    assert cfg.retrain.reports_dir == tmp_path / "conf" / "out" / "reports"
    assert cfg.worker.state_dir == tmp_path / "conf" / "state"
    assert cfg.source == path


def test_relative_config_path_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "conf" / "dw.yaml", CONFIG_TEXT)
    monkeypatch.chdir(tmp_path)
    cfg = Config.load("conf/dw.yaml", environ={})
    assert cfg.models["m"].reference.resolve() == (tmp_path / "conf" / "profiles" / "m.json").resolve()


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        Config.load(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(write(tmp_path / "bad.yaml", "models: [\n"), environ={})
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        Config.load(write(tmp_path / "list.yaml", "- a\n- b\n"), environ={})
    assert Config.load(write(tmp_path / "empty.yaml", ""), environ={}).models == {}


def test_example_config_loads() -> None:
    path = example_config_path()
    raw = yaml.safe_load(path.read_text())  # the oracle: the file itself, read without the config code
    cfg = Config.load(path, environ={})
    assert list(cfg.models) == [m["id"] for m in raw["models"]]
    assert "credit-risk" in cfg.models
    for raw_model in raw["models"]:
        m = cfg.models[raw_model["id"]]
        assert m.task == raw_model.get("task", "binary")
        assert dict(m.features) == raw_model["features"]
        assert m.attributes == tuple(raw_model.get("attributes", ()))
        assert m.intersections == tuple(tuple(c) for c in raw_model.get("intersections", ()))
        assert (m.window.events, m.window.seconds) == (raw_model["window"].get("events"), raw_model["window"].get("seconds"))
        assert m.reference == path.parent / raw_model["reference"]
        star = raw_model.get("drift", {}).get("*")
        if isinstance(star, dict):
            assert m.drift_method("no-such-feature") == DriftMethod(star.get("method", "psi"), star.get("threshold"))
    assert cfg.join.ttl_seconds == raw["join"]["ttl_seconds"]
    assert cfg.join.max_entries == raw["join"]["max_entries"]
    assert cfg.kafka.topics.retrain_jobs == raw["kafka"]["topics"]["retrain_jobs"]
    assert cfg.policies == (tuple(raw["policies"]) if "policies" in raw else None)
    assert cfg.influx.token == ""


def test_example_config_takes_every_override() -> None:
    cfg = Config.load(example_config_path(), environ=ENV_VALUES)
    for name, path in ENV_OVERRIDES.items():
        value = value_at(cfg, path)
        expected = ENV_VALUES[name]
        assert (value.value if isinstance(value, Secret) else value) == (Path(expected) if isinstance(value, Path) else expected)


@pytest.mark.parametrize("drift", [None, {"*": {"threshold": 0.2}}, {"x": {"threshold": 0.2}}])
def test_drift_method_is_the_test_the_worker_runs(drift: Any) -> None:
    """Regression: ``drift_method`` said ``auto`` while the worker ran PSI; and a threshold given
    without a method turned the worker to ``auto``."""
    import numpy as np
    import pandas as pd

    from detectors.profile import ReferenceProfile
    from streams.evaluation import Evaluation

    m = config(model(features={"x": "numeric"}, **({"drift": drift} if drift else {}))).models["m"]
    frame = pd.DataFrame({"x": np.random.default_rng(0).normal(size=500)})
    suite = Evaluation(m, ReferenceProfile.from_frame(frame, model_id="m", features={"x": "numeric"})).new_window()
    drift_suite = next(v for v in vars(suite).values() if type(v).__name__ == "DriftSuite")
    assert drift_suite._numeric["x"].method == m.drift_method("x").method == "psi"


def test_retrain_section_is_typed_resolved_and_checked() -> None:
    cfg = Config.from_mapping({"retrain": {"profiles_dir": "p", "min_pairs": 50, "holdout": 0.25,
                                           "train_pairs": 500, "train_seconds": None, "label_wait_seconds": 5,
                                           "defer_seconds": 60}}, environ={}, base_dir=Path("/base"))
    r = cfg.retrain
    assert (r.profiles_dir, r.min_pairs, r.holdout, r.train_pairs, r.train_seconds) == (
        Path("/base/p"), 50, 0.25, 500, None)
    assert (r.label_wait_seconds, r.defer_seconds, r.resolved_profiles_dir) == (5.0, 60.0, Path("/base/p"))
    default = Config.from_mapping({}, environ={}, base_dir=Path("/base")).retrain
    assert default.resolved_profiles_dir == Path("/base/profiles") and default.train_pairs >= default.min_pairs
    for bad, message in [({"train_pairs": None, "train_seconds": None}, "give train_pairs or train_seconds"),
                         ({"train_pairs": 100}, r"train_pairs \(100\) is below retrain.min_pairs \(200\)"),
                         ({"holdout": 1.0}, "retrain.holdout"), ({"min_pairs": 1}, "retrain.min_pairs"),
                         ({"label_wait_seconds": -1}, "retrain.label_wait_seconds")]:
        with pytest.raises(ConfigError, match=message):
            Config.from_mapping({"retrain": bad}, environ={})
