"""Outages mid-stream: the worker stalls, warns, retries, and every window's points arrive.

A TSDB outage:

VictoriaMetrics (real, on its own port and data directory so it can be stopped
and started again) is stopped for 15 s while the worker has a backlog; the
points of every window must be there afterwards, and the stop summary says
``lost 0``. The worker's back-off is capped at 2 s and it warns every 5 s
(``influx.retry_max_seconds``, ``influx.warn_every_seconds``), so the outage
spans several retries and more than one warning, as a longer one does with the
defaults (10 s, 30 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from kafka import KafkaProducer

from streams.broker import EmbeddedBroker, free_port, wait_for_port
from streams.state import read_to_end
from tests.conftest import VictoriaMetrics, integration_workspace
from tests.integration.test_worker_e2e import WINDOW, _accuracy_points, _events, _expected, _send, _totals, \
    _wait_consumed

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 15
INFLUX = {"influx.retry_max_seconds": 2, "influx.warn_every_seconds": 5}
"""Shorter than the defaults (10 s, 30 s), so that a 15 s outage sees several attempts and warnings."""


class RestartableVictoria(VictoriaMetrics):
    """A VictoriaMetrics that can be stopped and started again on the same port and data directory."""

    def __init__(self, binary: str, port: int, data_dir: Path) -> None:
        self.binary, self.port, self.data_dir = binary, port, data_dir
        super().__init__(f"http://127.0.0.1:{port}", self._spawn())

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.data_dir / "victoria.log", "ab") as log:
            process = subprocess.Popen(
                [self.binary, f"-storageDataPath={self.data_dir / 'data'}", f"-httpListenAddr=127.0.0.1:{self.port}",
                 "-retentionPeriod=100y", "-search.latencyOffset=0s", "-dedup.minScrapeInterval=0s"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port, 20)
        return process

    def stop(self) -> None:
        """SIGTERM (VictoriaMetrics flushes what it acknowledged), by PID."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def start(self) -> None:
        self.process = self._spawn()


@pytest.fixture
def own_victoria(tmp_path: Path) -> Iterator[RestartableVictoria]:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        pytest.fail("victoria-metrics is not installed: apt-get install victoria-metrics (.ci/run does this)")
    data_dir = tmp_path / "victoria"
    data_dir.mkdir()
    victoria = RestartableVictoria(binary, free_port(), data_dir)
    try:
        yield victoria
    finally:
        victoria.stop()


def _wait_for_line(worker: object, text: str, timeout: float) -> bool:
    return _wait_for_lines(worker, text, 1, timeout)


def _wait_for_lines(worker: object, text: str, count: int, timeout: float) -> bool:
    """Wait until ``count`` lines of the worker's log hold ``text``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(text in line for line in worker.log().splitlines()) >= count:  # type: ignore[attr-defined]
            return True
        time.sleep(0.5)
    return False


@pytest.mark.timeout(420)
def test_tsdb_outage_stalls_output_and_loses_no_point(broker, own_victoria, worker_factory, tmp_path, unique):
    victoria = own_victoria
    model_id = f"m-{unique}"
    config, topics = integration_workspace(tmp_path, broker, victoria, model_id=model_id, unique=unique,
                                           window=WINDOW, overrides=INFLUX)
    rng = np.random.default_rng(17)
    predictions = _events(model_id, 2000, 0, rng)
    feedback = [{"prediction_id": p["prediction_id"], "model_id": model_id, "timestamp": p["timestamp"] + 1,
                 "label": int(rng.integers(0, 2))} for p in predictions if rng.random() < 0.8]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    group = f"driftwarden-{unique}"
    source = [topics["predictions"], topics["feedback"]]

    first = {p["prediction_id"] for p in predictions[:1000]}
    _send(producer, topics["predictions"], predictions[:1000])
    _send(producer, topics["feedback"], [f for f in feedback if f["prediction_id"] in first])
    worker = worker_factory(config).start()
    assert _wait_consumed(broker.bootstrap, group, source, timeout=120), worker.log()[-3000:]
    assert _totals(victoria, model_id, "events") == 1000, worker.log()[-3000:]

    victoria.stop()
    down_at = time.monotonic()
    _send(producer, topics["predictions"], predictions[1000:])
    _send(producer, topics["feedback"], [f for f in feedback if f["prediction_id"] not in first])
    # the worker notices, says where and how much waits, and holds its output
    assert _wait_for_line(worker, "not taking points", timeout=60), worker.log()[-3000:]
    warning = next(line for line in worker.log().splitlines() if "not taking points" in line)
    assert victoria.url in warning and "points waiting" in warning, warning
    time.sleep(max(OUTAGE_SECONDS - (time.monotonic() - down_at), 0))  # the outage itself, not a wait for a result
    assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]
    # it kept warning while the outage lasted (every influx.warn_every_seconds)
    assert _wait_for_lines(worker, "not taking points", 2, timeout=60), worker.log()[-3000:]
    victoria.start()

    assert _wait_consumed(broker.bootstrap, group, source, timeout=120), worker.log()[-3000:]
    _send(producer, topics["predictions"], _events(model_id, WINDOW, 10_000, rng))  # closes the last window
    victoria.wait_for(lambda: _totals(victoria, model_id, "events") >= 2200, timeout=90)
    assert worker.stop() == 0, worker.log()[-3000:]

    log = worker.log()
    assert "takes points again after" in log, log[-3000:]
    assert _totals(victoria, model_id, "events") == 2200, log[-3000:]  # eleven windows of 200, none missing
    assert len(victoria.series("monitor_value", model_id=model_id, stat="events")[0]["timestamps"]) == 11
    n, accuracy = _accuracy_points(victoria, model_id)
    exp_n, exp_accuracy = _expected(predictions, feedback)
    assert n == exp_n
    assert accuracy == pytest.approx(exp_accuracy, abs=1e-9)
    outage = victoria.series("monitor_value", model_id=model_id, stat="influx_outage_seconds")
    assert outage and max(outage[0]["values"]) >= OUTAGE_SECONDS - 5, outage
    summary = next(line for line in log.splitlines() if "driftwarden worker stopped:" in line)
    assert "lost 0;" in summary and "unreachable 1 times" in summary, summary


# -- the broker stalls ------------------------------------------------------------------------------

BROKER_STALL_SECONDS = 12
"""Longer than the consumer group's session timeout (10 s): when the broker wakes, the worker's
membership may have expired and the group rebalances under a live worker."""


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test alone: it is frozen (SIGSTOP) and thawed, which would stall every other test."""
    with EmbeddedBroker(port=0, log_path=tmp_path / "tansu.log") as running:
        yield running


@pytest.mark.timeout(420)
def test_a_stalled_broker_stalls_the_worker_and_loses_nothing(own_broker, victoria, worker_factory, tmp_path, unique):
    """The broker freezes (SIGSTOP: it neither answers nor closes a connection, as behind a network
    partition) for 12 s while the worker is in the middle of a backlog, then thaws. The worker waits
    it out, never exits, and every window's points and every labelled pair arrive, as without the stall."""
    from kafka import KafkaConsumer, TopicPartition

    broker = own_broker
    model_id = f"m-{unique}"
    config, topics = integration_workspace(tmp_path, broker, victoria, model_id=model_id, unique=unique,
                                           window=WINDOW)
    rng = np.random.default_rng(23)
    predictions = _events(model_id, 4000, 0, rng)
    feedback = [{"prediction_id": p["prediction_id"], "model_id": model_id, "timestamp": p["timestamp"] + 1,
                 "label": int(rng.integers(0, 2))} for p in predictions if rng.random() < 0.8]
    first = {p["prediction_id"] for p in predictions[:1000]}
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    group = f"driftwarden-{unique}"
    source = [topics["predictions"], topics["feedback"]]
    _send(producer, topics["predictions"], predictions[:1000])
    _send(producer, topics["feedback"], [f for f in feedback if f["prediction_id"] in first])
    worker = worker_factory(config).start()
    assert _wait_consumed(broker.bootstrap, group, source, timeout=120), worker.log()[-3000:]

    # the backlog arrives while the worker is frozen, so that the broker's stall finds it mid-way
    watcher = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    backlog = TopicPartition(topics["predictions"], 0)
    watcher.committed(backlog)  # connected before the stall, so the look below is quick
    worker.process.send_signal(signal.SIGSTOP)
    try:
        _send(producer, topics["predictions"], predictions[1000:])
        _send(producer, topics["feedback"], [f for f in feedback if f["prediction_id"] not in first])
    finally:
        worker.process.send_signal(signal.SIGCONT)
    producer.close()
    time.sleep(0.05)  # the worker thaws and fetches: the stall is to find it at work
    committed = watcher.committed(backlog) or 0
    pid = broker._process.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(BROKER_STALL_SECONDS)  # the stall itself, not a wait for a result
        assert worker.process.poll() is None, worker.log()[-3000:]
    finally:
        os.kill(pid, signal.SIGCONT)
    watcher.close()
    assert committed < len(predictions), "the worker was through its backlog before the broker stalled"

    assert _wait_consumed(broker.bootstrap, group, source, timeout=180), worker.log()[-3000:]
    closer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    _send(closer, topics["predictions"], _events(model_id, WINDOW, 10_000, rng))  # closes the last window
    closer.close()
    total = len(predictions) + WINDOW
    victoria.wait_for(lambda: _totals(victoria, model_id, "events") >= total, timeout=120)
    assert worker.stop() == 0, worker.log()[-3000:]
    log = worker.log()
    assert _totals(victoria, model_id, "events") == total, log[-3000:]  # every window of 200, none missing
    assert len(victoria.series("monitor_value", model_id=model_id, stat="events")[0]["timestamps"]) == total // WINDOW
    n, accuracy = _accuracy_points(victoria, model_id)
    exp_n, exp_accuracy = _expected(predictions, feedback)
    assert n == exp_n
    assert accuracy == pytest.approx(exp_accuracy, abs=1e-9)
    labelled = [pair["prediction_id"] for m in read_to_end(broker.bootstrap, topics["labelled"], idle_seconds=0.5)
                for pair in json.loads(m.value)]
    assert set(labelled) == {f["prediction_id"] for f in feedback}
    print(f"committed {committed} of {len(predictions)} when the broker stalled; {len(labelled) - len(set(labelled))} "
          "labelled copies re-sent")
