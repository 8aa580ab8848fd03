"""Throughput, latency and peak RSS of the driftwarden worker against the embedded broker.

Sustained rate: the worker (``python -m streams.cli worker -c CONFIG``, every
detector on, the shipped example policies, windows of 1,000 events) consumes
pre-published topics; its consumer group's committed offsets are sampled every
0.5 s and turned into events (predictions + feedback); the rate is the slope
between the samples where 10 % and 90 % of the events were committed, so
startup (group join, loading) and the tail are excluded. Two framings of the
same events: one event per Kafka message, and JSON arrays of 100 events.

Latency: a separate paced run (``--rate`` predictions/s for ``--seconds``,
window ``{events: 1000}``) stamps every event with its produce wall time; the
``monitor`` point of each window (``stat=events``, timestamped at the window's
last event) is polled from VictoriaMetrics every 100 ms; latency = arrival
wall time − produce time of the window's last event.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import MemorySampler, OffsetSampler, Published, Services, Worker, publish, sustained_rate
from bench.world import MODEL_ID, EventStream, rows_of, prediction_event, write_workspace

ARRAY_SIZE = 100
LOW_LATENCY = {"kafka.batch_timeout": 0.1}
"""Settings for a second latency run: the worker's batch wait (the point sink writes and waits for
InfluxDB's acknowledgement per batch: there is no flush interval to tune any more)."""


def topic_names(tag: str) -> dict[str, Any]:
    names = ["predictions", "feedback", "alerts", "retrain_jobs", "dead_letters", "model_updates", "labelled"]
    out: dict[str, Any] = {f"kafka.topics.{n}": f"{n.replace('_', '-')}-{tag}" for n in names}
    out["kafka.group_id"] = f"driftwarden-{tag}"
    return out


@dataclass
class Dataset:
    """Pre-published events: one framing per ``array_size``."""

    tag: str
    array_size: int
    published: Published
    overrides: dict[str, Any] = field(default_factory=dict)


def prepare(services: Services, events: int, *, array_sizes: tuple[int, ...] = (1, ARRAY_SIZE),
            seed: int = 0) -> dict[int, Dataset]:
    """Publish the same ``events`` predictions (and their ~50 % feedback) once per framing."""
    from streams.broker import create_topics

    out = {}
    for size in array_sizes:
        tag = f"a{size}-{seed}"
        overrides = topic_names(tag)
        topics = {"prediction": overrides["kafka.topics.predictions"], "feedback": overrides["kafka.topics.feedback"]}
        create_topics(services.bootstrap, topics.values(), partitions=1)
        stream = EventStream(seed=seed, start=time.time() - 86_400, rate=1000.0, feedback_delay=30.0)
        pub = publish(services.bootstrap, stream.events(events), topics, array_size=size)
        print(f"  published {pub.predictions:,} predictions + {pub.feedback:,} feedback in {pub.messages:,} messages "
              f"({pub.bytes / 1e6:.0f} MB, arrays of {size}) in {pub.seconds:.1f}s", flush=True)
        out[size] = Dataset(tag, size, pub, overrides)
    return out


def run_worker(services: Services, data: Dataset, workdir: Path, *, timeout: float) -> dict[str, Any]:
    """Start a worker on ``data``; sample offsets and RSS until all is committed; stop it."""
    ws = workdir / f"ws-{data.tag}"
    influx = services.victoria.url if services.victoria else None
    config = write_workspace(ws, bootstrap=services.bootstrap, influx_url=influx, overrides=data.overrides)
    worker = Worker(config, ws / "worker.log")
    sampler = OffsetSampler(services.bootstrap, data.overrides["kafka.group_id"], data.published)
    started = time.monotonic()
    try:
        worker.start()
        assert worker.process is not None
        with MemorySampler(worker.process.pid) as memory:
            done = sampler.run(timeout=timeout, alive=worker.alive)
            last = worker.status()
    finally:
        code = worker.stop()
    if not done:
        raise RuntimeError(f"worker did not consume {data.tag} within {timeout:.0f}s (exit {code}):\n{worker.tail()}")
    total = data.published.events
    first = next((t for t, n in sampler.samples if n > 0), math.nan)
    end = sampler.samples[-1][0]
    rate = sustained_rate(sampler.samples, total)
    return {
        "events": total, "predictions": data.published.predictions, "messages": data.published.messages,
        "array_size": data.array_size, "rate": rate, "prediction_rate": rate * data.published.predictions / total,
        "startup_s": first - started, "busy_s": end - first, "wall_s": end - started,
        "overall_rate": total / (end - started),
        "peak_rss": max(memory.peak, last.get("VmHWM", 0)), "final_rss": last.get("VmRSS", 0),
        "rss_samples": memory.samples, "offset_samples": sampler.samples, "influx": bool(influx),
    }


def run_latency(services: Services, workdir: Path, *, rate: float = 2000.0, seconds: float = 20.0,
                window: int = 1000, seed: int = 5, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Paced run: produce wall time per event vs arrival of each window's point in VictoriaMetrics."""
    from streams.broker import create_topics

    if services.victoria is None:
        return {"skipped": "victoria-metrics is not installed: latency needs the time-series server"}
    tag = f"latency-{seed}"
    overrides = {**topic_names(tag), "models.*.window": {"events": window}, **(settings or {})}
    topics = {"prediction": overrides["kafka.topics.predictions"], "feedback": overrides["kafka.topics.feedback"]}
    create_topics(services.bootstrap, topics.values(), partitions=1)
    ws = workdir / f"ws-{tag}"
    config = write_workspace(ws, bootstrap=services.bootstrap, influx_url=services.victoria.url, overrides=overrides)
    worker = Worker(config, ws / "worker.log")
    total = int(rate * seconds)
    produced = np.zeros(total)
    arrivals: dict[int, float] = {}
    stop = threading.Event()
    victoria = services.victoria
    selector = f'{{__name__="monitor_value",model_id="{MODEL_ID}",stat="events"}}'

    since = time.time()

    def poll() -> None:
        while not stop.is_set():
            t0 = time.time()
            try:
                series = victoria.export(selector, start=since)
            except (OSError, urllib.error.URLError):
                series = []
            seen = time.time()
            for s in series:
                for ts in s["timestamps"]:
                    if ts >= since * 1000:
                        arrivals.setdefault(int(ts), seen)
            stop.wait(max(0.0, 0.1 - (time.time() - t0)))

    from bench.harness import producer

    import orjson

    prod = producer(services.bootstrap, linger_ms=5)
    poller = threading.Thread(target=poll, daemon=True)
    try:
        worker.start()
        _wait_joined(worker, services, overrides, prod, topics)
        poller.start()
        world_stream = EventStream(seed=seed)
        rng = np.random.default_rng(seed)
        started = time.time()
        sent = 0
        for first, cols in world_stream.chunks(total, chunk=500):
            rows = rows_of(cols)
            for i, row in enumerate(rows):
                index = first + i
                ahead = started + index / rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
                now = time.time()
                produced[index] = now
                event = prediction_event(f"lat{seed}-{index}", now, row)
                prod.send(topics["prediction"], key=event["prediction_id"].encode(), value=orjson.dumps(event))
                if rng.random() < 0.5:
                    fb = {"prediction_id": event["prediction_id"], "model_id": MODEL_ID, "timestamp": now,
                          "label": int(cols["label"][i])}
                    prod.send(topics["feedback"], key=event["prediction_id"].encode(), value=orjson.dumps(fb))
                sent += 1
        prod.flush()
        # wait for the last window's point
        deadline = time.time() + 30
        expected = total // window
        while time.time() < deadline and len(arrivals) < expected:
            time.sleep(0.2)
    finally:
        stop.set()
        prod.close()
        worker.stop()
        if poller.is_alive():
            poller.join(5)
    # window k ends with prediction (k+1)*window - 1, timestamped at its produce time (ms in VictoriaMetrics)
    latencies = []
    missing = []
    for k in range(total // window):
        last = (k + 1) * window - 1
        ts_ms = int(round(produced[last] * 1000))
        arrival = arrivals.get(ts_ms)
        if arrival is None:  # rounding: look one ms either side
            arrival = arrivals.get(ts_ms - 1) or arrivals.get(ts_ms + 1)
        if arrival is not None:
            latencies.append(arrival - produced[last])
        else:
            missing.append(k)
    lat = np.array(latencies)
    achieved = sent / max(produced[sent - 1] - produced[0], 1e-9) if sent > 1 else rate
    interval = window / min(rate, achieved)
    return {
        "rate": rate, "seconds": seconds, "window": window, "interval_s": interval, "windows": total // window,
        "measured": int(lat.size), "p50": float(np.percentile(lat, 50)) if lat.size else math.nan,
        "p99": float(np.percentile(lat, 99)) if lat.size else math.nan,
        "max": float(lat.max()) if lat.size else math.nan, "target_s": interval + 1.0,
        "achieved_rate": achieved, "missing": missing, "settings": settings or {}, "latencies": [round(x, 3) for x in latencies],
    }


def _wait_joined(worker: Worker, services: Services, overrides: dict[str, Any], prod: Any,
                 topics: dict[str, str], timeout: float = 60.0) -> None:
    """Wait until the worker's group has committed a first offset (it has joined and is consuming):
    send one warm-up feedback event (it joins nothing, closes no window) and wait for its commit."""
    from kafka import KafkaConsumer, TopicPartition

    import orjson

    prod.send(topics["feedback"], key=b"warmup", value=orjson.dumps(
        {"prediction_id": "warmup", "model_id": MODEL_ID, "timestamp": time.time() - 3600, "label": 0}))
    prod.flush()
    consumer = KafkaConsumer(bootstrap_servers=services.bootstrap, group_id=overrides["kafka.group_id"],
                             enable_auto_commit=False)
    try:
        tp = TopicPartition(topics["feedback"], 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (consumer.committed(tp) or 0) >= 1:
                return
            if not worker.alive():
                raise RuntimeError(f"worker exited:\n{worker.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"worker did not join within {timeout:.0f}s:\n{worker.tail()}")
    finally:
        consumer.close()
