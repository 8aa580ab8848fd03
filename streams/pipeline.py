"""The worker's work, independent of Faust: messages in, points/alerts/jobs out.

:class:`Pipeline` is what the Faust agent calls for every batch it takes from
Kafka, and what ``replay`` calls for batches read from files: one code path
for both. It parses and validates, routes bad input to dead letters, joins
feedback, hands column batches to each model's :class:`~streams.monitor.ModelMonitor`
and collects what closed windows produced.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import orjson

from detectors.points import Point
from streams.config import Config
from streams.events import Feedback, Prediction, Rejection, parse_feedback, parse_predictions, schemas_from_config
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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message with its reason, as published to ``dead-letters``."""

    message: RawMessage
    reason: str
    index: int | None = None
    model_id: str | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "topic": self.message.topic,
            "partition": self.message.partition,
            "offset": self.message.offset,
            "reason": self.reason,
            "payload_b64": base64.b64encode(self.message.value).decode("ascii"),
        }
        if self.index is not None:
            doc["index"] = self.index
        if self.model_id is not None:
            doc["model_id"] = self.model_id
        return orjson.dumps(doc)


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
                 *, policies: Mapping[str, PolicyEngine] | None = None, expire_every: int = 50_000) -> None:
        self.cfg = cfg
        self.monitors = dict(monitors)
        self.policies = dict(policies or {})
        self.schemas = schemas_from_config(cfg.models, cfg.validation.type_errors)
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
        for message in messages:
            if message.kind == PREDICTION:
                events, rejections = parse_predictions(message.value, self.schemas)
            else:
                events, rejections = parse_feedback(message.value, self.schemas)
            for rejection in rejections:
                outcome.dead_letters.append(_dead_letter(message, rejection))
                if rejection.model_id in self.monitors:
                    # counted in the window open when it arrived, like a pair
                    segment(rejection.model_id).add_mark("dead_letters")
                else:
                    rejected_by_model[""] = rejected_by_model.get("", 0) + 1
            for event in events:
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
            "join": {"watermark": self.join.watermark, "counts": self.join.counts.as_dict(),
                     # they decide when the join expires entries: a restart must not move that point
                     "since_expiry": self._since_expiry, "since_full_sweep": self._since_full_sweep},
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
        self._since_expiry = int(join.get("since_expiry", 0))
        self._since_full_sweep = int(join.get("since_full_sweep", 0))
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


def _dead_letter(message: RawMessage, rejection: Rejection) -> DeadLetter:
    return DeadLetter(message=message, reason=rejection.reason, index=rejection.index, model_id=rejection.model_id)

