"""The pipeline without a broker: messages in, dead letters and points out.

Oracles: the dead letter carries the original bytes; window membership and
accuracy are recomputed here from the message sequence with pandas; a run cut
by snapshot → restore into a fresh pipeline gives the points of a run that was
never interrupted.
"""

from __future__ import annotations

import base64
import copy
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.points import Point
from streams.config import Config
from streams.evaluation import Evaluation
import streams.pipeline as pipeline_module
from streams.join import DictStore
from streams.pipeline import FEEDBACK, PREDICTION, DeadLetter, Outcome, Pipeline, RawMessage
from streams.runtime import pipeline_factory
from streams.state import record_json

N = 10  # events per window
TIME_DEPENDENT = {"throughput", "lag"}


def make_config(window: int = N) -> Config:
    return Config.from_mapping({"models": [{
        "id": "m", "task": "binary", "positive_label": 1,
        "features": {"x": "numeric", "c": "categorical"},
        "attributes": ["g"], "window": {"events": window},
    }]}, environ={})


def make_builder(cfg: Config) -> Any:
    evaluations = {model_id: Evaluation(model_cfg, None) for model_id, model_cfg in cfg.models.items()}
    return pipeline_factory(cfg, evaluations)


@pytest.fixture
def cfg() -> Config:
    return make_config()


@pytest.fixture
def pipeline(cfg: Config) -> Pipeline:
    return make_builder(cfg)(DictStore())


# -- messages -------------------------------------------------------------------------------

_offsets = {PREDICTION: 0, FEEDBACK: 0}


def prediction_event(pid: str, t: float, prediction: str = "1", *, score: float = 0.6, group: str = "A",
                     version: str = "1", model: str = "m") -> dict[str, Any]:
    return {"prediction_id": pid, "model_id": model, "model_version": version, "timestamp": t,
            "features": {"x": float(t % 7), "c": "abc"[int(t) % 3]}, "prediction": prediction,
            "score": score, "attributes": {"g": group}}


def feedback_event(pid: str, t: float, label: str, *, model: str = "m") -> dict[str, Any]:
    return {"prediction_id": pid, "model_id": model, "timestamp": t, "label": label}


def message(kind: str, value: bytes | Any, offset: int = 0, key: bytes | None = None) -> RawMessage:
    payload = value if isinstance(value, bytes) else orjson.dumps(value)
    topic = "predictions" if kind == PREDICTION else "feedback"
    return RawMessage(kind=kind, value=payload, key=key, topic=topic, partition=3, offset=offset)


@dataclass
class Collected:
    """Everything several batches produced, in order."""

    points: list[Point] = field(default_factory=list)
    dead_letters: list[Any] = field(default_factory=list)
    windows: list[Any] = field(default_factory=list)
    pairs: list[Any] = field(default_factory=list)

    def extend(self, outcome: Outcome | Collected) -> None:
        self.points.extend(outcome.points)
        self.dead_letters.extend(outcome.dead_letters)
        self.windows.extend(outcome.windows)
        self.pairs.extend(outcome.pairs)


def run(pipeline: Pipeline, messages: Sequence[RawMessage], batch_sizes: Iterable[int] | None = None) -> Collected:
    """Process ``messages`` in batches (one message per batch by default)."""
    total = Collected()
    sizes = iter(batch_sizes) if batch_sizes is not None else None
    i = 0
    while i < len(messages):
        size = next(sizes, 1) if sizes is not None else 1
        total.extend(pipeline.process(messages[i:i + max(size, 1)]))
        i += max(size, 1)
    return total


def stat(points: Sequence[Point], name: str) -> list[float]:
    return [p.fields["value"] for p in points if p.measurement == "monitor" and p.tags["stat"] == name]


def comparable(points: Iterable[Point]) -> list[tuple[Any, ...]]:
    out = []
    for p in points:
        if p.measurement == "monitor" and p.tags.get("stat") in TIME_DEPENDENT:
            continue
        out.append((p.measurement, tuple(sorted(p.tags.items())), tuple(sorted(p.fields.items())), p.time_ns))
    # the order of points inside one window carries no meaning (InfluxDB keys them by series and time)
    return sorted(out, key=lambda x: (x[3], x[0], x[1]))


def assert_same_points(got: Iterable[Point], expected: Iterable[Point]) -> None:
    """Same series, tags, times and field names; float fields equal up to summation order."""
    g, e = comparable(got), comparable(expected)
    assert [(m, tags, tuple(k for k, _ in f), t) for m, tags, f, t in g] == \
        [(m, tags, tuple(k for k, _ in f), t) for m, tags, f, t in e]
    for (_, tags, fg, _), (_, _, fe, _) in zip(g, e):
        assert dict(fg) == pytest.approx(dict(fe), rel=1e-9, abs=1e-12, nan_ok=True), tags


# -- dead letters ---------------------------------------------------------------------------


def test_dead_letter_keeps_original_bytes_and_position(pipeline: Pipeline) -> None:
    raw = b"\xff\x00not json at all \xc3"
    outcome = pipeline.process([RawMessage(PREDICTION, raw, key=b"k-1", topic="predictions", partition=2, offset=41)])
    assert len(outcome.dead_letters) == 1
    dl = outcome.dead_letters[0]
    assert isinstance(dl, DeadLetter)
    assert dl.message.key == b"k-1"
    doc = orjson.loads(dl.to_json())
    assert set(doc) == {"topic", "partition", "offset", "reason", "payload_b64"}
    assert (doc["topic"], doc["partition"], doc["offset"]) == ("predictions", 2, 41)
    assert doc["reason"].startswith("not JSON: ")
    assert base64.b64decode(doc["payload_b64"]) == raw
    assert pipeline.dead_letter_count == 1
    assert outcome.points == [] and outcome.pairs == []


def test_dead_letter_for_a_known_model_names_it(pipeline: Pipeline) -> None:
    bad = feedback_event("a", 1.0, "1")
    del bad["label"]
    raw = orjson.dumps(bad)
    dl = pipeline.process([message(FEEDBACK, raw, offset=7)]).dead_letters[0]
    assert dl.to_json() == orjson.dumps({"topic": "feedback", "partition": 3, "offset": 7,
                                         "reason": "missing field 'label'",
                                         "payload_b64": base64.b64encode(raw).decode(), "model_id": "m"})


def test_mixed_array_good_elements_are_processed(pipeline: Pipeline) -> None:
    good = [prediction_event(f"p{i}", 100.0 + i) for i in range(3)]
    bad_type = prediction_event("bad", 50.0) | {"features": {"x": "abc", "c": "a"}}
    docs = [good[0], bad_type, good[1], {"model_id": "nope"}, good[2]]
    raw = orjson.dumps(docs)
    outcome = pipeline.process([message(PREDICTION, raw, offset=9),
                                message(FEEDBACK, [feedback_event(f"p{i}", 200.0, "1") for i in range(3)])])
    assert [(d.index, d.reason, d.model_id) for d in outcome.dead_letters] == [
        (1, """event[1]: feature 'x': expected number, got "abc\"""", "m"),
        (3, "event[3]: missing field 'prediction_id'", "nope"),
    ]
    for dl in outcome.dead_letters:
        doc = orjson.loads(dl.to_json())
        assert base64.b64decode(doc["payload_b64"]) == raw  # the whole original message
        assert doc["index"] == dl.index and doc["offset"] == 9
    assert sorted(p.prediction.prediction_id for p in outcome.pairs) == ["p0", "p1", "p2"]
    assert pipeline.events_seen == 6
    assert pipeline.join.counts.pairs == 3
    # the three good predictions are in the open window
    flushed = pipeline.flush()
    assert [w.n for w in flushed.windows] == [3]
    assert stat(flushed.points, "events") == [3.0] and stat(flushed.points, "pairs") == [3.0]
    assert stat(flushed.points, "dead_letters") == [1.0]            # attributable to m
    assert stat(flushed.points, "dead_letters_unattributed") == [1.0]  # model 'nope'


def test_bad_input_never_raises(pipeline: Pipeline) -> None:
    junk = [b"", b"[]", b"null", b"[1, 2]", b'{"model_id": "m"}', b"\x00" * 10, b"[" * 5000, "é".encode("latin-1")]
    outcome = pipeline.process([message(kind, raw) for raw in junk for kind in (PREDICTION, FEEDBACK)])
    assert len(outcome.dead_letters) == 2 * len(junk) + 2  # [1, 2] gives two rejections per kind
    assert getattr(pipeline, "internal_errors", 0) == 0


def test_dead_letters_are_counted_in_the_next_closed_window(pipeline: Pipeline) -> None:
    bad_for_m = orjson.dumps(prediction_event("x", 1.0) | {"score": 7})
    bad_feedback_for_m = orjson.dumps(feedback_event("x", 1.0, "1") | {"timestamp": "never"})
    msgs: list[RawMessage] = [message(PREDICTION, bad_for_m)]  # before the model has any window
    t = 0
    for window in range(3):
        for i in range(N):
            msgs.append(message(PREDICTION, prediction_event(f"w{window}-{i}", float(t))))
            t += 1
            if window == 0 and i == 4:
                msgs += [message(PREDICTION, bad_for_m), message(FEEDBACK, bad_feedback_for_m),
                         message(PREDICTION, b"garbage")]
        if window == 1:
            msgs.append(message(PREDICTION, bad_for_m))  # after window 1 closed: belongs to window 2
    outcome = run(pipeline, msgs)
    assert [w.n for w in outcome.windows] == [N, N, N]
    assert stat(outcome.points, "dead_letters") == [3.0, 0.0, 1.0]
    assert stat(outcome.points, "dead_letters_unattributed") == [1.0]
    assert len(outcome.dead_letters) == 5 and pipeline.dead_letter_count == 5


def test_dead_letter_after_the_closing_prediction_in_one_batch_counts_in_the_next_window(pipeline: Pipeline) -> None:
    bad_for_m = orjson.dumps(prediction_event("x", 1.0) | {"score": 7})
    closing = [message(PREDICTION, prediction_event(f"a{i}", float(i))) for i in range(N)]
    outcome = run(pipeline, closing[:-1])
    outcome.extend(pipeline.process([closing[-1], message(PREDICTION, bad_for_m)]))  # one batch
    outcome.extend(run(pipeline, [message(PREDICTION, prediction_event(f"b{i}", float(N + i))) for i in range(N)]))
    assert stat(outcome.points, "dead_letters") == [0.0, 1.0]


# -- windows and accuracy against pandas --------------------------------------------------------


@dataclass
class Stream:
    messages: list[RawMessage]
    expected_pairs: pd.DataFrame  # window, pid, y_true, y_pred
    window_end: dict[int, float]  # window -> max prediction timestamp
    unique_predictions: int


def make_stream(seed: int, n_predictions: int = 95, window: int = N, with_junk: bool = False) -> Stream:
    """Predictions, delayed/duplicated/missing feedback, redelivered predictions, some arrays."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, str, dict[str, Any]]] = []
    for i in range(n_predictions):
        pid = f"p{i:03d}"
        t = 1_700_000_000.0 + i
        event = prediction_event(pid, t, rng.choice("01"), score=round(rng.random(), 3), group=rng.choice("AB"))
        arrivals.append((i, PREDICTION, event))
        if rng.random() < 0.1:
            arrivals.append((i + rng.uniform(0.5, 15), PREDICTION, event))  # redelivery
        if rng.random() < 0.8:
            delay = rng.uniform(-4, 25)
            label = event["prediction"] if rng.random() < 0.7 else rng.choice("01")
            arrivals.append((i + delay, FEEDBACK, feedback_event(pid, t + max(delay, 0), label)))
            if rng.random() < 0.15:
                arrivals.append((i + delay + rng.uniform(0.1, 10), FEEDBACK,
                                 feedback_event(pid, t + 30, rng.choice("01"))))
    arrivals.sort(key=lambda a: a[0])

    # group a few neighbouring events of one kind into array messages
    messages: list[RawMessage] = []
    groups: list[tuple[str, list[dict[str, Any]]]] = []
    for _, kind, event in arrivals:
        if groups and groups[-1][0] == kind and len(groups[-1][1]) < 3 and rng.random() < 0.3:
            groups[-1][1].append(event)
        else:
            groups.append((kind, [event]))
    for offset, (kind, events) in enumerate(groups):
        messages.append(message(kind, events[0] if len(events) == 1 else events, offset=offset))
        if with_junk and rng.random() < 0.05:
            messages.append(message(kind, b"{broken", offset=offset))

    # oracle: the join and the window of each pair, from the sequence alone
    seen: dict[str, dict[str, Any]] = {}
    waiting: dict[str, str] = {}
    joined: set[str] = set()
    rows = []
    window_end: dict[int, float] = {}
    for kind, events in groups:
        for event in events:
            pid = event["prediction_id"]
            if kind == PREDICTION:
                if pid in seen:
                    continue
                seen[pid] = event
                c = len(seen)
                w = (c - 1) // window
                window_end[w] = max(window_end.get(w, float("-inf")), event["timestamp"])
                if pid in waiting:
                    joined.add(pid)
                    rows.append((c // window, pid, waiting.pop(pid), event["prediction"]))
            else:
                if pid in joined or pid in waiting:
                    continue
                if pid in seen:
                    joined.add(pid)
                    rows.append((len(seen) // window, pid, event["label"], seen[pid]["prediction"]))
                else:
                    waiting[pid] = event["label"]
    pairs = pd.DataFrame(rows, columns=["window", "pid", "y_true", "y_pred"])
    return Stream(messages, pairs, window_end, len(seen))


def window_points(outcome: Collected, measurement: str, **tags: str) -> dict[int, Point]:
    """Points of one series, keyed by window end time (ns)."""
    found = {}
    for p in outcome.points:
        if p.measurement == measurement and all(p.tags.get(k) == v for k, v in tags.items()) \
                and p.tags.get("scope", "window") == "window":
            assert p.time_ns not in found, p
            found[p.time_ns] = p
    return found


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_windows_and_accuracy_equal_a_pandas_computation(cfg: Config, seed: int) -> None:
    stream = make_stream(seed)
    pipeline = make_builder(cfg)(DictStore())
    outcome = run(pipeline, stream.messages)
    outcome.extend(pipeline.flush())
    assert getattr(pipeline, "internal_errors", 0) == 0

    n_windows = -(-stream.unique_predictions // N)
    expected_sizes = [N] * (stream.unique_predictions // N) + ([stream.unique_predictions % N] if stream.unique_predictions % N else [])
    assert [w.n for w in outcome.windows] == expected_sizes
    ends = [int(round(stream.window_end[w] * 1e9)) for w in range(n_windows)]
    assert [w.end_ns for w in outcome.windows] == ends

    pairs = stream.expected_pairs
    assert sorted(p.prediction.prediction_id for p in outcome.pairs) == sorted(pairs["pid"])
    pairs = pairs[pairs["window"] < n_windows]
    by_window = pairs.assign(hit=pairs["y_true"] == pairs["y_pred"]).groupby("window")["hit"].agg(["mean", "size"])

    accuracy = window_points(outcome, "performance", metric="accuracy")
    events = window_points(outcome, "monitor", stat="events")
    pair_counts = window_points(outcome, "monitor", stat="pairs")
    join_rate = window_points(outcome, "monitor", stat="join_rate")
    assert sorted(accuracy) == [ends[w] for w in by_window.index]
    for w, end in enumerate(ends):
        size = int(by_window["size"].get(w, 0))
        assert pair_counts[end].fields["value"] == size
        assert events[end].fields["value"] == expected_sizes[w]
        assert join_rate[end].fields["value"] == pytest.approx(size / expected_sizes[w])
        if size:
            point = accuracy[end]
            assert point.fields["value"] == pytest.approx(by_window["mean"][w], abs=1e-12)
            assert point.fields["n"] == size
            assert point.tags["model_id"] == "m" and point.tags["model_version"] == "1"
    assert pipeline.join.counts.pairs == len(stream.expected_pairs)


def test_precision_and_recall_equal_a_pandas_computation(cfg: Config) -> None:
    stream = make_stream(7, n_predictions=60)
    pipeline = make_builder(cfg)(DictStore())
    outcome = run(pipeline, stream.messages)
    outcome.extend(pipeline.flush())
    ends = {w: int(round(t * 1e9)) for w, t in stream.window_end.items()}
    precision = window_points(outcome, "performance", metric="precision")
    recall = window_points(outcome, "performance", metric="recall")
    for w, group in stream.expected_pairs.groupby("window"):
        if w not in ends:
            continue
        tp = ((group["y_true"] == "1") & (group["y_pred"] == "1")).sum()
        if (group["y_pred"] == "1").any():
            assert precision[ends[w]].fields["value"] == pytest.approx(tp / (group["y_pred"] == "1").sum())
        if (group["y_true"] == "1").any():
            assert recall[ends[w]].fields["value"] == pytest.approx(tp / (group["y_true"] == "1").sum())


def test_duplicate_predictions_do_not_count_in_windows(pipeline: Pipeline) -> None:
    msgs = []
    for i in range(N):
        msgs.append(message(PREDICTION, prediction_event(f"p{i}", float(i))))
        msgs.append(message(PREDICTION, prediction_event(f"p{i}", float(i))))
    outcome = run(pipeline, msgs)
    assert [w.n for w in outcome.windows] == [N]
    assert pipeline.join.counts.duplicate_predictions == N


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30), seed=st.integers(0, 3))
def test_batch_boundaries_do_not_change_the_points(sizes: list[int], seed: int) -> None:
    cfg = make_config()
    stream = make_stream(seed, n_predictions=50)
    one_by_one = make_builder(cfg)(DictStore())
    expected = run(one_by_one, stream.messages)
    expected.extend(one_by_one.flush())
    batched = make_builder(cfg)(DictStore())
    got = run(batched, stream.messages, batch_sizes=sizes * 100)
    got.extend(batched.flush())
    assert_same_points(got.points, expected.points)


def test_a_large_batch_is_evaluated_in_sub_batches_with_the_same_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch over SUB_BATCH_BYTES gives several partials per model (each its own seq, so stage 2
    merges each once), and the same points as the batch in one piece."""
    cfg = make_config()
    stream = make_stream(5, n_predictions=80)
    whole = make_builder(cfg)(DictStore())
    expected = run(whole, stream.messages, batch_sizes=[len(stream.messages)])
    expected.extend(whole.flush())
    monkeypatch.setattr(pipeline_module, "SUB_BATCH_BYTES", 2000)
    cut = make_builder(cfg)(DictStore())
    source = cut.source.process(stream.messages)
    assert len({p.seq for p in source.partials}) > 3  # one seq per sub-batch
    cut = make_builder(cfg)(DictStore())
    got = run(cut, stream.messages, batch_sizes=[len(stream.messages)])
    got.extend(cut.flush())
    assert_same_points(got.points, expected.points)


def test_no_partial_outgrows_a_kafka_message_whatever_the_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evidence rows repeat the events' values: 1,000-character random categories (the parser's
    limit is 1,024) in a 2 MiB sub-batch would make a partial of ~2 MB, which the producer refuses
    (stage 2 would lose the batch's panes). The oldest evidence rows are dropped instead, counted as
    ``evidence_trimmed``; every figure is what it is without the cut."""
    import streams.monitor as monitor_module
    from streams.partials import encode

    rng = random.Random(3)
    window = 2000
    cfg = make_config(window)
    events = [prediction_event(f"p{i}", float(i)) for i in range(window)]
    for event in events:
        event["features"]["c"] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(1000))
    messages = [message(PREDICTION, e, offset=i) for i, e in enumerate(events)]

    pipeline = make_builder(cfg)(DictStore())
    source = pipeline.source.process(messages)
    trimmed, first = 0, 0
    for partial in source.partials:
        assert len(encode(partial)) < 1_000_000
        for delta in partial.panes:
            trimmed += delta.counters.get("evidence_trimmed", 0)
            kept = len(delta.evidence) if delta.evidence is not None else 0
            assert delta.evidence is not None and kept > 100
            # the newest rows of the pane's events are the ones kept
            assert delta.evidence.ids == [f"p{i}" for i in range(first + delta.n - kept, first + delta.n)]
            first += delta.n
    assert first == window and trimmed > 0

    def figures(points: Iterable[Point]) -> list[tuple[Any, ...]]:
        return comparable(p for p in points if not (p.measurement == "monitor" and p.tags["stat"] == "evidence_trimmed"))

    cut = make_builder(cfg)(DictStore())
    got = run(cut, messages, batch_sizes=[len(messages)])
    monkeypatch.setattr(monitor_module, "fit_evidence", lambda panes: 0)
    whole = make_builder(cfg)(DictStore())
    expected = run(whole, messages, batch_sizes=[len(messages)])
    assert figures(got.points) == figures(expected.points) and expected.points
    assert sum(stat(got.points, "evidence_trimmed")) == trimmed


# -- snapshot / restore -----------------------------------------------------------------------


def through_changelog(value: Any) -> Any:
    """What the worker's changelog does to state: orjson out and back."""
    return orjson.loads(record_json(value))


def uninterrupted(cfg: Config, messages: Sequence[RawMessage], batch: int = 1) -> tuple[Collected, Pipeline]:
    pipeline = make_builder(cfg)(DictStore())
    outcome = run(pipeline, messages, batch_sizes=[batch] * len(messages))
    outcome.extend(pipeline.flush())
    return outcome, pipeline


def interrupted(cfg: Config, messages: Sequence[RawMessage], cut: int, batch: int = 1) -> tuple[Collected, Pipeline]:
    """Run to ``cut``, snapshot, restore into a fresh pipeline, run on (same batch boundaries when ``cut`` is a multiple of ``batch``)."""
    build = make_builder(cfg)
    first = build(DictStore())
    outcome = run(first, messages[:cut], batch_sizes=[batch] * len(messages))
    snapshot = through_changelog(first.snapshot())
    joins = through_changelog(dict(first.join.store.items()))
    del first
    second = build(DictStore(joins))
    second.restore(snapshot)
    rest = run(second, messages[cut:], batch_sizes=[batch] * len(messages))
    outcome.extend(rest)
    outcome.extend(second.flush())
    return outcome, second


@pytest.mark.parametrize("cut", [0, 1, 5, 23, 40, 63, 97, 140, -1])
def test_snapshot_restore_mid_stream_gives_the_same_points(cfg: Config, cut: int) -> None:
    stream = make_stream(11, n_predictions=90, with_junk=True)
    messages = stream.messages
    cut = len(messages) if cut == -1 else min(cut, len(messages))
    expected, whole = uninterrupted(cfg, messages)
    got, restored = interrupted(cfg, messages, cut)
    assert len(expected.points) > 50
    assert_same_points(got.points, expected.points)
    assert [(w.start_ns, w.end_ns, w.n) for w in got.windows] == [(w.start_ns, w.end_ns, w.n) for w in expected.windows]
    assert restored.join.counts.as_dict() == whole.join.counts.as_dict()
    assert restored.join.watermark == whole.join.watermark


@pytest.mark.parametrize("cut_batches", [1, 4, 11, 20])
def test_snapshot_restore_between_multi_message_batches(cfg: Config, cut_batches: int) -> None:
    stream = make_stream(13, n_predictions=90, with_junk=True)
    expected, _ = uninterrupted(cfg, stream.messages, batch=7)
    got, _ = interrupted(cfg, stream.messages, 7 * cut_batches, batch=7)
    assert_same_points(got.points, expected.points)


@settings(max_examples=10, deadline=None)
@given(cut=st.integers(0, 200))
def test_snapshot_restore_at_any_message(cut: int) -> None:
    cfg = make_config(window=8)
    stream = make_stream(5, n_predictions=40, window=8, with_junk=True)
    cut = min(cut, len(stream.messages))
    expected, _ = uninterrupted(cfg, stream.messages)
    got, _ = interrupted(cfg, stream.messages, cut)
    assert_same_points(got.points, expected.points)


def test_restore_into_a_pipeline_that_already_ran_replaces_its_state(cfg: Config) -> None:
    stream = make_stream(3, n_predictions=40)
    build = make_builder(cfg)
    source = build(DictStore())
    run(source, stream.messages[:30])
    state = copy.deepcopy(source.snapshot())
    joins = copy.deepcopy(dict(source.join.store.items()))
    expected = run(source, stream.messages[30:])
    expected.extend(source.flush())

    other = build(DictStore(joins))
    run(other, [message(PREDICTION, prediction_event(f"noise{i}", 5.0)) for i in range(3)])
    other.join.store = DictStore(copy.deepcopy(joins))
    other.restore(state)
    got = run(other, stream.messages[30:])
    got.extend(other.flush())
    assert_same_points(got.points, expected.points)


def test_type_errors_count_mode_keeps_the_event_out_of_dead_letters() -> None:
    cfg = Config.from_mapping({"validation": {"type_errors": "count"}, "models": [{
        "id": "m", "task": "binary", "features": {"x": "numeric", "c": "categorical"}, "window": {"events": 3}}]},
        environ={})
    pipeline = make_builder(cfg)(DictStore())
    docs = [prediction_event("a", 1.0) | {"features": {"x": "abc", "c": "a"}},
            prediction_event("b", 2.0) | {"features": {"x": 1.0, "c": ["a"]}},
            prediction_event("c", 3.0)]
    outcome = run(pipeline, [message(PREDICTION, d) for d in docs])
    assert outcome.dead_letters == []
    assert [w.n for w in outcome.windows] == [3]
    assert getattr(pipeline, "internal_errors", 0) == 0
