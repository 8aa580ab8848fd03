"""The batch parser gives, message by message, exactly what the one-message parser gives.

:func:`streams.events.parse_prediction_batch` decodes a batch of messages at once and checks the
decoded envelopes column by column; every message it cannot decide alone goes through
:func:`streams.events.parse_predictions`. The oracle is that function, message by message: the
same events (compared by ``repr``, so NaN features compare equal) and the same rejections with the
same reasons, whatever the batch's mix, order and size.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from streams.events import (DEFAULT_LIMITS, Limits, ModelSchema, parse_feedback, parse_feedback_batch,
                            parse_prediction_batch, parse_predictions)

SCHEMAS = {
    "m": ModelSchema(features={"age": "numeric", "income": "numeric", "channel": "categorical"}, task="binary"),
    "mc": ModelSchema(features={"x": "numeric"}, task="multiclass"),
    "r": ModelSchema(features={"x": "numeric"}, task="regression"),
    "c": ModelSchema(features={"age": "numeric", "channel": "categorical"}, task="binary", type_errors="count"),
}


def prediction(i: int, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"prediction_id": f"p{i}", "model_id": "m", "model_version": "3", "timestamp": 1000.0 + i,
                           "features": {"age": 41.0 + i, "income": 52000.5, "channel": "web"},
                           "prediction": "1", "score": 0.81, "attributes": {"sex": "F"}}
    doc.update(overrides)
    return doc


def feedback(i: int, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"prediction_id": f"p{i}", "model_id": "m", "timestamp": 2000.0 + i, "label": "0"}
    doc.update(overrides)
    return doc


def prediction_corpus() -> list[bytes]:
    """Good messages of every common shape and bad ones of many kinds."""
    d = orjson.dumps
    good = [d(prediction(i)) for i in range(40)]
    odd = [
        d(prediction(100, prediction=1)), d(prediction(101, prediction=True)), d(prediction(102, prediction=1.5)),
        d(prediction(103, model_version=7)), d(prediction(104, timestamp="2026-11-22T10:00:00Z")),
        d(prediction(105, features={"age": None, "income": 3, "channel": None})),
        d(prediction(106, features={"age": 1, "channel": 7})), d(prediction(107, features={"age": "x"})),
        d(prediction(108, features={"age": 1, "extra": [1, 2]})), d(prediction(109, score=None, attributes=None)),
        d(prediction(110, score=1.5)), d(prediction(111, model_id="nope")), d(prediction(112, model_id="r", prediction=2)),
        d(prediction(113, model_id="mc", prediction="b", features={"x": 1.0})),
        d(prediction(114, model_id="c", features={"age": "old", "channel": 3})),
        d(prediction(115, prediction_id="")), d(prediction(116, prediction_id="x" * 2000)),
        d(prediction(117, scores={"a": 0.2, "b": 0.8}, score=None)), d({"model_id": "m"}),
        d([prediction(120), prediction(121, model_id="mc", prediction=3, features={"x": 2.0})]),
        d([prediction(122), {"model_id": "m"}, 7]), d([]), d([prediction(123)] * 3), d("text"), d(17),
        b"", b"  ", b"not json", b'{"prediction_id": "p", ', b"[1, 2", b"\xff\xfe",
        d(prediction(124)) + b"  ", b"  " + d(prediction(125)), d(prediction(126)).replace(b",", b",\n"),
        d(prediction(127)).replace(b'"age":41.0', b'"age":12345678901234567890123'),
        d(prediction(128, features={"age": 1e308, "income": -0.0, "channel": ""})),
        # values that only a boundary mistake would join: each is bad alone, and must stay so
        d(prediction(130)) + b" " + d(prediction(131)), b"[" + d(prediction(132)) + b",", d(prediction(133)) + b"]",
        b"[" + d(prediction(134)), d(prediction(135)) + b"," + d(prediction(136)),
    ]
    return good + odd


def feedback_corpus() -> list[bytes]:
    d = orjson.dumps
    good = [d(feedback(i)) for i in range(40)]
    odd = [
        d(feedback(100, label=1)), d(feedback(101, label=True)), d(feedback(102, label=1.0)),
        d(feedback(103, timestamp="2026-11-29T08:00:00Z")), d(feedback(104, model_id="nope")),
        d(feedback(105, model_id="r", label=2.5)), d(feedback(106, prediction_id="")), d(feedback(107, label=None)),
        d(feedback(108, timestamp=-1.0)), d(feedback(109, model_id="")), d(feedback(110, extra=1)),
        d([feedback(111), feedback(112, label=0)]), d([feedback(113), {"x": 1}]), b"{", b"",
        d(feedback(114)) + b" " + d(feedback(115)), b"[" + d(feedback(116)) + b",", d(feedback(117)) + b"]",
    ]
    return good + odd


def same(got: Any, want: Any) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert repr(g) == repr(w)


KINDS = {"predictions": (prediction_corpus, parse_prediction_batch, parse_predictions),
         "feedback": (feedback_corpus, parse_feedback_batch, parse_feedback)}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("seed", range(6))
def test_batches_parse_as_their_messages_alone(kind: str, seed: int) -> None:
    corpus_of, parse_batch, parse_one = KINDS[kind]
    corpus = corpus_of()
    rng = random.Random(seed)
    batch = [rng.choice(corpus) for _ in range(rng.choice([1, 5, 40, 300]))]
    same(parse_batch(batch, SCHEMAS), [parse_one(p, SCHEMAS) for p in batch])


def test_every_message_of_the_corpus_alone_and_together() -> None:
    corpus = prediction_corpus()
    want = [parse_predictions(p, SCHEMAS) for p in corpus]
    same(parse_prediction_batch(corpus, SCHEMAS), want)
    for p, w in zip(corpus, want):
        same(parse_prediction_batch([p], SCHEMAS), [w])


def test_messages_that_are_bad_alone_are_not_joined_into_good_ones() -> None:
    """``{a} {b}``, ``[{c},`` and ``{d}]`` are three bad messages; newline-joined they would decode
    as three values (two events, then an array of two): the batch must not take them."""
    d = orjson.dumps
    batch = [d(prediction(1)) + b" " + d(prediction(2)), b"[" + d(prediction(3)) + b",", d(prediction(4)) + b"]"]
    got = parse_prediction_batch(batch, SCHEMAS)
    assert all(events == [] and len(rejections) == 1 and rejections[0].reason.startswith("not JSON")
               for events, rejections in got)
    same(got, [parse_predictions(p, SCHEMAS) for p in batch])


def test_limits_apply_per_message() -> None:
    limits = Limits(max_message_bytes=300, max_array_length=2, max_string_length=5)
    d = orjson.dumps
    batch = [d(prediction(1)), d([prediction(2)] * 3), d(prediction(3, prediction="abcdefg")),
             d(prediction(4, features={"age": 1.0, "income": 2.0, "channel": "abcdefgh"})),
             d(prediction(5, model_version="123456")), d([prediction(6), prediction(7)]),
             d(prediction(8, attributes={"sex": "x" * 300}))]
    same(parse_prediction_batch(batch, SCHEMAS, limits), [parse_predictions(p, SCHEMAS, limits) for p in batch])
    assert parse_prediction_batch(batch, SCHEMAS, DEFAULT_LIMITS)[0][0]  # the same event passes the defaults
