"""The columnar hot path (issue 15) gives what the row-by-row code gave."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.partials import Evidence


def _row_by_row(base: Evidence, other: Evidence, limit: int) -> Evidence:
    """Evidence.extend as it was written before issue 15, one row at a time."""
    seen = set(base.ids)
    for i, pid in enumerate(other.ids):
        if pid in seen:
            continue
        seen.add(pid)
        base.ids.append(pid)
        for name, values in other.features.items():
            base.features.setdefault(name, [None] * (len(base.ids) - 1)).append(values[i])
        base.predictions.append(other.predictions[i])
        base.scores.append(other.scores[i])
    base.labels.update(other.labels)
    if len(base.ids) > limit:
        cut = len(base.ids) - limit
        dropped = base.ids[:cut]
        base.ids = base.ids[cut:]
        base.features = {k: v[cut:] for k, v in base.features.items()}
        base.predictions = base.predictions[cut:]
        base.scores = base.scores[cut:]
        for pid in dropped:
            base.labels.pop(pid, None)
    return base


def _evidence(ids: list[str], names: list[str]) -> Evidence:
    return Evidence(list(ids), {n: [f"{n}{pid}" for pid in ids] for n in names}, [f"y{pid}" for pid in ids],
                    [float(len(pid)) for pid in ids], {pid: 1 for pid in ids[::2]})


ids = st.lists(st.sampled_from("abcdefgh"), max_size=8)
names = st.lists(st.sampled_from(["x", "y"]), unique=True, max_size=2)


@settings(max_examples=150, deadline=None)
@given(ids, names, ids, names, st.integers(1, 10))
def test_evidence_extend_is_the_row_by_row_merge(a: list[str], na: list[str], b: list[str], nb: list[str],
                                                 limit: int) -> None:
    def fields(e: Evidence) -> Any:
        return e.ids, e.features, e.predictions, e.scores, e.labels

    got = _evidence(a, na).extend(_evidence(b, nb), limit=limit)
    assert fields(got) == fields(_row_by_row(_evidence(a, na), _evidence(b, nb), limit))


# -- the parser's fast path gives what the exact path gives -------------------------------------

import json  # noqa: E402

from streams.events import (Limits, ModelSchema, _feedback, _parse_exact, _parse_fast,  # noqa: E402
                            _parse_many, _prediction)

SCHEMAS = {"m": ModelSchema(features={"x": "numeric", "c": "categorical"}),
           "r": ModelSchema(features={"x": "numeric"}, task="regression"),
           "k": ModelSchema(features={"x": "numeric", "c": "categorical"}, type_errors="count"),
           "n": ModelSchema(features={"x y": "numeric", "class": "categorical"})}  # names that are no identifiers
ONE_MODEL = {"m": SCHEMAS["m"]}
"""One model: a message without ``model_id`` must not be taken for that model's."""
LIMITS = Limits(max_string_length=8, max_fields=3, max_array_length=4, max_depth=6)
odd = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(2**62, 2**66),
                st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.5, 1e300, -0.0, 2.0]),
                st.text(max_size=10), st.sampled_from(["2026-12-01T00:00:00Z", "web", ""]),
                st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
fields = {
    "prediction_id": st.one_of(st.sampled_from(["a", "b", "a" * 9]), odd),
    "model_id": st.one_of(st.sampled_from(["m", "r", "k", "n", "x"]), odd),
    "model_version": st.one_of(st.sampled_from(["1", 2]), odd),
    "timestamp": st.one_of(st.sampled_from([1.7e9, 1_700_000_000, 9.9e9, -1.0]), odd),
    "features": st.one_of(st.fixed_dictionaries({}, optional={"x": odd, "c": odd, "z": odd, "x y": odd, "class": odd}),
                          odd),
    "prediction": st.one_of(st.sampled_from([1, "0", 0.25]), odd),
    "score": odd, "scores": st.one_of(st.none(), st.dictionaries(st.sampled_from(["0", "1"]), odd, max_size=2)),
    "attributes": st.one_of(st.none(), st.dictionaries(st.text(max_size=9), st.one_of(st.text(max_size=9), odd),
                                                       max_size=4)),
    "label": st.one_of(st.sampled_from([1, "0", 2.5]), odd),
    "extra": st.recursive(st.integers(0, 9), lambda inner: st.lists(inner, min_size=1, max_size=2), max_leaves=12),
}
REQUIRED = ("prediction_id", "model_id", "model_version", "timestamp", "features", "prediction")
good = {"prediction_id": st.sampled_from(["a", "b"]), "model_id": st.sampled_from(["m", "r", "k", "n"]),
        "model_version": st.sampled_from(["1", 2]), "timestamp": st.sampled_from([1.7e9, 1_700_000_000]),
        "features": st.one_of(*(st.fixed_dictionaries({x: st.one_of(st.none(), st.floats(-1e3, 1e3)),
                                                        c: st.sampled_from(["web", None])})
                                for x, c in (("x", "c"), ("x y", "class")))),
        "prediction": st.sampled_from([1, "0", 0.25]), "label": st.sampled_from([1, "0"])}
envelopes = st.one_of(
    st.fixed_dictionaries({k: good[k] for k in REQUIRED},  # valid, but for what the options hold
                          optional={"score": st.one_of(st.sampled_from([0.5, 1, None]), fields["score"]),
                                    "attributes": fields["attributes"], "label": good["label"],
                                    "extra": fields["extra"]}),
    st.fixed_dictionaries({}, optional=fields),  # anything
    st.fixed_dictionaries({k: st.one_of(good[k], good[k], fields[k]) for k in REQUIRED},  # mostly valid
                          optional={k: fields[k] for k in ("score", "scores", "attributes")}),
    st.fixed_dictionaries({k: st.one_of(good[k], fields[k]) for k in ("prediction_id", "model_id", "timestamp",
                                                                       "label")}))


@settings(max_examples=300, deadline=None)
@given(st.one_of(envelopes, st.lists(envelopes, max_size=5), odd))
def test_the_fast_path_parses_as_the_exact_path(doc: Any) -> None:
    """Every message, valid or not: the same events (values and order) and the same rejections."""
    raw = json.dumps(doc).encode()  # the standard library: integers beyond 64 bits too
    for schemas in (SCHEMAS, ONE_MODEL):
        for parse_one in (_prediction, _feedback):
            got = _parse_many(raw, schemas, parse_one, LIMITS)
            assert repr(got) == repr(_parse_exact(raw, schemas, parse_one, LIMITS))


def test_valid_traffic_takes_the_fast_path_and_parses_as_the_exact_path() -> None:
    """The benchmark model's traffic, one event per message and as arrays, with a bad element
    in an array: decided by the fast path (the oracle above is then not only of rejections),
    the bad element alone by the exact path, every event and reason the same."""
    from bench.world import FEATURES, MODEL_ID, EventStream

    schemas = {MODEL_ID: ModelSchema(features=dict(FEATURES))}
    docs = [(kind, doc) for kind, doc in EventStream(seed=1).events(300)]
    predictions = [d for k, d in docs if k == "prediction"]
    feedback = [d for k, d in docs if k == "feedback"]
    assert feedback
    bad = {**predictions[1], "features": {**predictions[1]["features"], "cat0": 7}, "timestamp": "2026-12-01T00:00:00Z"}
    messages = [(_prediction, json.dumps(d).encode()) for d in predictions[:50]]
    messages += [(_feedback, json.dumps(d).encode()) for d in feedback[:50]]
    messages += [(_prediction, json.dumps(predictions[50:60] + [bad, {"model_id": "x"}] + predictions[60:70]).encode()),
                 (_feedback, json.dumps(feedback[50:90]).encode())]
    # one model: an event without model_id is not that model's
    nameless = {k: v for k, v in predictions[2].items() if k != "model_id"}
    messages.append((_prediction, json.dumps([nameless] + predictions[3:5]).encode()))
    assert [r.reason for r in _parse_many(messages[-1][1], schemas, _prediction, Limits())[1]] == [
        "event[0]: missing field 'model_id'"]
    assert [r.reason for r in _parse_many(json.dumps(nameless).encode(), schemas, _prediction, Limits())[1]] == [
        "missing field 'model_id'"]
    fast_events = 0
    for parse_one, raw in messages:
        fast = _parse_fast(raw, schemas, parse_one, Limits())
        assert fast is not None
        assert repr(fast) == repr(_parse_exact(raw, schemas, parse_one, Limits()))
        fast_events += len(fast[0])
    assert fast_events == 50 + 50 + 21 + 40 + 2


# -- the changelog's pieces are compressed, and pieces written before still recover ---------------

import orjson  # noqa: E402
import pytest  # noqa: E402

import streams.state as state_module  # noqa: E402
from streams.state import PartitionState  # noqa: E402


def _recover(log: list[tuple[bytes, bytes | None]]) -> PartitionState:
    state = PartitionState(0)
    for key, value in log:
        state.apply(key, value)
    state.finish_recovery()
    return state


def _entries(live: PartitionState, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        live.set(f"p{i}", [1.7e9 + i, "m", "p", orjson.dumps(["1", "1", 0.5, None, None, {"x": i / 7}]).decode()])


def _zlib_piece(header: dict[str, object], body: bytes) -> bytes:
    """The writer between issue 15's first step and Zstandard: zlib level 1, ``"z": 1``."""
    import zlib

    return orjson.dumps({**header, "z": 1}) + b"\n" + zlib.compress(body, 1)


@pytest.mark.parametrize("writer", ["zstd", "zlib", "plain"])
def test_the_changelog_recovers_compressed_and_uncompressed_pieces(writer: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written compressed recover the same table and snapshot; so do the zlib-compressed and
    the uncompressed pieces that the changelog held before (a worker upgraded mid-log reads them all)."""
    compressed = writer != "plain"
    if writer == "plain":  # the writer before issue 15: header, newline, the bytes as they are
        monkeypatch.setattr(state_module, "_piece", lambda header, body: orjson.dumps(header) + b"\n" + body)
    elif writer == "zlib":
        monkeypatch.setattr(state_module, "_piece", _zlib_piece)
    monkeypatch.setattr(state_module, "RECORD_BYTES", 4096)  # several pieces per record
    log: list[tuple[bytes, bytes | None]] = []
    live = PartitionState(0, send=lambda _p, key, value: log.append((key, value)))
    _entries(live, 300)
    live.save_snapshot({"monitors": list(range(2000))})
    live.save_full()
    _entries(live, 200, start=300)
    live.delete("p3")
    live.save_snapshot({"monitors": list(range(10))})
    headers = [orjson.loads(value.partition(b"\n")[0]) for key, value in log
               if value is not None and b"\n" in value and key[:2] in (b"d:", b"f:", b"s:")]
    mark = {"zstd": "zs", "zlib": "z", "plain": None}[writer]
    assert headers and sum(mark in h for h in headers) >= (len(headers) - 2 if compressed else 0)
    assert compressed or not any("z" in h or "zs" in h for h in headers)
    recovered = _recover(log)
    assert list(recovered.joins.items()) == list(live.joins.items())
    assert recovered.snapshot == {"monitors": list(range(10))}


def test_compressed_pieces_are_a_third_of_the_bytes() -> None:
    sizes = {}
    for compressed in (True, False):
        log: list[tuple[bytes, bytes | None]] = []
        live = PartitionState(0, send=lambda _p, key, value: log.append((key, value)))
        if not compressed:
            live.send = None  # measure the plain delta below instead
        _entries(live, 2000)
        if compressed:
            live.save_snapshot({})
            sizes[compressed] = sum(len(v or b"") for k, v in log if k.startswith(b"d:"))
        else:
            sizes[compressed] = len(orjson.dumps({"del": [], "set": dict(live._sets)}))
    assert sizes[True] * 3 < sizes[False], sizes
