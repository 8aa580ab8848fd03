"""The worker's work, independent of Faust: messages in, points/alerts/jobs out.

:class:`SourcePipeline` is stage 1 of one source partition: it parses and
validates, routes bad input to dead letters, joins feedback, and hands each
model's arrivals (predictions, joined pairs, counter marks, in arrival order)
to its :class:`~streams.monitor.ModelMonitor`, which returns the batch's pane
deltas (:class:`~streams.partials.ModelPartial`). Stage 2,
:class:`~streams.windows.ModelWindows`, merges those of every source
partition into model windows, points, alerts and retrain requests.

:class:`Pipeline` runs both in one process for one partition's batches, the
partials encoded and decoded as the internal topic carries them: ``replay``
runs it, and so does the worker's Faust agent for every batch it takes from
Kafka (until stage 2 consumes the internal topic).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import orjson

from detectors.points import Point
from streams.config import Config
from retrain.events import Alert
from streams.events import Feedback, Rejection, parse_feedback, parse_predictions, schemas_from_config
from streams.join import FeedbackJoin, JoinStore, LabelledPair
from streams.monitor import Arrival, ModelMonitor
from streams.partials import ModelPartial, decode, encode
from streams.windows import Decided, JobRequest, ModelWindows, WindowOutput

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


@dataclass
class SourceOutcome:
    """What stage 1 made of one batch of one source partition."""

    dead_letters: list[DeadLetter] = field(default_factory=list)
    pairs: list[LabelledPair] = field(default_factory=list)
    partials: list[ModelPartial] = field(default_factory=list)
    """Per touched model, the batch's pane deltas (for stage 2)."""


@dataclass
class Outcome:
    """Everything one batch produced through both stages."""

    points: list[Point] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    windows: list[WindowOutput] = field(default_factory=list)
    pairs: list[LabelledPair] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    jobs: list[JobRequest] = field(default_factory=list)

    def add(self, decided: Decided) -> None:
        self.points.extend(decided.points)
        self.windows.extend(w for w in decided.windows if not w.instant)
        self.alerts.extend(decided.alerts)
        self.jobs.extend(decided.jobs)


class SourcePipeline:
    """Stage 1 for one source partition: parse → validate → join → per-model pane deltas."""

    def __init__(self, cfg: Config, monitors: Mapping[str, ModelMonitor], store: JoinStore,
                 *, partition: int = 0, expire_every: int = 50_000) -> None:
        self.cfg = cfg
        self.partition = partition
        self.monitors = dict(monitors)
        self.schemas = schemas_from_config(cfg.models, cfg.validation.type_errors)
        self.join = FeedbackJoin(store, ttl_seconds=cfg.join.ttl_seconds, max_entries=cfg.join.max_entries)
        self.expire_every = expire_every
        self.seq = 0
        """Batches processed: the sequence number of the next partial (stage 2 merges each once)."""
        self._since_expiry = 0
        self._since_full_sweep = 0
        self.events_seen = 0
        self.dead_letter_count = 0
        self.internal_errors = 0

    def process(self, messages: Sequence[RawMessage]) -> SourceOutcome:
        """Process one batch of messages in order; never raises on bad input."""
        outcome = SourceOutcome()
        arrivals: dict[str, list[Arrival]] = {}  # per model, in arrival order
        counters: dict[str, dict[str, int]] = {}
        unattributed = 0  # rejections no model can be told for (not JSON, unknown model)
        for message in messages:
            if message.kind == PREDICTION:
                events, rejections = parse_predictions(message.value, self.schemas)
            else:
                events, rejections = parse_feedback(message.value, self.schemas)
            for rejection in rejections:
                outcome.dead_letters.append(_dead_letter(message, rejection))
                if rejection.model_id in self.monitors:
                    # counted in the pane open when it arrived, like a pair
                    arrivals.setdefault(rejection.model_id, []).append(Arrival(mark="dead_letters"))
                else:
                    unattributed += 1
            for event in events:
                self.events_seen += 1
                if isinstance(event, Feedback):
                    pair = self.join.add_feedback(event)
                else:
                    if self.join.is_duplicate_prediction(event):
                        continue
                    arrivals.setdefault(event.model_id, []).append(Arrival(prediction=event, offset=message.offset))
                    pair = self.join.add_prediction(event)
                if pair is not None:
                    arrivals.setdefault(pair.prediction.model_id, []).append(Arrival(pair=pair))
                    outcome.pairs.append(pair)
        self.dead_letter_count += len(outcome.dead_letters)

        def count(model_id: str, name: str, value: int) -> None:
            if model_id in self.monitors and value:
                mine = counters.setdefault(model_id, {})
                mine[name] = mine.get(name, 0) + value

        for model_id in self.monitors:  # counted on every monitor's worker-wide figure
            count(model_id, "dead_letters_unattributed", unattributed)
        self._since_expiry += len(messages)
        self._since_full_sweep += len(messages)
        if self._since_expiry >= self.expire_every:
            self._since_expiry = 0
            full = self._since_full_sweep >= len(self.join.store)  # whole table every table-size messages
            if full:
                self._since_full_sweep = 0
            for model_id, value in self.join.expire(full=full).items():
                count(model_id, "expired", value)
        for model_id, value in self.join.take_evicted().items():
            count(model_id, "evicted", value)
        seq = self.seq
        self.seq += 1
        for model_id, monitor in self.monitors.items():
            mine = arrivals.get(model_id, [])
            extra = counters.get(model_id)
            if not mine and not extra:
                continue
            try:
                partial = monitor.add_batch(mine, source=self.partition, seq=seq, counters=extra)
            except Exception:  # a detector bug must not stop the other models or the worker
                self.internal_errors += 1
                log.exception("model %s: a batch of %d items could not be evaluated", model_id, len(mine))
                partial = monitor.add_batch([], source=self.partition, seq=seq, counters={"internal_errors": 1})
            if partial is not None:
                outcome.partials.append(partial)
        return outcome

    def idle(self) -> list[ModelPartial]:
        """Every model's idle marker: this partition is caught up and has been silent, so stage 2
        stops waiting for its watermark until it publishes again. Takes a sequence number like a
        batch (snapshot the state before publishing, or a restart reuses the number)."""
        seq = self.seq
        self.seq += 1
        return [monitor.idle(source=self.partition, seq=seq) for monitor in self.monitors.values()]

    def end_of_input(self) -> list[ModelPartial]:
        """Every model's final partial (replay's end of input): stage 2 may close every pane."""
        seq = self.seq
        self.seq += 1
        return [monitor.end_of_input(source=self.partition, seq=seq) for monitor in self.monitors.values()]

    def snapshot(self) -> dict[str, Any]:
        return {
            "monitors": {model_id: m.snapshot() for model_id, m in self.monitors.items()},
            "join": {"watermark": self.join.watermark, "counts": self.join.counts.as_dict()},
            "seq": self.seq,
            "since_expiry": [self._since_expiry, self._since_full_sweep],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        for model_id, snap in state.get("monitors", {}).items():
            if model_id in self.monitors:
                self.monitors[model_id].restore(snap)
        join = state.get("join") or {}
        self.join.watermark = float(join.get("watermark", 0.0))
        for key, value in (join.get("counts") or {}).items():
            setattr(self.join.counts, key, int(value))
        self.seq = int(state.get("seq", 0))
        self._since_expiry, self._since_full_sweep = state.get("since_expiry", [0, 0])


class Pipeline:
    """Both stages in one process, for one source partition's batches: stage 1's partials go
    through the internal topic's codec into each model's stage 2. ``replay`` runs this, so
    recorded events give the figures of a worker whose stage 2 merges every partition."""

    def __init__(self, source: SourcePipeline, windows: Mapping[str, ModelWindows]) -> None:
        self.source = source
        self.windows = dict(windows)

    @property
    def cfg(self) -> Config:
        return self.source.cfg

    @property
    def join(self) -> FeedbackJoin:
        return self.source.join

    @property
    def schemas(self) -> Any:
        return self.source.schemas

    @property
    def monitors(self) -> dict[str, ModelMonitor]:
        return self.source.monitors

    @property
    def events_seen(self) -> int:
        return self.source.events_seen

    @property
    def dead_letter_count(self) -> int:
        return self.source.dead_letter_count

    @property
    def internal_errors(self) -> int:
        return self.source.internal_errors

    def process(self, messages: Sequence[RawMessage]) -> Outcome:
        """Process one batch through both stages; never raises on bad input."""
        first = self.source.process(messages)
        outcome = Outcome(dead_letters=first.dead_letters, pairs=first.pairs)
        self._merge(first.partials, outcome)
        return outcome

    def flush(self) -> Outcome:
        """End of input: close every window that holds something."""
        outcome = Outcome()
        self._merge(self.source.end_of_input(), outcome)
        return outcome

    def _merge(self, partials: Sequence[ModelPartial], outcome: Outcome) -> None:
        for partial in partials:
            merged = decode(encode(partial))  # exactly what the internal topic carries
            try:
                outcome.add(self.windows[merged.model_id].merge(merged))
            except Exception:  # a detector bug must not stop the other models or the worker
                self.source.internal_errors += 1
                log.exception("model %s: windows could not be merged", merged.model_id)

    def snapshot(self) -> dict[str, Any]:
        return {"source": self.source.snapshot(),
                "windows": {model_id: w.snapshot() for model_id, w in self.windows.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.source.restore(state.get("source", {}))
        for model_id, snap in (state.get("windows") or {}).items():
            if model_id in self.windows:
                self.windows[model_id].restore(snap)


def _dead_letter(message: RawMessage, rejection: Rejection) -> DeadLetter:
    return DeadLetter(message=message, reason=rejection.reason, index=rejection.index, model_id=rejection.model_id)

