"""Fixtures that start the real parts: the embedded Kafka broker (Tansu) and VictoriaMetrics.

Both are started once per test session on free loopback ports and stopped at
the end. Integration tests get a fresh set of topic names, a fresh consumer
group and their own model ids, so they never see each other's data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from streams.broker import EmbeddedBroker, free_port, wait_for_port
from tests.internal_errors import (  # noqa: F401 - the hooks of the plugin: a caught exception fails the test
    pytest_configure, pytest_runtest_call, pytest_runtest_setup, pytest_runtest_teardown, pytest_unconfigure)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(port=0, log_path=log_path) as running:
        yield running


@dataclass
class VictoriaMetrics:
    """A running VictoriaMetrics: accepts InfluxDB ``/api/v2/write``; read back with ``/api/v1/export``."""

    url: str
    process: subprocess.Popen[bytes]

    def flush(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/internal/force_flush", method="GET"), timeout=10)

    def export(self, selector: str) -> list[dict[str, Any]]:
        """Every series matching a PromQL series selector, as exported JSON lines."""
        self.flush()
        data = urllib.parse.urlencode({"match[]": selector}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/export", data=data, timeout=30) as response:
            body = response.read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def series(self, name: str, **labels: str) -> list[dict[str, Any]]:
        matchers = ",".join([f'__name__="{name}"'] + [f'{k}="{v}"' for k, v in labels.items()])
        return self.export("{" + matchers + "}")

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                return value
            time.sleep(interval)


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        pytest.fail("victoria-metrics is not installed: apt-get install victoria-metrics (.ci/run does this)")
    port = free_port()
    data_dir = tmp_path_factory.mktemp("victoria")
    log = open(data_dir / "victoria.log", "wb")
    process = subprocess.Popen(
        [binary, f"-storageDataPath={data_dir / 'data'}", f"-httpListenAddr=127.0.0.1:{port}",
         "-retentionPeriod=100y", "-search.latencyOffset=0s", "-dedup.minScrapeInterval=0s"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, 20)
        yield VictoriaMetrics(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


def topic_overrides(suffix: str) -> dict[str, Any]:
    names = ["predictions", "feedback", "alerts", "retrain_jobs", "dead_letters", "model_updates", "labelled"]
    out: dict[str, Any] = {f"kafka.topics.{n}": f"{n.replace('_', '-')}-{suffix}" for n in names}
    out["kafka.group_id"] = f"driftwarden-{suffix}"
    return out


def integration_workspace(tmp_path: Path, broker: EmbeddedBroker, victoria: VictoriaMetrics, *, model_id: str,
                          unique: str, window: int | dict[str, Any], partitions: int = 1,
                          overrides: dict[str, Any] | None = None) -> tuple[Path, dict[str, str]]:
    """A config and reference profile for ``model_id`` on this test's own topics (created, with
    ``partitions`` each), writing to VictoriaMetrics; returns the config path and topic names by key.
    ``window``: events per count window, or a window mapping (``{"seconds": 60}``); ``overrides``:
    more dotted config keys (``{"influx.retry_max_seconds": 2}``)."""
    from streams.broker import create_topics
    from streams.commands import prepare_workspace

    overrides = {**topic_overrides(unique),
                 "models.*.window": window if isinstance(window, dict) else {"events": window}, **(overrides or {})}
    config = prepare_workspace(tmp_path / "ws", bootstrap=broker.bootstrap, influx_url=victoria.url,
                               models=(model_id,), overrides=overrides)
    topics = {k.split(".")[-1]: v for k, v in overrides.items() if k.startswith("kafka.topics.")}
    create_topics(broker.bootstrap, topics.values(), partitions=partitions)
    return config, topics


STARTED = {"worker": "PARTITIONS assigned", "retrain-worker": "retrain worker: waiting for jobs"}
"""A command's first output line after its SIGTERM handler is installed (by Faust's worker; by
``streams.retrain_service``): a SIGTERM before it ends the process with -15, not a clean stop."""


class WorkerProcess:
    """``driftwarden worker -c CONFIG`` (or another command) in a subprocess, stopped with SIGTERM
    like a real deployment."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None,
                 command: str = "worker") -> None:
        self.config = config
        self.command = command
        self.log_path = log_path
        # The code under test is this checkout's, not whatever ``streams`` the interpreter has installed
        # (as bench/harness.py does): the worker runs from the config's directory.
        pythonpath = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
        self.env = {**os.environ, "PYTHONPATH": pythonpath, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", self.command, "-c", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(self.config.parent))
        log.close()
        return self

    def wait_started(self, timeout: float = 180.0) -> bool:
        """Wait until the command has printed its start line (:data:`STARTED`), or exited, or
        ``timeout`` s passed (generous: its imports take seconds on a loaded machine); True once
        started."""
        line = STARTED.get(self.command)
        deadline = time.monotonic() + timeout
        while True:
            if line is None or line in self.log():
                return True
            if self.process is None or self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0, *, started_within: float = 180.0) -> int | None:
        """SIGTERM (once the command has started: up to ``started_within`` s; a SIGTERM while it is
        still importing ends it with -15, not the clean exit 0 tests expect), wait ``timeout`` s,
        then SIGKILL; return its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.wait_started(started_within)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(config: Path, **kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(config, tmp_path / f"worker-{len(started)}.log", **kwargs)
        started.append(worker)
        return worker

    yield make
    for worker in started:  # a test that failed may leave one running (its exit code no longer matters)
        with contextlib.suppress(Exception):
            worker.stop(started_within=0)
