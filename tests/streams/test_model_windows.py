"""Model-level windows: stage 1 per source partition, stage 2 merges them (streams/windows.py).

Oracle: the same simulated events, spread over 6 source partitions by the hash of their
prediction id (Kafka's murmur2, as the producer's default partitioner does), each partition's
stage 1 fed its own messages, the partials encoded and merged by one stage 2, give the
windows of a single-partition run: counts exactly, every mergeable statistic to 1e-9, one
point per series per window end, the same window alerts and jobs. Order-dependent figures
(ADWIN on batch means, the concept detectors, the CUSUM streams) run on another sequence by
design and are compared only for their counts. Property: whatever the interleaving of the
partitions' partials and however many are delivered twice, stage 2 gives the same output.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2

from detectors.points import Point
from retrain.metrics import COHORT_MEASUREMENTS
from streams.commands import prepare_workspace
from streams.config import Config, ConfigError
from streams.join import DictStore
from streams.monitor import check_count_windows
from streams.partials import ModelPartial, decode, encode
from streams.pipeline import FEEDBACK, PREDICTION, RawMessage
from streams.runtime import load_evaluations, model_windows, pipeline_factory, policy_rules, source_pipeline
from streams.simulate import SimulatedStream
from streams.windows import Decided

T0 = 1_700_000_000.0
MODEL = "credit-risk"
PARTITIONS = 6
N = 6000
CHANGE_AT = 3000
ORDER_DEPENDENT_METHODS = {"adwin", "cusum"}


def order_dependent(p: Point) -> bool:
    return (p.tags.get("method") in ORDER_DEPENDENT_METHODS or p.measurement == "concept_drift"
            or p.tags.get("metric") == "selection_rate_cusum")


@dataclass
class Case:
    cfg: Config
    evaluations: dict[str, Any]
    messages: list[RawMessage]
    by_partition: dict[int, list[RawMessage]]


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    """kafka-python's default partitioner (murmur2 of the key, positive, modulo)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    root = tmp_path_factory.mktemp("model-windows")
    path = prepare_workspace(root, bootstrap="127.0.0.1:1", overrides={"models.*.window": {"seconds": 10}})
    cfg = Config.load(path)
    sim = SimulatedStream(start=T0, seed=11, rate=100.0, change_after=CHANGE_AT, changes=("drift",),
                          feedback_delay=2.0)
    messages: list[RawMessage] = []
    by_partition: dict[int, list[RawMessage]] = {p: [] for p in range(PARTITIONS)}
    for kind, event in sim.events(N):
        key = event["prediction_id"].encode()
        partition = partition_of(key)
        topic = PREDICTION if kind == "prediction" else FEEDBACK
        offset = len(by_partition[partition])
        message = RawMessage(topic, orjson.dumps(event), key, topic, partition, offset)
        messages.append(message)
        by_partition[partition].append(message)
    assert all(len(ms) > N // PARTITIONS for ms in by_partition.values())
    return Case(cfg, load_evaluations(cfg), messages, by_partition)


def single_partition(case: Case, batch: int = 97) -> Decided:
    """The oracle: every message through one partition, in order."""
    pipeline = pipeline_factory(case.cfg, case.evaluations)(DictStore())
    out = Decided()
    outcomes = [pipeline.process(case.messages[i:i + batch]) for i in range(0, len(case.messages), batch)]
    for outcome in [*outcomes, pipeline.flush()]:
        out.windows.extend(outcome.windows)
        out.alerts.extend(outcome.alerts)
        out.jobs.extend(outcome.jobs)
        # the cohort points in write order (at closes and rewrites): the last one of a series wins
        out.updates.extend(p for p in outcome.points if p.measurement in COHORT_MEASUREMENTS)
    return out


def stage_one(case: Case, batch: int = 61) -> dict[int, list[bytes]]:
    """Each partition's stage 1 on its own messages: the encoded partials it publishes, in order."""
    out: dict[int, list[bytes]] = {}
    for partition, messages in case.by_partition.items():
        source = source_pipeline(case.cfg, case.evaluations, DictStore(), partition=partition)
        published: list[bytes] = []
        for i in range(0, len(messages), batch):
            published.extend(encode(p) for p in source.process(messages[i:i + batch]).partials)
        published.extend(encode(p) for p in source.end_of_input())
        out[partition] = published
    return out


def stage_two(case: Case, stream: Iterable[bytes]) -> Decided:
    windows = model_windows(case.cfg, case.evaluations, {MODEL: policy_rules(case.cfg, MODEL)},
                            sources=range(PARTITIONS))[MODEL]
    out = Decided()
    for data in stream:
        out.extend(windows.merge(decode(data)))
    return out


def round_robin(published: dict[int, list[bytes]]) -> list[bytes]:
    out: list[bytes] = []
    queues = {p: list(ms) for p, ms in published.items()}
    while any(queues.values()):
        for p in sorted(queues):
            if queues[p]:
                out.append(queues[p].pop(0))
    return out


@pytest.fixture(scope="module")
def oracle(case: Case) -> Decided:
    return single_partition(case)


@pytest.fixture(scope="module")
def published(case: Case) -> dict[int, list[bytes]]:
    return stage_one(case)


@pytest.fixture(scope="module")
def merged(case: Case, published: dict[int, list[bytes]]) -> Decided:
    return stage_two(case, round_robin(published))


def series(points: Iterable[Point]) -> dict[tuple[Any, ...], Point]:
    out: dict[tuple[Any, ...], Point] = {}
    for p in points:
        key = (p.measurement, tuple(sorted(p.tags.items())), p.time_ns)
        assert key not in out, f"two points for one series at one time: {key}"
        out[key] = p
    return out


def closed(decided: Decided) -> list[Any]:
    """The closed windows (not the instant detections)."""
    return [w for w in decided.windows if not w.instant]


def window_points(decided: Decided) -> list[Point]:
    return [p for w in closed(decided) for p in w.points]


def with_cohort_updates(points: dict[tuple[Any, ...], Point], decided: Decided) -> dict[tuple[Any, ...], Point]:
    """The series after the cohort rewrites (the last write of a series and time wins): a window's
    cohort at its close depends on which labels each partition had joined by then, its final
    figures on the pairs alone."""
    for p in decided.updates:
        points[(p.measurement, tuple(sorted(p.tags.items())), p.time_ns)] = p
    return points


def test_six_partitions_merged_equal_one_partition(oracle: Decided, merged: Decided) -> None:
    assert [(w.start_ns, w.end_ns) for w in closed(merged)] == [(w.start_ns, w.end_ns) for w in closed(oracle)]
    assert [w.n for w in closed(merged)] == [w.n for w in closed(oracle)]
    assert sum(w.n for w in closed(merged)) == N
    got = with_cohort_updates(series(window_points(merged)), merged)
    want = with_cohort_updates(series(window_points(oracle)), oracle)
    assert set(got) == set(want)
    assert any(k[0] == "cohort_performance" for k in want)
    # at a close, a cohort below 0.8 label coverage carries the window's label-free estimate beside
    # its realised value (the same figure as the window's performance_estimate point)
    at_close = [p for p in window_points(oracle) if p.measurement == "cohort_performance"
                and p.tags["metric"] == "accuracy"]
    estimates = {p.time_ns: p.fields["value"] for p in window_points(oracle)
                 if p.measurement == "performance_estimate" and p.tags["metric"] == "accuracy"}
    assert at_close and estimates
    for p in at_close:
        assert p.fields.get("estimate") == (estimates[p.time_ns] if p.fields["label_coverage"] < 0.8 else None)
    compared = 0
    for key, expected in want.items():
        actual = got[key]
        if order_dependent(expected):
            assert actual.fields.get("n") == expected.fields.get("n") or expected.tags.get("method") == "cusum" \
                or expected.tags.get("metric") == "selection_rate_cusum", key
            continue
        assert set(actual.fields) == set(expected.fields), key
        for name, value in expected.fields.items():
            if isinstance(value, float) and not isinstance(value, bool):
                if math.isnan(value):
                    assert math.isnan(actual.fields[name]), (key, name)
                else:
                    assert actual.fields[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, name)
            else:
                assert actual.fields[name] == value, (key, name)
            compared += 1
    assert compared > 1000
    # pairs and events per window, exactly
    for stat in ("events", "pairs"):
        assert [p.fields["value"] for k, p in sorted(got.items()) if k[0] == "monitor" and ("stat", stat) in k[1]] \
            == [p.fields["value"] for k, p in sorted(want.items()) if k[0] == "monitor" and ("stat", stat) in k[1]]


def test_one_alert_and_one_job_per_injected_change(oracle: Decided, merged: Decided) -> None:
    # The CUSUM streams run per source partition (stage 1), so a sequential detection falls on
    # another event with 6 partitions than with 1; the default rules combine a change's windowed
    # test and its CUSUM in one rule. What must agree: which rules fire (once each), and every
    # alert a window raised of a rule that no detection had fired first.
    def firing_rules(alerts: Sequence[Any]) -> list[str]:
        return sorted(a.rule for a in alerts if a.state == "firing")

    def windowed(alerts: Sequence[Any], rules: set[str]) -> list[tuple[str, str, int]]:
        return [(a.rule, a.state, a.window_end_ns) for a in alerts
                if a.window_start_ns != a.window_end_ns and a.rule in rules]

    by_window = {a.rule for d in (merged, oracle) for a in d.alerts if a.state == "firing"} - {
        a.rule for d in (merged, oracle) for a in d.alerts if a.window_start_ns == a.window_end_ns}
    assert firing_rules(merged.alerts) == firing_rules(oracle.alerts)
    assert windowed(merged.alerts, by_window) == windowed(oracle.alerts, by_window)
    firing = [a for a in merged.alerts if a.state == "firing"]
    rules = [a.rule for a in firing]
    assert "feature-drift" in rules and len(rules) == len(set(rules)), rules  # each rule fires once
    change_ns = int((T0 + CHANGE_AT / 100.0) * 1e9)
    assert all(a.window_end_ns >= change_ns - 10 * 10**9 for a in firing)
    assert len(merged.jobs) == len(oracle.jobs) == 1
    assert merged.jobs[0].trigger.job_id == oracle.jobs[0].trigger.job_id
    # the job's data range names every source partition the window read
    assert set(merged.jobs[0].window.offsets or {}) == set(range(PARTITIONS))
    assert len(merged.jobs[0].window.evidence or ()) > 500


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), duplicates=st.lists(st.integers(0, 10_000), max_size=30))
def test_stage_two_does_not_depend_on_interleaving_or_redelivery(
        case: Case, published: dict[int, list[bytes]], merged: Decided, seed: int, duplicates: list[int]) -> None:
    rng = random.Random(seed)
    queues = {p: list(ms) for p, ms in published.items()}
    stream: list[bytes] = []
    while any(queues.values()):
        p = rng.choice([q for q, ms in queues.items() if ms])
        stream.append(queues[p].pop(0))
    for d in duplicates:  # a partial delivered again later (a re-published batch)
        at = d % len(stream)
        stream.insert(min(at + 1 + d % 7, len(stream)), stream[at])
    got = stage_two(case, stream)
    assert [(w.model_version, w.end_ns, w.n) for w in closed(got)] == \
        [(w.model_version, w.end_ns, w.n) for w in closed(merged)]
    # the CUSUM detections are the same; where they fall between closes depends on the arrival
    instants = lambda d: sorted((w.end_ns, w.points[0].to_line_protocol()) for w in d.windows if w.instant)  # noqa: E731
    assert instants(got) == instants(merged)
    mine = with_cohort_updates(series(window_points(got)), got)
    theirs = with_cohort_updates(series(window_points(merged)), merged)
    assert mine.keys() == theirs.keys()
    for key, point in theirs.items():  # sums merged in another order differ in the last bits at most
        assert mine[key].fields == pytest.approx(point.fields, rel=1e-12, nan_ok=True), key
    # stage 2 decides detections and closes in one event-time order (it holds a detection until
    # the watermark passes it), so every alert, sequential ones too, is the same
    windowed = lambda alerts: sorted(a.alert_id for a in alerts)  # noqa: E731
    assert windowed(got.alerts) == windowed(merged.alerts)
    assert sorted(j.trigger.job_id for j in got.jobs) == sorted(j.trigger.job_id for j in merged.jobs)


# -- watermarks: idle and lagging partitions --------------------------------------------------------------


def tiny_config(window: dict[str, Any]) -> Config:
    return Config.from_mapping({"models": [{
        "id": "m", "task": "binary", "positive_label": 1, "features": {"x": "numeric"},
        "window": window}]}, environ={})


def tiny_prediction(pid: str, t: float, partition: int, offset: int) -> RawMessage:
    doc = {"prediction_id": pid, "model_id": "m", "model_version": "1", "timestamp": t,
           "features": {"x": t}, "prediction": 1}
    return RawMessage(PREDICTION, orjson.dumps(doc), pid.encode(), "predictions", partition, offset)


def tiny_stages(cfg: Config, partitions: int) -> tuple[dict[int, Any], Any]:
    evaluations = load_evaluations(cfg)
    sources = {p: source_pipeline(cfg, evaluations, DictStore(), partition=p) for p in range(partitions)}
    return sources, model_windows(cfg, evaluations, sources=range(partitions))["m"]


def feed(windows: Any, partials: Iterable[ModelPartial]) -> Decided:
    out = Decided()
    for partial in partials:
        out.extend(windows.merge(decode(encode(partial))))
    return out


def test_a_partition_that_never_publishes_holds_windows_until_it_is_marked_idle() -> None:
    cfg = tiny_config({"seconds": 10, "allowed_lateness": 2})
    sources, windows = tiny_stages(cfg, 2)
    busy = sources[0]
    got = Decided()
    for i in range(40):  # partition 0: one event a second for 40 s; partition 1: silent
        got.extend(feed(windows, busy.process([tiny_prediction(f"a{i}", T0 + i, 0, i)]).partials))
    assert closed(got) == []  # partition 1's watermark is unknown: nothing may close
    got.extend(feed(windows, sources[1].idle()))
    # now the watermark is partition 0's (T0 + 39): windows up to T0 + 30 (+ 2 s lateness) close
    assert [(w.end_ns - int(T0 * 1e9)) // 10**9 for w in closed(got)] == [10, 20, 30]
    assert [w.n for w in closed(got)] == [10, 10, 10]


def test_windows_close_when_every_partition_is_idle_whichever_turned_idle_first() -> None:
    """The worker's scale-out stall: the partitions with data are caught up and turn idle before
    the empty one's first idle marker arrives; with every source idle the watermark is the
    largest of theirs (Flink's watermark valve), not -inf, so the windows close."""
    cfg = tiny_config({"seconds": 10, "allowed_lateness": 2})
    sources, windows = tiny_stages(cfg, 2)
    got = Decided()
    for i in range(40):
        got.extend(feed(windows, sources[0].process([tiny_prediction(f"a{i}", T0 + i, 0, i)]).partials))
    got.extend(feed(windows, sources[0].idle()))  # the busy partition first
    assert closed(got) == []  # partition 1 has said nothing yet
    got.extend(feed(windows, sources[1].idle()))
    assert [w.n for w in closed(got)] == [10, 10, 10]


def test_a_lagging_partition_yields_counted_late_events() -> None:
    cfg = tiny_config({"seconds": 10, "allowed_lateness": 2})
    sources, windows = tiny_stages(cfg, 2)
    got = Decided()
    got.extend(feed(windows, sources[1].idle()))
    for i in range(40):
        got.extend(feed(windows, sources[0].process([tiny_prediction(f"a{i}", T0 + i, 0, i)]).partials))
    assert [w.n for w in closed(got)] == [10, 10, 10]
    # partition 1 wakes up with 5 events of the first window, already closed: late in stage 2
    old = [tiny_prediction(f"b{i}", T0 + 1 + i, 1, i) for i in range(5)]
    got.extend(feed(windows, sources[1].process(old).partials))
    # and within partition 1, an event behind its own watermark by more than the lateness: late in stage 1
    got.extend(feed(windows, sources[1].process([tiny_prediction("c", T0 + 50, 1, 5)]).partials))
    got.extend(feed(windows, sources[1].process([tiny_prediction("d", T0 + 35, 1, 6)]).partials))
    for source in sources.values():
        got.extend(feed(windows, source.end_of_input()))
    late = [p.fields["value"] for w in closed(got) for p in w.points
            if p.measurement == "monitor" and p.tags["stat"] == "late"]
    assert sum(late) == 6
    assert sum(w.n for w in closed(got)) == 40 + 1  # a0..a39 and c


def test_count_windows_with_several_partitions_are_refused_naming_the_key() -> None:
    cfg = tiny_config({"events": 100})
    check_count_windows(cfg.models, 1)
    with pytest.raises(ConfigError, match=r"models\[m\]\.window\.events: count windows need a single source"):
        check_count_windows(cfg.models, 6)
    check_count_windows(tiny_config({"seconds": 10}).models, 6)


def test_partials_are_compact_and_round_trip(case: Case, published: dict[int, list[bytes]]) -> None:
    first = published[0][3]
    partial = decode(first)
    assert encode(partial) == first  # deterministic bytes: a re-processed batch publishes the same message
    panes = sum(len(decode(m).panes) for ms in published.values() for m in ms)
    total = sum(len(m) for ms in published.values() for m in ms)
    assert panes > 0 and total / panes < 64_000


def test_partials_of_codec_1_still_decode_to_the_same_partials(published: dict[int, list[bytes]]) -> None:
    """A rolling upgrade: stage 2 of this version drains what stage 1 of the last one published
    (the same JSON compressed with zlib, ``"codec": 1``), to the partials codec 2 carries; and with
    ``kafka.panes_codec: 1`` stage 1 writes exactly those bytes, which the old stage 2 reads."""
    for data in published[0][:5]:
        partial = decode(data)
        assert data[:1] != b"\x78"  # codec 2 is zstd, not zlib
        old = zlib.compress(orjson.dumps({**partial.to_dict(), "codec": 1}, option=orjson.OPT_SERIALIZE_NUMPY), 1)
        assert decode(old) == partial
        assert encode(partial, 1) == old
    with pytest.raises(ValueError, match="partial codec 3"):
        encode(partial, 3)


def test_a_partial_of_an_unknown_codec_is_refused_saying_what_to_upgrade(published: dict[int, list[bytes]]) -> None:
    doc = decode(published[0][0]).to_dict()
    newer = zstandard.ZstdCompressor(level=1).compress(orjson.dumps({**doc, "codec": 99}))
    with pytest.raises(ValueError, match=r"partial codec 99 .*upgrade the stage 2 workers"):
        decode(newer)


def test_an_idle_marker_names_the_last_batch_and_a_copy_of_it_changes_nothing() -> None:
    """An idle marker takes no sequence number of its own (stage 1 publishes it outside any batch):
    it carries its source's last batch number, so the next batch is never mistaken for a copy,
    and a marker sent again after a restart is harmless."""
    cfg = tiny_config({"seconds": 10, "allowed_lateness": 2})
    sources, windows = tiny_stages(cfg, 2)
    got = Decided()
    for i in range(25):
        got.extend(feed(windows, sources[0].process([tiny_prediction(f"a{i}", T0 + i, 0, i)]).partials))
    quiet = sources[1]
    assert [p.seq for p in quiet.idle()] == [-1] and quiet.seq == 0  # no state changed
    got.extend(feed(windows, quiet.idle()))
    got.extend(feed(windows, quiet.idle()))  # a copy
    assert [w.n for w in closed(got)] == [10, 10]
    # partition 1 wakes up: its first batch is seq 0, merged (not a copy of the marker)
    got.extend(feed(windows, quiet.process([tiny_prediction("b", T0 + 24.5, 1, 0)]).partials))
    before = windows.duplicates
    got.extend(feed(windows, quiet.idle()))  # idle again after batch 0: seq 0, taken
    assert windows.duplicates == before and windows.sources[1].idle
    for source in sources.values():
        got.extend(feed(windows, source.end_of_input()))
    assert sum(w.n for w in closed(got)) == 26
