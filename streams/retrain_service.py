"""``driftwarden retrain-worker``: the retrain service's Kafka side (the job logic is :mod:`retrain.job`).

For every job on ``retrain-jobs`` the :class:`RetrainWorker`

1. reads the job's *training span* from ``labelled`` (the joined pairs the
   monitor publishes, keyed by model id, each message stamped with the latest
   prediction time it holds: :func:`streams.join.labelled_messages`). It seeks to
   the span's start by time (:func:`streams.state.read_records`, which uses
   ``offsets_for_times``) and keeps the pairs of the job's model predicted at or
   after the span's start (a pair seen twice counts once, the later copy wins);
2. waits for the labels still in flight: it follows the topic until it is at its
   end *and* a pair predicted after the span's end has arrived (labels of the
   span's last predictions are then in, when labels arrive in about the order of
   their predictions), or ``label_wait`` seconds have passed;
3. takes the span (:func:`retrain.job.training_span`: prediction time in
   ``[from, to]``, the latest ``data.pairs`` of them) and trains
   (:func:`retrain.job.retrain`), then publishes the model-update event to
   ``model-updates`` (key: model id) and only then commits the job's offset.

Too few pairs (fewer than ``min_pairs``) after the wait does not fail the job:
it is **deferred**. A ``deferred`` model-update event is published once, and the
worker keeps following ``labelled``; as labels arrive it tries again, now with
the span's end open (the drift that triggered the job persists, so the newer
pairs are the data the next version will serve), and trains as soon as the span
holds ``min_pairs``. After ``defer_seconds`` without enough pairs the job fails.
A deferred job stays the job in progress (uncommitted): a restart delivers it
again, and later jobs on the same partition wait behind it.

A failed retrain (one class only, the trainer raised, unknown model, deferred
too long) is reported once and its job offset committed: it is not retried. An
infrastructure error (the labelled topic cannot be read, a file cannot be
written) is retried ``max_attempts`` times in this run, then reported as failed.
A job that is not a valid retrain-job event goes to ``dead-letters``.

Idempotency: ``update_id`` is a uuid5 of the job id and the status, so the same
job always yields the same id. Handled job ids are remembered in memory: a
duplicate delivery in the same run is skipped (and committed). After a crash
between publishing and committing, the job is delivered again and retrained;
its version and files are the same (the ``.update.json`` names the same job)
and its event carries the same ``update_id``, so consumers deduplicate on it.

The job consumer is in the group ``<kafka.group_id>-retrain`` with manual
commits. A job (its read, its wait and its training) runs in a background thread
while the consumer keeps polling (its partitions paused), so a long wait or
training never costs the group membership. On SIGTERM/SIGINT the worker stops; a
job in progress gets ``stop_grace`` seconds to finish, else it is abandoned
uncommitted and delivered again to the next worker.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from detectors.profile import category_text
from retrain.events import EventError, RetrainJob
from retrain.job import (
    DEFAULT_HOLDOUT,
    DEFAULT_MIN_PAIRS,
    ERR_HOLDOUT,
    ERR_MIN_PAIRS,
    ERR_TOO_FEW,
    ERR_UNKNOWN_MODEL,
    STATUS_DEFERRED,
    STATUS_SUCCEEDED,
    ModelSpec,
    RetrainFailed,
    failure_event,
    retrain,
    special_columns,
    training_span,
)
from retrain.trainers import Trainer, TrainerError, load_trainer
from streams.join import LabelledPair, decode_pairs
from streams.kafka import close_client
from streams.state import read_records

log = logging.getLogger(__name__)

CONSUMER_OPTIONS: Mapping[str, Any] = {
    # The rebalance timeout is max_poll_interval_ms; the embedded broker completes a join only
    # when it expires, so keep it short. The worker polls every poll_interval, also while training.
    "max_poll_interval_ms": 5000,
    "session_timeout_ms": 10000,
    "heartbeat_interval_ms": 1000,
}
LATER_LIMIT = 100_000
"""Most pairs predicted after a span's end that a collector keeps (for a deferred job's open end)."""


# -- collecting a span -------------------------------------------------------------------------------


@dataclass
class PairCollector:
    """Keeps the labelled pairs of one model predicted at or after ``from_ns``.

    Feed it raw ``labelled`` records (:meth:`add`); records of other models are skipped
    by key before they are decoded. The same ``prediction_id`` twice keeps the later copy.
    Pairs predicted after ``to_ns`` are kept apart (at most :data:`LATER_LIMIT`, the latest):
    they tell that the labels of the span's last predictions are arriving
    (:attr:`past_end`), and a deferred job may train on them (:meth:`selected`).

    >>> from streams.events import Prediction
    >>> from streams.join import labelled_messages
    >>> def record(pid, t, model="m"):
    ...     pair = LabelledPair(Prediction(pid, model, "1", t, {}, "1"), "1", t + 5)
    ...     return next(labelled_messages([pair]))[:2]
    >>> c = PairCollector("m", from_ns=0, to_ns=10_000_000_000)
    >>> for key, value in [record("a", 5.0), record("b", 50.0), record("c", 1.0, "other"), (b"m", b"not json")]:
    ...     c.add(key, value)
    >>> len(c.pairs), len(c.later), c.past_end, c.other_models, c.rejected
    (1, 1, True, 1, 1)
    """

    model_id: str
    from_ns: int
    to_ns: int
    keep: int | None = None
    """Keep only the latest ``keep`` pairs (by prediction time) in the span and after it: a job
    trains on the latest ``data.pairs``, so memory stays bounded by that, not by the span's length."""
    pairs: dict[str, LabelledPair] = field(default_factory=dict)
    """Pairs predicted in ``[from_ns, to_ns]``, by prediction id, in arrival order."""
    later: OrderedDict[str, LabelledPair] = field(default_factory=OrderedDict)
    """Pairs predicted after ``to_ns``."""
    records: int = 0
    other_models: int = 0
    before: int = 0
    rejected: int = 0
    added: int = 0
    """Pairs kept so far (a deferred job tries again when this grows)."""

    def add(self, key: bytes | None, value: bytes | None) -> None:
        self.records += 1
        if key is not None and key != self._key:
            self.other_models += 1
            return
        try:
            pairs = decode_pairs(value or b"")
        except ValueError:
            self.rejected += 1
            return
        for pair in pairs:
            self._add_pair(pair)

    def _add_pair(self, pair: LabelledPair) -> None:
        p = pair.prediction
        if p.model_id != self.model_id:
            self.other_models += 1
            return
        ts = _time_ns(p.timestamp)
        if ts < self.from_ns:
            self.before += 1
            return
        self.pairs.pop(p.prediction_id, None)  # the later copy wins and takes the later place
        self.later.pop(p.prediction_id, None)
        if ts <= self.to_ns:
            self.pairs[p.prediction_id] = pair
            if self.keep is not None and len(self.pairs) >= 2 * self.keep:
                self.pairs = _latest(self.pairs, self.keep)
        else:
            self.later[p.prediction_id] = pair
            if len(self.later) >= 2 * min(self.keep or LATER_LIMIT, LATER_LIMIT):
                self.later = OrderedDict(_latest(self.later, min(self.keep or LATER_LIMIT, LATER_LIMIT)))
        self.added += 1

    @property
    def past_end(self) -> bool:
        """True once a pair predicted after the span's end has arrived."""
        return bool(self.later)

    def selected(self, *, open_end: bool = False) -> list[LabelledPair]:
        """The kept pairs in the span (with ``open_end``, also those predicted after it)."""
        return list(self.pairs.values()) + (list(self.later.values()) if open_end else [])

    @property
    def _key(self) -> bytes:
        return self.model_id.encode()


def _latest(pairs: Mapping[str, LabelledPair], n: int) -> dict[str, LabelledPair]:
    """The ``n`` pairs predicted last (ties by prediction id), in their arrival order."""
    latest = set(sorted(pairs, key=lambda pid: (pairs[pid].prediction.timestamp, pid))[-n:])
    return {pid: pair for pid, pair in pairs.items() if pid in latest}


def _time_ns(seconds: float) -> int:
    return int(round(float(seconds) * 1e9))


def pairs_frame(pairs: Iterable[LabelledPair], model: ModelSpec) -> pd.DataFrame:
    """One row per pair: the model's features (numeric float, categorical ``str``/``None``), its
    attributes, ``label`` (``str`` class or float), the serving model's ``prediction`` and
    ``score``, ``model_version``, ``prediction_id`` and ``time_ns``; sorted by time, then id.

    The pairs' values are typed already (the parser made them, :mod:`streams.events`); this
    only lays them out in columns, named by :func:`retrain.job.special_columns`.
    """
    cols = special_columns(model)
    regression = model.task == "regression"
    data: dict[str, list[Any]] = {name: [] for name in model.features}
    attributes = [name for name in model.attributes if name not in model.features]
    data.update({name: [] for name in attributes})
    extra = ["label", "prediction", "score", "model_version", "prediction_id", "time_ns"]
    data.update({cols[name]: [] for name in extra})
    for pair in pairs:
        p = pair.prediction
        for name, kind in model.features.items():
            value = p.features.get(name)
            data[name].append(_number(value) if kind == "numeric" else category_text(value))
        for name in attributes:
            data[name].append(p.attributes.get(name))
        data[cols["label"]].append(_number(pair.label) if regression else category_text(pair.label))
        data[cols["prediction"]].append(_number(p.prediction) if regression else category_text(p.prediction))
        data[cols["score"]].append(_number(p.score))
        data[cols["model_version"]].append(p.model_version)
        data[cols["prediction_id"]].append(p.prediction_id)
        data[cols["time_ns"]].append(_time_ns(p.timestamp))
    frame = pd.DataFrame(data)
    for name in [*model.numeric, cols["score"]]:
        frame[name] = frame[name].astype(np.float64)
    frame[cols["time_ns"]] = frame[cols["time_ns"]].astype(np.int64)
    frame = frame[frame[cols["label"]].notna()]
    if regression:
        frame = frame[np.isfinite(frame[cols["label"]].to_numpy(dtype=np.float64))]
    frame = frame.sort_values([cols["time_ns"], cols["prediction_id"]], kind="stable")
    return frame.reset_index(drop=True)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


# -- the worker -------------------------------------------------------------------------------


class RetrainWorker:
    """Consumes retrain jobs, retrains, publishes model updates (see the module docstring).

    Keyword-only; :meth:`from_config` builds one from a loaded ``streams.config.Config``.
    ``client_options`` go to every Kafka client (security settings), ``consumer_options`` to
    the jobs consumer only (over :data:`CONSUMER_OPTIONS`). ``label_wait`` bounds the wait
    for labels in flight, ``defer_seconds`` how long a deferred job waits for enough pairs;
    ``read_idle`` is the poll of the labelled topic (a partition silent that long, without a
    better sign from the broker, counts as read to its end).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        models: Mapping[str, ModelSpec],
        profiles_dir: str | os.PathLike[str],
        jobs_topic: str = "retrain-jobs",
        labelled_topic: str = "labelled",
        updates_topic: str = "model-updates",
        dead_letters_topic: str = "dead-letters",
        group_id: str = "driftwarden-retrain",
        trainer: str | Trainer = "sklearn-logistic",
        min_pairs: int = DEFAULT_MIN_PAIRS,
        holdout: float = DEFAULT_HOLDOUT,
        label_wait: float = 30.0,
        defer_seconds: float = 3600.0,
        client_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        poll_interval: float = 0.5,
        read_idle: float = 1.0,
        stop_grace: float = 10.0,
        max_attempts: int = 3,
        remember: int = 10_000,
    ) -> None:
        if not isinstance(min_pairs, int) or isinstance(min_pairs, bool) or min_pairs < 2:
            raise ValueError(ERR_MIN_PAIRS.format(value=min_pairs))
        if not isinstance(holdout, (int, float)) or not 0.0 <= float(holdout) < 1.0:
            raise ValueError(ERR_HOLDOUT.format(value=holdout))
        self.bootstrap = bootstrap
        self.models = dict(models)
        self.profiles_dir = Path(profiles_dir)
        self.jobs_topic = jobs_topic
        self.labelled_topic = labelled_topic
        self.updates_topic = updates_topic
        self.dead_letters_topic = dead_letters_topic
        self.group_id = group_id
        self.trainer_name = trainer if isinstance(trainer, str) else type(trainer).__name__
        self.trainer = load_trainer(trainer)
        self.min_pairs = min_pairs
        self.holdout = float(holdout)
        self.label_wait = float(label_wait)
        self.defer_seconds = float(defer_seconds)
        self.client_options = dict(client_options or {})
        self.consumer_options = {**CONSUMER_OPTIONS, **(consumer_options or {})}
        self.poll_interval = poll_interval
        self.read_idle = read_idle
        self.stop_grace = stop_grace
        self.max_attempts = max_attempts
        self.remember = remember
        self.published: list[dict[str, Any]] = []
        """Every event published by this worker object, in order."""
        self.stats = {"jobs": 0, "succeeded": 0, "deferred": 0, "failed": 0, "duplicates": 0, "dead_letters": 0,
                      "retries": 0}
        self._done: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._unpublished: dict[str, dict[str, Any]] = {}
        self._attempts: dict[str, int] = {}
        self._stop = threading.Event()

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> RetrainWorker:
        """From a ``streams.config.Config`` (its ``retrain:`` section); ``overrides`` win."""
        from streams.kafka import client_options

        retrain_cfg = cfg.retrain
        topics = cfg.kafka.topics
        options: dict[str, Any] = {
            "bootstrap": cfg.kafka.bootstrap,
            "models": {model_id: ModelSpec.from_config(model) for model_id, model in cfg.models.items()},
            "profiles_dir": retrain_cfg.resolved_profiles_dir,
            "jobs_topic": topics.retrain_jobs,
            "labelled_topic": topics.labelled,
            "updates_topic": topics.model_updates,
            "dead_letters_topic": topics.dead_letters,
            "group_id": f"{cfg.kafka.group_id}-retrain",
            "trainer": retrain_cfg.trainer,
            "min_pairs": retrain_cfg.min_pairs,
            "holdout": retrain_cfg.holdout,
            "label_wait": retrain_cfg.label_wait_seconds,
            "defer_seconds": retrain_cfg.defer_seconds,
            "client_options": client_options(cfg),
        }
        options.update(overrides)
        return cls(**options)

    # -- control -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- one job, without the jobs topic ---------------------------------------------------

    def process(self, job: RetrainJob, report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Handle one job end to end except publishing its outcome: the success or failure event.

        ``report`` receives the ``deferred`` event, once, if the job is deferred. Raises only
        for infrastructure errors (Kafka, files), which the run loop retries, and
        ``InterruptedError`` when the worker stops while the job waits for labels."""
        model = self.models.get(job.model_id)
        if model is None:
            return failure_event(job, ERR_UNKNOWN_MODEL.format(model=job.model_id, known=sorted(self.models)))
        frame = self.collect(job, model, report or (lambda event: None))
        if isinstance(frame, dict):
            return frame
        try:
            return retrain(job, frame, model=model, trainer=self.trainer, trainer_name=self.trainer_name,
                           profiles_dir=self.profiles_dir, min_pairs=self.min_pairs, holdout=self.holdout)
        except RetrainFailed as failed:
            return failure_event(job, failed.reason, pairs=failed.pairs)

    def collect(self, job: RetrainJob, model: ModelSpec,
                report: Callable[[dict[str, Any]], None]) -> pd.DataFrame | dict[str, Any]:
        """The job's training span as a frame (:func:`pairs_frame`), read and waited for as the
        module docstring says; or the failure event of a job deferred for too long."""
        collector = PairCollector(job.model_id, job.data_from_ns, job.data_to_ns, keep=job.data_pairs)
        started = time.monotonic()
        deferred_at: float | None = None
        tried_at, found = -1, 0
        reader = read_records(self.bootstrap, self.labelled_topic, since_ms=job.data_from_ns // 1_000_000 - 1,
                              idle_seconds=self.read_idle, **self.client_options)
        try:
            for record in reader:
                if self.stopping:
                    raise InterruptedError("stopping")
                if record is not None:
                    collector.add(record.key, record.value)
                    continue
                now = time.monotonic()  # at the end of the topic: decide
                if deferred_at is None and not collector.past_end and now - started < self.label_wait:
                    continue  # labels of the span's last predictions may still be in flight
                if collector.added != tried_at:  # new pairs (or the first look): try the span
                    tried_at = collector.added
                    span = training_span(pairs_frame(collector.selected(open_end=deferred_at is not None), model),
                                         job, model, open_end=deferred_at is not None)
                    if len(span) >= self.min_pairs:
                        log.info("job %s: %d labelled pairs of %s in the span after %.1fs (%d records read; %d "
                                 "pairs predicted before the span, %d after it; %d of other models, %d unreadable)%s",
                                 job.job_id, len(span), job.model_id, now - started, collector.records,
                                 collector.before, len(collector.later), collector.other_models, collector.rejected,
                                 "" if deferred_at is None else f"; deferred {now - deferred_at:.0f}s")
                        return span
                    found = len(span)
                if deferred_at is None:
                    deferred_at = now
                    reason = (self._too_few(job, found) + f" after waiting {now - started:.0f}s for labels; "
                              f"deferred: trying again as labels arrive (for up to {self.defer_seconds:.0f}s)")
                    log.warning("job %s: %s", job.job_id, reason)
                    self.stats["deferred"] += 1
                    report(failure_event(job, reason, pairs=found, status=STATUS_DEFERRED))
                    tried_at = -1  # try again at once with the span's end open
                elif now - deferred_at >= self.defer_seconds:
                    return failure_event(job, self._too_few(job, found) + f" after {self.defer_seconds:.0f}s deferred "
                                         "(retrain.defer_seconds) without enough labels", pairs=found)
        finally:
            reader.close()
        raise InterruptedError("the labelled topic reader ended")  # read_records never ends by itself

    def _too_few(self, job: RetrainJob, n: int) -> str:
        span = job.span()
        return ERR_TOO_FEW.format(n=n, model=job.model_id, start=span["from"], end=span["to"],
                                  min_pairs=self.min_pairs)

    # -- the loop -------------------------------------------------------------------------------

    def run(self, *, max_jobs: int | None = None, timeout: float | None = None) -> int:
        """Consume jobs until :meth:`stop`, ``max_jobs`` job messages were dealt with (published,
        skipped as duplicate or dead-lettered) or ``timeout`` seconds passed; return that count."""
        from kafka import KafkaConsumer, KafkaProducer

        deadline = None if timeout is None else time.monotonic() + timeout
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                                 client_id="driftwarden-retrain", enable_auto_commit=False,
                                 auto_offset_reset="earliest", max_poll_records=1,
                                 **self.consumer_options, **self.client_options)
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, client_id="driftwarden-retrain", acks="all",
                                 **self.client_options)
        consumer.subscribe([self.jobs_topic], listener=_assignment_logger())
        log.info("retrain worker: waiting for jobs on %s (group %s); labelled pairs from %s; updates to %s; "
                 "artefacts in %s", self.jobs_topic, self.group_id, self.labelled_topic, self.updates_topic,
                 self.profiles_dir)
        dealt = 0
        try:
            while not self.stopping:
                if max_jobs is not None and dealt >= max_jobs:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    log.info("retrain worker: timeout after %.0fs", timeout)
                    break
                records = consumer.poll(timeout_ms=int(self.poll_interval * 1000))
                for tp, messages in records.items():
                    for message in messages:
                        if self._handle(consumer, producer, tp, message):
                            dealt += 1
        finally:
            close_client(consumer)
            producer.close()
            log.info("retrain worker stopped: %s", ", ".join(f"{k} {v}" for k, v in self.stats.items()))
        return dealt

    def _handle(self, consumer: Any, producer: Any, tp: Any, message: Any) -> bool:
        """Deal with one job message; True when its offset was committed."""
        try:
            job = RetrainJob.from_json(message.value)
        except EventError as exc:
            log.warning("retrain job at %s[%d]@%d is malformed: %s", tp.topic, tp.partition, message.offset, exc)
            doc = {"topic": tp.topic, "partition": tp.partition, "offset": message.offset, "reason": str(exc),
                   "payload_b64": base64.b64encode(message.value or b"").decode()}
            if not self._send(producer, self.dead_letters_topic, message.key, doc, consumer, tp, message):
                return False
            self.stats["dead_letters"] += 1
            self._commit(consumer, tp, message.offset)
            return True
        if job.job_id in self._done:
            log.info("job %s (model %s): already handled in this run; skipped", job.job_id, job.model_id)
            self.stats["duplicates"] += 1
            self._commit(consumer, tp, message.offset)
            return True
        event = self._unpublished.get(job.job_id)
        if event is None:
            span = job.span()
            log.info("job %s: retrain %s v%s on the pairs predicted %s .. %s%s (rules: %s)", job.job_id,
                     job.model_id, job.model_version, span["from"], span["to"],
                     f", the latest {job.data_pairs}" if job.data_pairs else "", ", ".join(job.rules) or "-")
            self.stats["jobs"] += 1

            def report(deferred: dict[str, Any]) -> None:
                self._publish_report(producer, deferred)

            try:
                event = self._in_background(consumer, lambda: self.process(job, report))
            except InterruptedError:
                log.warning("job %s: abandoned on stop; it will be delivered again", job.job_id)
                return False
            except Exception as exc:  # infrastructure: retry a few times, then report
                attempts = self._attempts[job.job_id] = self._attempts.get(job.job_id, 0) + 1
                if attempts < self.max_attempts:
                    log.exception("job %s: attempt %d/%d failed; retrying", job.job_id, attempts, self.max_attempts)
                    self.stats["retries"] += 1
                    self._retry_later(consumer, tp, message)
                    return False
                log.exception("job %s: giving up after %d attempts", job.job_id, attempts)
                event = failure_event(job, f"{type(exc).__name__}: {exc} (after {attempts} attempts)")
            if event is None:
                return False
        if not self._send(producer, self.updates_topic, job.model_id.encode(), event, consumer, tp, message):
            self._unpublished[job.job_id] = event
            return False
        self._unpublished.pop(job.job_id, None)
        self._attempts.pop(job.job_id, None)
        self.published.append(event)
        self._done[job.job_id] = event
        while len(self._done) > self.remember:
            self._done.popitem(last=False)
        if event["status"] == STATUS_SUCCEEDED:
            self.stats["succeeded"] += 1
            log.info("job %s: published %s v%s (was v%s), holdout %s (serving model: %s), profile %s",
                     job.job_id, job.model_id, event["model_version"], event["previous_version"],
                     _show_metrics(event["holdout"]), _show_metrics(event["previous_holdout"]), event["profile_path"])
        else:
            self.stats["failed"] += 1
            log.warning("job %s: retrain of %s failed: %s", job.job_id, job.model_id, event["reason"])
        self._commit(consumer, tp, message.offset)
        return True

    def _publish_report(self, producer: Any, event: dict[str, Any]) -> None:
        """Publish an interim event (a deferral) from the job's thread; a failure only logs."""
        from kafka.errors import KafkaError

        try:
            producer.send(self.updates_topic, key=event["model_id"].encode(),
                          value=json.dumps(event, allow_nan=False).encode()).get(timeout=30)
            self.published.append(event)
        except KafkaError as exc:
            log.warning("cannot publish the %s event of job %s to %s: %s", event["status"], event["job_id"],
                        self.updates_topic, exc)

    def _in_background(self, consumer: Any, work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run ``work`` in a thread; meanwhile keep polling (partitions paused) to stay in the group."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = work()
            except BaseException as exc:  # handed to the calling thread
                outcome["error"] = exc

        thread = threading.Thread(target=target, name="driftwarden-retrain-job", daemon=True)
        consumer.pause(*consumer.assignment())
        thread.start()
        stop_deadline: float | None = None
        try:
            while thread.is_alive():
                thread.join(timeout=self.poll_interval)
                # Partitions assigned by a rebalance meanwhile are not paused: put their records back.
                for tp, messages in consumer.poll(timeout_ms=0).items():
                    if messages:
                        consumer.seek(tp, messages[0].offset)
                consumer.pause(*consumer.assignment())
                if self.stopping and thread.is_alive():
                    if stop_deadline is None:
                        log.info("stopping: waiting up to %.0fs for the job in progress", self.stop_grace)
                        stop_deadline = time.monotonic() + self.stop_grace
                    elif time.monotonic() > stop_deadline:
                        raise InterruptedError("stopping")
        finally:
            consumer.resume(*(tp for tp in consumer.paused() if tp in consumer.assignment()))
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _send(self, producer: Any, topic: str, key: bytes | None, doc: Mapping[str, Any], consumer: Any,
              tp: Any, message: Any) -> bool:
        from kafka.errors import KafkaError

        try:
            producer.send(topic, key=key, value=json.dumps(doc, allow_nan=False).encode()).get(timeout=30)
            return True
        except KafkaError as exc:
            log.error("cannot publish to %s: %s; the job will be tried again", topic, exc)
            self._retry_later(consumer, tp, message)
            return False

    def _retry_later(self, consumer: Any, tp: Any, message: Any) -> None:
        consumer.seek(tp, message.offset)
        self._stop.wait(min(5.0, 1.0 + self.poll_interval))

    def _commit(self, consumer: Any, tp: Any, offset: int) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        try:
            consumer.commit({tp: OffsetAndMetadata(offset + 1, "", -1)})
        except KafkaError as exc:  # e.g. the partition moved in a rebalance: the job comes again
            log.warning("cannot commit %s[%d]@%d: %s", tp.topic, tp.partition, offset + 1, exc)


def _assignment_logger() -> Any:
    """A rebalance listener that logs the job partitions this worker gets and loses."""
    from kafka import ConsumerRebalanceListener

    class LogAssignments(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            if revoked:
                log.info("retrain worker: released %s", _show_partitions(revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            log.info("retrain worker: assigned %s", _show_partitions(assigned) or "no partitions")

    return LogAssignments()


def _show_partitions(partitions: Iterable[Any]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))


_HEADLINE_METRICS = ("accuracy", "f1", "roc_auc", "rmse", "mae", "r2")


def _show_metrics(metrics: Mapping[str, float]) -> str:
    """The headline metrics for a log line (the event carries them all)."""
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in _HEADLINE_METRICS if k in metrics) or "-"


def run_retrain_worker(config_path: str) -> int:
    """``driftwarden retrain-worker -c CONFIG``: run until SIGTERM/SIGINT."""
    from streams.broker import create_topics
    from streams.config import Config, ConfigError, redacted
    from streams.kafka import client_options

    cfg = Config.load(config_path)
    log.info("driftwarden retrain worker starting: %s", redacted(cfg))
    try:
        worker = RetrainWorker.from_config(cfg)
    except TrainerError as exc:
        raise ConfigError(f"retrain.trainer: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"retrain: {exc}") from None
    topics = cfg.kafka.topics
    create_topics(cfg.kafka.bootstrap, [topics.retrain_jobs, topics.labelled, topics.model_updates,
                                        topics.dead_letters], cfg.kafka.partitions, **client_options(cfg))

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        worker.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


__all__: Sequence[str] = ("CONSUMER_OPTIONS", "PairCollector", "RetrainWorker", "pairs_frame", "run_retrain_worker")
