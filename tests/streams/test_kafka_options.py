"""Kafka security settings: validation naming the key, and the one function that turns them into the
options of every client library the product uses (aiokafka, kafka-python, Faust)."""

from __future__ import annotations

import inspect
import json
import ssl
from pathlib import Path
from typing import Any

import pytest

from streams.config import Config, ConfigError, redacted
from streams.kafka import check_broker, client_options, faust_credentials
from tests.secure_kafka import Certificates, make_certificates

PASSWORD = "sasl-Pa55-never-shown-71"
KEY_PASSWORD = "key-Pa55-never-shown-42"
SASL_ENV = {"DRIFTWARDEN_KAFKA_SASL_USERNAME": "svc", "DRIFTWARDEN_KAFKA_SASL_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs") / "certs", KEY_PASSWORD)


def load(tmp: Path, kafka: dict[str, Any], environ: dict[str, str] | None = None, **sections: Any) -> Config:
    path = tmp / "driftwarden.yaml"
    path.write_text(json.dumps({"kafka": kafka, **sections}))  # JSON is YAML
    return Config.load(path, environ=environ or {})


def error(tmp: Path, kafka: dict[str, Any], environ: dict[str, str] | None = None, **sections: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp, kafka, environ, **sections)
    return str(info.value)


MTLS = {"security_protocol": "SSL", "ssl_cafile": "certs/ca.pem", "ssl_certfile": "certs/client.pem",
        "ssl_keyfile": "certs/client.key"}
"""Paths relative to the config file, which sits next to the ``certs`` directory."""


def test_plaintext_needs_no_options() -> None:
    cfg = Config.from_mapping({}, environ={})
    assert cfg.kafka.security_protocol == "PLAINTEXT"
    assert client_options(cfg) == {} and faust_credentials(cfg) is None


def test_mtls_paths_resolve_against_the_config_file(certs: Certificates) -> None:
    cfg = load(certs.ca.parent.parent, MTLS, {"DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD})
    assert cfg.kafka.ssl_cafile == certs.ca and cfg.kafka.ssl_keyfile == certs.client_key
    options = client_options(cfg)
    assert set(options) == {"security_protocol", "ssl_context"} and options["security_protocol"] == "SSL"
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "driftwarden test CA"),),)]
    import faust

    credentials = faust_credentials(cfg)
    assert isinstance(credentials, faust.SSLCredentials) and credentials.context.verify_mode == ssl.CERT_REQUIRED


def test_sasl_ssl_with_scram(certs: Certificates) -> None:
    kafka = {"security_protocol": "sasl_ssl", "sasl_mechanism": "scram-sha-512", "ssl_cafile": "certs/ca.pem"}
    cfg = load(certs.ca.parent.parent, kafka, SASL_ENV)
    options = client_options(cfg)
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc",
        "sasl_plain_password": PASSWORD}
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(cfg)
    assert (credentials.protocol.value, credentials.mechanism.value, credentials.username, credentials.password) == \
        ("SASL_SSL", "SCRAM-SHA-512", "svc", PASSWORD)
    assert credentials.ssl_context is not None
    assert PASSWORD not in repr(credentials) and PASSWORD not in repr(cfg)


def _accepted(cls: type) -> set[str]:
    """Keyword names a client class takes: its DEFAULT_CONFIG (kafka-python) or signature (aiokafka)."""
    if hasattr(cls, "DEFAULT_CONFIG"):
        return set(cls.DEFAULT_CONFIG)
    return set(inspect.signature(cls.__init__).parameters)


def test_every_client_library_takes_the_same_option_names(certs: Certificates) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    kafka = {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "ssl_cafile": "certs/ca.pem"}
    names = set(client_options(load(certs.ca.parent.parent, kafka, SASL_ENV)))
    for cls in (AIOKafkaConsumer, AIOKafkaProducer, AIOKafkaAdminClient, KafkaConsumer, KafkaProducer,
                KafkaAdminClient):
        assert names <= _accepted(cls), (cls.__name__, names - _accepted(cls))


def test_a_wrong_key_password_names_the_key_not_the_password(certs: Certificates) -> None:
    for environ in ({"DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": "not-" + KEY_PASSWORD}, {}):
        cfg = load(certs.ca.parent.parent, MTLS, environ)
        with pytest.raises(ConfigError) as info:
            client_options(cfg)  # never an interactive prompt, even without a password
        message = str(info.value)
        assert message.startswith("kafka.ssl_keyfile: cannot load the client certificate")
        assert "DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD" in message and KEY_PASSWORD not in message


def test_sasl_without_credentials_says_which_variable(tmp_path: Path) -> None:
    cfg = load(tmp_path, {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
               {"DRIFTWARDEN_KAFKA_SASL_USERNAME": "svc"})
    with pytest.raises(ConfigError, match="^kafka.sasl_username: .* set DRIFTWARDEN_KAFKA_SASL_PASSWORD$"):
        client_options(cfg)


INVALID = [
    ({"security_protocol": "TLS"}, {}, "kafka.security_protocol: expected one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({"security_protocol": "SASL_SSL"}, {}, "kafka.sasl_mechanism: required with security_protocol SASL_SSL"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, {}, "kafka.sasl_mechanism: OAUTHBEARER is not supported"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "MD5"}, {}, "kafka.sasl_mechanism: expected one of PLAIN"),
    ({"sasl_mechanism": "PLAIN"}, {}, "kafka.sasl_mechanism: only used with security_protocol SASL_PLAINTEXT or SASL_SSL"),
    ({}, SASL_ENV, "kafka.security_protocol: DRIFTWARDEN_KAFKA_SASL_USERNAME is set but PLAINTEXT sends no credentials"),
    ({"security_protocol": "SSL", "ssl_cafile": "nope/ca.pem"}, {}, "kafka.ssl_cafile: file not found: "),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "ssl_cafile": "x.pem"}, {},
     "kafka.ssl_cafile: only used with security_protocol SSL or SASL_SSL (it is SASL_PLAINTEXT)"),
    ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, {}, "kafka.ssl_keyfile: needs kafka.ssl_certfile"),
    ({"security_protocol": "SSL", "ssl_cafile": 5}, {}, "kafka.ssl_cafile: expected a file path"),
]


@pytest.mark.parametrize("kafka, environ, message", INVALID, ids=[m.split(":")[0] + "-" + str(i) for i, (_, _, m) in enumerate(INVALID)])
def test_invalid_security_settings_name_the_key(tmp_path: Path, kafka: dict[str, Any], environ: dict[str, str],
                                                message: str) -> None:
    (tmp_path / "k.pem").write_text("")
    assert error(tmp_path, kafka, environ).startswith(message)


def test_missing_file_is_named_with_its_resolved_path(tmp_path: Path) -> None:
    message = error(tmp_path, {"security_protocol": "SSL", "ssl_cafile": "nope/ca.pem"})
    assert message == f"kafka.ssl_cafile: file not found: {tmp_path / 'nope' / 'ca.pem'}"


def test_key_password_in_the_file_is_an_error(tmp_path: Path) -> None:
    message = error(tmp_path, {"ssl_key_password": KEY_PASSWORD})
    assert message.startswith("kafka.ssl_key_password: secrets come from the environment only")
    assert "DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD" in message and KEY_PASSWORD not in message


def test_secrets_are_masked_in_the_loggable_config(certs: Certificates) -> None:
    kafka = {**MTLS, "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}
    cfg = load(certs.ca.parent.parent, kafka, {**SASL_ENV, "DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD})
    shown = json.dumps(redacted(cfg)) + repr(cfg)
    assert PASSWORD not in shown and KEY_PASSWORD not in shown
    assert redacted(cfg)["kafka"]["ssl_key_password"] == "***" and redacted(cfg)["kafka"]["sasl_password"] == "***"
    assert redacted(cfg)["kafka"]["sasl_username"] == "svc"


def test_influx_tls_settings(certs: Certificates, tmp_path: Path) -> None:
    cfg = load(certs.ca.parent.parent, {}, influx={"url": "https://influx:8086", "ssl_ca_cert": "certs/ca.pem",
                                                   "verify_ssl": "false"})
    assert cfg.influx.ssl_ca_cert == certs.ca and cfg.influx.verify_ssl is False
    assert error(tmp_path, {}, influx={"ssl_ca_cert": "ca.pem"}).startswith("influx.ssl_ca_cert: file not found")


def test_an_unreachable_broker_is_left_to_the_clients() -> None:
    from streams.broker import free_port

    assert check_broker(f"127.0.0.1:{free_port()}", timeout=2.0) is None
