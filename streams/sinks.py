"""Where points go: InfluxDB (``influxdb-client`` v2 write API) or a line-protocol file.

The InfluxDB sink batches writes in the client's background thread, retries
with exponential back-off on failure, counts what it wrote and what it lost,
and flushes on :meth:`close`. The token is read from the configuration (which
read it from the environment) and is never logged.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterable, Protocol

from detectors.points import Point
from streams.config import InfluxConfig

log = logging.getLogger(__name__)


class PointSink(Protocol):
    def write(self, points: Iterable[Point]) -> None: ...

    def close(self) -> None: ...


class InfluxSink:
    """Batched, retried writes to InfluxDB 2.x (or anything speaking its ``/api/v2/write``)."""

    def __init__(self, cfg: InfluxConfig) -> None:
        from influxdb_client import InfluxDBClient, WriteOptions
        from influxdb_client.client.write_api import WriteType

        self.cfg = cfg
        self.written = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._client = InfluxDBClient(url=cfg.url, token=cfg.token.value if cfg.token else "", org=cfg.org,
                                      timeout=10_000, verify_ssl=cfg.verify_ssl,
                                      ssl_ca_cert=str(cfg.ssl_ca_cert) if cfg.ssl_ca_cert else None)
        options = WriteOptions(
            write_type=WriteType.batching,
            batch_size=cfg.batch_size,
            flush_interval=cfg.flush_interval_ms,
            retry_interval=500,
            max_retries=cfg.max_retries,
            max_retry_delay=10_000,
            exponential_base=2,
        )
        self._write_api = self._client.write_api(
            write_options=options, success_callback=self._on_success, error_callback=self._on_error,
            retry_callback=self._on_retry)

    def write(self, points: Iterable[Point]) -> None:
        lines = [line for line in (p.to_line_protocol() for p in points) if line]
        if lines:
            self._write_api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=lines, write_precision="ns")

    def flush(self) -> None:
        self._write_api.flush()

    def close(self) -> None:
        """Flush what is buffered and release the client."""
        try:
            self._write_api.close()
        finally:
            self._client.close()

    def _on_success(self, conf: tuple[str, str, str], data: str | bytes) -> None:
        with self._lock:
            self.written += _count_lines(data)

    def _on_error(self, conf: tuple[str, str, str], data: str | bytes, exc: BaseException) -> None:
        with self._lock:
            self.failed += _count_lines(data)
        log.error("InfluxDB write to %s failed after retries, %d points lost: %s", self.cfg.url,
                  _count_lines(data), _describe(exc))

    def _on_retry(self, conf: tuple[str, str, str], data: str | bytes, exc: BaseException) -> None:
        log.warning("InfluxDB write to %s failed, retrying: %s", self.cfg.url, _describe(exc))


class LineProtocolFile:
    """Writes points as InfluxDB line protocol to a file (``replay``'s ``metrics.lp``; the worker's
    ``worker.metrics_file`` with ``append``). Each :meth:`write` ends flushed, so a reader following
    the file sees whole batches."""

    def __init__(self, path: Path, *, append: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a" if append else "w", encoding="utf-8")
        self.written = 0

    def write(self, points: Iterable[Point]) -> None:
        for point in points:
            line = point.to_line_protocol()
            if line:
                self._file.write(line + "\n")
                self.written += 1
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class FanOutSink:
    """Writes every batch of points to each of several sinks (InfluxDB and a file)."""

    def __init__(self, sinks: Iterable[PointSink]) -> None:
        self.sinks = tuple(sinks)

    def write(self, points: Iterable[Point]) -> None:
        batch = list(points)
        for sink in self.sinks:
            sink.write(batch)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class DiscardSink:
    """Counts points and drops them (``influx.enabled: false``)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, points: Iterable[Point]) -> None:
        self.written += sum(1 for _ in points)

    def close(self) -> None:
        pass


def _count_lines(data: str | bytes) -> int:
    if isinstance(data, bytes):
        return data.count(b"\n") + 1 if data else 0
    return data.count("\n") + 1 if data else 0


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc)
    return f"HTTP {status}: {reason}" if status else reason.splitlines()[0] if reason else type(exc).__name__
