"""``python -m bench.scaleout [--predictions N] [--partitions P] [--rate R --seconds S]``: the worker scaled out.

Starts the embedded broker and VictoriaMetrics, and measures on this machine:

- **throughput with 1 and 2 workers**: the same ``N`` predictions (and their ~50 % feedback,
  one event per message, keyed by ``prediction_id`` over ``P`` source partitions) consumed by
  one worker, then by two workers in one group (their own copy of the topics); the rate is the
  slope of the source group's committed offsets between 10 % and 90 % of the messages
  (startup and group joins excluded). Stage 2's tail: from the last source commit to the
  last commit of stage 2 on the internal topic;
- **bytes of the internal topic per pane per partition**: every message of
  ``<group_id>-panes`` of the 1-worker run, over the distinct (source partition, pane) pairs
  its partials carry;
- **stage-2 latency at steady traffic**: one worker, ``--rate`` predictions/s for
  ``--seconds`` stamped with their produce wall time, windows of ``{seconds: 5}``; latency =
  arrival of the window's ``monitor{stat=events}`` point in VictoriaMetrics − the wall time at
  which the window could close (its end + ``allowed_lateness``).

Event-time windows of 10 s (5 s in the latency run); every detector on, the shipped example policies.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import Services, Worker, producer, sustained_rate
from bench.world import MODEL_ID, EventStream, write_workspace


def _topics(tag: str) -> dict[str, Any]:
    names = ["predictions", "feedback", "alerts", "retrain_jobs", "dead_letters", "model_updates", "labelled"]
    out: dict[str, Any] = {f"kafka.topics.{n}": f"{n.replace('_', '-')}-{tag}" for n in names}
    out["kafka.group_id"] = f"driftwarden-{tag}"
    return out


def _publish(bootstrap: str, events: Any, overrides: dict[str, Any], *, pace: float | None = None) -> int:
    """Send the events keyed by prediction id (one per message); ``pace``: predictions/s, each
    stamped with its produce wall time. Returns the messages sent."""
    prod = producer(bootstrap)
    topic = {"prediction": overrides["kafka.topics.predictions"], "feedback": overrides["kafka.topics.feedback"]}
    sent = 0
    started = time.time()
    predictions = 0
    for kind, event in events:
        if pace is not None:
            if kind == "prediction":
                due = started + predictions / pace
                time.sleep(max(0.0, due - time.time()))
                predictions += 1
            event = {**event, "timestamp": time.time()}
        prod.send(topic[kind], key=event["prediction_id"].encode(), value=json.dumps(event).encode())
        sent += 1
    prod.flush()
    prod.close()
    return sent


def _committed(bootstrap: str, group: str, topics: list[str]) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        return sum(consumer.committed(tp) or 0 for tp in tps)
    finally:
        consumer.close()


def _workspace(services: Services, root: Path, tag: str, partitions: int, window: float) -> tuple[Path, dict]:
    from streams.broker import create_topics

    overrides = {**_topics(tag), "models.*.window": {"seconds": window}}
    create_topics(services.bootstrap, [overrides["kafka.topics.predictions"], overrides["kafka.topics.feedback"]],
                  partitions=partitions)
    influx = services.victoria.url if services.victoria else None
    return write_workspace(root / f"ws-{tag}", bootstrap=services.bootstrap, influx_url=influx,
                           overrides=overrides), overrides


def throughput(services: Services, root: Path, *, workers: int, predictions: int, partitions: int) -> dict[str, Any]:
    from streams.app import panes_topic, windows_group
    from streams.state import read_to_end

    tag = f"scale{workers}"
    config, overrides = _workspace(services, root, tag, partitions, 10.0)
    stream = EventStream(seed=workers, start=time.time() - 86_400, rate=1000.0, feedback_delay=30.0)
    total = _publish(services.bootstrap, stream.events(predictions), overrides)
    group = overrides["kafka.group_id"]
    source = [overrides["kafka.topics.predictions"], overrides["kafka.topics.feedback"]]
    procs = [Worker(config, config.parent / f"worker-{i}.log").start() for i in range(workers)]
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    try:
        deadline = started + 900
        while time.monotonic() < deadline:
            done = _committed(services.bootstrap, group, source)
            samples.append((time.monotonic(), done))
            if done >= total:
                break
            time.sleep(0.5)
        source_done = time.monotonic()
        panes = [panes_topic(group)]
        # the panes written by then: counted by reading them (the embedded broker's ListOffsets
        # under-reports a topic's end)
        end = sum(1 for _ in read_to_end(services.bootstrap, panes[0], idle_seconds=0.2))
        while time.monotonic() < deadline:
            if _committed(services.bootstrap, windows_group(group), panes) >= end:
                break
            time.sleep(0.2)
        stage_two_done = time.monotonic()
    finally:
        for proc in procs:
            proc.stop()
    return {"workers": workers, "partitions": partitions, "messages": total,
            "rate": sustained_rate(samples, total), "stage2_tail_s": stage_two_done - source_done,
            "group": group}


def pane_bytes(services: Services, group: str) -> dict[str, Any]:
    """Bytes of the internal topic per (source partition, pane) its partials carry."""
    from streams.app import panes_topic
    from streams.partials import decode
    from streams.state import read_to_end

    total = messages = 0
    panes: set[tuple[int, int]] = set()
    for record in read_to_end(services.bootstrap, panes_topic(group)):
        total += len(record.value)
        messages += 1
        partial = decode(record.value)
        panes.update((partial.source, delta.pane) for delta in partial.panes)
    return {"bytes": total, "messages": messages, "panes": len(panes), "per_pane": total / max(len(panes), 1)}


def latency(services: Services, root: Path, *, rate: float, seconds: float, partitions: int) -> dict[str, Any]:
    if services.victoria is None:
        return {"skipped": "victoria-metrics is not installed"}
    window, lateness = 5.0, 5.0
    config, overrides = _workspace(services, root, "latency", partitions, window)
    worker = Worker(config, config.parent / "worker.log").start()
    arrivals: dict[int, float] = {}
    stop = threading.Event()
    selector = f'{{__name__="monitor_value",model_id="{MODEL_ID}",stat="events"}}'
    since = time.time()

    def poll() -> None:
        while not stop.is_set():
            try:
                series = services.victoria.export(selector, start=since)
            except OSError:
                series = []
            seen = time.time()
            for s in series:
                for ts in s["timestamps"]:
                    arrivals.setdefault(int(ts), seen)
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    try:
        time.sleep(15)  # group joins before the paced traffic
        poller.start()
        stream = EventStream(seed=9, start=time.time(), rate=rate, feedback_delay=0.5)
        _publish(services.bootstrap, stream.events(int(rate * seconds)), overrides, pace=rate)
        time.sleep(2 * window + lateness)
    finally:
        stop.set()
        worker.stop()
    # the first and last windows are partial (traffic starts and stops inside them)
    ends = sorted(arrivals)[1:-1]
    waits = np.array([arrivals[ms] - (ms / 1000 + lateness) for ms in ends])
    return {"rate": rate, "windows": len(ends), "p50": float(np.median(waits)) if len(waits) else float("nan"),
            "p99": float(np.quantile(waits, 0.99)) if len(waits) else float("nan"),
            "max": float(waits.max()) if len(waits) else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1000.0, help="latency run: predictions/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency run: seconds of traffic")
    parser.add_argument("--latency-only", action="store_true", help="only the latency run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, Services(Path(tmp)) as services:
        root = Path(tmp)
        for workers in () if args.latency_only else (1, 2):
            result = throughput(services, root, workers=workers, predictions=args.predictions,
                                partitions=args.partitions)
            print(f"{workers} worker(s), {args.partitions} partitions, {result['messages']:,} messages: "
                  f"{result['rate']:,.0f} messages/s sustained; stage 2 done {result['stage2_tail_s']:.1f} s "
                  f"after the last source commit", flush=True)
            if workers == 1:
                size = pane_bytes(services, result["group"])
                print(f"internal topic: {size['messages']:,} partials, {size['bytes'] / 1e6:.2f} MB, "
                      f"{size['per_pane']:,.0f} B per pane per partition ({size['panes']} pane x partition)",
                      flush=True)
        lat = latency(services, root, rate=args.rate, seconds=args.seconds, partitions=args.partitions)
        if "skipped" in lat:
            print(f"latency: skipped ({lat['skipped']})")
        else:
            print(f"stage-2 latency at {lat['rate']:.0f} predictions/s, windows of 5 s (lateness 5 s): "
                  f"{lat['windows']} windows, p50 {lat['p50']:.2f} s, p99 {lat['p99']:.2f} s, max {lat['max']:.2f} s "
                  "after the window could close", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
