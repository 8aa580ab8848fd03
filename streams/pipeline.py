"""The worker's work, independent of Faust: messages in, points/alerts/jobs out.

:class:`SourcePipeline` is stage 1 of one source partition: it parses and
validates, routes bad input to dead letters, joins feedback, and hands each
model's arrivals (predictions, joined pairs, counter marks, in arrival order)
to its :class:`~streams.monitor.ModelMonitor`, which returns the batch's pane
deltas (:class:`~streams.partials.ModelPartial`). Stage 2,
:class:`~streams.windows.ModelWindows`, merges those of every source
partition into model windows, points, alerts and retrain requests.

:class:`Merger` is stage 2 of the models one owner holds: each partial to its
model's windows. The worker runs it per partition of the internal topic
``<group_id>-panes`` (:mod:`streams.app`); :class:`Pipeline` runs both stages in
one process for one partition's batches, the partials encoded and decoded as
the internal topic carries them (``replay`` runs it) — the same :class:`Merger`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import time
from itertools import chain
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import orjson

from detectors.points import Point
from streams import caught
from streams.collector import one_collection_per_batch
from streams.config import Config
from retrain.events import Alert
from retrain.metrics import monitor_counter
from streams.evaluation import PredictionBlock
from streams.events import (Feedback, Limits, Prediction, Rejection, cap, parse_feedback_batch,
                            parse_prediction_batch, schemas_from_config)
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


SUB_BATCH_BYTES = 2 * 1024 * 1024
"""Most message bytes stage 1 evaluates into one partial per model (:meth:`SourcePipeline.process`).
A partial is ~40 bytes per event once compressed, mostly evidence rows; 2 MiB of messages is a few
thousand events, so a partial stays far below the ~1 MB a Kafka message may hold."""


def sub_batches(messages: Sequence[RawMessage], most: int) -> list[Sequence[RawMessage]]:
    """``messages`` cut in order into runs of at most ``most`` value bytes (a larger message alone).

    >>> [len(c) for c in sub_batches([RawMessage(PREDICTION, b"x" * 4, None, "p", 0, i) for i in range(5)], 8)]
    [2, 2, 1]
    """
    chunks: list[Sequence[RawMessage]] = []
    start, size = 0, 0
    for i, message in enumerate(messages):
        length = len(message.value)
        if size and size + length > most:
            chunks.append(messages[start:i])
            start, size = i, 0
        size += length
    chunks.append(messages[start:])
    return chunks


class SourcePipeline:
    """Stage 1 for one source partition: parse → validate → join → per-model pane deltas."""

    def __init__(self, cfg: Config, monitors: Mapping[str, ModelMonitor], store: JoinStore,
                 *, partition: int = 0, expire_every: int = 50_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.partition = partition
        self.monitors = dict(monitors)
        self.schemas = schemas_from_config(cfg.models, cfg.validation.type_errors)
        self.limits: Limits = cfg.validation  # a Limits: the parser's bounds are declared once
        self.clock = clock
        """Wall clock for the time check's upper bound (see :meth:`_out_of_time`)."""
        past = cfg.validation.max_past_seconds
        self.max_past_seconds = cfg.join.ttl_seconds if past is None else past
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
        """Process one batch of messages in order; never raises on bad input.

        A batch of more than :data:`SUB_BATCH_BYTES` of messages is evaluated in consecutive
        sub-batches, each its own partial per model (its own ``seq``), so that no partial outgrows
        the broker's message limit (a fetch of 2,000 arrays of 100 events would be one partial of
        ~10 MB, which the producer refuses). The cut depends on the messages alone, so a batch read
        again after a crash is cut the same way; batch boundaries do not change the figures."""
        with one_collection_per_batch():
            chunks = sub_batches(messages, SUB_BATCH_BYTES)
            if len(chunks) == 1:
                return self._process(messages)
            outcome = SourceOutcome()
            for chunk in chunks:
                part = self._process(chunk)
                outcome.dead_letters += part.dead_letters
                outcome.pairs += part.pairs
                outcome.partials += part.partials
            return outcome

    def _process(self, messages: Sequence[RawMessage]) -> SourceOutcome:
        outcome = SourceOutcome()
        arrivals: dict[str, list[Arrival]] = {}  # per model, in arrival order
        blocks: dict[str, PredictionBlock] = {}  # per model, its predictions (an arrival is a row)
        counters: dict[str, dict[str, int]] = {}
        unattributed = 0  # rejections no model can be told for (not JSON, unknown model)
        unattributed_limits: dict[str, int] = {}
        payload_bytes = self.cfg.validation.dead_letter_payload_bytes
        now = self.clock()

        budget = {"left": payload_bytes, "first": True}  # of the message in hand; see DeadLetter

        def reject(message: RawMessage, rejection: Rejection) -> None:
            nonlocal unattributed
            size = len(message.value)
            if budget["first"]:
                keep, budget["first"] = payload_bytes, False
            else:
                keep = size if size <= budget["left"] else 0
            budget["left"] -= min(size, keep)
            outcome.dead_letters.append(_dead_letter(message, rejection, keep))
            if rejection.model_id in self.monitors:
                # counted in the pane open when it arrived, like a pair
                mine = arrivals.setdefault(rejection.model_id, [])
                mine.append(Arrival(mark="dead_letters"))
                if rejection.limit is not None:
                    mine.append(Arrival(mark=f"rejected_{rejection.limit}"))
            else:
                unattributed += 1
                if rejection.limit is not None:
                    unattributed_limits[rejection.limit] = unattributed_limits.get(rejection.limit, 0) + 1

        parsed = self._parse(messages)
        self.join.prefetch(chain.from_iterable(events for events, _ in parsed))
        for message, (events, rejections) in zip(messages, parsed):
            budget.update(left=payload_bytes, first=True)
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
                    block = blocks.get(event.model_id)
                    if block is None:
                        block = blocks[event.model_id] = PredictionBlock()
                    arrivals.setdefault(event.model_id, []).append(Arrival(row=block.add(event, message.offset)))
                    pair = self.join.add_prediction(event)
                if pair is not None:
                    arrivals.setdefault(pair.prediction.model_id, []).append(Arrival(pair=pair))
                    outcome.pairs.append(pair)
        self.dead_letter_count += len(outcome.dead_letters)

        def count(model_id: str, name: str, value: int) -> None:
            monitor_counter(name)
            if model_id in self.monitors and value:
                mine = counters.setdefault(model_id, {})
                mine[name] = mine.get(name, 0) + value

        for model_id in self.monitors:  # counted on every monitor's worker-wide figure
            count(model_id, "dead_letters_unattributed", unattributed)
            for limit, value in unattributed_limits.items():
                count(model_id, f"rejected_{limit}", value)
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
                partial = monitor.add_batch(mine, source=self.partition, seq=seq, counters=extra,
                                            block=blocks.get(model_id))
            except Exception:  # a detector bug must not stop the other models or the worker
                self.internal_errors += 1
                caught.report(log, "model %s: a batch of %d items could not be evaluated", model_id, len(mine))
                partial = monitor.add_batch([], source=self.partition, seq=seq, counters={"internal_errors": 1})
            if partial is not None:
                outcome.partials.append(partial)
        return outcome

    def _parse(self, messages: Sequence[RawMessage]) -> list[tuple[list[Prediction] | list[Feedback], list[Rejection]]]:
        """Each message's events and rejections, in the batch's order: the batch's predictions and
        its feedback each decoded at once (:func:`~streams.events.parse_prediction_batch`)."""
        out: list[Any] = [None] * len(messages)
        for predictions, parse in ((True, parse_prediction_batch), (False, parse_feedback_batch)):
            chosen = [i for i, message in enumerate(messages) if (message.kind == PREDICTION) is predictions]
            if chosen:
                for i, parsed in zip(chosen, parse([messages[i].value for i in chosen], self.schemas, self.limits)):
                    out[i] = parsed
        return out

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

    def idle(self) -> list[ModelPartial]:
        """Every model's idle marker: this partition is caught up and has been silent, so stage 2
        stops waiting for its watermark until it publishes again. It carries the sequence number
        of the last batch (``seq - 1``; -1 before any) and changes no state: it is not a batch,
        needs no intent or snapshot, and a copy of it (a restart sends it again) changes nothing."""
        return [monitor.idle(source=self.partition, seq=self.seq - 1) for monitor in self.monitors.values()]

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


class Merger:
    """Stage 2 of the models one owner holds: every partial goes to its model's
    :class:`~streams.windows.ModelWindows` (the worker holds one per partition of the internal
    topic, which is keyed by ``model_id``; ``replay`` one for everything)."""

    def __init__(self, windows: Mapping[str, ModelWindows]) -> None:
        self.windows = dict(windows)
        self.touched: set[str] = set()
        """Models that merged a partial here (only they are in the snapshot)."""
        self.internal_errors = 0
        self.unreadable = 0
        """Messages of the internal topic that could not be decoded, or named a model not configured."""

    def merge(self, partial: ModelPartial, outcome: Outcome) -> None:
        """Merge one partial into its model's windows; what that closed goes into ``outcome``."""
        windows = self.windows.get(partial.model_id)
        if windows is None:
            self.unreadable += 1
            log.warning("a partial names model %r, which is not configured: ignored", cap(partial.model_id, 200))
            return
        self.touched.add(partial.model_id)
        try:
            outcome.add(windows.merge(partial))
        except Exception:  # a detector bug must not stop the other models or the worker
            self.internal_errors += 1
            caught.report(log, "model %s: windows could not be merged", partial.model_id)

    def merge_message(self, data: bytes, outcome: Outcome) -> None:
        """Decode one message of the internal topic and merge it."""
        try:
            partial = decode(data)
        except Exception as exc:  # noqa: BLE001 - a message that is not a partial of this version
            self.unreadable += 1
            log.error("a message of %d bytes on the internal topic is not a partial (%s: %s): ignored",
                      len(data), type(exc).__name__, cap(str(exc), 300))
            return
        self.merge(partial, outcome)

    def snapshot(self) -> dict[str, Any]:
        return {model_id: self.windows[model_id].snapshot() for model_id in sorted(self.touched)}

    def restore(self, state: Mapping[str, Any]) -> None:
        for model_id, snap in state.items():
            if model_id in self.windows:
                self.windows[model_id].restore(snap)
                self.touched.add(model_id)


class Pipeline:
    """Both stages in one process, for one source partition's batches: stage 1's partials go
    through the internal topic's codec into each model's stage 2. ``replay`` runs this, so
    recorded events give the figures of a worker whose stage 2 merges every partition."""

    def __init__(self, source: SourcePipeline, windows: Mapping[str, ModelWindows]) -> None:
        self.source = source
        self.merger = Merger(windows)
        self.windows = self.merger.windows

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
        return self.source.internal_errors + self.merger.internal_errors

    def process(self, messages: Sequence[RawMessage]) -> Outcome:
        """Process one batch through both stages; never raises on bad input."""
        with one_collection_per_batch():
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
            # exactly what the internal topic carries
            self.merger.merge_message(encode(partial, self.cfg.kafka.panes_codec), outcome)

    def snapshot(self) -> dict[str, Any]:
        return {"source": self.source.snapshot(),
                "windows": {model_id: w.snapshot() for model_id, w in self.windows.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.source.restore(state.get("source", {}))
        for model_id, snap in (state.get("windows") or {}).items():
            if model_id in self.windows:
                self.windows[model_id].restore(snap)


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

