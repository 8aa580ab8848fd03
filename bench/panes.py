"""``python -m bench.panes [PARTITIONS] [PREDICTIONS] [BATCH]``: bytes of the internal topic;
``python -m bench.panes cusum [PREDICTIONS] [RATE]``: stationary CUSUM alarms, 1 vs 6 partitions.

Runs stage 1 (streams/monitor.py) of every source partition on the simulated
credit-risk stream (100 predictions/s of event time, feedback as the simulator
makes it, ``{seconds: 10}`` windows; predictions and feedback spread over the
partitions by Kafka's murmur2 of the prediction id), encodes every partial as the
internal topic would carry it, and prints bytes per partial, per pane per
partition and per prediction, and the evidence rows' share (the bytes the partials lose without
them). No broker needed.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import orjson
from kafka.partitioner.default import murmur2

from streams.commands import prepare_workspace
from streams.config import Config
from streams.join import DictStore
from streams.partials import encode
from streams.pipeline import FEEDBACK, PREDICTION, RawMessage
from streams.runtime import load_evaluations, source_pipeline
from streams.simulate import SimulatedStream


def measure(partitions: int, predictions: int, batch: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = prepare_workspace(Path(tmp), bootstrap="127.0.0.1:1", overrides={"models.*.window": {"seconds": 10}})
        cfg = Config.load(path)
        evaluations = load_evaluations(cfg)
        parts: dict[int, list[RawMessage]] = {p: [] for p in range(partitions)}
        for kind, event in SimulatedStream(start=1.7e9, seed=3, rate=100.0).events(predictions):
            key = event["prediction_id"].encode()
            p = (murmur2(key) & 0x7FFFFFFF) % partitions
            parts[p].append(RawMessage(PREDICTION if kind == "prediction" else FEEDBACK, orjson.dumps(event), key,
                                       kind, p, len(parts[p])))
        total = messages = evidence = 0
        panes: set[tuple[int, int]] = set()
        for p, batch_messages in parts.items():
            source = source_pipeline(cfg, evaluations, DictStore(), partition=p)
            for i in range(0, len(batch_messages), batch):
                for partial in source.process(batch_messages[i:i + batch]).partials:
                    size = len(encode(partial))
                    total += size
                    messages += 1
                    panes.update((p, delta.pane) for delta in partial.panes)
                    bare = dataclasses.replace(partial, panes=[dataclasses.replace(d, evidence=None) for d in partial.panes])
                    evidence += size - len(encode(bare))
    return (f"{partitions} partitions, {predictions} predictions at 100/s, 10 s panes, batches of {batch} messages "
            f"per partition: {messages} partials, {total / 1e6:.2f} MB; {total / messages:.0f} B per partial; "
            f"{total / len(panes):.0f} B per pane per partition ({len(panes)} pane x partition); evidence rows "
            f"~{evidence / total:.0%} of it; {total / predictions:.0f} B per prediction")


def false_alarms(predictions: int, rate: float, seed: int = 5) -> str:
    """CUSUM detections on stationary predictions (no feedback) with the streams run per
    partition (stage 1), one partition against six: the per-million budget needs no split when
    each partition's streams see their share of the predictions."""
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        path = prepare_workspace(Path(tmp), bootstrap="127.0.0.1:1", overrides={
            "models.*.window": {"seconds": 10}, "models.*.cusum": {"false_alarms_per_million": rate}})
        cfg = Config.load(path)
        evaluations = load_evaluations(cfg)
        events = [e for kind, e in SimulatedStream(start=1.7e9, seed=seed, rate=100.0, feedback_loss=1.0)
                  .events(predictions) if kind == "prediction"]
        for partitions in (1, 6):
            parts: dict[int, list[RawMessage]] = {p: [] for p in range(partitions)}
            for event in events:
                key = event["prediction_id"].encode()
                p = (murmur2(key) & 0x7FFFFFFF) % partitions
                parts[p].append(RawMessage(PREDICTION, orjson.dumps(event), key, "predictions", p, len(parts[p])))
            detections = 0
            for p, messages in parts.items():
                source = source_pipeline(cfg, evaluations, DictStore(), partition=p)
                for i in range(0, len(messages), 500):
                    for partial in source.process(messages[i:i + 500]).partials:
                        detections += sum(int(row[0]) for d in partial.panes if d.cusum for row in d.cusum)
            lines.append(f"{partitions} partition(s): {detections} CUSUM detections in {len(events)} stationary "
                         f"predictions = {detections / len(events) * 1e6:.0f} per million (budget {rate:g})")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["cusum"]:
        rest = sys.argv[2:]
        print(false_alarms(int(rest[0]) if rest else 60_000, float(rest[1]) if len(rest) > 1 else 500.0))
    else:
        args = [int(a) for a in sys.argv[1:]]
        print(measure(*(args + [6, 20_000, 200][len(args):])))
