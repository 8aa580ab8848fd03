"""Join feedback to its prediction, whichever arrives first, exactly once.

The join state is a key-value store keyed by ``prediction_id`` (in the worker,
a changelog-backed Faust table; in ``replay`` and unit tests, a ``dict``). An
entry holds the prediction waiting for its label, or the label waiting for its
prediction, or, once joined, a small tombstone that makes a duplicate feedback
(or a redelivered prediction) a no-op until the entry's TTL ends.

Counts the README promises:

- ``pairs``: a prediction and its first feedback, joined once;
- ``duplicate_feedback``: feedback for a prediction that already has a label;
- ``duplicate_predictions``: a ``prediction_id`` seen again while its entry lives
  (a producer retry or a redelivery after a restart) — not counted again;
- ``orphan_feedback``: feedback whose prediction never arrived within the TTL;
- ``expired_predictions``: predictions whose label never arrived within the TTL;
- ``late_feedback``: feedback arriving after its prediction expired is an orphan
  too (it waits a TTL for a prediction that will not come, then is counted);
- ``evicted_predictions`` / ``evicted_feedback`` / ``evicted_tombstones``: entries
  dropped, oldest first, because the table held more than ``max_entries`` — the
  bound that keeps memory set by configuration rather than by traffic × TTL. A
  label arriving after its prediction was evicted waits and ends as an orphan.

TTLs run on event time (the largest timestamp seen), so replaying last month's
logs expires entries exactly as the live worker did.

"Oldest" for eviction is insertion order: the table is ordered by when each
``prediction_id`` first arrived (a tombstone keeps its entry's place), which the
store keeps in O(1) (:class:`~collections.OrderedDict`); arrival order is event
time up to the producers' own disorder, and it is what a restarted worker
recovers from the changelog, so it evicts the same entries next.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, MutableMapping, Protocol, Sequence

import orjson

from streams.events import Feedback, Prediction

log = logging.getLogger(__name__)

EVICTION_WARNING_SECONDS = 60.0
"""At most one eviction warning per this many seconds of event time (the first eviction always warns)."""

# An entry is a small list (compact in memory and in the changelog):
# [event time, model id, state, payload]
TIME, MODEL, STATE, PAYLOAD = 0, 1, 2, 3
WAITING_PREDICTION = "p"  # payload: the Prediction (the changelog holds it packed: pack_prediction)
WAITING_LABEL = "l"  # payload: [label, feedback time]
JOINED = "j"  # payload: None; kept until the TTL so duplicates and redeliveries are recognised


class JoinStore(Protocol):
    """The little a join needs from its state: get, set, delete, iterate, size, and the oldest entry.

    ``set`` on a new key places it last; on an existing key it keeps the key's place.
    """

    def get(self, key: str) -> list[Any] | None: ...

    def set(self, key: str, value: list[Any]) -> None: ...

    def delete(self, key: str) -> None: ...

    def items(self) -> Iterator[tuple[str, list[Any]]]: ...

    def oldest(self) -> tuple[str, list[Any]] | None:
        """The entry inserted first (O(1)); ``None`` when empty. A waiting prediction's payload may
        be ``None`` here (eviction needs its time, model and state only)."""
        ...

    def expiring(self, horizon: float) -> list[tuple[str, list[Any]]]:
        """The join entries whose time is before ``horizon``, in insertion order (payloads as in
        :meth:`oldest`)."""
        ...

    def prefetch(self, keys: Sequence[str]) -> None:
        """A hint: the keys the next operations will ask for (a batch's); a store may look them
        up at once. Changes no answer."""
        ...

    def __len__(self) -> int: ...


class DictStore:
    """A :class:`JoinStore` over a mapping (replay, tests).

    The default mapping is an :class:`~collections.OrderedDict`: finding the oldest
    key of a plain ``dict`` after many deletions at its front scans the deleted
    slots, which makes eviction quadratic. A plain ``dict`` given here works, slower.
    """

    def __init__(self, data: MutableMapping[str, list[Any]] | None = None) -> None:
        self.data: MutableMapping[str, list[Any]] = OrderedDict() if data is None else data

    def get(self, key: str) -> list[Any] | None:
        return self.data.get(key)

    def set(self, key: str, value: list[Any]) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterator[tuple[str, list[Any]]]:
        return iter(list(self.data.items()))

    def oldest(self) -> tuple[str, list[Any]] | None:
        return next(iter(self.data.items()), None)

    def expiring(self, horizon: float) -> list[tuple[str, list[Any]]]:
        return [(key, entry) for key, entry in self.data.items() if is_join_entry(entry) and entry[TIME] < horizon]

    def prefetch(self, keys: Sequence[str]) -> None:
        pass

    def __len__(self) -> int:
        return len(self.data)


def is_join_entry(value: Any) -> bool:
    """Whether a stored value is a join entry (``[time, model, state, payload]``), not another record
    (a store also holds what tests and older changelogs put in it)."""
    return (type(value) is list and len(value) == 4 and type(value[TIME]) in (float, int)
            and type(value[MODEL]) is str and type(value[STATE]) is str)


LABELLED_PER_MESSAGE = 500
"""Most pairs per ``labelled`` message (a JSON array)."""
LABELLED_BYTES = 512 * 1024
"""Most bytes per ``labelled`` message: an array over it is cut in halves (long categorical values),
so a message stays under a broker's 1 MB limit."""


def _as_dict(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` as orjson takes it: itself when it is a dict (a pair's features are; copying
    them doubled the cost of a ``labelled`` record), else a copy."""
    return mapping if isinstance(mapping, dict) else dict(mapping)


@dataclass(frozen=True, slots=True)
class LabelledPair:
    """A prediction joined to its label: the record the join yields, the worker publishes to
    ``labelled`` (:func:`labelled_messages`) and the retrain service reads back (:func:`decode_pairs`).

    >>> p = Prediction("a", "m", "1", 10.0, {"age": 41.0, "channel": None}, "1", score=0.8,
    ...                attributes={"sex": "F"})
    >>> [(key, ts)] = [(key, ts) for key, _, ts in labelled_messages([LabelledPair(p, "0", 12.0)])]
    >>> key, ts
    (b'm', 10.0)
    >>> decode_pairs(next(labelled_messages([LabelledPair(p, "0", 12.0)]))[1]) == [LabelledPair(p, "0", 12.0)]
    True
    """

    prediction: Prediction
    label: str | float
    feedback_timestamp: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of one pair: the prediction's fields as in its event, ``label`` and
        ``feedback_timestamp`` (epoch seconds). A missing numeric feature (NaN) is written ``null``."""
        p = self.prediction
        return {"prediction_id": p.prediction_id, "model_id": p.model_id, "model_version": p.model_version,
                "timestamp": p.timestamp, "features": _as_dict(p.features), "prediction": p.prediction,
                "score": p.score, "scores": None if p.scores is None else _as_dict(p.scores),
                "attributes": _as_dict(p.attributes), "label": self.label, "feedback_timestamp": self.feedback_timestamp}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> LabelledPair:
        """Inverse of :meth:`to_dict` (``null`` features come back as ``None``). Raises
        ``KeyError``/``TypeError``/``ValueError`` on a document that is not a pair."""
        prediction = Prediction(
            prediction_id=str(doc["prediction_id"]), model_id=str(doc["model_id"]),
            model_version=str(doc["model_version"]), timestamp=float(doc["timestamp"]),
            features=dict(doc["features"]), prediction=doc["prediction"], score=doc.get("score"),
            scores=doc.get("scores"), attributes=dict(doc.get("attributes") or {}))
        label = doc["label"]
        if label is None or not isinstance(label, (str, int, float)) or isinstance(label, bool):
            raise ValueError(f"pair {prediction.prediction_id!r}: label must be a class or a number, got {label!r}")
        return cls(prediction, label, float(doc["feedback_timestamp"]))


def labelled_messages(pairs: Sequence[LabelledPair]) -> Iterator[tuple[bytes, bytes, float]]:
    """The ``labelled`` messages of a batch's pairs: ``(key, value, timestamp)`` per message.

    Key: the model id (so one model's pairs share a partition); value: a JSON array of
    :meth:`LabelledPair.to_dict` of up to :data:`LABELLED_PER_MESSAGE` pairs of that model and at
    most :data:`LABELLED_BYTES` bytes (one pair larger than that is a message alone, which the
    outbox dead-letters by reference if the broker refuses it);
    timestamp (epoch seconds, the record's Kafka timestamp): the latest *prediction* time in
    the message. A message stamped before a time ``t`` therefore holds no pair predicted at or
    after ``t``, which is what lets the retrain service seek to a training span by time
    (``offsets_for_times``) instead of reading the topic from its beginning.
    """
    by_model: dict[str, list[LabelledPair]] = {}
    for pair in pairs:
        by_model.setdefault(pair.prediction.model_id, []).append(pair)
    for model_id, group in by_model.items():
        for i in range(0, len(group), LABELLED_PER_MESSAGE):
            for chunk, value in _arrays(group[i:i + LABELLED_PER_MESSAGE], LABELLED_BYTES):
                yield model_id.encode(), value, max(pair.prediction.timestamp for pair in chunk)


def _arrays(pairs: Sequence[LabelledPair], most: int) -> list[tuple[Sequence[LabelledPair], bytes]]:
    """``pairs`` as JSON arrays of at most ``most`` bytes each, halving until they fit; one pair
    larger than that alone is its own array."""
    value = orjson.dumps([pair.to_dict() for pair in pairs])
    if len(value) <= most or len(pairs) <= 1:
        return [(pairs, value)]
    half = len(pairs) // 2
    return _arrays(pairs[:half], most) + _arrays(pairs[half:], most)


def decode_pairs(value: bytes) -> list[LabelledPair]:
    """The pairs of one ``labelled`` message (an array of pairs, or one pair). Raises ``ValueError``
    on a message that is not JSON or holds something that is not a pair."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    try:
        return [LabelledPair.from_dict(item) for item in (doc if isinstance(doc, list) else [doc])]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a labelled pair: {type(exc).__name__}: {exc}") from None


@dataclass
class JoinCounts:
    """What the join has seen (see the module docstring); kept in the worker's snapshot."""

    pairs: int = 0
    duplicate_feedback: int = 0
    duplicate_predictions: int = 0
    orphan_feedback: int = 0
    expired_predictions: int = 0
    evicted_predictions: int = 0
    evicted_feedback: int = 0
    evicted_tombstones: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class FeedbackJoin:
    """Joins predictions and feedback through a :class:`JoinStore`.

    >>> join = FeedbackJoin(DictStore(), ttl_seconds=60)
    >>> from streams.events import Feedback
    >>> join.add_feedback(Feedback("a", "m", 5.0, "1"))   # label first: waits
    >>> p = Prediction("a", "m", "1", 1.0, {}, "1")
    >>> [(pair.prediction.prediction_id, pair.label) for pair in [join.add_prediction(p)] if pair]
    [('a', '1')]
    >>> join.add_feedback(Feedback("a", "m", 6.0, "1")) is None, join.counts.duplicate_feedback
    (True, 1)

    With ``max_entries``, the oldest entries make room for new ones:

    >>> join = FeedbackJoin(DictStore(), ttl_seconds=60, max_entries=2)
    >>> for pid in "abc":
    ...     join.add_prediction(Prediction(pid, "m", "1", 1.0, {}, "1"))
    >>> [key for key, _ in join.store.items()], join.counts.evicted_predictions, join.take_evicted()
    (['b', 'c'], 1, {'m': 1})
    """

    store: JoinStore
    ttl_seconds: float
    max_entries: int | None = None
    """Most entries the table keeps (``None``: unbounded); see :meth:`_bound`."""
    counts: JoinCounts = field(default_factory=JoinCounts)
    watermark: float = 0.0
    expired_by_model: dict[str, int] = field(default_factory=dict)
    evicted_by_model: dict[str, int] = field(default_factory=dict)
    """Unjoined entries evicted per model since :meth:`take_evicted` last ran."""
    _unwarned: int = field(default=0, init=False, repr=False)
    _warned_at: float = field(default=-math.inf, init=False, repr=False)

    def add_prediction(self, event: Prediction) -> LabelledPair | None:
        """Store a prediction; return its pair when its label was already waiting.

        Returns ``None`` as well for a duplicate prediction; check
        :meth:`is_duplicate_prediction` first to skip one entirely.
        """
        self.watermark = max(self.watermark, event.timestamp)
        entry = self._live(event.prediction_id)
        if entry is not None and entry[STATE] == WAITING_LABEL:
            label, feedback_time = entry[PAYLOAD]
            self.store.set(event.prediction_id, [event.timestamp, event.model_id, JOINED, None])
            self.counts.pairs += 1
            return LabelledPair(event, label, feedback_time)
        self.store.set(event.prediction_id, [event.timestamp, event.model_id, WAITING_PREDICTION, event])
        if entry is None:
            self._bound()
        return None

    def is_duplicate_prediction(self, event: Prediction) -> bool:
        """True when this ``prediction_id`` already has a prediction (pending or joined)."""
        entry = self._live(event.prediction_id)
        if entry is not None and entry[STATE] in (WAITING_PREDICTION, JOINED):
            self.counts.duplicate_predictions += 1
            return True
        return False

    def add_feedback(self, event: Feedback) -> LabelledPair | None:
        """Join a label to its prediction, or store it until the prediction comes."""
        self.watermark = max(self.watermark, event.timestamp)
        entry = self._live(event.prediction_id)
        if entry is None:
            self.store.set(event.prediction_id,
                           [event.timestamp, event.model_id, WAITING_LABEL, [event.label, event.timestamp]])
            self._bound()
            return None
        if entry[STATE] != WAITING_PREDICTION:
            self.counts.duplicate_feedback += 1
            return None
        prediction = unpack_prediction(event.prediction_id, entry)
        self.store.set(event.prediction_id, [entry[TIME], entry[MODEL], JOINED, None])
        self.counts.pairs += 1
        return LabelledPair(prediction, event.label, event.timestamp)

    def prefetch(self, events: Iterable[Prediction | Feedback]) -> None:
        """Tell the store which keys a batch will ask for, in one call (:meth:`JoinStore.prefetch`)."""
        self.store.prefetch([event.prediction_id for event in events])

    def waiting_label(self, key: str) -> str | float | None:
        """The label waiting for prediction ``key``, if one is."""
        entry = self.store.get(key)
        return entry[PAYLOAD][0] if entry is not None and entry[STATE] == WAITING_LABEL else None

    def _live(self, key: str) -> list[Any] | None:
        """The entry for ``key`` unless its TTL has passed (then it is expired now, and counted),
        so whether late input joins depends on event time only, not on when :meth:`expire` last ran."""
        entry = self.store.get(key)
        if entry is not None and entry[TIME] < self.watermark - self.ttl_seconds:
            self._expire_entry(key, entry)
            return None
        return entry

    def _expire_entry(self, key: str, entry: list[Any]) -> None:
        self.store.delete(key)
        if entry[STATE] == JOINED:
            return
        if entry[STATE] == WAITING_PREDICTION:
            self.counts.expired_predictions += 1
        else:
            self.counts.orphan_feedback += 1
        self.expired_by_model[entry[MODEL]] = self.expired_by_model.get(entry[MODEL], 0) + 1

    def _bound(self) -> None:
        """Evict oldest-first until the table holds at most ``max_entries`` (after an insert).

        One insert evicts at most one entry, so this is O(1) per event; more only when
        the table starts above the bound (``max_entries`` lowered before a restart).
        An oldest entry already past its TTL is expired and counted as such, not evicted.
        Eviction is a store delete, so the worker's changelog records it like any other.
        """
        if self.max_entries is None:
            return
        horizon = self.watermark - self.ttl_seconds
        evicted = 0
        while len(self.store) > self.max_entries and (oldest := self.store.oldest()) is not None:
            key, entry = oldest
            if entry[TIME] < horizon:
                self._expire_entry(key, entry)
                continue
            self.store.delete(key)
            evicted += 1
            if entry[STATE] == JOINED:
                self.counts.evicted_tombstones += 1
                continue
            if entry[STATE] == WAITING_PREDICTION:
                self.counts.evicted_predictions += 1
            else:
                self.counts.evicted_feedback += 1
            self.evicted_by_model[entry[MODEL]] = self.evicted_by_model.get(entry[MODEL], 0) + 1
        if evicted:
            self._unwarned += evicted
            if self.watermark - self._warned_at >= EVICTION_WARNING_SECONDS:
                self._warn()

    def _warn(self) -> None:
        """Tell the operator that labels will be lost, and what to change (rate-limited by the caller)."""
        c = self.counts
        log.warning(
            "join table full (join.max_entries=%d): %d oldest entries evicted since the last warning "
            "(in all: %d predictions waiting for a label, %d labels waiting for a prediction, %d tombstones); "
            "labels for evicted predictions will count as orphan feedback. Raise join.max_entries "
            "(~130 B of memory per entry) or lower join.ttl_seconds to the real label delay",
            self.max_entries, self._unwarned, c.evicted_predictions, c.evicted_feedback, c.evicted_tombstones)
        self._unwarned = 0
        self._warned_at = self.watermark

    def take_evicted(self) -> dict[str, int]:
        """Per-model counts of unjoined entries evicted since the last call (and reset them)."""
        evicted, self.evicted_by_model = self.evicted_by_model, {}
        return evicted

    def expire(self, *, full: bool = True) -> dict[str, int]:
        """Drop entries older than the TTL (event time); returns per-model counts of what expired unjoined.

        Oldest arrivals go first, and the sweep stops at the first entry still within the
        TTL, so it costs what it removes. An entry that arrived after a newer one (out of
        order) is left to a ``full`` sweep, which reads the whole table; callers run one
        only every table-size events, keeping the cost per event constant. (A lookup
        treats an entry past its TTL as expired in any case: :meth:`_live`.)"""
        horizon = self.watermark - self.ttl_seconds
        while (oldest := self.store.oldest()) is not None and oldest[1][TIME] < horizon:
            self._expire_entry(*oldest)
        if full:
            for key, entry in self.store.expiring(horizon):
                self._expire_entry(key, entry)
        expired, self.expired_by_model = self.expired_by_model, {}
        return expired


def pack_prediction(event: Prediction) -> list[Any]:
    """A waiting prediction as the changelog holds it: ``[version, prediction, score, attributes or
    None, scores, features]``, and after them, when a feature is ``None`` (a missing category), the
    names of those features. JSON writes a missing number (NaN) and a missing category both
    ``null``; the names are what lets :func:`unpack_prediction` give each its own back, so that a
    restored prediction is typed as the parser typed it (the columnar table lays a model's columns
    out by those types)."""
    features = event.features
    packed = [event.model_version, event.prediction, event.score, event.attributes or None, event.scores, features]
    if None in features.values():
        packed.append([name for name, value in features.items() if value is None])
    return packed


def packed_json(value: Any) -> Any:
    """orjson's ``default`` for join entries: a waiting entry's :class:`Prediction` as
    :func:`pack_prediction` packs it (the one way entries reach JSON: the changelog's deltas, a
    binary frame's objects)."""
    if isinstance(value, Prediction):
        return pack_prediction(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def unpack_prediction(prediction_id: str, entry: Sequence[Any]) -> Prediction:
    """The prediction of a waiting entry: its payload itself, or the payload packed by
    :func:`pack_prediction` (a list, as recovery reads it; a JSON string, as the changelog held it
    before), whose ``null`` features come back as ``None`` where the payload names them (a missing
    category), else as NaN (a missing number; and every ``null`` of a payload packed before the
    names were)."""
    payload = entry[PAYLOAD]
    if isinstance(payload, Prediction):
        return payload
    version, prediction, score, attributes, scores, features, *categories = (
        orjson.loads(payload) if isinstance(payload, str) else payload)
    if None in features.values():
        missing = set(categories[0]) if categories else ()
        features = {k: (math.nan if v is None and k not in missing else v) for k, v in features.items()}
    return Prediction(prediction_id=prediction_id, model_id=entry[MODEL], model_version=version,
                      timestamp=entry[TIME], features=features, prediction=prediction, score=score, scores=scores,
                      attributes=attributes or {})
