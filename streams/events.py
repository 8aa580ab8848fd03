"""Prediction and feedback events: typed records and a strict, fast parser.

A Kafka message holds one event (a JSON object) or several (a JSON array of
objects). :func:`parse_predictions` and :func:`parse_feedback` return the
events that are valid and one :class:`Rejection` per invalid one, each with a
precise reason (``missing field 'model_id'``, ``feature 'age': expected number,
got "abc"``, ``unknown model 'x'``, ``not JSON: ...``). A bad element of an
array never takes the good ones down with it.

Two paths give one answer: the fast path (:func:`_parse_fast`) decodes the message with
msgspec into typed envelopes and checks the schema and limits per event; whatever it cannot
decide alone (a message that does not decode as envelopes, an event that fails a check) goes
through the exact path (:func:`_parse_exact`), which names every reason.

>>> from streams.events import ModelSchema, parse_predictions
>>> schema = {"m": ModelSchema(features={"age": "numeric"})}
>>> good = b'{"prediction_id":"a","model_id":"m","model_version":"1","timestamp":10,"features":{"age":41},"prediction":1}'
>>> events, rejections = parse_predictions(b"[" + good + b', {"model_id":"m"}]', schema)
>>> [e.prediction_id for e in events], [r.reason for r in rejections]
(['a'], ["event[1]: missing field 'prediction_id'"])
"""

from __future__ import annotations

import json
import math
import reprlib
from itertools import chain, repeat
from operator import attrgetter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Mapping, Sequence, Union

import msgspec
import orjson

from detectors.profile import category_text as _category_text  # the one rule for class/category text

NUMERIC = "numeric"
CATEGORICAL = "categorical"
MAX_TIMESTAMP = 9_183_110_400.0
"""2262-01-01T00:00:00Z, the last whole year whose times fit a signed 64-bit count of nanoseconds
(InfluxDB's and the state's time unit; the limit is 2262-04-11): later times are rejected, so no
time arithmetic downstream can overflow."""
MAX_REASON = 500
"""Longest dead-letter reason, in characters: longer ones keep both ends and say what was elided."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The parser's bounds on one message and its events (``validation.*`` in the config).

    Each is checked before the value it bounds is used, and a message or event beyond
    one is rejected with a reason naming the key, counted as ``rejected_<key>``.
    """

    max_message_bytes: int = 1_000_000
    """Longest message (a Kafka message or a replayed line), in bytes."""
    max_array_length: int = 10_000
    """Most events in one array message."""
    max_fields: int = 1_000
    """Most features, attributes or class scores in one event."""
    max_string_length: int = 1_024
    """Longest string kept from an event (ids, version, categorical values, attributes, labels), in characters."""
    max_depth: int = 32
    """Deepest nesting of arrays and objects in a message."""


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class ModelSchema:
    """What the parser needs to know of a model: its task, features and attributes."""

    features: Mapping[str, str]
    task: str = "binary"
    type_errors: str = "reject"
    """``reject`` dead-letters an event whose feature has the wrong JSON type; ``count`` keeps it."""


class Prediction(msgspec.Struct, frozen=True):
    """One prediction, validated. Feature values are already typed per the model's schema.

    Numeric features are floats (``nan`` when missing or of the wrong type),
    categorical features ``str`` or ``None``. ``type_errors`` names the features
    whose value had the wrong type (only in ``type_errors: count`` mode).

    A frozen :class:`msgspec.Struct`, not a dataclass: the parser builds one per event and the
    join rebuilds one per joined pair, and a struct is ten times cheaper to create (~0.2 µs
    against ~2 µs for a frozen dataclass's ``__init__``); fields, equality and immutability are
    the same.
    """

    prediction_id: str
    model_id: str
    model_version: str
    timestamp: float
    features: Mapping[str, float | str | None]
    prediction: str | float
    score: float | None = None
    scores: Mapping[str, float] | None = None
    attributes: Mapping[str, str] = msgspec.field(default_factory=dict)
    type_errors: tuple[str, ...] = ()


class Feedback(msgspec.Struct, frozen=True):
    """The ground truth for one prediction, arriving whenever it is known (a frozen struct, as
    :class:`Prediction`)."""

    prediction_id: str
    model_id: str
    timestamp: float
    label: str | float


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message, or one element of an array message, was not accepted."""

    reason: str
    index: int | None = None
    model_id: str | None = None
    limit: str | None = None
    """The ``validation`` key that rejected it (``max_string_length``, ``max_future_seconds``, ...),
    ``None`` for a malformed message or event."""


class EventError(ValueError):
    """An event failed validation; the message is the dead-letter reason."""


class LimitError(EventError):
    """A message or event exceeds one of the :class:`Limits` (or a time bound); ``limit`` names the key."""

    def __init__(self, reason: str, limit: str) -> None:
        super().__init__(reason)
        self.limit = limit


def cap(text: str, most: int = MAX_REASON) -> str:
    """``text`` if it has at most ``most`` characters, else its two ends with the middle elided
    (and how much was): a dead-letter reason stays readable and small whatever the input echoed.

    >>> cap("a" * 30 + "b" * 30, 40)
    'aaaaaaaa…[44 characters elided]…bbbbbbbb'
    """
    if len(text) <= most:
        return text
    keep = max(most - len(f"…[{len(text)} characters elided]…"), 2)
    head = keep - keep // 2
    return f"{text[:head]}…[{len(text) - keep} characters elided]…{text[len(text) - keep // 2:]}"


_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def _has_long_integer(raw: bytes) -> bool:
    """True when ``raw`` holds a run of 19 or more digits (an integer that may not fit 64 bits).
    ``translate`` + ``find`` is ten times faster than a regular expression here."""
    return raw.translate(_DIGITS).find(_LONG_DIGIT_RUN) >= 0


def decode(payload: bytes | str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode JSON with orjson, falling back to the standard library for what orjson refuses or
    would change but producers send: ``NaN``/``Infinity`` (Python's ``json.dumps``) and integers
    beyond 64 bits (orjson would turn them into floats). Lone surrogates are not text: rejected;
    bytes that are not UTF-8 are reported as such, with the first bad byte and its offset.
    A message over ``limits.max_message_bytes`` is not decoded; one nested deeper than
    ``limits.max_depth`` is rejected (:class:`LimitError`)."""
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if len(raw) > limits.max_message_bytes:
        raise LimitError(f"message of {len(raw)} bytes exceeds validation.max_message_bytes "
                         f"({limits.max_message_bytes})", "max_message_bytes")
    try:
        if not _has_long_integer(raw):
            doc = orjson.loads(raw)
            _check_depth(raw, doc, limits.max_depth)
            return doc
        fast_error: Exception | None = None
    except orjson.JSONDecodeError as exc:
        fast_error = exc
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise EventError(f"not JSON: not UTF-8 text (byte 0x{raw[bad.start]:02x} at offset {bad.start}); "
                             "a message must be JSON in UTF-8") from None
        if "recursion limit" in str(exc):
            raise LimitError(f"nested deeper than validation.max_depth ({limits.max_depth})", "max_depth") from None
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise LimitError(f"nested deeper than validation.max_depth ({limits.max_depth})", "max_depth") from None
    except ValueError:
        raise EventError(f"not JSON: {fast_error or 'invalid document'}") from None
    _check_depth(raw, doc, limits.max_depth)
    try:
        orjson.dumps(doc, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    except orjson.JSONEncodeError as exc:
        if "surrogate" in str(exc) or "str is not valid UTF-8" in str(exc):
            raise EventError("not JSON: a string holds a lone surrogate (not valid Unicode text)") from None
    return doc


def _check_depth(raw: bytes, doc: Any, max_depth: int) -> None:
    """Raise :class:`LimitError` when ``doc`` nests arrays/objects deeper than ``max_depth``.
    The brackets in ``raw`` bound the depth from above, so small messages skip the walk; the walk
    recurses at most ``max_depth`` deep (the config keeps it at most 512) and costs about 0.7 µs
    per event of an array message (a tenth of parsing it)."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return
    if type(doc) in (dict, list) and _too_deep(doc, max_depth - 1):
        raise LimitError(f"nested deeper than validation.max_depth ({max_depth})", "max_depth")


def _too_deep(node: dict[str, Any] | list[Any], budget: int) -> bool:
    """True when a container inside ``node`` is more than ``budget`` levels below it."""
    for child in node.values() if type(node) is dict else node:
        kind = type(child)
        if kind is dict or kind is list:
            if budget == 0 or _too_deep(child, budget - 1):
                return True
    return False


def parse_predictions(payload: bytes | str, models: Mapping[str, ModelSchema],
                      limits: Limits = DEFAULT_LIMITS) -> tuple[list[Prediction], list[Rejection]]:
    """Parse one message of the ``predictions`` topic (an event or an array of events)."""
    return _parse_many(payload, models, _prediction, limits)


def parse_feedback(payload: bytes | str, models: Mapping[str, ModelSchema],
                   limits: Limits = DEFAULT_LIMITS) -> tuple[list[Feedback], list[Rejection]]:
    """Parse one message of the ``feedback`` topic (an event or an array of events)."""
    return _parse_many(payload, models, _feedback, limits)


def _rejection(exc: Exception, doc: Any, index: int | None = None) -> Rejection:
    """The rejection of a message (``index=None``) or of its element ``index``: the reason capped
    at :data:`MAX_REASON` characters, the limit that rejected it, the model when it can be told."""
    if isinstance(exc, EventError):
        reason = str(exc)
    else:  # a bug or an odd value the checks missed: name the error, never echo the input
        reason = f"invalid event: {type(exc).__name__}"
    if index is not None:
        reason = f"event[{index}]: {reason}"
    return Rejection(cap(reason), index=index, model_id=_model_of(doc), limit=getattr(exc, "limit", None))


def _parse_many(payload: bytes | str, models: Mapping[str, ModelSchema], parse_one: Any,
                limits: Limits) -> tuple[list[Any], list[Rejection]]:
    """The events and rejections of one message: the typed fast path (:func:`_parse_fast`) when it
    can tell, else the exact path (:func:`_parse_exact`), which gives every reason."""
    fast = _parse_fast(payload, models, parse_one, limits)
    return fast if fast is not None else _parse_exact(payload, models, parse_one, limits)


def parse_prediction_batch(payloads: Sequence[bytes | str], models: Mapping[str, ModelSchema],
                           limits: Limits = DEFAULT_LIMITS) -> list[tuple[list[Prediction], list[Rejection]]]:
    """:func:`parse_predictions` of each of ``payloads`` (a batch of messages of the ``predictions``
    topic), in their order, with the batch decoded at once (see :func:`_parse_batch`)."""
    return _parse_batch(payloads, models, _prediction, limits)


def parse_feedback_batch(payloads: Sequence[bytes | str], models: Mapping[str, ModelSchema],
                         limits: Limits = DEFAULT_LIMITS) -> list[tuple[list[Feedback], list[Rejection]]]:
    """:func:`parse_feedback` of each of ``payloads``, in their order, the batch decoded at once."""
    return _parse_batch(payloads, models, _feedback, limits)


_OPENING = frozenset(b"{[")
_CLOSING = frozenset(b"}]")
_CHUNKS = 16
"""A batch whose decoding fails is decoded again in this many parts (each part alike), down to
parts of at most this many messages, whose messages are then parsed one by one."""


def _parse_batch(payloads: Sequence[bytes | str], models: Mapping[str, ModelSchema], parse_one: Any,
                 limits: Limits) -> list[tuple[list[Any], list[Rejection]]]:
    """Each message's events and rejections, exactly those of :func:`_parse_many`, for a fraction
    of the cost: the batch's messages are joined by newlines and decoded by one call of the typed
    decoder (msgspec's ``decode_lines``), so a one-event message costs no Python call of its own
    before its event is checked.

    A message takes this path when it is bytes of at most ``max_message_bytes``, opens with ``{``
    or ``[`` and closes with ``}`` or ``]``: then no JSON value can span two messages (after a
    closing bracket inside an unfinished value JSON wants ``,`` or another closing bracket, never
    an opening one, and a raw newline cannot be inside a string), every message yields at least one value, so as many values as messages
    means one value per message. A batch that does not decode (a message that is not JSON, an
    event that is not a well-typed envelope) or yields another count is decoded again in
    :data:`_CHUNKS` parts; a failing part of at most :data:`_CHUNKS` messages, a message that
    takes no part in the batch, and a message with an event the fast checks cannot decide go
    through :func:`_parse_many` alone — so every reason is the one it always was."""
    out: list[tuple[list[Any], list[Rejection]] | None] = [None] * len(payloads)
    if limits.max_depth >= 3:
        most = limits.max_message_bytes
        opening, closing = _OPENING, _CLOSING
        chosen = [i for i, raw in enumerate(payloads)
                  if type(raw) is bytes and 0 < len(raw) <= most and raw[0] in opening and raw[-1] in closing]
        if chosen and _has_long_integer(b"\n".join([payloads[i] for i in chosen])):
            chosen = [i for i in chosen if not _has_long_integer(payloads[i])]  # type: ignore[arg-type]
        if chosen:
            decoder, _one, check = _typed_decoders(models, limits) if parse_one is _prediction else _FAST[parse_one]
            many = _fast_predictions if parse_one is _prediction else _fast_feedbacks
            _decode_batch(payloads, chosen, decoder, lambda docs: many(docs, check, models, limits), limits, out)
    return [found if found is not None else _parse_many(payloads[i], models, parse_one, limits)
            for i, found in enumerate(out)]


def _decode_batch(payloads: Sequence[Any], chosen: list[int], decoder: Any, check: Any, limits: Limits,
                  out: list[tuple[list[Any], list[Rejection]] | None]) -> None:
    """Decode the messages ``chosen`` (indices into ``payloads``) at once and fill ``out`` with the
    events of each one whose every event passes the fast checks (see :func:`_parse_batch`):
    ``check`` takes the decoded envelopes and gives each one's event, ``None`` where it fails."""
    try:
        docs = decoder.decode_lines(b"\n".join([payloads[i] for i in chosen]))
        failed = len(docs) != len(chosen)
    except (*_DECODE_ERRORS, RecursionError):
        failed = True
    if failed:
        if len(chosen) > _CHUNKS:
            step = -(-len(chosen) // _CHUNKS)
            for start in range(0, len(chosen), step):
                _decode_batch(payloads, chosen[start:start + step], decoder, check, limits, out)
        return
    if list not in set(map(type, docs)):  # one event per message
        for i, event in zip(chosen, check(docs)):
            if event is not None:
                out[i] = ([event], [])
        return
    most = limits.max_array_length
    flat: list[Any] = []
    spans: list[tuple[int, int, int]] = []  # message, first event, end
    for i, doc in zip(chosen, docs):
        if type(doc) is list:
            if doc and len(doc) <= most:
                spans.append((i, len(flat), len(flat) + len(doc)))
                flat.extend(doc)
        else:
            spans.append((i, len(flat), len(flat) + 1))
            flat.append(doc)
    events = check(flat)
    for i, start, end in spans:
        mine = events[start:end]
        if None not in mine:
            out[i] = (mine, [])


def _fast_predictions(docs: list[Any], check: Any, models: Mapping[str, ModelSchema],
                      limits: Limits) -> list[Prediction | None]:
    """:func:`_fast_prediction` of each decoded envelope, the common case column by column: per
    model, each field of all its envelopes is read and its kinds checked in C (``map``, ``set``,
    ``min``/``max``), and the events are built by one ``map`` of the struct's constructor. A
    model whose envelopes are not all of the common kinds (a version given as an integer, a
    string timestamp, a regression model, a prediction neither text nor integer) has each
    envelope checked alone by ``check``."""
    types = set(map(type, docs))
    groups = [(next(iter(types)), docs, None)] if len(types) == 1 else _by_type(docs)
    out: list[Prediction | None] = [None] * len(docs) if len(types) > 1 else []
    for kind, mine, where in groups:
        events = _fast_prediction_columns(kind, mine, limits)
        if events is None:
            events = [check(doc, models, limits) for doc in mine]
        if where is None:
            return events
        for k, event in zip(where, events):
            out[k] = event
    return out


def _by_type(docs: list[Any]) -> list[tuple[type, list[Any], list[int]]]:
    """The envelopes grouped by their struct type (their model): (type, envelopes, positions)."""
    groups: dict[type, tuple[list[Any], list[int]]] = {}
    for k, doc in enumerate(docs):
        found = groups.get(type(doc))
        if found is None:
            found = groups[type(doc)] = ([], [])
        found[0].append(doc)
        found[1].append(k)
    return [(kind, mine, where) for kind, (mine, where) in groups.items()]


_ID = attrgetter("prediction_id")
_MODEL = attrgetter("model_id")
_VERSION = attrgetter("model_version")
_TIME = attrgetter("timestamp")
_FEATURES = attrgetter("features")
_PREDICTION = attrgetter("prediction")
_SCORE = attrgetter("score")
_ATTRIBUTES = attrgetter("attributes")
_LABEL = attrgetter("label")
_TYPE_ERRORS = attrgetter("type_errors")
_STR = {str}
_INT = {int}
_FLOAT = {float}


def _fast_prediction_columns(kind: type, docs: list[Any], limits: Limits) -> list[Prediction | None] | None:
    """The events of one model's envelopes as :func:`_fast_prediction` makes them, when every
    envelope is of the common kinds (see :func:`_fast_predictions`); else ``None``."""
    found = _ENVELOPES.get(kind)
    if found is None:  # the sentinel: no model
        return [None] * len(docs)
    model_id, schema, names, numeric = found
    versions = list(map(_VERSION, docs))
    timestamps = list(map(_TIME, docs))
    predictions = list(map(_PREDICTION, docs))
    if set(map(type, versions)) != _STR or set(map(type, timestamps)) != _FLOAT or schema.task == "regression":
        return None
    labels = set(map(type, predictions))
    if labels == _INT:
        predictions = list(map(str, predictions))  # category_text of an integer
    elif labels != _STR:
        return None
    if max(map(len, predictions)) > limits.max_string_length:
        return None
    values = list(map(msgspec.structs.astuple, map(_FEATURES, docs)))
    if None in chain.from_iterable(values):  # a missing numeric feature is NaN
        at = [k for k, name in enumerate(names) if name in set(numeric)]
        values = [row if None not in row else _nan_numeric(row, at) for row in values]
    features = list(map(dict, map(zip, repeat(names), values)))
    attributes = list(map(_ATTRIBUTES, docs))
    if any(a is None for a in attributes):
        attributes = [{} if a is None else a for a in attributes]
    return list(map(Prediction, map(_ID, docs), repeat(model_id), versions, timestamps, features, predictions,
                    map(_SCORE, docs), repeat(None), attributes))


def _nan_numeric(row: tuple[Any, ...], numeric: list[int]) -> tuple[Any, ...]:
    """``row`` (a features struct's values) with NaN for each missing numeric feature at ``numeric``."""
    values = list(row)
    for k in numeric:
        if values[k] is None:
            values[k] = math.nan
    return tuple(values)


def _fast_feedbacks(docs: list[Any], check: Any, models: Mapping[str, ModelSchema],
                    limits: Limits) -> list[Feedback | None]:
    """:func:`_fast_feedback` of each decoded envelope, column by column when every one is of the
    common kinds (ids within bounds, a configured classifier's model, epoch timestamps in range,
    labels all text or all integers); else each alone."""
    if not docs:
        return []
    ids = list(map(_ID, docs))
    model_ids = list(map(_MODEL, docs))
    timestamps = list(map(_TIME, docs))
    labels = list(map(_LABEL, docs))
    chosen = set(model_ids)
    kinds = set(map(type, labels))
    if (min(map(len, ids)) > 0 and max(map(len, ids)) <= limits.max_string_length
            and all(m and m in models and models[m].task != "regression" for m in chosen)
            and set(map(type, timestamps)) == _FLOAT and 0.0 <= min(timestamps) and max(timestamps) <= MAX_TIMESTAMP
            and (kinds == _STR or kinds == _INT)):
        if kinds == _INT:
            labels = list(map(str, labels))  # category_text of an integer
        if max(map(len, labels)) <= limits.max_string_length:
            return list(map(Feedback, ids, model_ids, timestamps, labels))
    return [check(doc, models, limits) for doc in docs]


class _FeedbackDoc(msgspec.Struct, forbid_unknown_fields=True):
    """The envelope of a feedback event as the fast path decodes it."""

    prediction_id: str
    model_id: str
    timestamp: float | str
    label: str | int | float


_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


def _parse_fast(payload: bytes | str, models: Mapping[str, ModelSchema], parse_one: Any,
                limits: Limits) -> tuple[list[Any], list[Rejection]] | None:
    """One message through typed decoding (msgspec: the envelope's JSON types are checked while
    the bytes are read, no intermediate dicts), then the schema and the limits per event.

    ``None`` when the message is not for this path — too large, holding integers beyond 64 bits, not JSON, not an object nor a non-empty array:
    the exact path then decides it whole. An element of an array that is not a well-typed
    envelope is decoded alone. An event of a decoded message
    that fails a check here (a categorical value given as a number, a string timestamp, an
    over-long id, ...) is parsed again, alone, by the exact path, so it is accepted or rejected
    with exactly the reason it always had, and the events keep the message's order.
    """
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if len(raw) > limits.max_message_bytes or limits.max_depth < 3 or _has_long_integer(raw):
        return None
    decoder, one, check = _typed_decoders(models, limits) if parse_one is _prediction else _FAST[parse_one]
    try:
        doc = decoder.decode(raw)
    except msgspec.ValidationError:  # an element is not a well-typed envelope: decode element by element
        try:
            elements = _ELEMENTS.decode(raw)
        except (*_DECODE_ERRORS, RecursionError):
            return None
        doc = []
        for element in elements:
            try:
                doc.append(one.decode(element))
            except _DECODE_ERRORS:
                doc.append(None)  # for the exact path
    except (msgspec.DecodeError, RecursionError):
        return None
    many = type(doc) is list
    docs = doc if many else [doc]
    if not docs or len(docs) > limits.max_array_length:
        return None
    events: list[Any] = []
    rejections: list[Rejection] = []
    exact: Any = None
    for i, item in enumerate(docs):
        event = None if item is None else check(item, models, limits)
        if event is None:  # the exact path decides this event
            if exact is None:
                try:
                    exact = decode(raw, limits)
                except EventError:
                    return None
                if (type(exact) is list) is not many:
                    return None
            element = exact[i] if many else exact
            try:
                if not isinstance(element, dict):
                    raise EventError(f"expected a JSON object, got {_json_type(element)}")
                event = parse_one(element, models, limits)
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                rejections.append(_rejection(exc, element, i if many else None))
                continue
        events.append(event)
    return events, rejections


def _typed_decoders(models: Mapping[str, ModelSchema],
                    limits: Limits) -> tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any], Any]:
    """The fast path's decoders of predictions for ``models`` and ``limits`` (built once per pair).

    One envelope struct per model, tagged by ``model_id`` (an unknown model does not decode), whose
    ``features`` is a struct of the schema's features — numeric ``float | None``, categorical
    ``str | None`` of at most ``max_string_length`` characters — so the kinds, lengths and ranges
    that :func:`_prediction` checks one by one are checked in C while the bytes are read. Unknown
    fields are refused (the event then takes the exact path), so a decoded message nests at most
    three deep (array, envelope, features or attributes): no depth walk is needed. A model with
    more features than ``max_fields`` has no struct (its events take the exact path)."""
    key = (id(models), limits)
    found = _TYPED.get(key)
    if found is not None and found[0] is models:
        return found[1]
    if len(_TYPED) > 64:
        _TYPED.clear()
    text = Annotated[str, msgspec.Meta(max_length=limits.max_string_length)]
    envelopes: list[Any] = []
    for model_id, schema in models.items():
        if len(schema.features) > limits.max_fields:
            continue
        names = list(schema.features)
        # attributes f0, f1, ... renamed to the features' names (which need not be identifiers)
        features = msgspec.defstruct(
            "Features", [(f"f{i}", float | None if schema.features[name] == NUMERIC else text | None, None)
                         for i, name in enumerate(names)],
            rename={f"f{i}": name for i, name in enumerate(names)}, forbid_unknown_fields=True)
        fields: list[Any] = [
            ("prediction_id", Annotated[str, msgspec.Meta(min_length=1, max_length=limits.max_string_length)]),
            ("model_version", text | int),
            ("timestamp", Annotated[float, msgspec.Meta(ge=0.0, le=MAX_TIMESTAMP)] | str),
            ("features", features),
            ("prediction", str | int | float),
            ("score", Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None, None),
            ("scores", None, None),
            ("attributes", Annotated[dict[text, text], msgspec.Meta(max_length=limits.max_fields)] | None, None),
        ]
        envelope = msgspec.defstruct("Envelope", fields, tag_field="model_id", tag=model_id,
                                     forbid_unknown_fields=True)
        _ENVELOPES[envelope] = (model_id, schema, names,
                                [n for n, k in schema.features.items() if k == NUMERIC])
        envelopes.append(envelope)
    # A tagged struct decoded alone takes a message without the tag as its own: a second, sentinel
    # envelope makes the union ask for ``model_id`` whatever the number of models.
    envelopes.append(msgspec.defstruct("NoModel", [], tag_field="model_id", tag="\x00 no model",
                                       forbid_unknown_fields=True))
    one: Any = Union[tuple(envelopes)]  # noqa: UP007 (a runtime union of types)
    decoders = (msgspec.json.Decoder(one | list[one]), msgspec.json.Decoder(one), _fast_prediction)
    _TYPED[key] = (models, decoders)
    return decoders


_TYPED: dict[tuple[int, Limits], tuple[Mapping[str, ModelSchema], Any]] = {}
"""The typed decoders per (schemas, limits): the schemas object is kept, so its id is not reused."""
_ENVELOPES: dict[type, tuple[str, ModelSchema, list[str], list[str]]] = {}
"""Per envelope struct: its model, schema, features (in the struct's order) and numeric features."""


def _fast_prediction(doc: Any, models: Mapping[str, ModelSchema], limits: Limits) -> Prediction | None:
    """The :class:`Prediction` of a decoded envelope (:func:`_typed_decoders` checked the types,
    lengths and ranges), with the values :func:`_prediction` gives; ``None`` to let the exact path
    decide what the decoder could not (a string timestamp, a version given as a long integer)."""
    found = _ENVELOPES.get(type(doc))
    if found is None:  # the sentinel
        return None
    model_id, schema, names, numeric = found
    version = doc.model_version
    if type(version) is not str:
        version = str(version)
        if len(version) > limits.max_string_length:
            return None
    timestamp = doc.timestamp
    if type(timestamp) is not float:
        return None
    features = dict(zip(names, msgspec.structs.astuple(doc.features)))
    if None in features.values():
        for name in numeric:
            if features[name] is None:
                features[name] = math.nan
    prediction = doc.prediction
    if type(prediction) is not str or schema.task == "regression" or len(prediction) > limits.max_string_length:
        try:
            prediction = _label(prediction, "prediction", schema.task, limits)
        except EventError:
            return None
    attributes = doc.attributes
    return Prediction(prediction_id=doc.prediction_id, model_id=model_id, model_version=version,
                      timestamp=timestamp, features=features, prediction=prediction, score=doc.score, scores=None,
                      attributes={} if attributes is None else attributes)


def _fast_feedback(doc: _FeedbackDoc, models: Mapping[str, ModelSchema], limits: Limits) -> Feedback | None:
    """The :class:`Feedback` of a decoded envelope when it passes every check of :func:`_feedback`."""
    prediction_id, model_id, timestamp = doc.prediction_id, doc.model_id, doc.timestamp
    if not prediction_id or not model_id or len(prediction_id) > limits.max_string_length:
        return None
    schema = models.get(model_id)
    if schema is None or type(timestamp) is not float or not 0.0 <= timestamp <= MAX_TIMESTAMP:
        return None
    try:
        label = _label(doc.label, "label", schema.task, limits)
    except EventError:
        return None
    return Feedback(prediction_id=prediction_id, model_id=model_id, timestamp=timestamp, label=label)


def _parse_exact(payload: bytes | str, models: Mapping[str, ModelSchema], parse_one: Any,
                 limits: Limits) -> tuple[list[Any], list[Rejection]]:
    """One message through orjson (or the standard library) and the per-field checks: every
    rejection with its exact reason."""
    try:
        doc = decode(payload, limits)
    except EventError as exc:
        return [], [_rejection(exc, None)]
    if isinstance(doc, dict):
        try:
            return [parse_one(doc, models, limits)], []
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            return [], [_rejection(exc, doc)]
    if not isinstance(doc, list):
        return [], [Rejection(f"expected a JSON object or an array of objects, got {_json_type(doc)}")]
    if not doc:
        return [], [Rejection("empty array: no events")]
    if len(doc) > limits.max_array_length:
        return [], [Rejection(f"array of {len(doc)} events exceeds validation.max_array_length "
                              f"({limits.max_array_length})", limit="max_array_length")]
    events: list[Any] = []
    rejections: list[Rejection] = []
    for i, item in enumerate(doc):
        try:
            if not isinstance(item, dict):
                raise EventError(f"expected a JSON object, got {_json_type(item)}")
            events.append(parse_one(item, models, limits))
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            rejections.append(_rejection(exc, item, i))
    return events, rejections


MAX_MODEL_ID = 200
"""Longest ``model_id`` a dead letter carries (a longer one is no configured model anyway)."""


def _model_of(doc: Any) -> str | None:
    model = doc.get("model_id") if isinstance(doc, dict) else None
    return cap(model, MAX_MODEL_ID) if isinstance(model, str) else None


def _text(value: str, name: str, limits: Limits) -> str:
    """``value``, unless it is longer than ``limits.max_string_length``."""
    if len(value) > limits.max_string_length:
        raise LimitError(f"{name}: string of {len(value)} characters exceeds validation.max_string_length "
                         f"({limits.max_string_length})", "max_string_length")
    return value


def _count_fields(mapping: Mapping[str, Any], name: str, limits: Limits) -> None:
    if len(mapping) > limits.max_fields:
        raise LimitError(f"field {name!r}: {len(mapping)} entries exceed validation.max_fields "
                         f"({limits.max_fields})", "max_fields")


def _prediction(doc: dict[str, Any], models: Mapping[str, ModelSchema], limits: Limits = DEFAULT_LIMITS) -> Prediction:
    longest = limits.max_string_length
    prediction_id = _required_str(doc, "prediction_id")
    if len(prediction_id) > longest:
        _text(prediction_id, "field 'prediction_id'", limits)
    model_id = _required_str(doc, "model_id")
    schema = models.get(model_id)
    if schema is None:
        raise EventError(f"unknown model {_quote(model_id)}")
    version = _required(doc, "model_version")
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        raise EventError(f"field 'model_version': expected string or integer, got {_show(version)}")
    version = str(version)
    if len(version) > longest:
        _text(version, "field 'model_version'", limits)
    timestamp = _timestamp(_required(doc, "timestamp"))
    raw_features = _required(doc, "features")
    if not isinstance(raw_features, dict):
        raise EventError(f"field 'features': expected object, got {_show(raw_features)}")
    if len(raw_features) > limits.max_fields:
        _count_fields(raw_features, "features", limits)
    features: dict[str, float | str | None] = {}
    type_errors: list[str] = []
    for name, kind in schema.features.items():
        value = raw_features.get(name)
        kind_of_value = type(value)
        if kind_of_value is float and kind == NUMERIC:  # the common cases, without a call
            features[name] = value
            continue
        if kind_of_value is str and kind == CATEGORICAL and len(value) <= longest:
            features[name] = value
            continue
        try:
            features[name] = (_numeric_feature(name, value) if kind == NUMERIC
                              else _categorical_feature(name, value, limits))
        except LimitError:
            raise
        except EventError:
            if schema.type_errors == "reject":
                raise
            features[name] = math.nan if kind == NUMERIC else None
            type_errors.append(name)
    prediction = _label(_required(doc, "prediction"), "prediction", schema.task, limits)
    score = doc.get("score")
    if score is not None:
        score = _probability(score, "score")
    scores = doc.get("scores")
    if scores is not None:
        if not isinstance(scores, dict) or not scores:
            raise EventError(f"field 'scores': expected object class -> probability, got {_show(scores)}")
        _count_fields(scores, "scores", limits)
        scores = {_text(str(k), "a class of field 'scores'", limits): _probability(v, f"scores.{k}")
                  for k, v in scores.items()}
    attributes_raw = doc.get("attributes") or {}
    if not isinstance(attributes_raw, dict):
        raise EventError(f"field 'attributes': expected object, got {_show(attributes_raw)}")
    if len(attributes_raw) > limits.max_fields:
        _count_fields(attributes_raw, "attributes", limits)
    attributes = {}
    for name, value in attributes_raw.items():
        if type(value) is str and len(value) <= longest and len(name) <= longest:  # the common case
            attributes[name] = value
            continue
        if isinstance(value, (dict, list)):
            raise EventError(f"attribute {_quote(name)}: expected string or number, got {_show(value)}")
        text = _category_text(value) if value is not None else "missing"
        _text(text, f"attribute {_quote(name)}", limits)
        attributes[_text(str(name), "an attribute name", limits)] = text
    return Prediction(
        prediction_id=prediction_id,
        model_id=model_id,
        model_version=version,
        timestamp=timestamp,
        features=features,
        prediction=prediction,
        score=score,
        scores=scores,
        attributes=attributes,
        type_errors=tuple(type_errors),
    )


def _feedback(doc: dict[str, Any], models: Mapping[str, ModelSchema], limits: Limits = DEFAULT_LIMITS) -> Feedback:
    prediction_id = _text(_required_str(doc, "prediction_id"), "field 'prediction_id'", limits)
    model_id = _required_str(doc, "model_id")
    schema = models.get(model_id)
    if schema is None:
        raise EventError(f"unknown model {_quote(model_id)}")
    timestamp = _timestamp(_required(doc, "timestamp"))
    label = _label(_required(doc, "label"), "label", schema.task, limits)
    return Feedback(prediction_id=prediction_id, model_id=model_id, timestamp=timestamp, label=label)


_FAST: dict[Any, tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any], Any]] = {
    _feedback: (msgspec.json.Decoder(_FeedbackDoc | list[_FeedbackDoc]), msgspec.json.Decoder(_FeedbackDoc),
                _fast_feedback),
}
"""The fast path's decoders (a message, one element) and check of feedback; those of predictions
depend on the schemas (:func:`_typed_decoders`)."""
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])


def _required(doc: Mapping[str, Any], name: str) -> Any:
    if name not in doc or doc[name] is None:
        raise EventError(f"missing field {name!r}")
    return doc[name]


def _required_str(doc: Mapping[str, Any], name: str) -> str:
    value = _required(doc, name)
    if not isinstance(value, str) or not value:
        raise EventError(f"field {name!r}: expected non-empty string, got {_show(value)}")
    return value


class _Stamped(msgspec.Struct):
    """The one field :func:`message_time` reads (msgspec skips the others without building them)."""

    timestamp: Any = None


_STAMPED = msgspec.json.Decoder(_Stamped)
_STAMPED_ARRAY = msgspec.json.Decoder(list[_Stamped])


def message_time(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> float:
    """The event time of a predictions/feedback message: its (first event's) ``timestamp`` in epoch
    seconds; ``-inf`` when it has none that is valid (such messages go first when the worker and
    ``replay`` merge their inputs by event time).

    Only the timestamps are read (msgspec, skipping the other fields): the message is decoded in
    full later, by the batch parser, and this runs once per message before it, at a sixth of the
    cost (0.5 against 3.1 µs for one event; 38 against 217 µs for an array of 100). What msgspec
    cannot read (NaN, big integers, not JSON) takes :func:`decode`, so the answer is that of the
    full decoder — but for a message nested deeper than ``limits.max_depth``, whose time is read
    here although the parser rejects it (it goes to the dead letters either way; the worker and
    ``replay`` place it alike).

    >>> message_time(b'{"timestamp": 12.5, "features": {"x": 1}}'), message_time(b'[{"timestamp": "1970-01-01T00:01:00Z"}]')
    (12.5, 60.0)
    >>> message_time(b'not json'), message_time(b'{"timestamp": -1}'), message_time(b'[]')
    (-inf, -inf, -inf)
    """
    if len(raw) > limits.max_message_bytes:
        return -math.inf
    try:
        try:
            value = _STAMPED.decode(raw).timestamp
        except msgspec.ValidationError:  # an array of events (or not an object at all)
            stamped = _STAMPED_ARRAY.decode(raw)
            if not stamped:
                return -math.inf
            value = stamped[0].timestamp
    except (msgspec.MsgspecError, RecursionError):  # not JSON to msgspec (NaN, big integers), or very deep
        try:
            doc = decode(raw, limits)
            first = doc[0] if isinstance(doc, list) and doc else doc
            value = first.get("timestamp") if isinstance(first, dict) else None
        except EventError:
            return -math.inf
    if value is None:
        return -math.inf
    try:
        return _timestamp(value)
    except EventError:
        return -math.inf


def _timestamp(value: Any) -> float:
    if type(value) is float and 0.0 <= value <= MAX_TIMESTAMP:
        return value
    if isinstance(value, bool):
        raise EventError(f"field 'timestamp': expected RFC 3339 string or epoch seconds, got {_show(value)}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_TIMESTAMP:
            raise EventError(f"field 'timestamp': epoch seconds out of range: {_show(value)}")
        return seconds
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError:
            raise EventError(f"field 'timestamp': not an RFC 3339 time: {_show(value)}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        seconds = parsed.timestamp()
        if seconds < 0 or seconds > MAX_TIMESTAMP:
            raise EventError(f"field 'timestamp': time out of range (1970 to 2262): {_show(value)}")
        return seconds
    raise EventError(f"field 'timestamp': expected RFC 3339 string or epoch seconds, got {_show(value)}")


def _numeric_feature(name: str, value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(f"feature {name!r}: expected number, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _categorical_feature(name: str, value: Any, limits: Limits = DEFAULT_LIMITS) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise EventError(f"feature {name!r}: expected string or number, got {_show(value)}")
    return _text(_category_text(value), f"feature {name!r}", limits)


def _label(value: Any, name: str, task: str, limits: Limits = DEFAULT_LIMITS) -> str | float:
    if task == "regression":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EventError(f"field {name!r}: expected number for a regression model, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise EventError(f"field {name!r}: expected a finite number, got {_show(value)}")
        return number
    if isinstance(value, (dict, list)) or (isinstance(value, float) and not math.isfinite(value)):
        raise EventError(f"field {name!r}: expected class label (string or integer), got {_show(value)}")
    text = _category_text(value)
    return text if len(text) <= limits.max_string_length else _text(text, f"field {name!r}", limits)


def _probability(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(f"field {name!r}: expected probability in [0, 1], got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not 0.0 <= number <= 1.0:  # also false for NaN
        raise EventError(f"field {name!r}: expected probability in [0, 1], got {_show(value)}")
    return number


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _show(value: Any) -> str:
    """A short JSON-like rendering of a value for a rejection reason."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = _json_type(value) if isinstance(value, (dict, list)) else reprlib.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _quote(text: Any) -> str:
    """``repr`` of a name taken from the input, its middle elided beyond 80 characters."""
    return cap(repr(text), 80)


def prediction_to_dict(event: Prediction) -> dict[str, Any]:
    """The JSON form of a prediction, as docs/design.md gives it (for producers and the simulator)."""
    doc: dict[str, Any] = {
        "prediction_id": event.prediction_id,
        "model_id": event.model_id,
        "model_version": event.model_version,
        "timestamp": event.timestamp,
        "features": dict(event.features),
        "prediction": event.prediction,
    }
    if event.score is not None:
        doc["score"] = event.score
    if event.scores is not None:
        doc["scores"] = dict(event.scores)
    if event.attributes:
        doc["attributes"] = dict(event.attributes)
    return doc


def schemas_from_config(models: Mapping[str, Any], type_errors: str = "reject") -> dict[str, ModelSchema]:
    """One :class:`ModelSchema` per configured model."""
    return {
        model_id: ModelSchema(features=dict(m.features), task=m.task, type_errors=type_errors)
        for model_id, m in models.items()
    }


__all__: Sequence[str] = (
    "Feedback", "ModelSchema", "Prediction", "Rejection", "EventError", "decode",
    "parse_feedback", "parse_predictions", "schemas_from_config",
)
