"""Kafka security for every client driftwarden opens: one place turns the config into client options.

The worker's source consumer and Faust producer, the topic-creation and
partition-count calls, changelog recovery, the model-updates follower, the
retrain worker, the simulator and the demo all connect with the options made
here, so a secured cluster is either reachable by all of them or refused, with
the same message, before any work starts.

aiokafka and kafka-python name their options alike (``security_protocol``,
``ssl_context``, ``sasl_mechanism``, ``sasl_plain_username``,
``sasl_plain_password``), so :func:`client_options` serves both; the TLS
settings go in as one :class:`ssl.SSLContext` (aiokafka accepts nothing else),
built by :func:`ssl_context` from ``ssl_cafile``/``ssl_certfile``/``ssl_keyfile``
and the key's password. Faust takes a credentials object instead:
:func:`faust_credentials` builds it from the same pieces.

>>> from streams.config import Config
>>> client_options(Config.from_mapping({}, environ={}).kafka)
{}
>>> cfg = Config.from_mapping({"kafka": {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512"}},
...     environ={"DRIFTWARDEN_KAFKA_SASL_USERNAME": "svc", "DRIFTWARDEN_KAFKA_SASL_PASSWORD": "pw"})
>>> sorted(client_options(cfg.kafka))
['sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol']
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from streams.config import Config, ConfigError, KafkaConfig

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


def ssl_context(kafka: KafkaConfig) -> ssl.SSLContext | None:
    """The TLS context of ``SSL``/``SASL_SSL`` (``None`` for the plaintext protocols).

    The broker's certificate is verified against ``ssl_cafile`` (the system's CAs
    when it is not set), host name included; ``ssl_certfile``/``ssl_keyfile`` add a
    client certificate (mTLS). A key that cannot be loaded is a configuration error
    naming the key; the password never appears in it.
    """
    if not kafka.security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if kafka.ssl_cafile is not None:
        try:
            context.load_verify_locations(cafile=str(kafka.ssl_cafile))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"kafka.ssl_cafile: cannot read CA certificates from {kafka.ssl_cafile}: "
                              f"{_reason(exc)}") from None
    if kafka.ssl_certfile is not None:
        password = kafka.ssl_key_password.value if kafka.ssl_key_password else None
        try:
            context.load_cert_chain(certfile=str(kafka.ssl_certfile),
                                    keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
                                    password=password)
        except (ssl.SSLError, OSError) as exc:
            hint = ("; is DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD right?" if password else
                    "; an encrypted key needs DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD")
            raise ConfigError(f"kafka.ssl_keyfile: cannot load the client certificate {kafka.ssl_certfile} and its "
                              f"key {kafka.ssl_keyfile or '(in the certificate file)'}: {_reason(exc)}{hint}") from None
    return context


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__


def _sasl(kafka: KafkaConfig) -> tuple[str, str]:
    """Username and password of the SASL protocols; both must come from the environment."""
    if not kafka.sasl_username or not kafka.sasl_password:
        missing = " and ".join(name for name, value in (("DRIFTWARDEN_KAFKA_SASL_USERNAME", kafka.sasl_username),
                                                        ("DRIFTWARDEN_KAFKA_SASL_PASSWORD", kafka.sasl_password))
                               if not value)
        raise ConfigError(f"kafka.sasl_username: security_protocol {kafka.security_protocol} needs credentials: "
                          f"set {missing}")
    return kafka.sasl_username, kafka.sasl_password.value


def client_options(kafka: KafkaConfig | Config) -> dict[str, Any]:
    """Keyword arguments for any aiokafka or kafka-python client (consumer, producer, admin).

    Empty for ``PLAINTEXT`` (the clients' defaults); else ``security_protocol`` and,
    as the protocol needs them, ``ssl_context`` and the SASL mechanism and credentials.
    Raises :class:`ConfigError` when the environment lacks a credential or the key
    cannot be loaded.
    """
    kafka = kafka.kafka if isinstance(kafka, Config) else kafka
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    context = ssl_context(kafka)
    if context is not None:
        options["ssl_context"] = context
    if protocol.startswith("SASL_"):
        username, password = _sasl(kafka)
        options.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=username,
                       sasl_plain_password=password)
    return options


def faust_credentials(kafka: KafkaConfig | Config) -> CredentialsT | None:
    """The same settings as :func:`client_options`, as Faust's ``broker_credentials``."""
    import faust

    kafka = kafka.kafka if isinstance(kafka, Config) else kafka
    options = client_options(kafka)
    if not options:
        return None
    if "sasl_mechanism" in options:
        return faust.SASLCredentials(username=options["sasl_plain_username"], password=options["sasl_plain_password"],
                                     ssl_context=options.get("ssl_context"), mechanism=options["sasl_mechanism"])
    return faust.SSLCredentials(options["ssl_context"])


__all__ = ("client_options", "faust_credentials", "ssl_context")
