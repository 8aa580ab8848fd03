"""The retrain service and job: pairs, spans, training, artefacts and events; then end to end against
the real embedded broker (waiting for labels in flight, deferral).

The labelled pairs are encoded with the monitor's own :func:`streams.join.labelled_messages`
(what the worker publishes to ``labelled``), from the simulator's credit-risk world, so the
features are those of the example configuration.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from detectors.profile import ReferenceProfile
from retrain.events import RetrainJob, RetrainTrigger
from retrain.trainers import SklearnLogisticTrainer
from retrain.job import (
    STATUS_DEFERRED,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    ModelSpec,
    RetrainFailed,
    choose_version,
    failure_event,
    next_version,
    retrain,
    update_id,
)
from streams.events import Prediction
from streams.join import LabelledPair, labelled_messages
from streams.retrain_service import PairCollector, RetrainWorker, pairs_frame
from streams.simulate import ATTRIBUTES, FEATURES, CreditRiskWorld
from tests.conftest import REPO

T0 = 1_800_000_000  # epoch seconds of the first prediction
NS = 1_000_000_000
SPEC = ModelSpec(id="credit-risk", task="binary", features=FEATURES, attributes=ATTRIBUTES, positive_label="1")


def make_pairs(model_id: str, n: int, *, seed: int = 0, start: float = T0, version: str = "1") -> list[LabelledPair]:
    """``n`` labelled pairs predicted one second apart, labelled 30 s later."""
    cols = {name: column.to_numpy() for name, column in CreditRiskWorld(seed).training_frame(n).items()}
    out = []
    for i in range(n):
        prediction = Prediction(
            prediction_id=f"{model_id}-{seed}-{i}", model_id=model_id, model_version=version,
            timestamp=start + i, features={f: _plain(cols[f][i]) for f in FEATURES},
            prediction=str(cols["prediction"][i]), score=float(cols["score"][i]),
            attributes={a: str(cols[a][i]) for a in ATTRIBUTES})
        out.append(LabelledPair(prediction, str(cols["label"][i]), start + i + 30.0))
    return out


def pair_docs(model_id: str, n: int, **kwargs: Any) -> list[bytes]:
    """``labelled`` message values, one pair each, as the monitor publishes them."""
    return [next(labelled_messages([pair]))[1] for pair in make_pairs(model_id, n, **kwargs)]


def labelled(model_id: str, n: int, **kwargs: Any) -> list[tuple[bytes, bytes, float]]:
    """``labelled`` messages (key, value, timestamp) of ``n`` pairs, 50 per message."""
    pairs = make_pairs(model_id, n, **kwargs)
    return [message for i in range(0, n, 50) for message in labelled_messages(pairs[i:i + 50])]


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, (float, np.floating)) else str(value)


def make_job(model_id: str, *, start: float = T0, end: float = T0 + 10_000, version: str = "1",
             rules: tuple[str, ...] = ("multi-feature-drift",)) -> RetrainJob:
    trigger = RetrainTrigger.create(model_id=model_id, model_version=version, rules=rules, reason="drift",
                                    metrics={"feature_drift.value{feature=age}": 0.31},
                                    window_start_ns=int(start * NS), window_end_ns=int(end * NS))
    return trigger.to_job(report_path="reports/x.html")


def collect(model_id: str, docs: list[bytes], job: RetrainJob) -> PairCollector:
    collector = PairCollector(model_id, job.data_from_ns, job.data_to_ns)
    for doc in docs:
        collector.add(model_id.encode(), doc)
    return collector


# -- pieces ----------------------------------------------------------------------------------------


def test_versions_and_ids() -> None:
    assert [next_version(v) for v in ("1", "41", "1.2", "v3")] == ["2", "42", "1.2.1", "v3.1"]
    assert update_id("job-a") == update_id("job-a") != update_id("job-b")
    assert update_id("job-a", STATUS_FAILED) != update_id("job-a")


def test_choose_version_skips_versions_of_other_jobs(tmp_path: Path) -> None:
    assert choose_version(tmp_path, "m", "3", "job-a") == "4"
    (tmp_path / "m-v4.update.json").write_text(json.dumps({"job_id": "job-a"}))
    assert choose_version(tmp_path, "m", "3", "job-a") == "4"  # the same job again: same version
    assert choose_version(tmp_path, "m", "3", "job-b") == "5"


def test_collector_keeps_range_model_and_last_copy() -> None:
    job = make_job("m", start=T0 + 10, end=T0 + 19)
    docs = pair_docs("m", 30)
    collector = collect("m", docs + docs[12:14], job)
    collector.add(b"other", pair_docs("other", 1)[0])
    collector.add(None, pair_docs("other", 1)[0])  # no key: told apart by the payload
    collector.add(b"m", b"{broken")
    assert sorted(collector.pairs) == [f"m-0-{i}" for i in range(10, 20)]
    assert list(collector.pairs)[-2:] == ["m-0-12", "m-0-13"]  # re-sent copies moved to the end
    assert (collector.before, len(collector.later), collector.other_models, collector.rejected) == (10, 10, 2, 1)
    assert collector.past_end


def test_pairs_frame_types_and_order() -> None:
    job = make_job("m")
    docs = pair_docs("m", 20)
    frame = pairs_frame(reversed(list(collect("m", docs, job).pairs.values())), SPEC)
    assert list(frame["prediction_id"]) == [f"m-0-{i}" for i in range(20)]
    assert frame["age"].dtype == np.float64 and isinstance(frame["channel"][0], str)
    assert set(frame["label"]) <= {"0", "1"} and set(frame["prediction"]) <= {"0", "1"}
    assert set(frame.columns) >= set(FEATURES) | set(ATTRIBUTES) | {"score", "model_version", "time_ns"}


def _retrain(tmp_path: Path, n: int, **kwargs: Any) -> dict[str, Any]:
    job = kwargs.pop("job", None) or make_job(SPEC.id)
    frame = pairs_frame(collect(SPEC.id, pair_docs(SPEC.id, n), job).pairs.values(), SPEC)
    options = dict(model=SPEC, trainer=SklearnLogisticTrainer(), trainer_name="sklearn-logistic",
                   profiles_dir=tmp_path)
    options.update(kwargs)
    return retrain(job, frame, **options)


def test_retrain_writes_profile_model_and_event(tmp_path: Path) -> None:
    event = _retrain(tmp_path, 500)
    assert event["status"] == STATUS_SUCCEEDED
    assert (event["previous_version"], event["model_version"]) == ("1", "2")
    assert (event["trained_on"], event["holdout_n"], event["pairs"]) == (400, 100, 500)
    assert 0.6 < event["holdout"]["accuracy"] <= 1.0 and "roc_auc" in event["holdout"]
    assert "accuracy" in event["previous_holdout"]
    assert event["serving_versions"] == {"1": 500}
    profile = ReferenceProfile.from_dict(json.loads(Path(event["profile_path"]).read_text()))
    profile.check_features(FEATURES)
    assert profile.n == 500 and profile.model_id == SPEC.id
    assert sum(profile.labels.values()) == 500 and sum(profile.predictions.values()) == 500
    assert profile.score_profile is not None and profile.attributes == ATTRIBUTES
    bundle = pickle.loads(Path(event["model_path"]).read_bytes())
    assert bundle["model_version"] == "2" and bundle["job_id"] == event["job_id"]
    frame = CreditRiskWorld(5).training_frame(50)
    assert set(bundle["model"].predict(frame)) <= {"0", "1"}
    record = json.loads((tmp_path / "credit-risk-v2.update.json").read_text())
    assert record == event
    # the same job again (a redelivery) gets the same version; another job of the same version the next one
    assert _retrain(tmp_path, 500)["model_version"] == "2"
    assert _retrain(tmp_path, 500, job=make_job(SPEC.id, rules=("accuracy",)))["model_version"] == "3"


def test_retrain_regression(tmp_path: Path) -> None:
    spec = ModelSpec(id="price", task="regression", features={"x": "numeric", "c": "categorical"})
    rng = np.random.default_rng(0)
    docs = []
    for i in range(300):
        x, c = float(rng.normal()), str(rng.choice(["a", "b"]))
        y = 3 * x + (2.0 if c == "a" else -2.0) + float(rng.normal(0, 0.1))
        prediction = Prediction(str(i), "price", "7", T0 + i, {"x": x, "c": c}, y + 1.0)
        docs.append(next(labelled_messages([LabelledPair(prediction, y, T0 + i + 1.0)]))[1])
    job = make_job("price", version="7")
    frame = pairs_frame(collect("price", docs, job).pairs.values(), spec)
    event = retrain(job, frame, model=spec, trainer=SklearnLogisticTrainer(), trainer_name="sklearn-logistic",
                    profiles_dir=tmp_path)
    assert event["model_version"] == "8"
    assert event["holdout"]["r2"] > 0.9 and event["holdout"]["rmse"] < event["previous_holdout"]["rmse"]
    profile = ReferenceProfile.from_dict(json.loads(Path(event["profile_path"]).read_text()))
    assert profile.task == "regression" and profile.prediction_profile is not None and profile.score is None


def test_retrain_failures(tmp_path: Path) -> None:
    with pytest.raises(RetrainFailed, match=r"only 150 labelled pairs .* \(min_pairs=200\)") as too_few:
        _retrain(tmp_path, 150)
    assert too_few.value.pairs == 150

    class Exploding:
        def fit(self, *args: Any, **kwargs: Any) -> Any:
            raise MemoryError("out of memory")

    with pytest.raises(RetrainFailed, match="trainer 'boom' failed: MemoryError: out of memory"):
        _retrain(tmp_path, 300, trainer=Exploding(), trainer_name="boom")
    assert list(tmp_path.iterdir()) == []  # nothing written for a failed job
    event = failure_event(make_job("m"), "why", pairs=3)
    assert (event["status"], event["reason"], event["pairs"], event["previous_version"]) == ("failed", "why", 3, "1")
    assert "model_version" not in event


def test_unknown_model_fails_without_reading(tmp_path: Path) -> None:
    worker = RetrainWorker(bootstrap="127.0.0.1:1", models={SPEC.id: SPEC}, profiles_dir=tmp_path)
    event = worker.process(make_job("nobody"))
    assert event["status"] == STATUS_FAILED and "not in the configuration" in event["reason"]


# -- end to end, real broker --------------------------------------------------------------------------


def _setup(tmp_path: Path, broker: Any, unique: str) -> tuple[Any, str]:
    from streams.broker import all_topics, create_topics
    from streams.commands import prepare_workspace
    from streams.config import Config
    from tests.conftest import topic_overrides

    model_id = f"m-{unique}"
    path = prepare_workspace(tmp_path / "ws", bootstrap=broker.bootstrap, models=(model_id,),
                             overrides=topic_overrides(unique))
    cfg = Config.load(path)
    create_topics(broker.bootstrap, all_topics(cfg.kafka.topics))
    return cfg, model_id


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]] | list[tuple[bytes, bytes, float]]
             ) -> None:
    """Publish ``(key, value)`` or ``(key, value, timestamp)`` messages (timestamp in epoch seconds)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for key, value, *stamp in messages:
        producer.send(topic, key=key, value=value, timestamp_ms=int(stamp[0] * 1000) if stamp else None)
    producer.flush()
    producer.close()


def _read_all(bootstrap: str, topic: str, *, expect: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Every JSON value on ``topic`` (waits for at least ``expect``, then a short quiet spell)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            out += [json.loads(m.value) for ms in batch.values() for m in ms]
            if not batch and len(out) >= expect:
                break
        return out
    finally:
        consumer.close()


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()


@pytest.mark.integration
def test_worker_retrains_a_job_end_to_end(tmp_path: Path, broker: Any, unique: str) -> None:
    cfg, model_id = _setup(tmp_path, broker, unique)
    topics = cfg.kafka.topics
    key = model_id.encode()
    messages = labelled(model_id, 520)  # 500 in the span, 20 predicted after it (the labels past its end)
    messages += labelled(model_id, 40, seed=1, start=T0 - 1000)  # before the span
    messages += [(b"other", value, stamp) for _, value, stamp in labelled("other", 60, seed=2)]
    _produce(broker.bootstrap, topics.labelled, messages)
    job = make_job(model_id, start=T0, end=T0 + 499)
    _produce(broker.bootstrap, topics.retrain_jobs, [(key, job.to_json().encode())])

    worker = RetrainWorker.from_config(cfg)
    assert worker.profiles_dir == tmp_path / "ws" / "profiles"
    assert worker.run(max_jobs=1, timeout=60) == 1

    (event,) = _read_all(broker.bootstrap, topics.model_updates, expect=1)
    assert event["status"] == STATUS_SUCCEEDED and event["job_id"] == job.job_id
    assert event["update_id"] == update_id(job.job_id) and event["model_id"] == model_id
    assert (event["previous_version"], event["model_version"]) == ("1", "2")
    assert (event["pairs"], event["trained_on"]) == (500, 400)
    assert event["trained_span"] == {"from": job.span()["from"], "to": job.span()["to"]}
    assert 0.0 <= event["holdout"]["accuracy"] <= 1.0
    profile_path = Path(event["profile_path"])
    assert profile_path == (tmp_path / "ws" / "profiles" / f"{model_id}-v2.json").resolve()
    profile = ReferenceProfile.from_dict(json.loads(profile_path.read_text()))
    profile.check_features(cfg.models[model_id].features)
    assert profile.feature_types == dict(cfg.models[model_id].features)
    assert profile.n == 500 and profile.predictions and profile.score_profile is not None
    assert Path(event["model_path"]).exists()
    assert _committed(broker.bootstrap, worker.group_id, topics.retrain_jobs) == 1


def _job_for_span(model_id: str, *, end: float, train_pairs: int | None, train_seconds: float | None) -> RetrainJob:
    trigger = RetrainTrigger.create(model_id=model_id, model_version="1", rules=("drift",), reason="drift",
                                    metrics={}, window_start_ns=int((end - 10) * NS), window_end_ns=int(end * NS))
    return trigger.to_job(**trigger.training_span(train_pairs=train_pairs, train_seconds=train_seconds))


@pytest.mark.integration
def test_job_published_before_its_pairs_waits_for_them(tmp_path: Path, broker: Any, unique: str) -> None:
    """Issue 14's race: the job reaches the retrain worker before the labels of its span. The
    worker follows ``labelled`` until a pair predicted after the span's end arrives, then trains
    on exactly the span: the latest ``train_pairs`` pairs predicted at or before the trigger."""
    import threading

    cfg, model_id = _setup(tmp_path, broker, unique)
    topics = cfg.kafka.topics
    key = model_id.encode()
    job = _job_for_span(model_id, end=T0 + 349, train_pairs=300, train_seconds=3600.0)
    assert job.span()["pairs"] == 300 and job.data_from_ns == (T0 + 349 - 3600) * NS
    _produce(broker.bootstrap, topics.labelled, labelled(model_id, 100, seed=3, start=T0 - 5000))  # long before
    _produce(broker.bootstrap, topics.retrain_jobs, [(key, job.to_json().encode())])
    worker = RetrainWorker.from_config(cfg, label_wait=120.0)
    runner = threading.Thread(target=worker.run, kwargs={"max_jobs": 1, "timeout": 180}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while worker.stats["jobs"] == 0 and time.monotonic() < deadline:  # the worker has taken the job
            time.sleep(0.2)
        assert worker.stats["jobs"] == 1
        _produce(broker.bootstrap, topics.labelled, labelled(model_id, 400))  # the last 50 are past the end
        runner.join(timeout=150)
        assert not runner.is_alive()
    finally:
        worker.stop()
        runner.join(timeout=30)
    (event,) = _read_all(broker.bootstrap, topics.model_updates, expect=1)
    assert event["status"] == STATUS_SUCCEEDED and event["pairs"] == 300
    # the latest 300 predicted at or before the trigger: seconds 50..349
    from retrain.events import format_time
    assert event["trained_span"] == {"from": format_time((T0 + 50) * NS), "to": format_time((T0 + 349) * NS)}
    assert worker.stats["deferred"] == 0


@pytest.mark.integration
def test_too_few_pairs_defers_once_then_trains_as_labels_arrive(tmp_path: Path, broker: Any, unique: str) -> None:
    import threading

    cfg, model_id = _setup(tmp_path, broker, unique)
    topics = cfg.kafka.topics
    key = model_id.encode()
    job = _job_for_span(model_id, end=T0 + 149, train_pairs=1000, train_seconds=None)
    _produce(broker.bootstrap, topics.labelled, labelled(model_id, 150))  # 150 < min_pairs (200)
    _produce(broker.bootstrap, topics.retrain_jobs, [(key, job.to_json().encode())])
    worker = RetrainWorker.from_config(cfg, label_wait=1.0)
    runner = threading.Thread(target=worker.run, kwargs={"max_jobs": 1, "timeout": 180}, daemon=True)
    runner.start()
    try:
        deferred = _read_all(broker.bootstrap, topics.model_updates, expect=1, timeout=60)
        assert [e["status"] for e in deferred] == [STATUS_DEFERRED], deferred
        assert deferred[0]["pairs"] == 150 and "deferred: trying again as labels arrive" in deferred[0]["reason"]
        assert deferred[0]["update_id"] == update_id(job.job_id, STATUS_DEFERRED)
        # the drift persists and labels keep coming: pairs predicted after the trigger count now
        _produce(broker.bootstrap, topics.labelled, labelled(model_id, 50, seed=5, start=T0 + 150))
        time.sleep(0.5)
        _produce(broker.bootstrap, topics.labelled, labelled(model_id, 100, seed=6, start=T0 + 200))
        runner.join(timeout=120)
        assert not runner.is_alive()
    finally:
        worker.stop()
        runner.join(timeout=30)
    events = _read_all(broker.bootstrap, topics.model_updates, expect=2)
    assert [e["status"] for e in events] == [STATUS_DEFERRED, STATUS_SUCCEEDED]  # reported once
    assert events[1]["pairs"] >= 200 and events[1]["job_id"] == job.job_id
    assert _committed(broker.bootstrap, worker.group_id, topics.retrain_jobs) == 1


@pytest.mark.integration
def test_failed_job_is_reported_once_and_not_retried(tmp_path: Path, broker: Any, unique: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg, model_id = _setup(tmp_path, broker, unique)
    topics = cfg.kafka.topics
    key = model_id.encode()
    _produce(broker.bootstrap, topics.labelled, [(key, doc) for doc in pair_docs(model_id, 20)])
    job = make_job(model_id).to_json().encode()
    _produce(broker.bootstrap, topics.retrain_jobs, [(key, b'{"job_id": 1}'), (key, job), (key, job)])

    fast_join = {"max_poll_interval_ms": 2000, "session_timeout_ms": 6000}
    worker = RetrainWorker.from_config(cfg, consumer_options=fast_join, label_wait=0.5, defer_seconds=2.0)
    assert worker.run(max_jobs=3, timeout=60) == 3
    assert worker.stats["dead_letters"] == 1 and worker.stats["duplicates"] == 1 and worker.stats["failed"] == 1
    assert worker.stats["deferred"] == 1

    deferred, event = _read_all(broker.bootstrap, topics.model_updates, expect=2)
    assert deferred["status"] == STATUS_DEFERRED
    assert event["status"] == STATUS_FAILED and event["model_id"] == model_id
    assert event["reason"].startswith(f"only 20 labelled pairs for model '{model_id}'")
    assert "(retrain.defer_seconds)" in event["reason"]
    (dead,) = _read_all(broker.bootstrap, topics.dead_letters, expect=1)
    assert dead["offset"] == 0 and dead["reason"].startswith("retrain job: missing required field")
    assert _committed(broker.bootstrap, worker.group_id, topics.retrain_jobs) == 3
    assert not (tmp_path / "ws" / "profiles" / f"{model_id}-v2.json").exists()

    # a new worker of the same group finds nothing to do: the failed job is not delivered again.
    # It runs until it has joined the group (however long that takes on a loaded machine), then
    # a few polls more, in which a redelivered job would arrive.
    again = RetrainWorker.from_config(cfg, consumer_options=fast_join)
    joined = _StopAfterAssignment(again, f"retrain worker: assigned {topics.retrain_jobs}[0]", polls=6)
    logging.getLogger("streams.retrain_service").addHandler(joined)
    try:
        with caplog.at_level(logging.INFO, logger="streams.retrain_service"):
            assert again.run(timeout=180) == 0
    finally:
        logging.getLogger("streams.retrain_service").removeHandler(joined)
    assert joined.assigned.is_set(), "the second worker never joined the group"  # it did join, and got nothing
    assert len(_read_all(broker.bootstrap, topics.model_updates, expect=2, timeout=60)) == 2


class _StopAfterAssignment(logging.Handler):
    """Stops a :class:`RetrainWorker` ``polls`` poll intervals after it logs ``message``."""

    def __init__(self, worker: RetrainWorker, message: str, *, polls: int) -> None:
        super().__init__(logging.INFO)
        self.worker, self.message, self.polls = worker, message, polls
        self.assigned = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message and not self.assigned.is_set():
            self.assigned.set()
            threading.Timer(self.polls * self.worker.poll_interval, self.worker.stop).start()


@pytest.mark.integration
def test_cli_stops_cleanly_on_sigterm(tmp_path: Path, broker: Any, unique: str) -> None:
    cfg, _ = _setup(tmp_path, broker, unique)
    log_path = tmp_path / "retrain-worker.log"
    with open(log_path, "wb") as out:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        process = subprocess.Popen([sys.executable, "-m", "streams.cli", "retrain-worker", "-c", str(cfg.source)],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=str(tmp_path), env=env)
    try:
        deadline = time.monotonic() + 180  # generous: its imports take seconds on a loaded machine
        while "waiting for jobs" not in log_path.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            time.sleep(0.2)
        assert "waiting for jobs" in log_path.read_text(), log_path.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log_path.read_text()
    assert "received SIGTERM: stopping" in text and "retrain worker stopped" in text
