"""Kafka security as users run it, against real servers: a worker subprocess over TLS with a client
certificate (mTLS) and over SASL/PLAIN, refusing what it cannot verify or authenticate, and no secret
in any line it writes.

The broker is the embedded Tansu behind a TLS- and SASL-terminating proxy on loopback (see
``tests/secure_kafka.py`` for why the proxy, and what it checks), with certificates made at test time.
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.broker import create_topics, free_port
from streams.commands import prepare_workspace
from streams.config import Config
from streams.kafka import client_options
from streams.state import read_to_end
from tests.conftest import topic_overrides
from tests.secure_kafka import Certificates, SecuredBroker, make_certificates, secured_broker, server_context

pytestmark = pytest.mark.integration

KEY_PASSWORD = "key-pa55-do-not-log-8812"
USER, PASSWORD = "svc-driftwarden", "sasl-pa55-do-not-log-3307"
WRONG_PASSWORD = "wrong-pa55-do-not-log-5150"
TOKEN = "influx-token-do-not-log-9921"
SECRETS = (KEY_PASSWORD, PASSWORD, WRONG_PASSWORD, TOKEN)
WINDOW = 100


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"), KEY_PASSWORD)


MTLS = {"security_protocol": "SSL", "ssl_cafile": "certs/ca.pem", "ssl_certfile": "certs/client.pem",
        "ssl_keyfile": "certs/client.key"}
"""TLS with a client certificate; the paths are relative to the config (``certs/`` beside it)."""


SASL = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}


def _options(kafka: dict[str, Any], base: Path, env: dict[str, str]) -> dict[str, Any]:
    return client_options(Config.from_mapping({"kafka": kafka}, environ=env, base_dir=base))


@pytest.fixture(scope="module")
def tls_broker(certs: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """TLS that requires a client certificate signed by the test CA."""
    base = tmp_path_factory.mktemp("tls-client")
    _copy_certs(certs, base)
    running = secured_broker(base / "tansu.log", tls=server_context(certs, require_client_cert=True),
                             **_options(MTLS, base, {"DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """SASL/PLAIN required: one user, one password."""
    base = tmp_path_factory.mktemp("sasl")
    running = secured_broker(base / "tansu.log", users={USER: PASSWORD},
                             **_options(SASL, base, _sasl_env(PASSWORD)))
    yield running
    running.stop()


def _sasl_env(password: str) -> dict[str, str]:
    return {"DRIFTWARDEN_KAFKA_SASL_USERNAME": USER, "DRIFTWARDEN_KAFKA_SASL_PASSWORD": password}


def _copy_certs(certs: Certificates, directory: Path) -> None:
    (directory / "certs").mkdir(parents=True, exist_ok=True)
    for path in (certs.ca, certs.client_cert, certs.client_key, certs.other_ca):
        shutil.copy(path, directory / "certs" / path.name)


def _workspace(tmp_path: Path, bootstrap: str, unique: str, kafka: dict[str, Any],
               certs: Certificates | None = None) -> tuple[Path, str, dict[str, str]]:
    """A config on this test's own topics, with the ``kafka`` security keys (certificate paths relative
    to the config's directory); the InfluxDB sink is off."""
    model_id = f"m-{unique}"
    overrides = {**topic_overrides(unique), "models.*.window": {"events": WINDOW},
                 **{f"kafka.{key}": value for key, value in kafka.items()}}
    ws = tmp_path / "ws"
    if certs is not None:
        _copy_certs(certs, ws)
    config = prepare_workspace(ws, bootstrap=bootstrap, influx_url=None, models=(model_id,), overrides=overrides)
    topics = {k.split(".")[-1]: v for k, v in overrides.items() if k.startswith("kafka.topics.")}
    return config, model_id, topics


def _events(model_id: str, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` predictions of the simulator's model and labels for three in four of them."""
    from streams.simulate import SimulatedStream

    stream = SimulatedStream(model_id=model_id, seed=7, start=time.time() - 600, feedback_loss=0.0)
    predictions = [event for kind, event in stream.events(n) if kind == "prediction"]
    feedback = [{"prediction_id": p["prediction_id"], "model_id": model_id, "timestamp": p["timestamp"] + 60,
                 "label": i % 3 % 2} for i, p in enumerate(predictions) if i % 4]
    return predictions, feedback


def _publish(bootstrap: str, options: dict[str, Any], topics: dict[str, str], model_id: str, n: int) -> int:
    """``n`` predictions, labels for three in four, and one message that is not JSON; returns the labels sent."""
    predictions, feedback = _events(model_id, n)
    producer = KafkaProducer(bootstrap_servers=bootstrap, **options)
    for kind, docs in (("predictions", predictions), ("feedback", feedback)):
        for doc in docs:
            producer.send(topics[kind], key=doc["prediction_id"].encode(), value=json.dumps(doc).encode())
    producer.send(topics["predictions"], key=b"bad", value=b"not json at all")
    producer.flush()
    producer.close()
    return len(feedback)


def _wait_consumed(bootstrap: str, options: dict[str, Any], group: str, topics: list[str], worker: Any,
                   timeout: float = 120.0) -> bool:
    from tests.integration.test_worker_e2e import _fetched_ends

    ends = _fetched_ends(bootstrap, topics, **options)  # not ListOffsets: the embedded broker under-reports it
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **options)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and worker.process.poll() is None:
            if all((consumer.committed(tp) or 0) >= ends.get(tp, 0) for tp in partitions):
                return True
            time.sleep(0.5)
        return False
    finally:
        consumer.close()


def _read_all(bootstrap: str, options: dict[str, Any], topic: str) -> list[bytes]:
    """Every value on ``topic``, to its end, over the secured connection."""
    return [m.value for m in read_to_end(bootstrap, topic, idle_seconds=0.5, **options)]


def _assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        for secret in SECRETS:
            assert secret not in text, f"a secret reached the output: ...{text[max(text.find(secret) - 200, 0):][:400]}"


def _run_to_completion(tmp_path: Path, broker: SecuredBroker, worker_factory: Any, unique: str,
                       kafka: dict[str, Any], env: dict[str, str], certs: Certificates | None = None) -> Path:
    """A worker with these settings reads everything, joins every label, dead-letters the bad message,
    stops cleanly, and writes no secret anywhere."""
    config, model_id, topics = _workspace(tmp_path, broker.bootstrap, unique, kafka, certs)
    options = _options(kafka, config.parent, env)
    create_topics(broker.bootstrap, topics.values(), 1, **options)
    labels = _publish(broker.bootstrap, options, topics, model_id, 300)
    worker = worker_factory(config, env={**env, "DRIFTWARDEN_INFLUX_TOKEN": TOKEN}).start()
    group = f"driftwarden-{unique}"
    assert _wait_consumed(broker.bootstrap, options, group, [topics["predictions"], topics["feedback"]], worker), \
        worker.log()[-3000:]
    assert worker.stop() == 0, worker.log()[-3000:]
    pairs = [pair for value in _read_all(broker.bootstrap, options, topics["labelled"]) for pair in json.loads(value)]
    assert len(pairs) == len({p["prediction_id"] for p in pairs}) == labels
    dead = _read_all(broker.bootstrap, options, topics["dead_letters"])
    assert [json.loads(d)["reason"][:8] for d in dead] == ["not JSON"]
    log = worker.log()
    assert "Traceback" not in log
    _assert_no_secret(log, config.read_text(), *dead)
    return config


# -- TLS -----------------------------------------------------------------------------------------------


def test_worker_connects_over_mtls_with_the_ca_and_processes_events(tls_broker, certs, worker_factory, tmp_path,
                                                                    unique):
    _run_to_completion(tmp_path, tls_broker, worker_factory, unique, MTLS,
                       {"DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}, certs)


REFUSED_TLS = {
    "no CA (system CAs)": ({"ssl_cafile": None}, "its TLS certificate is not trusted"),
    "another CA": ({"ssl_cafile": "certs/other-ca.pem"}, "its TLS certificate is not trusted"),
    "no client certificate": ({"ssl_certfile": None, "ssl_keyfile": None}, "does it want a client certificate"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_TLS))
def test_worker_refuses_a_broker_it_cannot_verify(tls_broker, certs, worker_factory, tmp_path, unique, case):
    change, reason = REFUSED_TLS[case]
    kafka = {k: v for k, v in {**MTLS, **change}.items() if v is not None}
    config, _, _ = _workspace(tmp_path, tls_broker.bootstrap, unique, kafka, certs)
    worker = worker_factory(config, env={"DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}).start()
    assert _exits(worker, 150) == 3, worker.log()[-3000:]
    log = worker.log()
    assert f"driftwarden worker: Kafka at {tls_broker.bootstrap} refused the connection: " in log and reason in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    _assert_no_secret(log)


def _exits(worker: Any, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = worker.process.poll()
        if code is not None:
            return code
        time.sleep(0.2)
    return None


# -- SASL ----------------------------------------------------------------------------------------------


def test_worker_authenticates_with_sasl_plain_and_processes_events(sasl_broker, worker_factory, tmp_path, unique):
    config = _run_to_completion(tmp_path, sasl_broker, worker_factory, unique, SASL, _sasl_env(PASSWORD))
    assert (USER, True) in sasl_broker.proxy.authentications
    # The retrain worker's clients (topic creation, the jobs consumer group) authenticate too.
    retrain = worker_factory(config, env=_sasl_env(PASSWORD), command="retrain-worker").start()
    deadline = time.monotonic() + 120
    while "retrain worker: assigned" not in retrain.log() and time.monotonic() < deadline:
        assert retrain.process.poll() is None, retrain.log()[-3000:]
        time.sleep(0.3)
    assert retrain.stop() == 0, retrain.log()[-3000:]
    assert "retrain worker: assigned" in retrain.log() and "Traceback" not in retrain.log(), retrain.log()[-3000:]
    _assert_no_secret(retrain.log())


def test_worker_with_a_wrong_password_fails_clearly_and_never_shows_it(sasl_broker, worker_factory, tmp_path,
                                                                      unique):
    config, _, _ = _workspace(tmp_path, sasl_broker.bootstrap, unique, SASL)
    worker = worker_factory(config, env={**_sasl_env(WRONG_PASSWORD), "DRIFTWARDEN_INFLUX_TOKEN": TOKEN}).start()
    assert _exits(worker, 150) == 3, worker.log()[-3000:]
    log = worker.log()
    assert (f"driftwarden worker: Kafka at {sasl_broker.bootstrap} refused the connection: SASL PLAIN authentication as "
            f"'{USER}' failed") in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert (USER, False) in sasl_broker.proxy.authentications
    _assert_no_secret(log)


def test_no_secret_when_the_broker_is_unreachable(certs, worker_factory, tmp_path, unique):
    """Every secret set (SASL password, client key password, InfluxDB token), nothing listening."""
    # a 1 s wait for the broker (kafka.connect_timeout_seconds): what is checked is the line, not the wait
    kafka = {**MTLS, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "connect_timeout_seconds": 1}
    config, _, _ = _workspace(tmp_path, f"127.0.0.1:{free_port()}", unique, kafka, certs)
    env = {**_sasl_env(PASSWORD), "DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD, "DRIFTWARDEN_INFLUX_TOKEN": TOKEN}
    worker = worker_factory(config, env=env).start()
    assert _exits(worker, 150) == 3, worker.log()[-3000:]
    log = worker.log()
    assert "driftwarden worker: cannot reach Kafka" in log and "Traceback" not in log, log[-3000:]
    _assert_no_secret(log)


# -- InfluxDB over https -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def victoria_tls(certs: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """VictoriaMetrics serving its InfluxDB write API over https with the test CA's server certificate."""
    import subprocess

    from streams.broker import wait_for_port

    binary = shutil.which("victoria-metrics")
    if binary is None:
        pytest.fail("victoria-metrics is not installed: apt-get install victoria-metrics (.ci/run does this)")
    port, data = free_port(), tmp_path_factory.mktemp("victoria-tls")
    with open(data / "victoria.log", "wb") as log:
        process = subprocess.Popen([binary, f"-storageDataPath={data / 'data'}", f"-httpListenAddr=127.0.0.1:{port}",
                                    "-tls", f"-tlsCertFile={certs.server_cert}", f"-tlsKeyFile={certs.server_key}",
                                    "-retentionPeriod=100y", "-search.latencyOffset=0s"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, 20)
        yield f"https://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _write_one(url: str, certs: Certificates, unique: str, **influx: Any) -> tuple[int, bool]:
    """Write one point through :class:`InfluxSink` with these ``influx`` settings: (points written,
    whether the sink saw them acknowledged). A server it cannot verify is an outage to it: it holds
    the point, warns why and retries; the first failed attempt ends the wait (the retries would fail
    the same way), else 20 s."""
    import asyncio

    from detectors.points import Point
    from streams.sinks import InfluxSink

    cfg = Config.from_mapping({"influx": {"url": url, "retry_max_seconds": 1, **influx}},
                              environ={"DRIFTWARDEN_INFLUX_TOKEN": TOKEN}, base_dir=certs.ca.parent)
    sink = InfluxSink(cfg.influx)
    sink.write([Point("monitor", {"model_id": unique, "model_version": "1", "stat": "events"}, {"value": 7.0},
                      time.time_ns())])
    async def attempt() -> bool:
        task = asyncio.ensure_future(sink.delivered())
        deadline = time.monotonic() + 20
        while not task.done() and sink.outages == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        return task.done() and not task.cancelled() and task.exception() is None

    delivered = asyncio.run(attempt())
    sink.close()
    return sink.written, delivered


def _export(url: str, certs: Certificates, unique: str) -> list[dict[str, Any]]:
    """The model's series, read back over https with the CA."""
    import urllib.parse
    import urllib.request

    context = ssl.create_default_context(cafile=str(certs.ca))
    # what it has taken becomes searchable now, not at its next periodic flush (as conftest's VictoriaMetrics)
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=10, context=context).close()
    query = urllib.parse.urlencode({"match[]": f'{{__name__="monitor_value",model_id="{unique}"}}'}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/export", data=query, timeout=30, context=context) as response:
        return [json.loads(line) for line in response.read().decode().splitlines() if line.strip()]


def test_influx_sink_writes_over_https_with_the_ca(victoria_tls, certs, unique, caplog):
    assert _write_one(victoria_tls, certs, unique, ssl_ca_cert="ca.pem") == (1, True)
    deadline = time.monotonic() + 60  # VictoriaMetrics makes new points searchable within seconds
    while not (series := _export(victoria_tls, certs, unique)) and time.monotonic() < deadline:
        time.sleep(1)
    assert series and series[0]["values"] == [7.0]
    assert TOKEN not in caplog.text


def test_influx_sink_refuses_a_server_it_cannot_verify(victoria_tls, certs, unique, caplog):
    assert _write_one(victoria_tls, certs, unique) == (0, False)  # the system's CAs do not know the test CA
    assert "SSL" in caplog.text and "not taking points" in caplog.text  # the warning says why it waits
    assert TOKEN not in caplog.text
    assert _write_one(victoria_tls, certs, f"{unique}-unverified", verify_ssl=False) == (1, True)


# -- SASL over TLS, for the client libraries -----------------------------------------------------------


def test_sasl_ssl_with_a_client_certificate_for_kafka_python_and_aiokafka(certs, tmp_path, unique):
    """SASL/PLAIN inside mTLS: kafka-python writes, aiokafka reads, with the same options."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    _copy_certs(certs, tmp_path)
    kafka = {**MTLS, "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}
    env = {**_sasl_env(PASSWORD), "DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD}
    options = _options(kafka, tmp_path, env)
    broker = secured_broker(tmp_path / "tansu.log", tls=server_context(certs, require_client_cert=True),
                            users={USER: PASSWORD}, **options)
    try:
        topic = f"sasl-ssl-{unique}"
        create_topics(broker.bootstrap, [topic], 1, **options)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, **options)
        producer.send(topic, b"over SASL_SSL").get(timeout=30)
        producer.close()

        async def read() -> list[bytes]:
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=None,
                                        auto_offset_reset="earliest", **_options(kafka, tmp_path, env))
            await consumer.start()
            try:
                fetched = await consumer.getmany(timeout_ms=10_000)
                return [r.value for records in fetched.values() for r in records]
            finally:
                await consumer.stop()

        assert asyncio.run(read()) == [b"over SASL_SSL"]
        assert broker.proxy.authentications and all(ok for _, ok in broker.proxy.authentications)
    finally:
        broker.stop()


def test_a_mechanism_the_broker_does_not_enable_is_named(sasl_broker, tmp_path):
    from streams.broker import BrokerError
    from streams.kafka import check_broker

    options = _options({**SASL, "sasl_mechanism": "SCRAM-SHA-256"}, tmp_path, _sasl_env(PASSWORD))
    with pytest.raises(BrokerError) as info:
        check_broker(sasl_broker.bootstrap, **options)
    assert str(info.value) == (f"Kafka at {sasl_broker.bootstrap} refused the connection: it does not enable SASL "
                               "mechanism SCRAM-SHA-256 (it enables PLAIN): set kafka.sasl_mechanism")
    check_broker(sasl_broker.bootstrap, **_options(SASL, tmp_path, _sasl_env(PASSWORD)))  # the right one passes



def test_a_host_name_the_certificate_does_not_hold_is_named(certs, tmp_path):
    """The test certificate holds 127.0.0.1 and localhost, not 127.0.0.2 (loopback too): refused in the handshake."""
    from streams.broker import BrokerError
    from streams.kafka import check_broker
    from tests.secure_kafka import KafkaProxy

    _copy_certs(certs, tmp_path)
    options = _options(MTLS, tmp_path, {"DRIFTWARDEN_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD})
    proxy = KafkaProxy(upstream_port=free_port(), host="127.0.0.2",
                       tls=server_context(certs, require_client_cert=True)).start()
    try:
        with pytest.raises(BrokerError, match=r"its TLS certificate is not for '127\.0\.0\.2' \(IP address mismatch"):
            check_broker(f"127.0.0.2:{proxy.port}", **options)
    finally:
        proxy.stop()


def test_the_simulator_publishes_over_sasl_and_is_refused_a_wrong_password(sasl_broker, tmp_path, unique):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    config, model_id, topics = _workspace(tmp_path, sasl_broker.bootstrap, unique, SASL)
    options = _options(SASL, config.parent, _sasl_env(PASSWORD))
    create_topics(sasl_broker.bootstrap, topics.values(), 1, **options)

    def simulate(password: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), **_sasl_env(password)}
        return subprocess.run([sys.executable, "-m", "streams.cli", "simulate", "-c", str(config), "--events", "200",
                               "--models", model_id], env=env, cwd=str(config.parent), capture_output=True, text=True,
                              timeout=120)

    done = simulate(PASSWORD)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(_read_all(sasl_broker.bootstrap, options, topics["predictions"])) == 200
    refused = simulate(WRONG_PASSWORD)
    assert refused.returncode == 3 and "SASL PLAIN authentication as" in refused.stderr, refused.stderr
    _assert_no_secret(done.stdout, done.stderr, refused.stdout, refused.stderr)
