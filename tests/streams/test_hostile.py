"""Hostile input: limits, capped reasons, time checked against the stream, and fuzzing.

The parser and the pipeline are fed arbitrary bytes and structurally valid but hostile JSON
(huge strings, deep nesting, huge arrays, wrong types, extreme numbers and times, odd unicode).
Checked every time: nothing raises; every rejected message or element has a reason of at most
500 characters and a bounded dead letter; every accepted event is counted (the count is
recomputed here from the parser's own answer); the snapshot serialises and its changelog
records stay under the size limit; no event moves the stream's clock beyond the bound.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streams.state as state_module
from detectors.profile import ReferenceProfile
from streams.config import Config, ConfigError
from streams.evaluation import Evaluation
from streams.events import MAX_REASON, Limits, ModelSchema, cap, decode, parse_feedback, parse_predictions
from streams.join import DictStore
from streams.monitor import ModelMonitor
from streams.pipeline import FEEDBACK, PREDICTION, Pipeline, RawMessage, SourcePipeline
from streams.runtime import model_windows
from streams.state import PartitionState

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()
YEAR = 365 * 24 * 3600.0
SCHEMAS = {"m": ModelSchema(features={"x": "numeric", "c": "categorical"})}
TIME_LIMITS = {"max_future_seconds", "max_past_seconds"}


def event(pid: str = "p", t: Any = NOW, **overrides: Any) -> dict[str, Any]:
    doc = {"prediction_id": pid, "model_id": "m", "model_version": "1", "timestamp": t,
           "features": {"x": 1.5, "c": "web"}, "prediction": 1, "score": 0.7, "attributes": {"g": "A"}}
    doc.update(overrides)
    return doc


def feedback(pid: str = "p", t: Any = NOW, label: Any = 1) -> dict[str, Any]:
    return {"prediction_id": pid, "model_id": "m", "timestamp": t, "label": label}


def only_rejection(payload: bytes, limits: Limits = Limits(), parse: Any = parse_predictions) -> Any:
    events, rejections = parse(payload, SCHEMAS, limits)
    assert events == [] and len(rejections) == 1, (events, rejections)
    return rejections[0]


# -- limits of the parser ----------------------------------------------------------------------


@pytest.mark.parametrize("payload, limits, limit, reason", [
    (b" " * 101, Limits(max_message_bytes=100), "max_message_bytes",
     "message of 101 bytes exceeds validation.max_message_bytes (100)"),
    (orjson.dumps([event(f"p{i}") for i in range(4)]), Limits(max_array_length=3), "max_array_length",
     "array of 4 events exceeds validation.max_array_length (3)"),
    (orjson.dumps(event(features={f"f{i}": 1 for i in range(5)})), Limits(max_fields=4), "max_fields",
     "field 'features': 5 entries exceed validation.max_fields (4)"),
    (orjson.dumps(event(attributes={f"a{i}": 1 for i in range(5)})), Limits(max_fields=4), "max_fields",
     "field 'attributes': 5 entries exceed validation.max_fields (4)"),
    (orjson.dumps(event(features={"x": 1, "c": "w" * 11})), Limits(max_string_length=10), "max_string_length",
     "feature 'c': string of 11 characters exceeds validation.max_string_length (10)"),
    (orjson.dumps(event(attributes={"g": "é" * 11})), Limits(max_string_length=10), "max_string_length",
     "attribute 'g': string of 11 characters exceeds validation.max_string_length (10)"),
    (orjson.dumps(event(pid="p" * 11)), Limits(max_string_length=10), "max_string_length",
     "field 'prediction_id': string of 11 characters exceeds validation.max_string_length (10)"),
    (orjson.dumps(event(prediction="k" * 11)), Limits(max_string_length=10), "max_string_length",
     "field 'prediction': string of 11 characters exceeds validation.max_string_length (10)"),
    (orjson.dumps(event(extra=[[[[1]]]])), Limits(max_depth=4), "max_depth",
     "nested deeper than validation.max_depth (4)"),
    (b"[" * 5000 + b"]" * 5000, Limits(), "max_depth", "nested deeper than validation.max_depth (32)"),
    (b"[" * 200_000 + b"]" * 200_000, Limits(max_message_bytes=10**6), "max_depth",
     "nested deeper than validation.max_depth (32)"),
])
def test_each_limit_rejects_with_a_reason_naming_its_key(payload: bytes, limits: Limits, limit: str,
                                                          reason: str) -> None:
    rejection = only_rejection(payload, limits)
    assert (rejection.limit, rejection.reason) == (limit, reason)


def test_limits_let_the_largest_allowed_values_through() -> None:
    limits = Limits(max_array_length=3, max_fields=4, max_string_length=10, max_depth=3)
    doc = event(pid="p" * 10, features={"x": 1, "c": "w" * 10, "y": 2, "z": 3}, attributes={"g": "é" * 10})
    events, rejections = parse_predictions(orjson.dumps([doc] * 3), SCHEMAS, limits)
    assert rejections == [] and len(events) == 3 and events[0].features["c"] == "w" * 10


def test_a_long_string_is_a_limit_even_when_type_errors_are_counted() -> None:
    schemas = {"m": ModelSchema(features={"x": "numeric", "c": "categorical"}, type_errors="count")}
    _, rejections = parse_predictions(orjson.dumps(event(features={"x": 1, "c": "w" * 2000})), schemas)
    assert rejections[0].limit == "max_string_length"


def test_reasons_are_capped_with_the_middle_elided() -> None:
    model = "M" * 100_000  # the 117,289-character reason echoed a 100 KB model id
    rejection = only_rejection(orjson.dumps(event(model_id=model)))
    assert len(rejection.reason) <= MAX_REASON and rejection.reason.startswith("unknown model 'MMM")
    assert "characters elided" in rejection.reason
    assert len(rejection.model_id) <= 200
    long = "a" * 300 + "b" * 300
    assert cap(long).startswith("a" * 200) and cap(long).endswith("b" * 200) and len(cap(long)) <= MAX_REASON
    assert cap("short") == "short"


@pytest.mark.parametrize("payload, where", [(b"\xff\xfe\x00garbage", "byte 0xff at offset 0"),
                                            (b'{"a": "\xc3\x28"}', "byte 0xc3 at offset 7")])
def test_bytes_that_are_not_utf8_are_reported_as_such(payload: bytes, where: str) -> None:
    reason = only_rejection(payload).reason
    assert reason.startswith("not JSON: not UTF-8 text") and where in reason and "surrogate" not in reason


@pytest.mark.parametrize("stamp", ["2999-12-31T23:59:59Z", 32503593599, 1e19])
def test_times_beyond_64_bit_nanoseconds_are_rejected(stamp: Any) -> None:
    assert "out of range" in only_rejection(orjson.dumps(event(t=stamp))).reason


# -- dead letters ------------------------------------------------------------------------------


def make_config(**validation: Any) -> Config:
    return Config.from_mapping({"models": [{"id": "m", "task": "binary", "positive_label": 1,
                                            "features": {"x": "numeric", "c": "categorical"},
                                            "attributes": ["g"], "window": {"events": 50}}],
                                "validation": validation}, environ={})


def reference(cfg: Config) -> ReferenceProfile:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(size=400), "c": rng.choice(["web", "app"], 400),
                          "g": rng.choice(["A", "B"], 400), "y": rng.integers(0, 2, 400)})
    frame["p"], frame["s"] = frame["y"], rng.uniform(size=400)
    return ReferenceProfile.from_frame(frame, model_id="m", features=dict(cfg.models["m"].features), target="y",
                                       prediction="p", score="s", attributes=["g"])


def make_pipeline(cfg: Config, clock: float = NOW, profile: ReferenceProfile | None = None) -> Pipeline:
    evaluation = Evaluation(cfg.models["m"], profile)
    source = SourcePipeline(cfg, {"m": ModelMonitor(cfg.models["m"], evaluation)}, DictStore(), clock=lambda: clock)
    return Pipeline(source, model_windows(cfg, {"m": evaluation}))


def raw(kind: str, value: Any, offset: int = 0) -> RawMessage:
    payload = value if isinstance(value, bytes) else orjson.dumps(value)
    return RawMessage(kind, payload, b"key", "predictions" if kind == PREDICTION else "feedback", 0, offset)


def test_a_900_kb_message_gives_a_bounded_dead_letter_with_its_size_and_hash() -> None:
    payload = b'{"prediction_id": "' + b"z" * 900_000 + b'"'  # malformed: never closed
    pipeline = make_pipeline(make_config())
    [letter] = pipeline.process([raw(PREDICTION, payload, offset=42)]).dead_letters
    doc = orjson.loads(letter.to_json())
    assert len(letter.to_json()) < 100_000
    assert doc["truncated"] is True and doc["size"] == len(payload)
    assert doc["sha256"] == hashlib.sha256(payload).hexdigest()
    assert base64.b64decode(doc["payload_b64"]) == payload[:65_536]
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("predictions", 0, 42)


def test_the_dead_letters_of_one_array_share_one_payload_budget() -> None:
    # 2,000 bad events in one message: the payload is not copied 2,000 times.
    payload = orjson.dumps([event(f"p{i}", features={"x": "bad", "c": "web"}) for i in range(2000)])
    letters = make_pipeline(make_config()).process([raw(PREDICTION, payload)]).dead_letters
    assert len(letters) == 2000
    carried = sum(len(base64.b64decode(orjson.loads(d.to_json())["payload_b64"])) for d in letters)
    assert carried <= 65_536 and sum(len(d.to_json()) for d in letters) < 2000 * 600 + 100_000
    small = orjson.dumps([event("a", features={"x": "bad", "c": "web"}), event("b", model_id="nope")])
    both = make_pipeline(make_config()).process([raw(PREDICTION, small)]).dead_letters
    assert [base64.b64decode(orjson.loads(d.to_json())["payload_b64"]) for d in both] == [small, small]


def test_limits_are_counted_per_key_in_the_monitor() -> None:
    pipeline = make_pipeline(make_config(max_string_length=10))
    bad = [event(f"b{i}", features={"x": 1, "c": "w" * 11}) for i in range(3)]
    good = [event(f"g{i}", NOW + i) for i in range(50)]
    outcome = pipeline.process([raw(PREDICTION, bad), raw(PREDICTION, b"x" * 10), raw(PREDICTION, good)])
    stats = {p.tags["stat"]: p.fields["value"] for p in outcome.points if p.measurement == "monitor"}
    assert stats["rejected_max_string_length"] == 3 and stats["dead_letters"] == 3
    assert stats["dead_letters_unattributed"] == 1
    assert [orjson.loads(d.to_json()).get("limit") for d in outcome.dead_letters] == [
        "max_string_length"] * 3 + [None]


# -- time against the stream -------------------------------------------------------------------


def test_a_timestamp_ten_years_ahead_is_rejected_and_moves_nothing() -> None:
    # The fourth input: one message ten years ahead expired most pairs of the join.
    pipeline = make_pipeline(make_config())
    pipeline.process([raw(PREDICTION, [event(f"p{i}", NOW - 100 + i) for i in range(10)])])
    watermark = pipeline.join.watermark
    outcome = pipeline.process([raw(PREDICTION, event("future", NOW + 10 * YEAR))])
    [letter] = outcome.dead_letters
    assert letter.limit == "max_future_seconds" and "ahead of the stream" in letter.reason
    assert "validation.max_future_seconds is 300" in letter.reason
    assert pipeline.join.watermark == watermark
    assert pipeline.monitors["m"].watermark <= watermark
    outcome = pipeline.process([raw(FEEDBACK, [feedback(f"p{i}", NOW) for i in range(10)])])
    assert len(outcome.pairs) == 10  # nothing expired


def test_the_future_bound_follows_the_later_of_watermark_and_clock() -> None:
    cfg = make_config(max_future_seconds=60)
    # An empty partition: the first events are checked against the wall clock.
    fresh = make_pipeline(cfg)
    assert fresh.process([raw(PREDICTION, event("a", NOW + 61))]).dead_letters[0].limit == "max_future_seconds"
    assert fresh.process([raw(PREDICTION, event("b", NOW + 59))]).dead_letters == []
    # A stream running ahead of the clock (the simulator does) goes on, one step at a time.
    ahead = make_pipeline(cfg)
    steps = [raw(PREDICTION, event(f"s{i}", NOW + 50 * i)) for i in range(200)]
    assert ahead.process(steps).dead_letters == [] and ahead.join.watermark == NOW + 50 * 199
    # A partition idle for an hour accepts the next events (the clock moved on).
    idle = make_pipeline(cfg, clock=NOW + 3600)
    idle.join.watermark = NOW
    assert idle.process([raw(PREDICTION, event("late", NOW + 3600))]).dead_letters == []


def test_replaying_last_years_logs_with_gaps_works() -> None:
    pipeline = make_pipeline(make_config())
    old = [event(f"o{i}", NOW - YEAR + i * 86_400.0) for i in range(5)]  # a day between events
    outcome = pipeline.process([raw(PREDICTION, e) for e in old])
    assert outcome.dead_letters == [] and pipeline.events_seen == 5


def test_events_too_far_behind_the_watermark_are_rejected() -> None:
    cfg = make_config(max_past_seconds=3600)
    pipeline = make_pipeline(cfg)
    pipeline.process([raw(PREDICTION, event("now", NOW))])
    [letter] = pipeline.process([raw(FEEDBACK, feedback("old", NOW - 3601))]).dead_letters
    assert letter.limit == "max_past_seconds" and "3601 s behind the stream" in letter.reason
    assert pipeline.process([raw(FEEDBACK, feedback("ok", NOW - 3599))]).dead_letters == []
    assert make_pipeline(make_config()).source.max_past_seconds == cfg.join.ttl_seconds  # the default: the TTL


@pytest.mark.parametrize("validation, message", [
    ({"max_depth": 1}, "validation.max_depth: expected a whole number >= 2, got 1"),
    ({"max_fields": 2.5}, "validation.max_fields: expected a whole number, got 2.5"),
    ({"max_string_length": True}, "validation.max_string_length: expected a whole number, got True"),
    ({"max_future_seconds": -1}, "validation.max_future_seconds: expected a number of seconds >= 0, got -1.0"),
    ({"max_past_seconds": "soon"}, "validation.max_past_seconds: expected a number of seconds >= 0 or null, got 'soon'"),
    ({"max_message_bytes": "big"}, "validation.max_message_bytes: expected a whole number, got 'big'"),
    ({"dead_letter_payload_bytes": 2_000_000}, "validation.dead_letter_payload_bytes: at most 700000"),
    ({"max_arrays": 3}, "validation.max_arrays: unknown key"),
])
def test_validation_keys_are_checked(validation: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(**validation)
    assert str(error.value).startswith(message)


def test_validation_defaults() -> None:
    v = make_config().validation
    assert (v.max_message_bytes, v.max_array_length, v.max_fields, v.max_string_length, v.max_depth,
            v.max_future_seconds, v.max_past_seconds, v.dead_letter_payload_bytes) == (
        1_000_000, 10_000, 1_000, 1_024, 32, 300.0, None, 65_536)



def test_the_parsers_bounds_are_declared_once_and_reach_the_parser() -> None:
    """``validation`` is the parser's :class:`Limits` plus the pipeline's bounds: one declaration,
    so a bound added to the parser is a config key (and its default) without a second list."""
    cfg = make_config(max_fields=4)
    assert isinstance(cfg.validation, Limits)
    assert {f.name for f in fields(Limits)} < {f.name for f in fields(type(cfg.validation))}
    [letter] = make_pipeline(cfg).process([raw(PREDICTION, event(features={f"f{i}": 1 for i in range(5)}))]).dead_letters
    assert letter.limit == "max_fields"


# -- fuzzing -----------------------------------------------------------------------------------

HUGE_TEXT = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\u0000", "😀", '"', "\\"]),
                      st.integers(500, 60_000))
ODD_TEXT = st.text(max_size=20) | st.sampled_from(["", " ", "\u202e", "\ufeff", "NaN", "null", "𝔘𝔫𝔦"])
NUMBERS = (st.integers(-2**70, 2**70) | st.floats() | st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324]))
SCALARS = st.none() | st.booleans() | NUMBERS | ODD_TEXT | HUGE_TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
                    max_leaves=12)
TIMES = (st.sampled_from([NOW, NOW + 1, NOW - 30, NOW + 10 * YEAR, NOW - YEAR, "2999-12-31T23:59:59Z",
                          "2036-01-01T00:00:00Z", "not a time", -1, 1e300, 9_183_110_400.0, 0])
         | st.floats(0, 2e10) | JSON)


@st.composite
def hostile_event(draw: Any) -> Any:
    good = draw(st.booleans())
    pid = draw(st.sampled_from(["p1", "p2", "p3"]) if good else (st.sampled_from(["p1", "p2"]) | SCALARS))
    doc: dict[str, Any] = {
        "prediction_id": pid,
        "model_id": "m" if good else draw(st.sampled_from(["m", "other", "M" * 100_000]) | SCALARS),
        "model_version": draw(st.sampled_from(["1", 2]) | (st.nothing() if good else SCALARS)),
        "timestamp": NOW + draw(st.floats(-60, 60)) if good else draw(TIMES),
        "features": {"x": draw(NUMBERS | st.none()), "c": draw(st.sampled_from(["web", "app", "new"]) | ODD_TEXT)}
        if good else draw(st.dictionaries(st.sampled_from(["x", "c", "y"]) | ODD_TEXT, JSON, max_size=4) | JSON),
        "prediction": draw(st.sampled_from([0, 1, "1"]) | (st.nothing() if good else JSON)),
        "label": draw(st.sampled_from([0, 1]) | (st.nothing() if good else JSON)),
        "score": draw(st.floats(0, 1) | (st.nothing() if good else JSON)),
        "attributes": {"g": draw(st.sampled_from(["A", "B"]) | ODD_TEXT)} if good else draw(JSON),
    }
    for name in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2, unique=True)) if not good else []:
        del doc[name]
    return doc


def dumps(doc: Any) -> bytes:
    """As a Python producer writes it (``json.dumps``: NaN, big integers, ``\\u`` escapes)."""
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


MESSAGES = st.one_of(
    st.binary(max_size=200),
    hostile_event().map(dumps),
    st.lists(hostile_event(), min_size=0, max_size=6).map(dumps),
    JSON.map(dumps),
    st.integers(1, 3000).map(deep),
    st.integers(10_001, 12_000).map(lambda n: b"[" + b",".join([b"{}"] * n) + b"]"),
    st.builds(lambda doc, cut: dumps(doc)[:cut], hostile_event(), st.integers(0, 400)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload=MESSAGES)
def test_the_parser_never_raises_and_always_gives_a_reason(payload: bytes) -> None:
    for parse in (parse_predictions, parse_feedback):
        events, rejections = parse(payload, SCHEMAS)
        assert all(r.reason and len(r.reason) <= MAX_REASON for r in rejections)
        assert all(r.model_id is None or len(r.model_id) <= 200 for r in rejections)
        try:
            doc = decode(payload)
        except ValueError:
            assert events == [] and len(rejections) == 1
            continue
        if isinstance(doc, list) and 0 < len(doc) <= 10_000:
            assert len(events) + len(rejections) == len(doc)
            assert sorted(r.index for r in rejections) == [r.index for r in rejections]
        else:
            assert len(events) + len(rejections) == 1
        for e in events:
            assert 0 <= e.timestamp <= 9_183_110_400.0 and e.timestamp * 1e9 < 2**63


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.tuples(st.sampled_from([PREDICTION, FEEDBACK]), MESSAGES), max_size=8),
                        min_size=1, max_size=4))
def test_the_pipeline_takes_anything(batches: list[list[tuple[str, bytes]]], monkeypatch: Any) -> None:
    monkeypatch.setattr(state_module, "RECORD_BYTES", 4096)  # small, so records are cut often
    cfg = make_config()
    pipeline = make_pipeline(cfg, profile=PROFILE)
    state = PartitionState(0, send=lambda p, key, value: sent.append(value))
    sent: list[bytes] = []
    accepted = dead = 0
    for number, batch in enumerate(batches):
        messages = [raw(kind, payload, offset=i) for i, (kind, payload) in enumerate(batch)]
        before = pipeline.events_seen
        outcome = pipeline.process(messages)
        expected_dead = 0
        parsed = 0
        for message in messages:
            parse = parse_predictions if message.kind == PREDICTION else parse_feedback
            events, rejections = parse(message.value, pipeline.schemas, pipeline.source.limits)
            parsed += len(events)
            expected_dead += len(rejections)
        timed = [d for d in outcome.dead_letters if d.limit in TIME_LIMITS]
        assert len(outcome.dead_letters) == expected_dead + len(timed)
        assert pipeline.events_seen - before == parsed - len(timed)  # every accepted event counted
        for letter in outcome.dead_letters:
            doc = orjson.loads(letter.to_json())
            assert doc["reason"] and len(doc["reason"]) <= MAX_REASON
            assert len(letter.to_json()) < 100_000
        assert pipeline.join.watermark <= NOW + cfg.validation.max_future_seconds
        snapshot = pipeline.snapshot()
        state.save_snapshot(snapshot)
        assert all(len(value) <= 4096 + 100 for value in sent)
        accepted += pipeline.events_seen - before
        dead += len(outcome.dead_letters)
    flushed = pipeline.flush()
    for point in flushed.points:
        assert point.time_ns < 2**63
    restored = make_pipeline(cfg, profile=PROFILE)
    restored.restore(orjson.loads(orjson.dumps(pipeline.snapshot(), option=orjson.OPT_SERIALIZE_NUMPY)))


PROFILE = reference(make_config())
