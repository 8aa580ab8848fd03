"""What else one could run on the same messages, on the same machine, in the same run.

Every alternative reads the pre-published topics of :mod:`bench.throughput`
with one aiokafka consumer (no consumer group, from the earliest offset) and
decodes every message with orjson; the rate counts events (predictions +
feedback) between 10 % and 90 % of the topics, like the worker's.

- ``bare``: only reads and decodes — the physical limit of one Python consumer;
- ``river``: plus one ``river.drift.ADWIN`` per numeric feature (12), updated
  per prediction event;
- ``evidently``: the DIY monitor — gathers windows of 1,000 predictions into a
  pandas frame and runs an Evidently ``Report([DataDriftPreset()])`` on each
  against a 5,000-row reference sample; capped by time. Its rate is windows
  of predictions done per second (first to last window), converted to events
  at the topics' mix of predictions and feedback (its consumer runs ahead on
  the cheap feedback topic).
"""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any, Callable

import orjson

from bench.harness import Published, sustained_rate
from bench.world import CATEGORICAL, FEATURES, NUMERIC, reference_frame

Handler = Callable[[str, Any], None]


async def _consume(bootstrap: str, published: Published, handler: Handler | None, *, cap_s: float | None,
                   timeout: float) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    kinds = {topic: kind for kind, topic in published.topics.items()}
    consumer = AIOKafkaConsumer(*kinds, bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_bytes=64 * 1024 * 1024,
                                max_partition_fetch_bytes=32 * 1024 * 1024)
    await consumer.start()
    samples: list[tuple[float, int]] = []
    done = 0
    first = None
    started = time.monotonic()
    try:
        while done < published.events:
            now = time.monotonic()
            if now - started > timeout or (cap_s is not None and first is not None and now - first > cap_s):
                break
            before = time.monotonic()
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            if batches and first is None:
                samples.append((before, 0))  # the fetch that brought the first records started here
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
    finally:
        await consumer.stop()
    end = samples[-1][0] if samples else time.monotonic()
    complete = done >= published.events
    rate = sustained_rate(samples, published.events) if complete else (done / (end - first) if first else 0.0)
    return {"events": done, "complete": complete, "rate": rate, "busy_s": end - (first or end)}


def consume(bootstrap: str, published: Published, handler: Handler | None = None, *, cap_s: float | None = None,
            timeout: float = 900.0) -> dict[str, Any]:
    return asyncio.run(_consume(bootstrap, published, handler, cap_s=cap_s, timeout=timeout))


def bare(bootstrap: str, published: Published) -> dict[str, Any]:
    return consume(bootstrap, published)


def river_adwin(bootstrap: str, published: Published) -> dict[str, Any]:
    from river import drift

    detectors = {f: drift.ADWIN() for f in NUMERIC}
    detections = {"n": 0}

    def handle(kind: str, event: Any) -> None:
        if kind != "prediction":
            return
        features = event["features"]
        for name, detector in detectors.items():
            value = features.get(name)
            if value is not None:
                detector.update(value)
                if detector.drift_detected:
                    detections["n"] += 1

    out = consume(bootstrap, published, handle)
    out["detections"] = detections["n"]
    return out


class EvidentlyWindows:
    """Windows of ``size`` predictions → ``Report([DataDriftPreset()])`` against a reference sample.

    ``flags`` holds, per window, the set of columns Evidently flagged as drifted.
    """

    def __init__(self, size: int = 1000, reference_rows: int = 5000) -> None:
        import pandas as pd
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        self.pd = pd
        self.Dataset, self.Report, self.Preset = Dataset, Report, DataDriftPreset
        self.columns = [*FEATURES, "prediction"]
        self.definition = DataDefinition(numerical_columns=list(NUMERIC),
                                         categorical_columns=[*CATEGORICAL, "prediction"])
        reference = reference_frame(reference_rows)[self.columns]
        self.reference = Dataset.from_pandas(reference, data_definition=self.definition)
        self.size = size
        self.rows: list[dict[str, Any]] = []
        self.flags: list[set[str]] = []
        self.seconds = 0.0
        self.done_at: list[float] = []

    def add(self, features: dict[str, Any], prediction: Any) -> None:
        self.rows.append({**features, "prediction": prediction})
        if len(self.rows) >= self.size:
            self.run_window(self.pd.DataFrame(self.rows, columns=self.columns))
            self.rows = []

    def run_window(self, frame: Any) -> set[str]:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            snapshot = self.Report([self.Preset()]).run(
                self.Dataset.from_pandas(frame.reset_index(drop=True), data_definition=self.definition),
                self.reference)
        flagged = drifted_columns(snapshot.dict())
        self.seconds += time.perf_counter() - started
        self.flags.append(flagged)
        self.done_at.append(time.monotonic())
        return flagged


def drifted_columns(report: dict[str, Any]) -> set[str]:
    """Columns whose ``ValueDrift`` crossed its threshold (distances: ``>=``; p-values: ``<``)."""
    out = set()
    for metric in report["metrics"]:
        config = metric.get("config", {})
        if config.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        value, threshold, method = float(metric["value"]), float(config["threshold"]), str(config["method"])
        drifted = value < threshold if "p_value" in method else value >= threshold
        if drifted:
            out.add(str(config["column"]))
    return out


def evidently_monitor(bootstrap: str, published: Published, cap_s: float = 60.0) -> dict[str, Any]:
    monitor = EvidentlyWindows()

    def handle(kind: str, event: Any) -> None:
        if kind == "prediction":
            monitor.add(event["features"], event["prediction"])

    out = consume(bootstrap, published, handle, cap_s=cap_s)
    # The consumer runs ahead on the cheap feedback topic, so count progress in predictions (windows
    # done) and convert to events at the topics' mix of predictions and feedback.
    done = monitor.done_at
    if len(done) >= 2:
        prediction_rate = (len(done) - 1) * monitor.size / (done[-1] - done[0])
        out["rate"] = prediction_rate * published.events / published.predictions
        out["busy_s"] = done[-1] - done[0]
    out["windows"] = len(monitor.flags)
    out["report_s"] = monitor.seconds / max(len(monitor.flags), 1)
    out["cap_s"] = cap_s
    return out
