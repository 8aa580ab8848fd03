"""Where points go: InfluxDB (``influxdb-client`` v2 write API) or a line-protocol file.

The worker's InfluxDB sink *acknowledges*: :meth:`InfluxSink.write` only holds a
batch's points, and :meth:`InfluxSink.delivered` returns once InfluxDB has taken
every one of them. The worker saves a batch's state and commits its offsets only
after that (see :mod:`streams.consumer`), so no point is ever dropped: while
InfluxDB is unreachable the worker stalls (it stops consuming, which bounds
memory), retries forever with a back-off capped at ``influx.retry_max_seconds``,
and says so every ``influx.warn_every_seconds`` with the URL, how long and how
many points wait. Only points InfluxDB *rejects* (HTTP 400/413/422: the request
itself is bad, retrying cannot help) are lost; they are logged and counted.
The token is read from the configuration (which read it from the environment)
and is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable, Iterable, Protocol

from detectors.points import Point
from streams.config import InfluxConfig

log = logging.getLogger(__name__)

REJECTED = frozenset({400, 413, 422})
"""HTTP statuses that say the points themselves are bad: written again they fail again."""


class PointSink(Protocol):
    def write(self, points: Iterable[Point]) -> None:
        """Take points; they are delivered by the time :meth:`delivered` returns."""

    async def delivered(self) -> None:
        """Return once every point taken so far is stored (an acknowledging sink waits for it)."""

    def close(self) -> None: ...


class InfluxSink:
    """Acknowledged writes to InfluxDB 2.x (or anything speaking its ``/api/v2/write``), retried forever.

    ``written`` counts the points stored, ``failed`` those InfluxDB rejected as bad (the stop
    summary's ``lost``); ``outages`` and ``outage_seconds`` count the times InfluxDB was
    unreachable and for how long. ``on_outage_end(seconds)`` is called when it answers again.
    """

    def __init__(self, cfg: InfluxConfig, *, clock: Callable[[], float] = time.monotonic,
                 on_outage_end: Callable[[float], None] | None = None) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.cfg = cfg
        self.clock = clock
        self.on_outage_end = on_outage_end
        self.written = 0
        self.failed = 0
        self.outages = 0
        self.outage_seconds = 0.0
        self._pending: list[str] = []
        # one attempt per call (no urllib3 retries): the back-off is ours, so it can warn and stall
        self._client = InfluxDBClient(url=cfg.url, token=cfg.token.value if cfg.token else "", org=cfg.org,
                                      timeout=10_000, retries=False, verify_ssl=cfg.verify_ssl,
                                      ssl_ca_cert=str(cfg.ssl_ca_cert) if cfg.ssl_ca_cert else None)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    @property
    def waiting(self) -> int:
        """Points taken and not yet stored."""
        return len(self._pending)

    def write(self, points: Iterable[Point]) -> None:
        self._pending.extend(line for line in (p.to_line_protocol() for p in points) if line)

    async def delivered(self) -> None:
        """Write every point held, in requests of ``batch_size``; return when InfluxDB has them all."""
        loop = asyncio.get_running_loop()
        while self._pending:
            chunk = self._pending[:self.cfg.batch_size]
            await self._write_until_taken(loop, chunk)
            del self._pending[:len(chunk)]

    async def _write_until_taken(self, loop: asyncio.AbstractEventLoop, lines: list[str]) -> None:
        down_since: float | None = None
        warned_at = 0.0
        pause = 0.5
        while True:
            try:
                await loop.run_in_executor(None, self._post, lines)
            except Exception as exc:  # noqa: BLE001 - which failures to retry is decided here
                status = getattr(exc, "status", None)
                if status in REJECTED:
                    self.failed += len(lines)
                    log.error("InfluxDB at %s rejected %d points (%s); they are lost: fix what the message "
                              "names (points are written by driftwarden, so please report it)", self.cfg.url,
                              len(lines), _describe(exc))
                    return
                now = self.clock()
                if down_since is None:
                    down_since = now
                    self.outages += 1
                if down_since == now or now - warned_at >= self.cfg.warn_every_seconds:
                    warned_at = now
                    log.warning("InfluxDB at %s not taking points for %.0f s (%s): %d points waiting; the worker "
                                "holds its output and retries until it answers (check that InfluxDB is up and "
                                "influx.url is right)", self.cfg.url, now - down_since, _describe(exc),
                                self.waiting)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.cfg.retry_max_seconds)
                continue
            self.written += len(lines)
            if down_since is not None:
                seconds = self.clock() - down_since
                self.outage_seconds += seconds
                log.warning("InfluxDB at %s takes points again after %.0f s; %d points waited, none lost",
                            self.cfg.url, seconds, self.waiting)
                if self.on_outage_end is not None:
                    self.on_outage_end(seconds)
            return

    def _post(self, lines: list[str]) -> None:
        self._write_api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=lines, write_precision="ns")

    def close(self) -> None:
        """Release the client (points not delivered by then were never acknowledged: the batch they
        came from was not committed, and is read again)."""
        self._client.close()


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

    async def delivered(self) -> None:
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

    async def delivered(self) -> None:
        """Return once every sink has stored what it was given (InfluxDB last to answer wins)."""
        await asyncio.gather(*(sink.delivered() for sink in self.sinks))

    @property
    def primary(self) -> PointSink:
        """The first sink (InfluxDB when there is one): its figures are the run's summary."""
        return self.sinks[0]

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class DiscardSink:
    """Counts points and drops them (``influx.enabled: false``)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, points: Iterable[Point]) -> None:
        self.written += sum(1 for _ in points)

    async def delivered(self) -> None:
        pass

    def close(self) -> None:
        pass


def _describe(exc: BaseException) -> str:
    """One line naming what went wrong: the HTTP status and reason, else the exception's first line
    (urllib3 wraps a refused connection in exceptions whose ``reason`` is another exception)."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    text = str(reason) if reason else str(exc)
    first = text.splitlines()[0] if text.strip() else type(exc).__name__
    return f"HTTP {status}: {first}" if status else f"{type(exc).__name__}: {first}"
