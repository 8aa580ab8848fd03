"""The alternatives' consumer loop, and the windowed monitors' progress, in a module of its own.

It imports only the standard library, aiokafka and orjson, so that another interpreter (whylogs'
venv: :mod:`bench.whylogs_profile`) runs the very same loop as the in-process alternatives of
:mod:`bench.alternatives`; the rates are computed from what it returns by the caller.

:func:`read_topics` reads the given topics with one aiokafka consumer (no consumer group, from the
earliest offset), orjson-decodes every message (a JSON array is a batch of events) and hands each
event to ``handler``. It returns the progress samples ``(monotonic time, events decoded)``, one per
fetch, the same samples on the process' CPU clock (``time.process_time``), and the CPU seconds from
the first fetch that brought records to the last.

:class:`Windows` is the bookkeeping of a monitor that works per window of predictions (Evidently,
whylogs): the wall and CPU time at which each window was done, from which :func:`windowed_rates`
derives the rates.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

Handler = Callable[[str, Any], None]


async def _read_topics(bootstrap: str, kinds: dict[str, str], events: int, handler: Handler | None, *,
                       cap_s: float | None, timeout: float) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*kinds, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024,
                                max_partition_fetch_bytes=32 * 1024 * 1024)
    await consumer.start()
    samples: list[tuple[float, int]] = []
    cpu_samples: list[tuple[float, int]] = []
    done = 0
    first = None
    started = time.monotonic()
    try:
        while done < events:
            now = time.monotonic()
            if now - started > timeout or (cap_s is not None and first is not None and now - first > cap_s):
                break
            before, cpu_before = time.monotonic(), time.process_time()
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            if batches and first is None:
                samples.append((before, 0))  # the fetch that brought the first records started here
                cpu_samples.append((cpu_before, 0))
            for tp, records in batches.items():
                kind = kinds[tp.topic]
                for record in records:
                    doc = orjson.loads(record.value)
                    if isinstance(doc, list):
                        done += len(doc)
                        if handler is not None:
                            for item in doc:
                                handler(kind, item)
                    else:
                        done += 1
                        if handler is not None:
                            handler(kind, doc)
            if batches:
                if first is None:
                    first = time.monotonic()
                samples.append((time.monotonic(), done))
                cpu_samples.append((time.process_time(), done))
    finally:
        await consumer.stop()
    cpu_s = cpu_samples[-1][0] - cpu_samples[0][0] if cpu_samples else 0.0
    return {"events": done, "complete": done >= events, "samples": samples, "cpu_samples": cpu_samples,
            "first": first, "cpu_s": cpu_s}


def read_topics(bootstrap: str, kinds: dict[str, str], events: int, handler: Handler | None = None, *,
                cap_s: float | None = None, timeout: float = 900.0) -> dict[str, Any]:
    """Reads ``kinds`` (topic → ``"prediction"``/``"feedback"``) until ``events`` events, ``timeout`` s,
    or ``cap_s`` s after the first records; see the module docstring for what it returns."""
    return asyncio.run(_read_topics(bootstrap, kinds, events, handler, cap_s=cap_s, timeout=timeout))


@dataclass
class Windows:
    """When each window of ``size`` predictions was done: monotonic wall time and process CPU time."""

    size: int
    done_at: list[float] = field(default_factory=list)
    cpu_done_at: list[float] = field(default_factory=list)
    seconds: float = 0.0
    """Wall seconds spent in the monitor's own per-window work (the report, the profile)."""

    def record(self, work_s: float) -> None:
        self.seconds += work_s
        self.done_at.append(time.monotonic())
        self.cpu_done_at.append(time.process_time())

    @property
    def count(self) -> int:
        return len(self.done_at)


def windowed_rates(windows: Windows, events: int, predictions: int) -> dict[str, Any]:
    """Rates of a per-window monitor, from its first window's end to its last's.

    The consumer runs ahead on the cheap feedback topic, so progress is counted in predictions
    (windows done) and converted to events at the topics' mix (``events`` / ``predictions``); the
    same for the CPU seconds between those window ends. Empty without two windows.
    """
    out: dict[str, Any] = {"windows": windows.count, "report_s": windows.seconds / max(windows.count, 1)}
    if windows.count < 2:
        return out
    mix = events / predictions
    rows = (windows.count - 1) * windows.size
    wall = windows.done_at[-1] - windows.done_at[0]
    cpu = windows.cpu_done_at[-1] - windows.cpu_done_at[0]
    out.update({"rate": rows / wall * mix, "busy_s": wall, "cpu_s": cpu,
                "cpu_rate": rows / cpu * mix if cpu > 0 else float("nan")})
    return out
