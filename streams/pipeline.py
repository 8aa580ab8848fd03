"""The worker's work, independent of Faust: messages in, points/alerts/jobs out.

:class:`Pipeline` is what the Faust agent calls for every batch it takes from
Kafka, and what ``replay`` calls for batches read from files: one code path
for both. It parses and validates, routes bad input to dead letters, joins
feedback, hands column batches to each model's :class:`~streams.monitor.ModelMonitor`
and collects what closed windows produced.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import orjson

from detectors.points import Point
from streams.config import Config
from streams.events import (Feedback, Limits, Prediction, Rejection, cap, parse_feedback, parse_predictions,
                            schemas_from_config)
from streams.join import FeedbackJoin, JoinStore, LabelledPair
from retrain.events import Alert, RetrainTrigger
from retrain.policy import PolicyEngine
from streams.monitor import ModelMonitor, WindowOutput

log = logging.getLogger(__name__)

PREDICTION = "prediction"
FEEDBACK = "feedback"


class RawMessage(NamedTuple):
    """One Kafka message (or one line of a replayed file). A tuple: the worker builds one per
    message, and a frozen dataclass costs four times as much to create."""

    kind: str  # PREDICTION or FEEDBACK
    value: bytes
    key: bytes | None = None
    topic: str = ""
    partition: int = 0
    offset: int = -1


DEAD_LETTER_PAYLOAD_BYTES = 65_536
"""Default most bytes of the original message a dead letter carries (``validation.dead_letter_payload_bytes``)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message with its reason, as published to ``dead-letters``.

    The record is bounded whatever the input: the reason is capped (:func:`streams.events.cap`)
    and at most ``payload_bytes`` of the message are kept. A longer message keeps its first
    ``payload_bytes`` with ``"truncated": true``, its ``size`` (bytes) and ``sha256`` (hex): with ``topic``,
    ``partition`` and ``offset`` that finds and proves the original on the source topic.
    ``payload_bytes=0`` keeps no payload at all (a reference only).

    The dead letters of one message share one budget of ``validation.dead_letter_payload_bytes``
    (the pipeline sets ``payload_bytes``): the first carries the payload (truncated to the budget),
    each further one carries the whole payload only while the budget lasts, else a reference — so
    an array of 10,000 bad events cannot turn one message into gigabytes of dead letters.

    >>> letter = DeadLetter(RawMessage("prediction", b"x" * 10, None, "predictions", 0, 7), "not JSON", payload_bytes=4)
    >>> doc = orjson.loads(letter.to_json())
    >>> doc["payload_b64"], doc["size"], doc["truncated"], doc["sha256"][:12]
    ('eHh4eA==', 10, True, 'fc11d6f28e59')
    """

    message: RawMessage
    reason: str
    index: int | None = None
    model_id: str | None = None
    limit: str | None = None
    """The ``validation`` key that rejected the message, if a limit did."""
    payload_bytes: int = DEAD_LETTER_PAYLOAD_BYTES

    def to_json(self) -> bytes:
        value = self.message.value
        doc: dict[str, Any] = {
            "topic": self.message.topic,
            "partition": self.message.partition,
            "offset": self.message.offset,
            "reason": cap(self.reason),
            "payload_b64": base64.b64encode(value[:self.payload_bytes]).decode("ascii"),
        }
        if len(value) > self.payload_bytes:
            doc.update(truncated=True, size=len(value), sha256=hashlib.sha256(value).hexdigest())
        if self.index is not None:
            doc["index"] = self.index
        if self.model_id is not None:
            doc["model_id"] = cap(self.model_id, 200)
        if self.limit is not None:
            doc["limit"] = self.limit
        return orjson.dumps(doc)


def limits_of(cfg: Config) -> Limits:
    """The parser's :class:`~streams.events.Limits` from the ``validation`` section."""
    v = cfg.validation
    return Limits(max_message_bytes=v.max_message_bytes, max_array_length=v.max_array_length,
                  max_fields=v.max_fields, max_string_length=v.max_string_length, max_depth=v.max_depth)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A retrain trigger and the window that fired it (its evidence and offsets)."""

    trigger: RetrainTrigger
    window: WindowOutput


@dataclass
class Outcome:
    """Everything one batch produced."""

    points: list[Point] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    windows: list[WindowOutput] = field(default_factory=list)
    pairs: list[LabelledPair] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    jobs: list[JobRequest] = field(default_factory=list)


class Pipeline:
    """Parse → validate → join → per-model monitors, for one partition's batches."""

    def __init__(self, cfg: Config, monitors: Mapping[str, ModelMonitor], store: JoinStore,
                 *, policies: Mapping[str, PolicyEngine] | None = None, expire_every: int = 50_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.monitors = dict(monitors)
        self.policies = dict(policies or {})
        self.schemas = schemas_from_config(cfg.models, cfg.validation.type_errors)
        self.limits = limits_of(cfg)
        self.clock = clock
        """Wall clock for the time check's upper bound (see :meth:`_out_of_time`)."""
        past = cfg.validation.max_past_seconds
        self.max_past_seconds = cfg.join.ttl_seconds if past is None else past
        self.join = FeedbackJoin(store, ttl_seconds=cfg.join.ttl_seconds, max_entries=cfg.join.max_entries)
        self.expire_every = expire_every
        self._since_expiry = 0
        self._since_full_sweep = 0
        self.events_seen = 0
        self.dead_letter_count = 0
        self.internal_errors = 0

    def process(self, messages: Sequence[RawMessage]) -> Outcome:
        """Process one batch of messages in order; never raises on bad input."""
        outcome = Outcome()
        # Per model: the batch's new predictions, and the joined pairs with, for each, how many of
        # the model's predictions came before it in this batch (to place it in the right window).
        segments: dict[str, _ModelBatch] = {}

        def segment(model_id: str) -> _ModelBatch:
            found = segments.get(model_id)
            if found is None:
                found = segments[model_id] = _ModelBatch()
            return found

        rejected_by_model: dict[str, int] = {}  # "" = rejections no model can be told for
        unattributed_limits: dict[str, int] = {}
        payload_bytes = self.cfg.validation.dead_letter_payload_bytes
        now = self.clock()

        budget = {"left": payload_bytes, "first": True}  # of the message in hand; see DeadLetter

        def reject(message: RawMessage, rejection: Rejection) -> None:
            size = len(message.value)
            if budget["first"]:
                keep, budget["first"] = payload_bytes, False
            else:
                keep = size if size <= budget["left"] else 0
            budget["left"] -= min(size, keep)
            outcome.dead_letters.append(_dead_letter(message, rejection, keep))
            if rejection.model_id in self.monitors:
                # counted in the window open when it arrived, like a pair
                segment(rejection.model_id).add_mark("dead_letters")
                if rejection.limit is not None:
                    segment(rejection.model_id).add_mark(f"rejected_{rejection.limit}")
            else:
                rejected_by_model[""] = rejected_by_model.get("", 0) + 1
                if rejection.limit is not None:
                    unattributed_limits[rejection.limit] = unattributed_limits.get(rejection.limit, 0) + 1

        for message in messages:
            budget.update(left=payload_bytes, first=True)
            if message.kind == PREDICTION:
                events, rejections = parse_predictions(message.value, self.schemas, self.limits)
            else:
                events, rejections = parse_feedback(message.value, self.schemas, self.limits)
            for rejection in rejections:
                reject(message, rejection)
            for event in events:
                late = self._out_of_time(event, now)
                if late is not None:
                    reject(message, late)
                    continue
                self.events_seen += 1
                if isinstance(event, Feedback):
                    pair = self.join.add_feedback(event)
                else:
                    if self.join.is_duplicate_prediction(event):
                        continue
                    segment(event.model_id).add_prediction(event, message.offset)
                    pair = self.join.add_prediction(event)
                if pair is not None:
                    segment(pair.prediction.model_id).add_pair(pair)
                    outcome.pairs.append(pair)
        self.dead_letter_count += len(outcome.dead_letters)
        if rejected_by_model.get(""):
            # Unattributable rejections (not JSON, unknown model) are counted on every monitor's
            # worker-wide figure; see ModelMonitor.count_worker.
            for monitor in self.monitors.values():
                monitor.count("dead_letters_unattributed", rejected_by_model[""])
                for limit, count in unattributed_limits.items():
                    monitor.count(f"rejected_{limit}", count)
        self._since_expiry += len(messages)
        self._since_full_sweep += len(messages)
        if self._since_expiry >= self.expire_every:
            self._since_expiry = 0
            full = self._since_full_sweep >= len(self.join.store)  # whole table every table-size messages
            if full:
                self._since_full_sweep = 0
            for model_id, count in self.join.expire(full=full).items():
                if model_id in self.monitors:
                    self.monitors[model_id].count("expired", count)
        for model_id, count in self.join.take_evicted().items():
            if model_id in self.monitors:
                self.monitors[model_id].count("evicted", count)
        for model_id, batch in segments.items():
            monitor = self.monitors[model_id]
            try:
                windows = monitor.add_batch(batch.predictions, batch.pairs, batch.positions, batch.offsets,
                                            batch.marks)
                self._decide(model_id, monitor.take_log(), outcome)
                outcome.windows.extend(windows)
            except Exception:  # a detector bug must not stop the other models or the worker
                self.internal_errors += 1
                log.exception("model %s: %d predictions and %d pairs could not be evaluated", model_id,
                              len(batch.predictions), len(batch.pairs))
                monitor.count("internal_errors", 1)
        for window in outcome.windows:
            outcome.points.extend(window.points)
        return outcome

    def _out_of_time(self, event: Prediction | Feedback, now: float) -> Rejection | None:
        """A rejection when ``event`` is implausibly far from its partition's stream, else ``None``.

        The stream's time is the join's watermark (the largest event time accepted on this
        partition). Ahead: at most ``validation.max_future_seconds`` past the watermark or the
        wall clock, whichever is later — so the first events of an empty partition are checked
        against the wall clock, a partition idle for an hour accepts the next events, and a
        replay of last year's logs passes whatever its gaps. Behind: at most ``max_past_seconds``
        (default: the join TTL) before the watermark; nothing is behind an empty partition.
        A rejected event never reaches the join or a window, so it moves no watermark or clock.
        """
        reference = max(self.join.watermark, now)
        ahead = reference + self.cfg.validation.max_future_seconds
        behind = self.join.watermark - self.max_past_seconds
        t = event.timestamp
        if behind <= t <= ahead:
            return None
        kind = "prediction" if isinstance(event, Prediction) else "feedback"
        if t > ahead:
            reason = (f"{kind} {_short(event.prediction_id)}: timestamp {_iso(t)} is {t - reference:.0f} s "
                      f"ahead of the stream (watermark {_iso(self.join.watermark)}, clock {_iso(now)}); "
                      f"validation.max_future_seconds is {self.cfg.validation.max_future_seconds:g}")
            limit = "max_future_seconds"
        else:
            reason = (f"{kind} {_short(event.prediction_id)}: timestamp {_iso(t)} is {self.join.watermark - t:.0f} s "
                      f"behind the stream (watermark {_iso(self.join.watermark)}); "
                      f"validation.max_past_seconds is {self.max_past_seconds:g}")
            limit = "max_past_seconds"
        return Rejection(reason, model_id=event.model_id, limit=limit)

    def _decide(self, model_id: str, outputs: list[WindowOutput], outcome: Outcome) -> None:
        """Run the model's policy on each closed window and each instant detection (a CUSUM
        stream that crossed its threshold in this batch), in the order they happened; record
        alerts and retrain requests. Instant detections' points are written at once."""
        engine = self.policies.get(model_id)
        for window in outputs:
            if window.instant:
                outcome.points.extend(window.points)
            if engine is None:
                continue
            if window.instant:
                decision = engine.evaluate_instant(model_id=model_id, model_version=window.model_version,
                                                   time_ns=window.end_ns, points=window.points)
            else:
                decision = engine.evaluate(model_id=model_id, model_version=window.model_version,
                                           window_start_ns=window.start_ns, window_end_ns=window.end_ns,
                                           points=window.points)
            outcome.alerts.extend(decision.alerts)
            outcome.jobs.extend(JobRequest(trigger, window) for trigger in decision.jobs)

    def flush(self) -> Outcome:
        """Close every partial window (end of a replay)."""
        outcome = Outcome()
        for model_id, monitor in self.monitors.items():
            windows = monitor.flush()
            self._decide(model_id, monitor.take_log(), outcome)
            outcome.windows.extend(windows)
        for window in outcome.windows:
            outcome.points.extend(window.points)
        return outcome

    def snapshot(self) -> dict[str, Any]:
        return {
            "monitors": {model_id: m.snapshot() for model_id, m in self.monitors.items()},
            "join": {"watermark": self.join.watermark, "counts": self.join.counts.as_dict()},
            "policies": {model_id: engine.snapshot() for model_id, engine in self.policies.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        for model_id, snap in state.get("monitors", {}).items():
            if model_id in self.monitors:
                self.monitors[model_id].restore(snap)
        for model_id, snap in (state.get("policies") or {}).items():
            if model_id in self.policies:
                self.policies[model_id].restore(snap)
        join = state.get("join") or {}
        self.join.watermark = float(join.get("watermark", 0.0))
        for key, value in (join.get("counts") or {}).items():
            setattr(self.join.counts, key, int(value))


@dataclass
class _ModelBatch:
    predictions: list[Prediction] = field(default_factory=list)
    pairs: list[LabelledPair] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    marks: list[tuple[int, str]] = field(default_factory=list)
    """Counters (dead letters) with how many predictions of the batch came before each."""

    def add_mark(self, name: str) -> None:
        self.marks.append((len(self.predictions), name))

    def add_prediction(self, event: Prediction, offset: int) -> None:
        self.predictions.append(event)
        self.offsets.append(offset)

    def add_pair(self, pair: LabelledPair) -> None:
        self.pairs.append(pair)
        self.positions.append(len(self.predictions))


def _dead_letter(message: RawMessage, rejection: Rejection, payload_bytes: int) -> DeadLetter:
    return DeadLetter(message=message, reason=rejection.reason, index=rejection.index, model_id=rejection.model_id,
                      limit=rejection.limit, payload_bytes=payload_bytes)


def _iso(seconds: float) -> str:
    """An epoch time as RFC 3339 (UTC), for a reason."""
    if not math.isfinite(seconds) or seconds <= 0:
        return "none"
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def _short(text: str) -> str:
    return cap(repr(text), 80)

