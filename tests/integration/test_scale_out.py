"""Scale-out: 6 source partitions, 3 worker processes, one result per model window.

The real broker and VictoriaMetrics. Simulated credit-risk events with a feature drift
injected half-way, keyed by ``prediction_id`` over 6 partitions, are read by three workers
in one group; stage 1 of each source partition publishes pane partials on the internal topic
``<group_id>-panes``, stage 2 (one owner for the model) merges them. The oracle is a
single-partition ``replay`` (streams.pipeline.Pipeline) of the same events:

- every window point in the TSDB equals the replay's — counts exactly, statistics to 1e-9,
  one value per series per window end; the order-dependent figures (ADWIN on batch means,
  the CUSUM streams, DDM/EDDM) run on another sequence by design and are left out, as in
  tests/streams/test_model_windows.py;
- the same rules fire, each once, and the one retrain job is the replay's;
- every labelled pair reaches ``labelled``.

Partition 5 receives no event at all, so windows close only because its stage 1 marks it
idle (``kafka.idle_timeout``). Without kills every pair is on ``labelled`` exactly once. With
kills: one worker is SIGKILLed between a batch's outputs and its commit
(``DRIFTWARDEN_FAULT``), the stage-2 owner of the model is SIGKILLed from outside mid-stream,
and a fourth worker joins: the figures above hold, no alert or job twice.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from streams.app import panes_partition, panes_topic
from streams.partials import decode
from tests.conftest import integration_workspace
from tests.integration.test_delivery_kill import WALL_CLOCK, _point_values, _read, _tsdb_points, _wait_exit
from tests.integration.test_worker_e2e import _wait_consumed, _wait_for_line
from tests.streams.test_model_windows import partition_of

pytestmark = pytest.mark.integration

PARTITIONS = 6
WINDOW_SECONDS = 4
N = 3000
RATE = 100.0  # predictions per second of event time: 400 a window (1/6 of them skipped), 7 windows
CHANGE_AT = 1000
ORDER_DEPENDENT_METHODS = {"adwin", "cusum"}


def _order_dependent(name: str, labels: dict[str, str]) -> bool:
    """Series fed in an order that depends on how events fall over partitions and batches."""
    return (labels.get("method") in ORDER_DEPENDENT_METHODS or name.startswith("concept_drift_")
            or labels.get("metric") == "selection_rate_cusum" or labels.get("stat") in WALL_CLOCK)


def _stream(model_id: str, *, skip_partition: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The simulator's events (drift from ``CHANGE_AT``), none of partition ``skip_partition``, and
    a few later predictions on every other partition that close every window of the data."""
    from streams.simulate import SimulatedStream

    start = math.floor(time.time() / 3600) * 3600 - 7200.0  # whole hours: windows align to the data
    sim = SimulatedStream(model_id=model_id, start=start, seed=11, rate=RATE, change_after=CHANGE_AT,
                          changes=("drift",), feedback_delay=2.0)
    predictions: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    for kind, event in sim.events(N):
        if skip_partition is not None and partition_of(event["prediction_id"].encode()) == skip_partition:
            continue
        (predictions if kind == "prediction" else feedback).append(event)
    last = max(p["timestamp"] for p in predictions)
    template = predictions[-1]
    wanted = {p for p in range(PARTITIONS) if p != skip_partition}
    i = 0
    while wanted:
        pid = f"{model_id}-filler-{i}"
        partition = partition_of(pid.encode())
        if partition in wanted:
            wanted.discard(partition)
            predictions.append({**template, "prediction_id": pid, "timestamp": last + 5 * WINDOW_SECONDS + i * 0.01})
        i += 1
    return predictions, feedback


def _send_keyed(bootstrap: str, topic: str, docs: list[dict[str, Any]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for doc in docs:
        producer.send(topic, key=doc["prediction_id"].encode(), value=json.dumps(doc).encode())
    producer.flush()
    producer.close()


def _replay(config: Path, predictions: list[Any], feedback: list[Any], tmp: Path) -> tuple[dict[tuple, float],
                                                                                           list[Any], list[Any]]:
    """A single-partition replay of the same events (no final flush: the workers leave the filler
    window open too): its window points, alerts and retrain requests."""
    from streams.config import Config
    from streams.join import DictStore
    from streams.replay import merged_messages
    from streams.runtime import load_evaluations, pipeline_factory

    pred_path, fb_path = tmp / "predictions.jsonl", tmp / "feedback.jsonl"
    pred_path.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in predictions))
    fb_path.write_bytes(b"".join(json.dumps(d).encode() + b"\n" for d in feedback))
    cfg = Config.load(config)
    pipeline = pipeline_factory(cfg, load_evaluations(cfg))(DictStore())
    messages = list(merged_messages(pred_path, fb_path))
    points, alerts, jobs = [], [], []
    for i in range(0, len(messages), 700):
        outcome = pipeline.process(messages[i:i + 700])
        points.extend(outcome.points)
        alerts.extend(outcome.alerts)
        jobs.extend(outcome.jobs)
    return _point_values(points), alerts, jobs


def _workspace(tmp_path: Path, broker: Any, victoria: Any, unique: str, idle_timeout: float) -> tuple[Path, str,
                                                                                                     dict[str, str]]:
    model_id = f"m-{unique}"
    config, topics = integration_workspace(tmp_path, broker, victoria, model_id=model_id, unique=unique,
                                           window={"seconds": WINDOW_SECONDS}, partitions=PARTITIONS)
    raw = yaml.safe_load(config.read_text())
    raw["kafka"].update(batch_size=400, idle_timeout=idle_timeout)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config, model_id, topics


def _check(victoria: Any, broker: Any, topics: dict[str, str], model_id: str, config: Path,
           predictions: list[Any], feedback: list[Any], tmp: Path, *, copies_allowed: bool) -> None:
    expected, alerts, jobs = _replay(config, predictions, feedback, tmp)
    expected = {k: v for k, v in expected.items() if not _order_dependent(k[0], dict(k[1]))}
    windows = {k[2] for k in expected if k[0] == "monitor_value" and ("stat", "events") in k[1]}
    assert len(windows) >= N / RATE / WINDOW_SECONDS - 1
    # the TSDB: every expected point, once (one value per series and window end), nothing else
    stored = {k: v for k, v in _tsdb_points(victoria, model_id).items() if not _order_dependent(k[0], dict(k[1]))}
    # a window's cohort figures (by prediction time) are written at its close and rewritten as its
    # late labels arrive: what had joined at the close depends on how partitions interleave, so
    # there the replay's final figure must be among the values stored, and the label-free
    # estimate beside a cohort (written while its coverage is below 0.8) may exist on one side only
    cohort = lambda key: key[0].startswith("cohort_")  # noqa: E731
    beside = lambda key: cohort(key) and key[0].endswith("_estimate")  # noqa: E731
    different = {k: v for k, v in stored.items() if len(set(v)) > 1 and not cohort(k)}
    assert not different, list(different.items())[:5]
    missing = sorted(k for k in set(expected) - set(stored) if not beside(k))
    assert not missing, (len(missing), sorted({k[2] for k in missing}), sorted(windows),
                         sorted((k[1], k[2], v) for k, v in stored.items() if k[0] == "monitor_value"))
    extra = sorted(k for k in set(stored) - set(expected) if not beside(k))
    assert not extra, (len(extra), extra[:5])
    # counts exactly; statistics to 1e-9 (the line protocol carries 12 significant digits)
    same = lambda got, v: got == v if float(v).is_integer() else got == pytest.approx(v, rel=1e-9, abs=1e-12)  # noqa: E731
    wrong = [(k, stored[k][0], v) for k, v in expected.items() if not cohort(k) and not same(stored[k][0], v)]
    assert not wrong, (len(wrong), wrong[:5])
    finals = [(k, stored[k], v) for k, v in expected.items()
              if cohort(k) and not beside(k) and not any(same(w, v) for w in stored[k])]
    assert not finals, (len(finals), finals[:5])
    assert any(cohort(k) for k in expected)
    events = sum(v for k, v in expected.items() if k[0] == "monitor_value" and ("stat", "events") in k[1])
    assert events == len([p for p in predictions if "-filler-" not in p["prediction_id"]])
    # alerts and jobs: one per identity, the replay's rules each firing once, the replay's one job
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for value in _read(broker.bootstrap, topics["alerts"]):
        by_id[json.loads(value)["alert_id"]].add(value)
    assert all(len(v) == 1 for v in by_id.values()), by_id
    firing = sorted(json.loads(next(iter(v)))["rule"] for v in by_id.values()
                    if json.loads(next(iter(v)))["state"] == "firing")
    assert "feature-drift" in firing and len(firing) == len(set(firing)), firing
    assert firing == sorted(a.rule for a in alerts if a.state == "firing")
    job_values: dict[str, set[bytes]] = defaultdict(set)
    for value in _read(broker.bootstrap, topics["retrain_jobs"]):
        job_values[json.loads(value)["job_id"]].add(value)
    assert all(len(v) == 1 for v in job_values.values()), job_values
    assert sorted(job_values) == sorted(j.trigger.job_id for j in jobs) and len(job_values) == 1
    # labelled: every pair, copies (a batch re-sent after a kill) identical
    pairs = [pair for value in _read(broker.bootstrap, topics["labelled"]) for pair in json.loads(value)]
    by_pair: dict[str, list[Any]] = defaultdict(list)
    for pair in pairs:
        by_pair[pair["prediction_id"]].append(pair)
    assert set(by_pair) == {f["prediction_id"] for f in feedback}
    assert all(all(copy == copies[0] for copy in copies) for copies in by_pair.values())
    if not copies_allowed:
        assert len(pairs) == len(by_pair)


def _stop_all(workers: list[Any]) -> None:
    for worker in workers:  # all at once: each stop would move the others' partitions again
        if worker.process is not None and worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        if worker.process is not None:
            worker.process.wait(timeout=60)
        assert worker.stop() in (0, None), worker.log()[-3000:]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("kills", [False, True])
def test_three_workers_over_six_partitions_write_one_result_per_model_window(
        broker, victoria, worker_factory, tmp_path, unique, kills):
    config, model_id, topics = _workspace(tmp_path, broker, victoria, unique, idle_timeout=2.0)
    predictions, feedback = _stream(model_id, skip_partition=5)  # partition 5 stays empty: idle
    # the whole backlog first: a partition is caught up (and may turn idle) only once its data is read
    _send_keyed(broker.bootstrap, topics["feedback"], feedback)
    _send_keyed(broker.bootstrap, topics["predictions"], predictions)
    group = f"driftwarden-{unique}"
    source = [topics["predictions"], topics["feedback"]]
    # one worker dies between a batch's outputs (partials included) and its state and commit
    if not kills:
        workers = [worker_factory(config).start() for _ in range(3)]
        assert _wait_consumed(broker.bootstrap, group, source, timeout=240), [w.log()[-2000:] for w in workers]
        _closed_and_checked(victoria, broker, topics, model_id, config, predictions, feedback, tmp_path, group,
                            source, workers, copies_allowed=False)
        return
    doomed = worker_factory(config, env={"DRIFTWARDEN_FAULT": "kill:after-outputs:3"}).start()
    workers = [worker_factory(config).start() for _ in range(2)]
    assert _wait_exit(doomed, 120) == -signal.SIGKILL, doomed.log()[-3000:]
    assert "FAULT kill at after-outputs of batch 3" in doomed.log()
    doomed.process = None
    # mid-stream, the owner of the model's stage 2 is killed from outside, and another worker joins
    owner_partition = panes_partition(model_id, PARTITIONS)

    def owner() -> Any:
        for worker in workers:
            lines = [line for line in worker.log().splitlines() if f"of {panes_topic(group)}" in line]
            if lines and f"{owner_partition}" in lines[-1].split("[", 1)[1].split("]", 1)[0].split(", "):
                return worker
        return None

    deadline = time.monotonic() + 60
    while owner() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    victim = owner() or workers[0]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    victim.process = None
    workers.remove(victim)
    joiner = worker_factory(config).start()
    workers.append(joiner)
    assert _wait_for_line(joiner, "PARTITIONS assigned", timeout=120), joiner.log()[-3000:]
    assert _wait_consumed(broker.bootstrap, group, source, timeout=240), [w.log()[-2000:] for w in workers]
    _closed_and_checked(victoria, broker, topics, model_id, config, predictions, feedback, tmp_path, group, source,
                        workers, copies_allowed=True)


def _closed_and_checked(victoria: Any, broker: Any, topics: dict[str, str], model_id: str, config: Path,
                        predictions: list[Any], feedback: list[Any], tmp_path: Path, group: str, source: list[str],
                        workers: list[Any], *, copies_allowed: bool) -> None:
    data_windows = int(N / RATE / WINDOW_SECONDS)

    def closed() -> int:
        return sum(len(set(s["timestamps"])) for s in victoria.series("monitor_value", model_id=model_id,
                                                                       stat="events"))

    # the empty partition is marked idle, so the windows close (the filler window stays open)
    if not victoria.wait_for(lambda: closed() >= data_windows, timeout=120):
        partials = [decode(value) for value in _read(broker.bootstrap, panes_topic(group))]
        summary = defaultdict(list)
        for p in partials:
            summary[p.source].append((p.seq, p.idle, p.watermark, len(p.panes)))
        pytest.fail(f"{closed()} windows closed; partials by source: {dict(summary)}")
    assert _wait_consumed(broker.bootstrap, group, source, timeout=60)
    _stop_all(workers)
    # what closed them: partition 5's idle markers on the internal topic (it published nothing else)
    partials = [decode(value) for value in _read(broker.bootstrap, panes_topic(group))]
    assert {p.idle for p in partials if p.source == 5} == {True}
    assert {p.source for p in partials if not p.idle} == {0, 1, 2, 3, 4}
    _check(victoria, broker, topics, model_id, config, predictions, feedback, tmp_path, copies_allowed=copies_allowed)
