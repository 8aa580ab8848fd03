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

import socket
import ssl
import struct
from typing import TYPE_CHECKING, Any

from streams.config import Config, ConfigError, KafkaConfig

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


class BrokerError(RuntimeError):
    """A Kafka broker (the embedded one or the configured one) could not be found, started, reached
    or authenticated to; the message says why and what to do."""


def ssl_context(kafka: KafkaConfig) -> ssl.SSLContext | None:
    """The TLS context of ``SSL``/``SASL_SSL`` (``None`` for the plaintext protocols).

    The broker's certificate is verified against ``ssl_cafile`` only (as kafka-python and a
    Java truststore do; the system's CAs when it is not set), host name included, TLS 1.2 or
    later; ``ssl_certfile``/``ssl_keyfile`` add a client certificate (mTLS). A key that cannot
    be loaded is a configuration error naming the key; the password never appears in it.
    """
    if not kafka.security_protocol.endswith("SSL"):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if kafka.ssl_cafile is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        try:
            context.load_verify_locations(cafile=str(kafka.ssl_cafile))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"kafka.ssl_cafile: cannot read CA certificates from {kafka.ssl_cafile}: "
                              f"{_reason(exc)}") from None
    if kafka.ssl_certfile is not None:
        password = kafka.ssl_key_password.value if kafka.ssl_key_password else ""
        try:  # a callable, so that an encrypted key without a password never prompts on the terminal
            context.load_cert_chain(certfile=str(kafka.ssl_certfile),
                                    keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
                                    password=lambda: password)
        except (ssl.SSLError, OSError) as exc:
            hint = ("; is DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD right?" if password else
                    "; an encrypted key needs DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD")
            raise ConfigError(f"kafka.ssl_keyfile: cannot load the client certificate {kafka.ssl_certfile} and its "
                              f"key {kafka.ssl_keyfile or '(in the certificate file)'}: {_reason(exc)}{hint}") from None
    return context


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


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


def close_client(client: Any) -> None:
    """Close a kafka-python consumer or admin client without racing its IO thread.

    kafka-python 3 runs each client's network loop on a thread of its own, and its
    ``close()`` closes the connections from the caller's thread while that loop still
    runs: a response arriving at that moment (a fetch the consumer had in flight, a
    metadata refresh) is read by the loop from a socket the caller has just taken away,
    and it logs ``ERROR kafka.net.transport: ... Error receiving network data closing
    socket`` with a traceback. Stopping the loop first (it finishes the task in hand and
    exits) leaves ``close()`` to run every step on the caller's thread, as the library's
    single-threaded mode does (an auto-commit or a group leave included). kafka-python 2
    has no such thread; its clients are closed as they are.
    """
    net = getattr(client, "_net", None)  # KafkaConsumer and KafkaAdminClient (kafka-python 3)
    stop = getattr(net, "stop", None)
    if callable(stop):
        stop()
    client.close()


def close_producer(producer: Any, timeout: float) -> bool:
    """Send what a kafka-python producer holds for up to ``timeout`` s, then close it; return
    whether everything was sent (records still unsent by then are dropped).

    kafka-python 3's ``close(timeout)`` flushes first and, when the flush times out, raises
    without closing: its sender thread lives on (and logs connection errors once the broker
    has gone) and the producer's ``__del__`` tries again at exit, printing a
    ``KafkaTimeoutError`` traceback. Here a flush that times out force-closes the sender (it
    fails the unsent batches), so the close that follows has nothing left to wait for.
    """
    from kafka.errors import KafkaTimeoutError

    try:
        producer.flush(timeout)
        sent = True
    except KafkaTimeoutError:
        sent = False
        sender = getattr(producer, "_sender", None)  # kafka-python's I/O thread
        if sender is not None:
            sender.force_close()
            sender.join(timeout)
    producer.close(timeout=0 if not sent else timeout)
    return sent


# -- a first connection that says why it was refused ------------------------------------------------


class _Refused(Exception):
    """The broker answered, and refused these settings (not merely unreachable)."""


def check_broker(bootstrap: str, *, timeout: float = 10.0, **options: Any) -> None:
    """Connect once to the first bootstrap server that accepts a connection, as the clients will
    with ``options`` (:func:`client_options`): TLS handshake, SASL authentication, a metadata request.

    Raises :class:`BrokerError` with the reason when the broker refuses them
    (an untrusted certificate, a client certificate it wants, a mechanism it does not enable,
    wrong credentials, a SASL listener reached without SASL), where the clients would only retry
    until they time out with "unable to bootstrap". A broker that cannot be reached at all is
    left to the clients, which wait for it as before. No secret appears in the message.
    """
    for server in [s.strip() for s in bootstrap.split(",") if s.strip()]:
        host, _, port = server.rpartition(":")
        try:
            _probe(host or server, int(port or 9092), timeout, options)
            return
        except _Refused as exc:
            raise BrokerError(f"Kafka at {server} refused the connection: {exc}") from None
        except (OSError, ValueError):  # not reachable (or not parseable): the clients report it
            continue


def _probe(host: str, port: int, timeout: float, options: dict[str, Any]) -> None:
    protocol = options.get("security_protocol", "PLAINTEXT")
    sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
    try:
        context = options.get("ssl_context")
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as exc:
                if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
                    raise _Refused(f"its TLS certificate is not for {host!r} ({exc.verify_message}): use a name the "
                                   "certificate holds in kafka.bootstrap") from None
                raise _Refused(f"its TLS certificate is not trusted ({exc.verify_message}); set kafka.ssl_cafile "
                               "to the CA that signed it") from None
            except (ssl.SSLError, ConnectionError) as exc:
                raise _Refused(f"the TLS handshake failed ({_reason(exc)}): is it a TLS listener, and does it want "
                               "a client certificate (kafka.ssl_certfile, kafka.ssl_keyfile)?") from None
        conversation = _Conversation(sock, protocol)
        versions = _api_versions(conversation.request(18, 0, b"", "an ApiVersions request"))
        if protocol.startswith("SASL_"):
            if _version(versions, 17, (1,)) is None or _version(versions, 36, (0, 1)) is None:
                return  # versions this check does not speak: the clients will tell
            _authenticate(conversation, options, _version(versions, 36, (0, 1)) or 0)
        metadata = _version(versions, 3, range(1, 9))  # the non-flexible versions (Kafka 4 has no v0-v3)
        if metadata is not None:  # no topics; v4+ adds allow_auto_topic_creation, v8 two more flags
            body = struct.pack(">i", 0) + (b"\x00" if metadata >= 4 else b"") + (b"\x00\x00" if metadata >= 8 else b"")
            conversation.request(3, metadata, body, "a metadata request")
    finally:
        sock.close()


def _api_versions(answer: bytes) -> dict[int, tuple[int, int]]:
    """(min, max) version by API key, from an ApiVersions v0 response body."""
    _, count = struct.unpack_from(">hi", answer, 0)
    ranges = (struct.unpack_from(">hhh", answer, 6 + 6 * i) for i in range(max(count, 0)))
    return {key: (low, high) for key, low, high in ranges}


def _version(versions: dict[int, tuple[int, int]], api_key: int, spoken: Any) -> int | None:
    """The highest version of ``api_key`` both the broker and this check speak."""
    low, high = versions.get(api_key, (0, -1))
    both = [v for v in spoken if low <= v <= high]
    return max(both) if both else None


class _Conversation:
    """Requests and responses in the Kafka wire format (request header v1: non-flexible versions only)."""

    def __init__(self, sock: socket.socket, protocol: str) -> None:
        self.sock = sock
        self.protocol = protocol
        self.correlation = 0

    def request(self, api_key: int, version: int, body: bytes, what: str) -> bytes:
        self.correlation += 1
        client = b"driftwarden-check"
        payload = struct.pack(">hhih", api_key, version, self.correlation, len(client)) + client + body
        try:
            self.sock.sendall(struct.pack(">i", len(payload)) + payload)
            size = struct.unpack(">i", self._read(4))[0]
            return self._read(size)[4:]  # without the correlation id
        except (ConnectionError, ssl.SSLError, struct.error) as exc:
            hint = {"PLAINTEXT": "does it want TLS or SASL (kafka.security_protocol)?",
                    "SSL": "does it want a client certificate (kafka.ssl_certfile, kafka.ssl_keyfile) signed by a "
                           "CA it trusts, or SASL (kafka.security_protocol SASL_SSL)?",
                    }.get(self.protocol, "does it want another kafka.security_protocol or client certificate?")
            raise _Refused(f"it closed the connection on {what} ({_reason(exc)}): {hint}") from None

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("connection closed")
            data += chunk
        return data


def _authenticate(conversation: _Conversation, options: dict[str, Any], version: int) -> None:
    """SaslHandshake v1, then SaslAuthenticate rounds (v0 or v1) driven by kafka-python's mechanism."""
    mechanism_name = options["sasl_mechanism"]
    name = mechanism_name.encode()
    answer = conversation.request(17, 1, struct.pack(">h", len(name)) + name, "the SASL handshake")
    error, count = struct.unpack_from(">hi", answer, 0)
    if error:
        offered, at = [], 6
        for _ in range(max(count, 0)):
            (size,) = struct.unpack_from(">h", answer, at)
            offered.append(answer[at + 2:at + 2 + size].decode(errors="replace"))
            at += 2 + size
        raise _Refused(f"it does not enable SASL mechanism {mechanism_name} (it enables {', '.join(offered) or 'none'}): "
                       "set kafka.sasl_mechanism")
    mechanism = _sasl_mechanism(mechanism_name)(**options)
    while not mechanism.is_done():
        token = mechanism.auth_bytes()
        answer = conversation.request(36, version, struct.pack(">i", len(token)) + token, "SASL authentication")
        error, size = struct.unpack_from(">hh", answer, 0)
        message = answer[4:4 + size].decode(errors="replace") if size > 0 else ""
        if error:
            raise _Refused(f"SASL {mechanism_name} authentication as {options['sasl_plain_username']!r} failed "
                           f"({message or f'error {error}'}): check DRIFTWARDEN_KAFKA_SASL_USERNAME and "
                           "DRIFTWARDEN_KAFKA_SASL_PASSWORD")
        at = 4 + max(size, 0)
        (length,) = struct.unpack_from(">i", answer, at)
        try:
            mechanism.receive(answer[at + 4:at + 4 + max(length, 0)])
        except Exception as exc:  # SCRAM: the broker's proof does not match
            raise _Refused(f"SASL {mechanism_name}: the broker's answer did not verify ({type(exc).__name__})") from None
    if not mechanism.is_authenticated():
        raise _Refused(f"SASL {mechanism_name} authentication did not complete")


def _sasl_mechanism(name: str) -> Any:
    try:
        from kafka.net.sasl import get_sasl_mechanism  # kafka-python 3
    except ImportError:  # kafka-python 2
        from kafka.sasl import get_sasl_mechanism  # type: ignore[no-redef]
    return get_sasl_mechanism(name)


__all__ = ("check_broker", "client_options", "close_client", "close_producer", "faust_credentials", "ssl_context")
