"""Closing a kafka-python client while a response is arriving logs no error.

kafka-python 3 reads its sockets on an IO thread of its own; ``close()`` closed
the connections from the caller's thread while that thread still ran. On a
loaded machine the IO thread could be woken by a response (here: the fetch a
consumer keeps in flight), be descheduled before it read, and then read a
socket ``close()`` had just taken away: ``ERROR kafka.net.transport: <KafkaTCPTransport
[none] (closed)>: Error receiving network data closing socket`` and a traceback, on a
worker's start (its start-up readers of ``model-updates`` and the changelog close
like this) in a CI run of the demo. The test makes the descheduling certain:
the IO thread, holding a readable socket, waits until the connection has been
closed (or 2 s), then reads. :func:`streams.kafka.close_client` stops the IO
thread before it closes anything, so nothing reads a closed socket.
"""

from __future__ import annotations

import logging
import threading
import uuid

import pytest

from streams.broker import EmbeddedBroker, create_topics
from streams.kafka import close_client


def test_closing_a_consumer_while_its_fetch_is_answered_logs_no_error(
        broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.net import manager, transport

    topic = f"close-race-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, [topic])
    closing, readable, closed = threading.Event(), threading.Event(), threading.Event()
    receive, close_socket = transport.KafkaTCPTransport._sock_recv, transport.KafkaTCPTransport._close
    close_connections = manager.KafkaConnectionManager.close

    def descheduled_receive(self: object) -> object:
        if closing.is_set() and threading.current_thread().name.startswith("kafka-io"):
            readable.set()
            closed.wait(2.0)  # as a loaded machine may: the caller's thread runs first
        return receive(self)

    def noted_close(self: object, error: object = None) -> None:
        close_socket(self, error)
        closed.set()

    def close_on_a_response(self: object, *args: object, **kwargs: object) -> None:
        closing.set()
        readable.wait(2.0)  # the IO thread (if one runs) holds a readable socket: the fetch in flight
        close_connections(self, *args, **kwargs)

    monkeypatch.setattr(transport.KafkaTCPTransport, "_sock_recv", descheduled_receive)
    monkeypatch.setattr(transport.KafkaTCPTransport, "_close", noted_close)
    monkeypatch.setattr(manager.KafkaConnectionManager, "close", close_on_a_response)
    caplog.set_level(logging.ERROR, logger="kafka")
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=100, client_id="close-race")
    consumer.assign([TopicPartition(topic, 0)])
    consumer.poll(timeout_ms=500)  # an empty topic: the consumer keeps a fetch in flight
    for event in (closing, readable, closed):  # only this close counts (the admin client's closed too)
        event.clear()
    close_client(consumer)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("kafka.net")]
    assert not errors, [r.getMessage() for r in errors]


PRODUCER_WHOSE_BROKER_HAS_GONE = """
import logging, sys
logging.disable(logging.CRITICAL)  # the connection errors of a broker that has gone are not the point
from kafka import KafkaProducer
from streams.broker import EmbeddedBroker, create_topics
from streams.kafka import close_producer
with EmbeddedBroker(port=0) as broker:
    create_topics(broker.bootstrap, ["t"])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    producer.send("t", b"sent").get(timeout=30)
broker.stop()
for _ in range(1000):
    producer.send("t", b"never sent")
print("all sent:", close_producer(producer, timeout=0.5), "closed:", producer._closed)
"""


def test_a_producer_that_cannot_flush_is_closed_without_a_traceback_at_exit() -> None:
    """kafka-python 3's ``close(timeout)`` raises when its flush times out and leaves the producer
    open; its ``__del__`` then prints a ``KafkaTimeoutError`` traceback at exit (the demo's simulator
    at Ctrl-C on a loaded machine). :func:`streams.kafka.close_producer` drops what it cannot send."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", PRODUCER_WHOSE_BROKER_HAS_GONE], capture_output=True, text=True,
                          timeout=120, cwd=str(repo), env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "all sent: False closed: True", done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
