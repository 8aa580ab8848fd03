"""streams.actions.Webhook against a real HTTP server on loopback (http.server in a thread).

Oracles: what the server received (bodies, number of attempts) and the webhook's
own counters. No assertion depends on how fast the machine is: a request that
must still be pending is held by the server until the test releases it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import orjson
import pytest

from streams.actions import Webhook

TIMEOUT = 0.2
"""The client's timeout where a test wants a request to time out (the server hangs until released)."""
PATIENT = 30.0
"""The client's timeout where the server answers: never reached, however loaded the machine."""


@dataclass
class Server:
    """A loopback HTTP server whose answer to each POST is chosen by ``behaviour(attempt)``."""

    behaviour: Callable[[int], int | None] = lambda attempt: 200
    """Status to answer with; ``None`` means: hang until released (never answer in time)."""
    received: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    attempts: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/hook"

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(predicate, timeout)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.arrived:
                attempt = state.attempts
                state.attempts += 1
                state.received.append(body)
                state.headers.append(dict(self.headers))
                state.arrived.notify_all()
            status = state.behaviour(attempt)
            if status is None:
                state.release.wait(120)  # the test (or its teardown) releases it
                status = 200
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the client gave up (timeout)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port
    httpd.daemon_threads = True
    state.httpd = httpd
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def hooks() -> Iterator[list[Webhook]]:
    made: list[Webhook] = []
    yield made
    for hook in made:
        hook.close(timeout=5)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


ALERT = {"alert_id": "a-1", "model_id": "credit-risk", "model_version": "3", "rule": "feature-drift",
         "state": "firing", "severity": "warning", "metric": "feature_drift", "value": 0.31, "threshold": 0.2,
         "window_start": "2026-11-22T10:00:00Z", "window_end": "2026-11-22T10:01:00Z", "note": "âge ≥ 41 — ok"}


def test_a_posted_alert_arrives_intact(server: Server, hooks: list[Webhook]) -> None:
    hook = Webhook(server.url, timeout=PATIENT, retries=1)
    hooks.append(hook)
    body = orjson.dumps(ALERT)
    hook.post(body)
    assert wait_until(lambda: hook.sent == 1)
    assert server.received == [body]
    assert orjson.loads(server.received[0]) == ALERT
    assert server.headers[0]["Content-Type"] == "application/json"
    assert (hook.failed, hook.dropped) == (0, 0)


def test_bodies_arrive_in_order(server: Server, hooks: list[Webhook]) -> None:
    hook = Webhook(server.url, timeout=PATIENT, retries=1)
    hooks.append(hook)
    bodies = [orjson.dumps({**ALERT, "alert_id": f"a-{i}"}) for i in range(20)]
    for body in bodies:
        hook.post(body)
    assert wait_until(lambda: hook.sent == 20)
    assert server.received == bodies


def test_server_errors_are_retried_until_the_body_gets_through(server: Server, hooks: list[Webhook]) -> None:
    server.behaviour = lambda attempt: 500 if attempt < 2 else 200
    hook = Webhook(server.url, timeout=PATIENT, retries=2)  # two retries: the third attempt succeeds
    hooks.append(hook)
    body = orjson.dumps(ALERT)
    hook.post(body)
    assert wait_until(lambda: hook.sent == 1, timeout=10)
    assert server.attempts == 3
    assert server.received == [body] * 3
    assert hook.failed == 0


def test_a_server_that_keeps_failing_is_counted_after_the_retries(server: Server, hooks: list[Webhook]) -> None:
    server.behaviour = lambda attempt: 500
    hook = Webhook(server.url, timeout=PATIENT, retries=1)
    hooks.append(hook)
    hook.post(orjson.dumps(ALERT))
    assert wait_until(lambda: hook.failed == 1, timeout=30)
    hook.close(timeout=30)  # the sender thread has finished: no attempt can follow
    assert server.attempts == 2 and hook.sent == 0  # the attempt and one retry, no more


def test_post_returns_while_a_request_hangs(server: Server, hooks: list[Webhook]) -> None:
    """``post`` never waits for the network: every post below returns while the first request is
    still in the server's hands (it answers only when the test releases it, and the client would
    wait a minute), so a ``post`` that sent, or waited for the sender, could not have returned yet."""
    server.behaviour = lambda attempt: None  # hang until released
    hook = Webhook(server.url, timeout=60.0, retries=1)
    hooks.append(hook)
    hook.post(orjson.dumps(ALERT))
    assert server.wait_for(lambda: server.attempts >= 1, timeout=30)
    for i in range(5):
        hook.post(orjson.dumps({**ALERT, "alert_id": f"b-{i}"}))
    assert server.attempts == 1 and not server.release.is_set()
    assert hook.sent == 0 and hook.failed == 0 and hook.dropped == 0
    # let the server answer: the hanging request completes, the queue drains
    server.behaviour = lambda attempt: 200
    server.release.set()
    assert wait_until(lambda: hook.sent == 6, timeout=30)
    assert hook.failed == 0


def test_a_hanging_server_fails_after_the_retries(server: Server, hooks: list[Webhook]) -> None:
    server.behaviour = lambda attempt: None  # never answers within the timeout
    hook = Webhook(server.url, timeout=TIMEOUT, retries=1)
    hooks.append(hook)
    hook.post(orjson.dumps(ALERT))
    assert wait_until(lambda: hook.failed == 1, timeout=30)
    assert server.wait_for(lambda: server.attempts >= 2, timeout=30)  # it was retried once before it failed
    assert hook.sent == 0 and hook.failed == 1
    # the server answers again: the next post gets through
    server.behaviour = lambda attempt: 200
    server.release.set()
    hook.post(orjson.dumps({**ALERT, "alert_id": "after"}))
    assert wait_until(lambda: hook.sent == 1, timeout=30)
    assert hook.failed == 1


def test_queue_overflow_drops_and_counts(server: Server, hooks: list[Webhook]) -> None:
    server.behaviour = lambda attempt: None  # hang until released: the sender thread stays busy
    hook = Webhook(server.url, timeout=60.0, retries=1, capacity=2)
    hooks.append(hook)
    first = orjson.dumps({**ALERT, "alert_id": "first"})
    hook.post(first)
    assert server.wait_for(lambda: server.attempts == 1, timeout=30)  # the sender thread is busy with it
    queued = [orjson.dumps({**ALERT, "alert_id": f"q-{i}"}) for i in range(2)]
    overflow = [orjson.dumps({**ALERT, "alert_id": f"x-{i}"}) for i in range(3)]
    for body in queued + overflow:
        hook.post(body)
    assert hook.dropped == 3 and server.attempts == 1  # all of it while the first request hangs
    # the first request is answered, the queued ones follow; the dropped ones never arrive
    server.behaviour = lambda attempt: 200
    server.release.set()
    assert wait_until(lambda: hook.sent == 3, timeout=30)
    assert hook.failed == 0
    assert server.received == [first] + queued
