"""The real parts the benchmarks run against, and the bookkeeping around them.

- :class:`Services`: the embedded broker (Tansu) and, when the ``victoria-metrics``
  binary is installed, VictoriaMetrics (InfluxDB's ``/api/v2/write``, read back
  with ``/api/v1/export``); both on free loopback ports, both stopped on exit.
- :class:`Worker`: ``python -m streams.cli worker -c CONFIG`` as a subprocess,
  stopped with SIGTERM (then SIGKILL); its RSS read from ``/proc/PID/status``.
- :func:`publish`: pre-publishes events with kafka-python (linger, large batches),
  one event per message or JSON arrays of ``array_size`` events; returns, per
  topic, the cumulative event count at each offset so that committed offsets
  can be turned into events.
- :class:`OffsetSampler`: samples a consumer group's committed offsets every
  0.5 s (``(wall time, events committed)``) from which :func:`sustained_rate`
  takes the slope between 10 % and 90 % of the events.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from streams.broker import EmbeddedBroker, free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent


# -- time-series server -----------------------------------------------------------------------

@dataclass
class Victoria:
    """A VictoriaMetrics started by the benchmark."""

    url: str
    process: subprocess.Popen[bytes]

    def export(self, selector: str, *, flush: bool = True, start: float | None = None) -> list[dict[str, Any]]:
        if flush:
            urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()
        params = {"match[]": selector}
        if start is not None:
            params["start"] = f"{start:.3f}"
        data = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/export", data=data, timeout=30) as response:
            body = response.read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]


def start_victoria(workdir: Path) -> Victoria | None:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        return None
    port = free_port()
    data = workdir / "victoria"
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "victoria.log", "wb")
    process = subprocess.Popen(
        [binary, f"-storageDataPath={data / 'data'}", f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y",
         "-search.latencyOffset=0s", "-dedup.minScrapeInterval=0s"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    try:
        wait_for_port("127.0.0.1", port, 20)
    except BaseException:
        stop_process(process)
        raise
    return Victoria(f"http://127.0.0.1:{port}", process)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> int | None:
    """SIGTERM, wait, then SIGKILL: only the process given (started by this benchmark)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


@dataclass
class Services:
    """The broker and (when installed) VictoriaMetrics; ``with Services(dir) as s: ...``."""

    workdir: Path
    want_victoria: bool = True
    broker: EmbeddedBroker | None = None
    victoria: Victoria | None = None

    def __enter__(self) -> Services:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.broker = EmbeddedBroker(port=0, log_path=self.workdir / "tansu.log").start()
            if self.want_victoria:
                self.victoria = start_victoria(self.workdir)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.victoria is not None:
            stop_process(self.victoria.process)
            self.victoria = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap


# -- worker subprocess ------------------------------------------------------------------------

class Worker:
    """``python -m streams.cli worker -c CONFIG`` in a subprocess (cwd: the config's folder)."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-c", str(self.config)],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=str(self.config.parent), env=env)
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) in bytes, from /proc."""
        return proc_memory(self.process.pid) if self.alive() else {}  # type: ignore[union-attr]

    def stop(self) -> int | None:
        code = stop_process(self.process, timeout=30)
        self.process = None
        return code

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proc_memory(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


class MemorySampler:
    """Samples a process's RSS every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            mem = proc_memory(self.pid)
            if mem:
                self.samples.append((time.monotonic(), mem.get("VmRSS", 0)))
                self.peak = max(self.peak, mem.get("VmHWM", 0))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- publishing -------------------------------------------------------------------------------

@dataclass
class Published:
    """What :func:`publish` sent: topic -> cumulative events at each offset (``ends[t][o]`` =
    events in messages ``0..o``), and the totals."""

    topics: dict[str, str]
    ends: dict[str, np.ndarray] = field(default_factory=dict)
    predictions: int = 0
    feedback: int = 0
    messages: int = 0
    seconds: float = 0.0
    bytes: int = 0

    @property
    def events(self) -> int:
        return self.predictions + self.feedback

    def events_at(self, offsets: dict[str, int]) -> int:
        """Events in the messages before the given next-offsets (committed offsets)."""
        total = 0
        for kind, topic in self.topics.items():
            o = offsets.get(topic, 0)
            if o > 0:
                total += int(self.ends[kind][min(o, len(self.ends[kind])) - 1])
        return total


def producer(bootstrap: str, linger_ms: int = 50) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, batch_size=1024 * 1024, acks=1,
                         max_request_size=16 * 1024 * 1024)


def publish(bootstrap: str, events: Iterable[tuple[str, dict[str, Any]]], topics: dict[str, str], *,
            array_size: int = 1) -> Published:
    """Send ``("prediction"|"feedback", event)`` pairs; arrays of ``array_size`` events per message."""
    import orjson

    out = Published(topics={"prediction": topics["prediction"], "feedback": topics["feedback"]})
    counts: dict[str, list[int]] = {"prediction": [], "feedback": []}
    buffers: dict[str, list[dict[str, Any]]] = {"prediction": [], "feedback": []}
    prod = producer(bootstrap)
    started = time.monotonic()

    def send(kind: str, batch: list[dict[str, Any]]) -> None:
        value = orjson.dumps(batch[0] if array_size == 1 else batch)
        prod.send(out.topics[kind], key=batch[0]["prediction_id"].encode(), value=value)
        counts[kind].append(len(batch))
        out.messages += 1
        out.bytes += len(value)

    try:
        for kind, event in events:
            if kind == "prediction":
                out.predictions += 1
            else:
                out.feedback += 1
            buffers[kind].append(event)
            if len(buffers[kind]) >= array_size:
                send(kind, buffers[kind])
                buffers[kind] = []
        for kind, batch in buffers.items():
            if batch:
                send(kind, batch)
        prod.flush()
    finally:
        prod.close()
    out.seconds = time.monotonic() - started
    out.ends = {kind: np.cumsum(np.asarray(c, dtype=np.int64)) for kind, c in counts.items()}
    return out


# -- consumption progress ---------------------------------------------------------------------

class OffsetSampler:
    """Samples ``group``'s committed offsets on ``published``'s topics every ``interval`` s."""

    def __init__(self, bootstrap: str, group: str, published: Published, interval: float = 0.5) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.published = published
        self.interval = interval
        self.samples: list[tuple[float, int]] = []

    def run(self, *, timeout: float, alive: Any = lambda: True) -> bool:
        """Sample until every event is committed (True), ``timeout`` s pass or ``alive()`` is false."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False)
        try:
            parts = [TopicPartition(t, 0) for t in self.published.topics.values()]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                now = time.monotonic()
                offsets = {tp.topic: (consumer.committed(tp) or 0) for tp in parts}
                done = self.published.events_at(offsets)
                self.samples.append((now, done))
                if done >= self.published.events:
                    return True
                if not alive():
                    return False
                time.sleep(max(0.0, self.interval - (time.monotonic() - now)))
            return False
        finally:
            consumer.close()


def sustained_rate(samples: list[tuple[float, int]], total: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """Events/s between the first sample at or past ``lo`` of ``total`` and the first at or past ``hi``.

    Progress comes in steps (a worker commits once a second, a batch at a time), so the rate is
    the events between those two *observed* samples over the time between them; both are seen
    up to one sampling interval after the commit, so that delay cancels out.
    """
    if len(samples) < 2 or total <= 0:
        return float("nan")
    t = np.array([s[0] for s in samples])
    n = np.maximum.accumulate(np.array([s[1] for s in samples], dtype=np.float64))
    a = int(np.searchsorted(n, lo * total, side="left"))
    b = int(np.searchsorted(n, hi * total, side="left"))
    if b < len(n) and a < b and n[b] > n[a] and t[b] > t[a]:
        return float((n[b] - n[a]) / (t[b] - t[a]))
    # Too few steps (a short run, or big batches): from the last sample with nothing committed
    # to the first with everything — includes the first batch's processing, excludes the join.
    done = int(np.searchsorted(n, total, side="left"))
    idle = np.flatnonzero(n <= 0)
    if done >= len(n) or idle.size == 0 or t[done] <= t[idle[-1]]:
        return float("nan")
    return float(total / (t[done] - t[idle[-1]]))


def machine() -> dict[str, str]:
    """nproc, CPU model, RAM, Python version, OS."""
    import platform

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {"nproc": str(len(os.sched_getaffinity(0))), "cpu": cpu, "ram": ram, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}"}
