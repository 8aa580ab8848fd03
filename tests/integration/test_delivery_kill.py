"""kill -9 at every point of the delivery protocol: nothing lost, nothing different.

One source partition, a backlog of predictions and feedback (event-time
windows of 60 s), the real broker and VictoriaMetrics. The worker is killed
with SIGKILL eight times — by ``DRIFTWARDEN_FAULT`` in stage 1 after a batch's intent, in
the middle of its outputs, after its outputs before its state, between a full
snapshot's pieces and its marker (``join.full_snapshot_every`` is 2, so recoveries
load the binary frame of a full snapshot and the deltas after it), after its
state before its commit; in stage 2 (which writes the points, alerts and jobs) in
the middle of its outputs and between its state records; and from outside — and
started again each time. Then:

- every labelled pair is on ``labelled``, copies of a pair are identical
  (without Kafka transactions a re-sent batch leaves a copy; consumers dedup by
  ``prediction_id``), and the duplicates are counted;
- every window's points are in the TSDB with one value per series and
  timestamp, equal to one uninterrupted in-process run over the same batches
  (their ranges as the intents in the changelog name them), and — for the
  figures that do not depend on batch boundaries — to a ``replay`` of the same
  events; performance ``n`` adds up to all pairs;
- dead letters and alerts/jobs: no identity with two different contents.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaProducer

from streams.broker import create_topics
from streams.commands import prepare_workspace
from streams.state import read_to_end
from tests.conftest import topic_overrides
from tests.integration.test_worker_e2e import _events, _wait_consumed

pytestmark = pytest.mark.integration

WINDOW_SECONDS = 60
PREDICTIONS = 3000
"""Five windows of data: enough for every claim (a window of every kind, batches to kill in), at half
the cost of ten."""
RATE = 10.0  # predictions per second of event time: 600 per window
WALL_CLOCK = {"throughput", "lag", "influx_outage_seconds"}
"""``monitor`` stats stamped with processing time, not part of a window's points."""
FAULTS = ["kill:after-outputs:3", "kill:mid-state:2", "kill:mid-outputs:2", "kill:after-state:3",
          "kill:after-intent:2"]
"""With a full snapshot every 2 batches (``FULL_SNAPSHOT_EVERY``) the source partition's batches go: run 1
saves 1, 2 (a full snapshot), is killed in 3; run 2 re-reads 3, then its batch 2 (seq 4) writes a full
snapshot and is killed with its pieces acknowledged, not its marker; run 3 recovers from the frame of
seq 2 plus the deltas 3 and 4; later runs recover from a frame alone or a frame and a delta. The test
checks in the logs that the cut and the recoveries happened so."""
FULL_SNAPSHOT_EVERY = 2
WINDOWS_FAULTS = ["kill:windows.mid-outputs:1", "kill:windows.mid-state:1"]
"""Then stage 2 (its outputs are the points, alerts and jobs) is killed in its first batch of a run:
in the middle of its outputs, then between its state records (the first batch of that run is the
batch in doubt, read again). Each run costs ~10 s, so the other two points of stage 2 (after its
intent, after its state) are left to the tests of the protocol, which is the same code. Stage 1
publishes idle markers after 2 s of quiet (``kafka.idle_timeout``), so stage 2 has a first batch
even when stage 1 has nothing left to read."""
"""``join.full_snapshot_every`` of the test's worker: every recovery loads a binary frame (not only deltas)."""
RECOVERED = re.compile(r"join table from full snapshot \d+ \(frame, batch (\d+), (\d+) entries\), then the deltas to batch (\d+)")


def _stream(model_id: str, rng: np.random.Generator) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    start = math.floor(time.time() / 3600) * 3600 - 7200.0  # whole hours: windows align to the data
    predictions = _events(model_id, PREDICTIONS, 0, rng)
    for i, p in enumerate(predictions):
        p["timestamp"] = start + i / RATE
    feedback = [{"prediction_id": p["prediction_id"], "model_id": model_id,
                 "timestamp": p["timestamp"] + float(rng.uniform(0, 30)), "label": int(rng.integers(0, 2))}
                for p in predictions if rng.random() < 0.8]
    feedback.sort(key=lambda f: f["timestamp"])
    return predictions, feedback


def _produce(bootstrap: str, topic: str, docs: list[Any]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for doc in docs:
        producer.send(topic, value=doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    producer.flush()
    producer.close()


def _read(bootstrap: str, topic: str) -> list[bytes]:
    """Every value on ``topic``, to its end (the worker has stopped: nothing more comes)."""
    return [m.value for m in read_to_end(bootstrap, topic, idle_seconds=0.5)]


def _point_values(points: Any) -> dict[tuple, float]:
    """(series name, labels, ms) -> value, as VictoriaMetrics stores InfluxDB points."""
    out: dict[tuple, float] = {}
    for point in points:
        for name, value in point.fields.items():
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[(f"{point.measurement}_{name}", tuple(sorted(point.tags.items())), point.time_ns // 1_000_000)] = \
                    float(value)
    return out


def _pipeline(config: Path) -> Any:
    from streams.config import Config
    from streams.join import DictStore
    from streams.runtime import load_evaluations, pipeline_factory

    cfg = Config.load(config)
    return pipeline_factory(cfg, load_evaluations(cfg))(DictStore())


def _replay_points(config: Path, predictions: list[Any], feedback: list[Any], tmp: Path) -> dict[tuple, float]:
    """The points ``replay`` writes for the same events (messages merged by event time, its own
    batches), without the final flush (the worker leaves the last windows open too)."""
    from streams.replay import merged_messages

    pred_path, fb_path = tmp / "predictions.jsonl", tmp / "feedback.jsonl"
    pred_path.write_bytes(b"".join((d if isinstance(d, bytes) else json.dumps(d).encode()) + b"\n"
                                   for d in predictions))
    fb_path.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in feedback))
    pipeline = _pipeline(config)
    messages = list(merged_messages(pred_path, fb_path))
    points = [p for i in range(0, len(messages), 700) for p in pipeline.process(messages[i:i + 700]).points]
    return _point_values(points)


def _same_batches_points(config: Path, bootstrap: str, topics: dict[str, str], group: str) -> tuple[dict[tuple, float], Any]:
    """The points of one uninterrupted in-process run over the worker's own batches: every batch's
    range as its intent in the changelog names it (all attempts of a batch must name the same
    range), merged by event time as the worker merges them; and that run's join table at the end."""
    from collections import deque

    from kafka import TopicPartition

    from streams.consumer import _merged, event_time
    from streams.pipeline import FEEDBACK, PREDICTION, RawMessage
    from streams.state import INTENT_KEY, changelog_topic

    intents: dict[int, list[Any]] = defaultdict(list)
    for message in read_to_end(bootstrap, changelog_topic(group), idle_seconds=0.5):
        if message.key == INTENT_KEY:
            doc = json.loads(message.value)
            intents[int(doc["seq"])].append(doc["ranges"])
    assert intents and all(all(r == ranges[0] for r in ranges) for ranges in intents.values()), intents
    assert sorted(intents) == list(range(1, max(intents) + 1))
    kinds = {topics["predictions"]: PREDICTION, topics["feedback"]: FEEDBACK}
    records = {topic: {m.offset: m for m in read_to_end(bootstrap, topic, idle_seconds=0.5)} for topic in kinds}
    rank = {topics["predictions"]: 0, topics["feedback"]: 1}
    pipeline = _pipeline(config)
    points = []
    for seq in sorted(intents):
        buffers = {}
        for topic, (start, end) in intents[seq][0].items():
            messages = [RawMessage(kinds[topic], records[topic][o].value, records[topic][o].key, topic, 0, o)
                        for o in range(start, end)]
            buffers[TopicPartition(topic, 0)] = deque((event_time(m), m) for m in messages)
        points.extend(pipeline.process(_merged(buffers, rank.__getitem__, lambda tp: False, limit=None)).points)
    return _point_values(points), pipeline.join.store


STABLE = {"performance_n", "performance_value", "monitor_value", "data_quality_rate", "data_quality_count",
          "label_shift_value", "label_shift_reference_share", "label_shift_current_share", "performance_estimate_value",
          "performance_estimate_n"}
"""Series whose values do not depend on where batches begin and end (checked against ``replay``'s
batches); the sequential detectors (CUSUM, ADWIN, DDM) and cumulative figures do, see the test."""


def _tsdb_points(victoria: Any, model_id: str) -> dict[tuple, list[float]]:
    """(series name, labels, ms) -> every value stored (a rewrite of a point stores it again)."""
    out: dict[tuple, list[float]] = defaultdict(list)
    for series in victoria.export('{model_id="%s"}' % model_id):
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        labels.pop("db", None)  # VictoriaMetrics' own label for the bucket
        if labels.get("stat") in WALL_CLOCK:
            continue
        key = (name, tuple(sorted(labels.items())))
        for ts, value in zip(series["timestamps"], series["values"]):
            if value is not None and math.isfinite(float(value)):
                out[key + (ts,)].append(float(value))
    return out


def _wait_exit(worker: Any, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = worker.process.poll()
        if code is not None:
            return code
        time.sleep(0.2)
    return None


@pytest.mark.timeout(600)
def test_sigkill_at_every_point_of_a_batch_loses_and_changes_nothing(broker, victoria, worker_factory, tmp_path,
                                                                      unique):
    model_id = f"m-{unique}"
    overrides = {**topic_overrides(unique), "models.*.window": {"seconds": WINDOW_SECONDS},
                 "kafka.batch_size": 500, "join.full_snapshot_every": FULL_SNAPSHOT_EVERY, "kafka.idle_timeout": 2}
    config = prepare_workspace(tmp_path / "ws", bootstrap=broker.bootstrap, influx_url=victoria.url,
                               models=(model_id,), overrides=overrides)
    topics = {k.split(".")[-1]: v for k, v in overrides.items() if k.startswith("kafka.topics.")}
    create_topics(broker.bootstrap, topics.values(), partitions=1)
    rng = np.random.default_rng(29)
    predictions, feedback = _stream(model_id, rng)
    bad = [b"not json at all", {"model_id": model_id, "timestamp": predictions[100]["timestamp"]}]
    half = PREDICTIONS // 2
    stream: list[Any] = predictions[:half] + bad + predictions[half:]
    # fillers far later close every window of the data (the last filler window stays open)
    fillers = _events(model_id, 20, 50_000, rng)
    for i, f in enumerate(fillers):
        f["timestamp"] = predictions[-1]["timestamp"] + 5 * WINDOW_SECONDS + i * 0.1
    stream += fillers
    _produce(broker.bootstrap, topics["predictions"], stream)
    _produce(broker.bootstrap, topics["feedback"], feedback)
    group = f"driftwarden-{unique}"
    source = [topics["predictions"], topics["feedback"]]

    logs = []
    for fault in FAULTS + WINDOWS_FAULTS:
        worker = worker_factory(config, env={"DRIFTWARDEN_FAULT": fault}).start()
        code = _wait_exit(worker, 120)
        logs.append(worker.log())
        assert code == -signal.SIGKILL, (fault, code, worker.log()[-3000:])
        assert f"FAULT kill at {fault.split(':')[1]}" in worker.log(), worker.log()[-3000:]
        worker.process = None
    # from outside, while it works through the backlog
    worker = worker_factory(config).start()
    deadline = time.monotonic() + 120
    while "PARTITIONS assigned" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # somewhere mid-stream: when exactly is the point of the test
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(timeout=10)
    worker.process = None
    worker = worker_factory(config).start()
    assert _wait_consumed(broker.bootstrap, group, source, timeout=180), worker.log()[-3000:]
    assert worker.stop() == 0, worker.log()[-3000:]
    assert any("was in doubt when the last owner stopped" in log for log in logs + [worker.log()])
    # the kill between a full snapshot's pieces and its marker, and recoveries from a frame plus deltas
    assert "FAULT kill at mid-state of batch 2 (held back m:join)" in logs[FAULTS.index("kill:mid-state:2")]
    recoveries = [tuple(map(int, m)) for log in logs + [worker.log()] for m in RECOVERED.findall(log)]
    assert any(entries > 0 and last > base for base, entries, last in recoveries), recoveries
    assert any(base + 2 <= last for base, _, last in recoveries), recoveries  # past the cut snapshot

    # labelled: every pair, copies identical
    labelled = [pair for value in _read(broker.bootstrap, topics["labelled"]) for pair in json.loads(value)]
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pair in labelled:
        by_id[pair["prediction_id"]].append(pair)
    expected_ids = {f["prediction_id"] for f in feedback}
    assert set(by_id) == expected_ids, (len(expected_ids - set(by_id)), len(set(by_id) - expected_ids))
    assert all(all(copy == copies[0] for copy in copies) for copies in by_id.values())
    duplicates = len(labelled) - len(by_id)
    print(f"labelled: {len(by_id)} pairs, {duplicates} re-sent copies")

    # dead letters: one content per identity
    dead: dict[tuple, set[bytes]] = defaultdict(set)
    for value in _read(broker.bootstrap, topics["dead_letters"]):
        doc = json.loads(value)
        dead[(doc["topic"], doc["partition"], doc["offset"], doc.get("index"))].add(value)
    assert len(dead) == 2 and all(len(v) == 1 for v in dead.values()), dead
    for topic, key in ((topics["alerts"], "alert_id"), (topics["retrain_jobs"], "job_id")):
        contents: dict[str, set[bytes]] = defaultdict(set)
        for value in _read(broker.bootstrap, topic):
            contents[json.loads(value)[key]].add(value)
        assert all(len(v) == 1 for v in contents.values()), (topic, contents)

    # points: one value per series and timestamp, equal to the replay, every window there
    stored = _tsdb_points(victoria, model_id)
    # a window's cohort figures (by prediction time) are rewritten as its late labels arrive: there
    # the final figure must be among the values stored (the export does not keep write order)
    cohort = lambda key: key[0].startswith("cohort_")  # noqa: E731
    different = {k: v for k, v in stored.items() if len(set(v)) > 1 and not cohort(k)}
    assert not different, list(different.items())[:5]
    rewrites = sum(len(v) - 1 for v in stored.values())
    print(f"points: {len(stored)} series-timestamps, {rewrites} rewritten with the same value")
    # the same batches in one uninterrupted process give exactly these points, no more, no fewer
    expected, table = _same_batches_points(config, broker.bootstrap, topics, group)
    # the join table the changelog gives back (full snapshot and deltas; every restart rebuilt it from
    # one) is that run's, entry by entry and in order: a recovery that lost or changed an entry, even
    # one no output shows (a tombstone, a prediction never labelled), would leave it different
    from streams.state import changelog_topic, recover
    from tests.streams.test_join_store import _assert_same_tables

    _assert_same_tables(table, recover(broker.bootstrap, changelog_topic(group))[0].joins, logged=True)
    missing = sorted(set(expected) - set(stored))
    assert not missing, (len(missing), missing[:5])
    extra = sorted(set(stored) - set(expected))
    assert not extra, (len(extra), extra[:5])
    wrong = [(k, stored[k][0], v) for k, v in expected.items() if not cohort(k)
             and stored[k][0] != pytest.approx(v, rel=1e-9, abs=1e-12)]
    assert not wrong, (len(wrong), wrong[:5])
    finals = [(k, stored[k], v) for k, v in expected.items() if cohort(k)
              and not any(w == pytest.approx(v, rel=1e-9, abs=1e-12) for w in stored[k])]
    assert not finals, (len(finals), finals[:5])
    assert any(cohort(k) for k in expected)
    # and a replay of the same events (its own batches) gives the window figures that do not depend on
    # batch boundaries: counts exactly, statistics to 1e-9
    replayed = {k: v for k, v in _replay_points(config, stream, feedback, tmp_path).items()
                if k[0] in STABLE or ("method", "psi") in k[1]}
    assert set(replayed) <= set(stored)
    wrong = [(k, stored[k][0], v) for k, v in replayed.items() if stored[k][0] != pytest.approx(v, rel=1e-9, abs=1e-12)]
    assert not wrong, (len(wrong), wrong[:5])

    # performance n adds up to every pair, and no window is empty then huge
    n_by_window = {k[2]: v[0] for k, v in stored.items() if k[0] == "performance_n" and ("metric", "accuracy") in k[1]}
    assert sum(n_by_window.values()) == len(expected_ids)
    # a pair counts in the window of its own event time (the later of prediction and label): labels
    # up to 30 s after the last predictions fall in the window after the data's last one
    data_windows = int(PREDICTIONS / RATE / WINDOW_SECONDS)
    assert len(n_by_window) in (data_windows, data_windows + 1), n_by_window
    in_data = [n for _, n in sorted(n_by_window.items())[:data_windows]]
    assert max(in_data) < 2 * min(in_data), n_by_window
    joined = pd.DataFrame(predictions).merge(pd.DataFrame(feedback), on="prediction_id")
    assert len(joined) == len(expected_ids)


@pytest.mark.timeout(300)
def test_a_worker_killed_before_its_last_commit_leaves_no_lag_behind(broker, victoria, worker_factory, tmp_path,
                                                                     unique):
    """kill -9 after the last batch's state is acknowledged, before its commit: the next worker finds
    nothing to read past the state's progress, so no batch of its own would ever commit. It commits
    that progress on assignment, and the group's committed offsets (what lag dashboards show) reach
    the end of the input."""
    model_id = f"m-{unique}"
    overrides = {**topic_overrides(unique), "models.*.window": {"seconds": WINDOW_SECONDS}}
    config = prepare_workspace(tmp_path / "ws", bootstrap=broker.bootstrap, influx_url=victoria.url,
                               models=(model_id,), overrides=overrides)
    topics = {k.split(".")[-1]: v for k, v in overrides.items() if k.startswith("kafka.topics.")}
    create_topics(broker.bootstrap, topics.values(), partitions=1)
    _produce(broker.bootstrap, topics["predictions"], _events(model_id, 50, 0, np.random.default_rng(3)))
    group = f"driftwarden-{unique}"
    source = [topics["predictions"], topics["feedback"]]

    killed = worker_factory(config, env={"DRIFTWARDEN_FAULT": "kill:after-state:1"}).start()
    assert _wait_exit(killed, 120) == -signal.SIGKILL, killed.log()[-3000:]
    killed.process = None
    worker = worker_factory(config).start()
    assert _wait_consumed(broker.bootstrap, group, source, timeout=120), worker.log()[-3000:]
    assert "committing the progress saved in the state" in worker.log()
    assert worker.stop() == 0, worker.log()[-3000:]
