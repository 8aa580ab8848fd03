"""The closed loop, end to end through the real broker and time-series server:
simulated drift → alert → retrain job with an Evidently report → retrain worker →
``model-updates`` → the worker tracks the new version against its new reference."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from retrain.events import format_time, parse_time
from streams.simulate import SimulatedStream
from streams.state import read_to_end
from tests.conftest import integration_workspace

pytestmark = pytest.mark.integration


def _collect(bootstrap: str, topic: str, want: Any, timeout: float) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                             consumer_timeout_ms=1000)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for message in consumer:
                found.append(json.loads(message.value))
            if want(found):
                break
    finally:
        consumer.close()
    return found


def _publish(producer: KafkaProducer, topics: dict[str, str], stream: SimulatedStream, total: int,
             version: str | None = None) -> None:
    for kind, event in stream.events(total):
        if kind == "prediction" and version is not None:
            event["model_version"] = version
        producer.send(topics[kind], key=event["prediction_id"].encode(), value=orjson.dumps(event))
    producer.flush()


def test_drift_alert_retrain_job_new_version(broker, victoria, worker_factory, tmp_path: Path, unique: str):
    model_id = f"loop-{unique}"
    config, topics = integration_workspace(tmp_path, broker, victoria, model_id=model_id, unique=unique, window=500)

    worker = worker_factory(config).start()
    retrainer = worker_factory(config, command="retrain-worker").start()
    try:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
        start = time.time() - 3600
        stream = SimulatedStream(model_id=model_id, seed=3, start=start, rate=100.0, change_after=2000,
                                 changes=("drift",), feedback_delay=1.0, feedback_loss=0.05)
        _publish(producer, {"prediction": topics["predictions"], "feedback": topics["feedback"]}, stream, 6000)
        published = time.time()  # the change (event 2,000 of the burst) is on the broker by now

        jobs = _collect(broker.bootstrap, topics["retrain_jobs"], lambda found: found, timeout=120)
        assert jobs, f"no retrain job; worker log:\n{worker.log()[-3000:]}"
        job = jobs[0]
        assert job["model_id"] == model_id and job["model_version"] == "1"
        assert job["rules"] == ["retrain-on-drift"]
        report = Path(job["report_path"])
        assert report.exists() and report.stat().st_size > 10_000
        assert "<html" in report.read_text(encoding="utf-8")[:2000].lower()
        alerts = _collect(broker.bootstrap, topics["alerts"], lambda found: found, timeout=30)
        assert any(a["rule"] == "feature-drift" and a["state"] == "firing" for a in alerts)
        # The points behind the alert: age (shifted by one standard deviation) drifts after the change only.
        age_v1 = victoria.series("feature_drift_drift", model_id=model_id, model_version="1", feature="age",
                                 method="psi")[0]
        flags = dict(zip(age_v1["timestamps"], age_v1["values"]))
        assert not any(v for t, v in flags.items() if t / 1000 <= start + 2000 / 100.0)
        assert all(v for t, v in flags.items() if t / 1000 > start + 2000 / 100.0 + 5)
        # The drift was injected at event 2,000 (window 4 of 500): nothing fires before it.
        first = min(a["window_end"] for a in alerts if a["rule"] == "feature-drift")
        assert parse_time(first) / 1e9 > start + 2000 / 100.0

        updates = _collect(broker.bootstrap, topics["model_updates"],
                           lambda found: any(u.get("status") == "succeeded" for u in found), timeout=120)
        done = [u for u in updates if u.get("status") == "succeeded"]
        assert done, f"no model update: {updates}; retrain log:\n{retrainer.log()[-3000:]}"
        assert done[0]["job_id"] == job["job_id"] and done[0]["model_version"] == "2"
        # for the record (issue 14 asks for it), not asserted: a loaded machine may take longer
        print(f"closed loop: drifted traffic on the broker at {format_time(int(published * 1e9))}, v2 published at "
              f"{done[0]['timestamp']}: {parse_time(done[0]['timestamp']) / 1e9 - published:.1f} s")

        # Production now serves v2 on the drifted traffic; the worker tracks it against its new reference.
        after = SimulatedStream(model_id=model_id, seed=4, start=start + 100, rate=100.0, change_after=0,
                                changes=("drift",), feedback_delay=1.0, feedback_loss=0.05)
        _publish(producer, {"prediction": topics["predictions"], "feedback": topics["feedback"]}, after, 2000,
                 version="2")
        got = victoria.wait_for(lambda: victoria.series("monitor_value", model_id=model_id, model_version="2",
                                                        stat="events"), timeout=60)
        assert got, worker.log()[-3000:]
        assert "v2 registered" in worker.log()
        # Against its own reference, v2's inputs show no drift on the feature that drifted for v1.
        age = victoria.series("feature_drift_drift", model_id=model_id, model_version="2", feature="age",
                              method="psi")
        assert age and not any(age[0]["values"][1:])
    finally:
        retrainer.stop()
        worker.stop()


def test_fairness_regression_shows_up_as_points_and_an_alert(broker, victoria, worker_factory, tmp_path: Path,
                                                              unique: str):
    model_id = f"fair-{unique}"
    config, topics = integration_workspace(tmp_path, broker, victoria, model_id=model_id, unique=unique, window=500)
    worker = worker_factory(config).start()
    try:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
        start = time.time() - 3600
        stream = SimulatedStream(model_id=model_id, seed=5, start=start, rate=100.0, change_after=2500,
                                 changes=("fairness",), feedback_delay=1.0, feedback_loss=0.05)
        _publish(producer, {"prediction": topics["predictions"], "feedback": topics["feedback"]}, stream, 6000)
        alerts = _collect(broker.bootstrap, topics["alerts"],
                          lambda found: any(a["rule"] == "fairness-demographic-parity" for a in found), timeout=90)
        fired = [a for a in alerts if a["rule"] == "fairness-demographic-parity" and a["state"] == "firing"]
        assert fired, f"alerts: {[a['rule'] for a in alerts]}; worker log:\n{worker.log()[-3000:]}"
        change_at = start + 2500 / 100.0
        assert parse_time(fired[0]["window_end"]) / 1e9 > change_at
        # The points behind it: the parity ratio by sex, before and after the change.
        ratio = victoria.wait_for(lambda: victoria.series(
            "fairness_value", model_id=model_id, attribute="sex", group="all", metric="demographic_parity_ratio"),
            timeout=30)
        assert ratio
        by_time = dict(zip(ratio[0]["timestamps"], ratio[0]["values"]))
        before = [v for t, v in by_time.items() if t / 1000 <= change_at]
        after = [v for t, v in by_time.items() if t / 1000 > change_at + 5]
        assert before and min(before) >= 0.8
        assert after and max(after) < 0.8
        # And the group it hit: women's selection rate fell, men's did not.
        women = victoria.series("fairness_value", model_id=model_id, attribute="sex", group="F",
                                metric="selection_rate")[0]
        men = victoria.series("fairness_value", model_id=model_id, attribute="sex", group="M",
                              metric="selection_rate")[0]
        late = lambda s: [v for t, v in zip(s["timestamps"], s["values"]) if t / 1000 > change_at + 5]  # noqa: E731
        early = lambda s: [v for t, v in zip(s["timestamps"], s["values"]) if t / 1000 <= change_at]  # noqa: E731
        assert max(late(women)) < min(early(women)) - 0.15
        assert abs(sum(late(men)) / len(late(men)) - sum(early(men)) / len(early(men))) < 0.08
    finally:
        worker.stop()


def test_same_drifting_stream_twice_and_with_a_restart_gives_one_job_with_one_id(
        broker, victoria, worker_factory, tmp_path: Path, unique: str):
    """Two workers (own consumer groups) over the same topics: straight through, and stopped halfway
    and started again. Each publishes exactly one retrain job, with the same id. (A second straight
    run added nothing: the restarted run is another run of the same stream too, and replays of the
    same input give the same ids in tests/streams/test_replay.py.)"""
    import yaml

    model_id = f"idem-{unique}"
    window = 500
    config, topics = integration_workspace(tmp_path, broker, victoria, model_id=model_id, unique=unique,
                                           window=window)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    stream = SimulatedStream(model_id=model_id, seed=9, start=time.time() - 3600, rate=100.0, change_after=2000,
                             changes=("drift",), feedback_delay=1.0, feedback_loss=0.05)
    events = list(stream.events(4500))
    half = len(events) // 2

    def publish(part: list[tuple[str, dict[str, Any]]]) -> None:
        for kind, event in part:
            topic = topics["predictions"] if kind == "prediction" else topics["feedback"]
            producer.send(topic, key=event["prediction_id"].encode(), value=orjson.dumps(event))
        producer.flush()

    def run(group: str, jobs_topic: str, *, restart: bool) -> list[dict[str, Any]]:
        raw = yaml.safe_load(config.read_text())
        raw["kafka"]["group_id"] = group
        raw["kafka"]["topics"]["retrain_jobs"] = jobs_topic
        raw["kafka"]["batch_size"] = 200
        own = config.with_name(f"{group}.yaml")
        own.write_text(yaml.safe_dump(raw))
        worker = worker_factory(own).start()
        try:
            if restart:  # stop partway (small batches make "partway" likely mid-stream), resume from the changelog
                assert _wait_offsets(broker.bootstrap, group, topics["predictions"], half // 2), worker.log()[-2000:]
                assert worker.stop() == 0
                worker = worker_factory(own).start()
            jobs = _collect(broker.bootstrap, jobs_topic, lambda found: len(found) >= 1, timeout=180)
            # A second job would follow within a window or two. It would be published before the
            # offsets of the batch that raised it are committed: once the worker has committed two
            # windows past the first job's window, any such job is out (no sleep-and-hope).
            end_ns = parse_time(jobs[0]["window_end"])
            at = sum(1 for kind, event in events if kind == "prediction" and event["timestamp"] * 1e9 <= end_ns)
            past = min(predictions, at + 2 * window)
            assert _wait_offsets(broker.bootstrap, group, topics["predictions"], past, timeout=180), \
                worker.log()[-2000:]
            return jobs
        finally:
            worker.stop()

    publish(events)
    predictions = sum(kind == "prediction" for kind, _ in events)
    runs = {name: run(f"idem-{name}-{unique}", f"jobs-{name}-{unique}", restart=(name == "restart"))
            for name in ("first", "restart")}
    for name, jobs in runs.items():
        again = [orjson.loads(record.value) for record in read_to_end(broker.bootstrap, f"jobs-{name}-{unique}")]
        assert len(again) == 1, (name, [j["job_id"] for j in again])
    ids = {name: jobs[0]["job_id"] for name, jobs in runs.items()}
    assert len(set(ids.values())) == 1, ids


def _wait_offsets(bootstrap: str, group: str, topic: str, at_least: int, timeout: float = 60) -> bool:
    from kafka import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (consumer.committed(TopicPartition(topic, 0)) or 0) >= at_least:
                return True
            time.sleep(0.2)
        return False
    finally:
        consumer.close()
