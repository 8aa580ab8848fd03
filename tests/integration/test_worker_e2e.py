"""End to end: the real embedded broker, the worker as a subprocess, real VictoriaMetrics.

The expected figures are computed with pandas from the very events produced,
including feedback that comes before its prediction, twice, or never.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer

from streams.state import read_to_end
from tests.conftest import integration_workspace

pytestmark = pytest.mark.integration

WINDOW = 200


def _events(model_id: str, n: int, start: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    now = time.time() - 600
    out = []
    for i in range(start, start + n):
        out.append({
            "prediction_id": f"{model_id}-{i}", "model_id": model_id, "model_version": "1",
            "timestamp": now + i * 0.01,
            "features": {"age": float(rng.normal(42, 11)), "income": float(rng.lognormal(10.8, 0.4)),
                         "debt_ratio": float(rng.beta(2, 5)), "tenure_months": float(rng.poisson(36)),
                         "num_accounts": float(rng.integers(1, 8)), "channel": str(rng.choice(["web", "app"])),
                         "region": "north", "employment": "salaried"},
            "prediction": int(rng.integers(0, 2)), "score": float(rng.random()),
            "attributes": {"sex": str(rng.choice(["F", "M"])), "race": "White"},
        })
    return out


def _send(producer: KafkaProducer, topic: str, docs: list[Any]) -> None:
    for doc in docs:
        value = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        producer.send(topic, value=value)
    producer.flush()


def _workspace(tmp_path: Path, broker: Any, victoria: Any, unique: str) -> tuple[Path, str, dict[str, str]]:
    model_id = f"m-{unique}"
    config, topics = integration_workspace(tmp_path, broker, victoria, model_id=model_id, unique=unique,
                                           window=WINDOW)
    return config, model_id, topics


def _wait_consumed(bootstrap: str, group: str, topics: list[str], timeout: float = 180.0, **options: Any) -> bool:
    """Wait until the worker's committed offsets reach the end of ``topics`` (all input processed),
    then until its stage 2 has merged every partial stage 1 published by then (the internal topic
    ``<group>-panes``, consumer group ``<group>-windows``): its points are written then."""
    from streams.app import panes_topic, windows_group

    deadline = time.monotonic() + timeout
    return (_wait_committed(bootstrap, group, topics, deadline, **options)
            and _wait_committed(bootstrap, windows_group(group), [panes_topic(group)], deadline, **options))


def _wait_committed(bootstrap: str, group: str, topics: list[str], deadline: float, **options: Any) -> bool:
    """Wait until ``group`` has committed every partition of ``topics`` up to its end as of now.

    The end is one past the last record a read to the end fetched (:func:`_fetched_ends`), not
    ListOffsets' answer: the embedded broker under-reports that when records came in batches, and a
    wait on it returned while the last batches were still unprocessed (their points not written)."""
    from kafka import TopicPartition

    ends = _fetched_ends(bootstrap, topics, **options)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **options)
    try:
        while time.monotonic() < deadline:
            partitions = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
            if partitions and all((consumer.committed(tp) or 0) >= ends.get(tp, 0) for tp in partitions):
                return True
            time.sleep(0.5)
        return False
    finally:
        consumer.close()


def _fetched_ends(bootstrap: str, topics: list[str], **options: Any) -> dict[Any, int]:
    """Topic-partition -> one past its last offset, by reading it to the end (the high watermark
    its fetches report); a partition without records is absent (its end is 0)."""
    from kafka import TopicPartition

    ends: dict[Any, int] = {}
    for topic in topics:
        for record in read_to_end(bootstrap, topic, idle_seconds=0.2, **options):
            tp = TopicPartition(topic, record.partition)
            ends[tp] = max(ends.get(tp, 0), record.offset + 1)
    return ends


def _totals(victoria: Any, model_id: str, stat: str) -> float:
    return sum(sum(s["values"]) for s in victoria.series("monitor_value", model_id=model_id, stat=stat))


def _accuracy_points(victoria: Any, model_id: str) -> tuple[int, float]:
    values = victoria.series("performance_value", model_id=model_id, metric="accuracy")
    counts = victoria.series("performance_n", model_id=model_id, metric="accuracy")
    if not values:
        return 0, float("nan")
    by_ts_value = dict(zip(values[0]["timestamps"], values[0]["values"]))
    by_ts_n = dict(zip(counts[0]["timestamps"], counts[0]["values"]))
    n = sum(by_ts_n.values())
    correct = sum(by_ts_value[t] * by_ts_n[t] for t in by_ts_n)
    return int(n), correct / n


def _expected(predictions: list[dict[str, Any]], feedback: list[dict[str, Any]]) -> tuple[int, float]:
    preds = pd.DataFrame(predictions)[["prediction_id", "prediction"]]
    labels = pd.DataFrame(feedback).drop_duplicates("prediction_id", keep="first")[["prediction_id", "label"]]
    joined = preds.merge(labels, on="prediction_id", how="inner")
    return len(joined), float((joined["prediction"] == joined["label"]).mean())


def test_worker_joins_counts_and_dead_letters_end_to_end(broker, victoria, worker_factory, tmp_path, unique):
    config, model_id, topics = _workspace(tmp_path, broker, victoria, unique)
    rng = np.random.default_rng(11)
    predictions = _events(model_id, 1000, 0, rng)
    labels = {p["prediction_id"]: int(rng.integers(0, 2)) for p in predictions}
    ids = list(labels)
    early = ids[:100]            # feedback before its prediction
    late = ids[100:700]          # feedback after
    duplicated = ids[650:750]    # sent twice (some of them are also "late" ones)
    never = ids[900:]            # no feedback at all
    fb = lambda pid: {"prediction_id": pid, "model_id": model_id, "timestamp": time.time() - 60, "label": labels[pid]}
    feedback_early = [fb(p) for p in early]
    feedback_late = [fb(p) for p in late] + [fb(p) for p in duplicated] + [fb(p) for p in ids[750:900]]
    feedback_late += [fb(p) for p in duplicated]
    feedback_all = feedback_early + feedback_late
    assert not set(never) & {f["prediction_id"] for f in feedback_all}

    bad_prediction = dict(predictions[0], prediction_id="bad-1")
    del bad_prediction["model_id"]
    wrong_type = dict(predictions[1], prediction_id="bad-2", features=dict(predictions[1]["features"], age="abc"))
    unknown_model = dict(predictions[2], prediction_id="bad-3", model_id="nope")
    mixed_array = [predictions[3] | {"prediction_id": f"{model_id}-arr-ok"}, {"model_id": model_id}]
    bad_messages = [b"this is not json", bad_prediction, wrong_type, unknown_model, mixed_array]

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    _send(producer, topics["feedback"], feedback_early)
    _send(producer, topics["predictions"], predictions[:500])
    _send(producer, topics["predictions"], bad_messages)
    _send(producer, topics["feedback"], feedback_late)
    _send(producer, topics["predictions"], predictions[500:])

    secret = "sekret-token-do-not-log-4711"
    worker = worker_factory(config, env={"DRIFTWARDEN_INFLUX_TOKEN": secret}).start()
    group = f"driftwarden-{unique}"
    assert _wait_consumed(broker.bootstrap, group, [topics["predictions"], topics["feedback"]]), worker.log()[-3000:]
    # Close the last window: filler predictions without feedback, after everything above was processed.
    _send(producer, topics["predictions"], _events(model_id, WINDOW, 10_000, rng))
    victoria.wait_for(lambda: _totals(victoria, model_id, "events") >= 1200, timeout=180)
    worker.stop()
    assert secret not in worker.log()

    # 1,001 good predictions + 200 fillers = 1,201: six windows of 200 closed, one event still open.
    assert _totals(victoria, model_id, "events") == 1200
    n, accuracy = _accuracy_points(victoria, model_id)
    exp_n, exp_accuracy = _expected(predictions, feedback_all)
    assert n == exp_n
    assert accuracy == pytest.approx(exp_accuracy, abs=1e-9)
    assert _totals(victoria, model_id, "pairs") == exp_n
    # Attributed to the model: the wrong type and the bad array element; not attributable: not JSON,
    # no model_id, unknown model.
    assert _totals(victoria, model_id, "dead_letters") == 2
    assert _totals(victoria, model_id, "dead_letters_unattributed") == 3
    # Dead letters on the topic, with reasons and the original bytes.
    dead = [json.loads(m.value) for m in read_to_end(broker.bootstrap, topics["dead_letters"])]
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == 5, reasons
    assert any(r.startswith("not JSON") for r in reasons)
    assert "missing field 'model_id'" in reasons
    assert "feature 'age': expected number, got \"abc\"" in reasons
    assert "unknown model 'nope'" in reasons
    assert "event[1]: missing field 'prediction_id'" in reasons
    assert base64.b64decode(next(d for d in dead if d["reason"].startswith("not JSON"))["payload_b64"]) == b"this is not json"


def test_restart_mid_stream_loses_and_doubles_nothing(broker, victoria, worker_factory, tmp_path, unique):
    """Stop the worker (SIGTERM) mid-stream and start it again: the changelog restores the join
    table and the open window, so every joined pair counts exactly once."""
    config, model_id, topics = _workspace(tmp_path, broker, victoria, unique)
    rng = np.random.default_rng(5)
    predictions = _events(model_id, 1500, 0, rng)
    feedback = [{"prediction_id": p["prediction_id"], "model_id": model_id, "timestamp": time.time() - 60,
                 "label": int(rng.integers(0, 2))} for p in predictions if rng.random() < 0.8]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    # First half: predictions 0..749 with labels for some of them, and early labels for the second half.
    first_ids = {p["prediction_id"] for p in predictions[:750]}
    _send(producer, topics["predictions"], predictions[:750])
    _send(producer, topics["feedback"], [f for f in feedback if f["prediction_id"] in first_ids][:400])
    _send(producer, topics["feedback"], [f for f in feedback if f["prediction_id"] not in first_ids][:100])

    worker = worker_factory(config).start()
    assert victoria.wait_for(lambda: _totals(victoria, model_id, "events") >= 600, timeout=180), worker.log()[-3000:]
    time.sleep(2)
    assert worker.stop() == 0, worker.log()[-3000:]

    # While it is down: the rest, including a feedback duplicate of one already joined.
    _send(producer, topics["predictions"], predictions[750:])
    rest = [f for f in feedback if f["prediction_id"] in first_ids][400:] + \
        [f for f in feedback if f["prediction_id"] not in first_ids][100:]
    _send(producer, topics["feedback"], rest + feedback[:5])
    # Redelivery of predictions already processed must not count again either.
    _send(producer, topics["predictions"], predictions[:10])

    worker = worker_factory(config).start()
    group = f"driftwarden-{unique}"
    assert _wait_consumed(broker.bootstrap, group, [topics["predictions"], topics["feedback"]]), worker.log()[-3000:]
    _send(producer, topics["predictions"], _events(model_id, WINDOW, 10_000, rng))
    victoria.wait_for(lambda: _totals(victoria, model_id, "events") >= 1600, timeout=180)
    worker.stop()

    assert _totals(victoria, model_id, "events") == 1600  # 1,500 + 200 fillers: 8 windows closed
    n, accuracy = _accuracy_points(victoria, model_id)
    exp_n, exp_accuracy = _expected(predictions, feedback)
    assert n == exp_n
    assert accuracy == pytest.approx(exp_accuracy, abs=1e-9)


def _send_keyed(producer: KafkaProducer, topic: str, docs: list[dict[str, Any]]) -> None:
    """Keyed by prediction_id, as DESIGN asks: a prediction and its feedback share a partition."""
    for doc in docs:
        producer.send(topic, key=doc["prediction_id"].encode(), value=json.dumps(doc).encode())
    producer.flush()


def _wait_for_line(worker: Any, *texts: str, timeout: float = 180.0) -> bool:
    """Wait until the worker's log holds one of ``texts``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in worker.log() for text in texts):
            return True
        time.sleep(0.3)
    return False


def test_a_second_worker_takes_over_a_partition_with_its_state(broker, victoria, worker_factory, tmp_path, unique):
    """Two workers in one group over two partitions: when the second joins, the first gives up a
    partition after committing it, and the second resumes that partition's join table from the
    changelog, so feedback for predictions the first worker saw still joins — every pair is
    published to ``labelled`` exactly once."""
    model_id = f"m-{unique}"
    # count windows need one source partition (the worker refuses them with two): event time here
    config, topics = integration_workspace(tmp_path, broker, victoria, model_id=model_id, unique=unique,
                                           window={"seconds": 60}, partitions=2)
    rng = np.random.default_rng(3)
    predictions = _events(model_id, 1200, 0, rng)
    feedback = [{"prediction_id": p["prediction_id"], "model_id": model_id, "timestamp": time.time() - 60,
                 "label": int(rng.integers(0, 2))} for p in predictions if rng.random() < 0.7]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    group = f"driftwarden-{unique}"
    source = [topics["predictions"], topics["feedback"]]

    # Phase 1, one worker owns both partitions: all predictions, and labels for the first 300 only.
    _send_keyed(producer, topics["predictions"], predictions[:800])
    first = {p["prediction_id"] for p in predictions[:300]}
    _send_keyed(producer, topics["feedback"], [f for f in feedback if f["prediction_id"] in first])
    a = worker_factory(config).start()
    assert _wait_consumed(broker.bootstrap, group, source), a.log()[-3000:]

    # Phase 2: a second worker joins; one partition moves to it with its waiting predictions.
    b = worker_factory(config).start()
    assert _wait_for_line(a, "PARTITIONS revoked"), a.log()[-3000:]
    assert _wait_for_line(b, "PARTITIONS assigned [0]", "PARTITIONS assigned [1]"), b.log()[-3000:]
    _send_keyed(producer, topics["predictions"], predictions[800:])
    _send_keyed(producer, topics["feedback"], [f for f in feedback if f["prediction_id"] not in first])
    assert _wait_consumed(broker.bootstrap, group, source), a.log()[-3000:] + b.log()[-3000:]
    assert a.stop() == 0 and b.stop() == 0

    pairs = [pair for message in read_to_end(broker.bootstrap, topics["labelled"])
             for pair in json.loads(message.value)]
    ids = [pair["prediction_id"] for pair in pairs]
    assert len(ids) == len(set(ids)), "a pair was published twice"
    missing = sorted({f["prediction_id"] for f in feedback} - set(ids))
    from kafka.partitioner.default import murmur2
    where = {pid: (murmur2(pid.encode()) & 0x7fffffff) % 2 for pid in missing}
    assert not missing, (len(missing), where, a.log()[-2000:], b.log()[-2000:])
    labels = {f["prediction_id"]: f["label"] for f in feedback}
    assert all(str(pair["label"]) == str(labels[pair["prediction_id"]]) for pair in pairs)  # labels as class names
    summaries = [line for w in (a, b) for line in w.log().splitlines() if "driftwarden worker stopped:" in line]
    # every message was processed by exactly one of them (a partition is committed before it moves)
    assert sum(int(line.split(" events")[0].rsplit(" ", 1)[1]) for line in summaries) == len(predictions) + len(feedback)
    # and each worker's summary counts the pairs it made, not those restored with a partition
    assert sum(int(line.split(" labelled pairs")[0].rsplit(" ", 1)[1]) for line in summaries) == len(feedback)


def test_count_windows_over_two_source_partitions_are_refused_at_start(broker, victoria, worker_factory, tmp_path,
                                                                       unique):
    """Count windows are N predictions of one partition's order: with two source partitions the
    worker stops at start-up with the key to change, instead of windowing each partition alone."""
    config, _ = integration_workspace(tmp_path, broker, victoria, model_id=f"m-{unique}", unique=unique,
                                      window=WINDOW, partitions=2)
    worker = worker_factory(config).start()
    assert worker.process is not None
    code = worker.process.wait(timeout=120)
    assert code != 0
    assert f"models[m-{unique}].window.events: count windows need a single source partition" in worker.log()
