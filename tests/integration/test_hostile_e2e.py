"""Hostile input against the real broker: the worker never stops, every good pair counts once.

The four inputs of issue 12 — a ~900 KB malformed message, events whose category values are
10–50 KB long, a year-2999 timestamp, a timestamp ten years ahead — mixed with many kinds of
malformed messages and good labelled predictions, all read by one worker subprocess. It must
stay up (never restarted), publish every good pair to ``labelled`` exactly once, and dead-letter
every rejected message or element with a reason; no record it writes may exceed 1 MB.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kafka import KafkaProducer

from streams.state import read_to_end
from tests.conftest import integration_workspace
from tests.integration.test_worker_e2e import _events, _wait_consumed

pytestmark = pytest.mark.integration

GOOD = 6000
YEAR = 365 * 24 * 3600.0


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _hostile(model_id: str, rng: np.random.Generator, now: float) -> list[tuple[bytes, int]]:
    """Hostile prediction messages, each with the number of dead letters it must give."""
    base = _events(model_id, 1, 0, rng)[0]  # its prediction_id is replaced below

    def ev(i: int, **changes: Any) -> dict[str, Any]:
        return {**base, "prediction_id": f"hostile-{i}", **changes}

    def dumps(doc: Any) -> bytes:
        return json.dumps(doc).encode()

    out: list[tuple[bytes, int]] = []
    # 1. a ~900 KB malformed message (a string never closed)
    out.append((b'{"prediction_id": "big", "model_id": "' + model_id.encode() + b'", "x": "' + b"z" * 900_000, 1))
    # 2. category values of 10-50 KB: up to 30 KB accepted (validation.max_string_length), beyond rejected
    for i, size in enumerate(range(10_000, 50_001, 2_000)):
        features = dict(base["features"], channel="c" * size + str(i), region=f"{i}-" + "r" * size)
        out.append((dumps(ev(100 + i, features=features)), 0 if size + 10 <= 30_000 else 1))
    # 3. year 2999, as RFC 3339 and as epoch seconds
    out.append((dumps(ev(200, timestamp="2999-12-31T23:59:59Z")), 1))
    out.append((dumps(ev(201, timestamp=32503593599)), 1))
    # 4. ten years ahead
    out.append((dumps(ev(300, timestamp=now + 10 * YEAR)), 1))
    # the mix: random bytes, cut-off JSON, wrong types, missing fields, odd values
    for i in range(300):
        out.append((rng.bytes(int(rng.integers(1, 400))), 1))
    good_text = dumps(ev(400))
    for i in range(200):
        out.append((good_text[: int(rng.integers(0, len(good_text) - 1))], 1))
    kinds: list[Any] = [
        ev(500, model_id="M" * 100_000),                          # a 100 KB model id
        ev(501, model_id="nope"), ev(502, features="abc"), ev(503, features={**base["features"], "age": "x"}),
        ev(504, timestamp="yesterday"), ev(505, timestamp=-5), ev(506, timestamp=float("nan")),
        ev(507, score=7), ev(508, prediction=[1]), ev(509, attributes=[1]), ev(510, model_version=None),
        ev(511, prediction_id=12), ev(513, prediction_id="p" * 40_000), ev(514, attributes={f"a{k}": 1 for k in range(2000)}),
        [], 17, "text", None, [1, 2, 3],
    ]
    for doc in kinds:
        out.append((dumps(doc), 3 if doc == [1, 2, 3] else 1))
    # accepted, not dead-lettered: a number beyond float range is an out-of-range value (data quality)
    out.append((dumps(ev(512, features={**base["features"], "age": 10**400})), 0))
    out.append((b'{"a":' * 5000 + b"1" + b"}" * 5000, 1))              # deep nesting
    out.append((b"[" + b",".join([b"{}"] * 12_000) + b"]", 1))           # more events than max_array_length
    out.append((b'{"prediction_id": "\\ud800"}', 1))                      # a lone surrogate
    out.append((dumps([ev(600 + k, features={"age": "bad"}) for k in range(50)]), 50))  # an array of bad events
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def test_hostile_input_never_stops_the_worker(broker, victoria, worker_factory, tmp_path, unique):
    model_id = f"m-{unique}"
    config, topics = integration_workspace(tmp_path, broker, victoria, model_id=model_id, unique=unique, window=500)
    raw = yaml.safe_load(config.read_text())
    raw["validation"] = {"max_string_length": 30_000}  # let the shorter long categories in: the state must cope
    config.write_text(yaml.safe_dump(raw, sort_keys=False))

    rng = np.random.default_rng(12)
    now = time.time()
    predictions = _events(model_id, GOOD, 0, rng)
    labels = [{"prediction_id": p["prediction_id"], "model_id": model_id, "timestamp": now - 60,
               "label": int(rng.integers(0, 2))} for p in predictions]
    hostile = _hostile(model_id, rng, now)

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=2_000_000, linger_ms=20)
    # Predictions with hostile messages spread among them, the ten-years-ahead one early; half the
    # labels before the worker starts and half after (pairs that a moved watermark would expire).
    chunks = np.array_split(np.arange(GOOD), len(hostile))
    for (payload, _), idx in zip(hostile, chunks):
        for i in idx:
            producer.send(topics["predictions"], value=json.dumps(predictions[i]).encode())
        producer.send(topics["predictions"], value=payload)
    for doc in labels[: GOOD // 2]:
        producer.send(topics["feedback"], value=json.dumps(doc).encode())
    producer.flush()
    messages = GOOD + len(hostile) + GOOD // 2

    worker = worker_factory(config).start()
    group = f"driftwarden-{unique}"
    source = [topics["predictions"], topics["feedback"]]
    assert _wait_consumed(broker.bootstrap, group, source, timeout=240), worker.log()[-3000:]
    for doc in labels[GOOD // 2:]:
        producer.send(topics["feedback"], value=json.dumps(doc).encode())
    producer.flush()
    messages += GOOD - GOOD // 2
    assert _wait_consumed(broker.bootstrap, group, source, timeout=240), worker.log()[-3000:]
    alive = worker.process is not None and worker.process.poll() is None
    peak_mb = _peak_rss_mb(worker.process.pid) if alive else float("nan")
    assert alive, worker.log()[-3000:]
    assert worker.stop() == 0, worker.log()[-3000:]
    log = worker.log()
    assert "stopping the worker" not in log and "refused a record" not in log, log[-3000:]

    def read(topic: str) -> list[Any]:  # to its end: the worker has stopped
        return [m.value for m in read_to_end(broker.bootstrap, topic, idle_seconds=0.5)]

    # every good pair published once
    pairs = [pair["prediction_id"] for value in read(topics["labelled"]) for pair in json.loads(value)]
    assert len(pairs) == len(set(pairs)), "a pair was published twice"
    assert sorted(pairs) == sorted(p["prediction_id"] for p in predictions)
    summary = next(line for line in log.splitlines() if "driftwarden worker stopped:" in line)
    assert f" {GOOD} labelled pairs" in summary, summary
    # every rejection dead-lettered, with a capped reason, in a bounded record
    dead_values = read(topics["dead_letters"])
    expected_dead = sum(n for _, n in hostile)
    assert len(dead_values) == expected_dead, (len(dead_values), expected_dead)
    dead = [json.loads(v) for v in dead_values]
    assert all(d["reason"] and len(d["reason"]) <= 500 for d in dead)
    assert max(len(v) for v in dead_values) < 100_000
    assert sum("max_future_seconds" in d["reason"] for d in dead) == 1
    assert sum("out of range" in d["reason"] for d in dead) >= 3
    assert sum("max_string_length" in d["reason"] for d in dead) >= 10
    assert any(d.get("truncated") and d["size"] > 900_000 for d in dead)
    assert not any("surrogates not allowed" in d["reason"] for d in dead)
    # the worker's own records stayed under the broker's limit
    changelog = read(f"driftwarden-{unique}-state-changelog")
    assert max(len(v) for v in changelog if v is not None) <= 512 * 1024 + 200
    events_line = re.search(r"stopped: (\d+) events", summary)
    print(f"\nHOSTILE E2E: {messages} messages ({len(hostile)} hostile), {len(dead)} dead letters, "
          f"{len(pairs)} good pairs counted of {GOOD}, peak RSS {peak_mb:.0f} MB, crashes 0; {summary.strip()}"
          f" [{events_line.group(1) if events_line else '?'} events]")
