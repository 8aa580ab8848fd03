"""The join table's bound (``join.max_entries``): never more entries, oldest evicted first, every
eviction counted apart from TTL expiry, and logged to the changelog so a restart recovers the same
table and goes on evicting the same entries.

Oracle: the bounded join as a plain list in arrival order (O(n) per event, obviously right).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.state as state_module
from streams.config import Config
from streams.evaluation import Evaluation
from streams.events import Feedback, Prediction
from streams.join import JOINED, STATE, WAITING_LABEL, WAITING_PREDICTION, DictStore, FeedbackJoin
from streams.pipeline import FEEDBACK, PREDICTION, RawMessage
from streams.runtime import pipeline_factory
from streams.state import PartitionState

NO_TTL = 1e9


def pred(pid: str, t: float, *, version: str = "1") -> Prediction:
    return Prediction(prediction_id=pid, model_id="m", model_version=version, timestamp=t,
                      features={"x": 1.5}, prediction="1", score=0.7)


def fb(pid: str, t: float, label: str = "1") -> Feedback:
    return Feedback(prediction_id=pid, model_id="m", timestamp=t, label=label)


def offer(join: FeedbackJoin, event: Prediction | Feedback) -> Any:
    """What the pipeline does: skip a duplicate prediction, else add it."""
    if isinstance(event, Prediction):
        return None if join.is_duplicate_prediction(event) else join.add_prediction(event)
    return join.add_feedback(event)


def keys_and_states(join: FeedbackJoin) -> list[tuple[str, str]]:
    return [(key, entry[STATE]) for key, entry in join.store.items()]


class ListJoin:
    """The bounded join without TTL, as a list of ``[key, state]`` in arrival order."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.rows: list[list[str]] = []
        self.evicted = {WAITING_PREDICTION: 0, WAITING_LABEL: 0, JOINED: 0}
        self.evicted_keys: set[str] = set()

    def offer(self, event: Prediction | Feedback) -> bool:
        """True when the event makes a pair."""
        row = next((r for r in self.rows if r[0] == event.prediction_id), None)
        mine, other = (WAITING_PREDICTION, WAITING_LABEL) if isinstance(event, Prediction) else \
            (WAITING_LABEL, WAITING_PREDICTION)
        if row is None:
            self.rows.append([event.prediction_id, mine])
            while len(self.rows) > self.max_entries:
                key, state = self.rows.pop(0)
                self.evicted[state] += 1
                self.evicted_keys.add(key)
            return False
        if row[1] == other:
            row[1] = JOINED
            return True
        return False  # a duplicate


@st.composite
def bounded_runs(draw: Any) -> tuple[list[Prediction | Feedback], int, list[int]]:
    """Predictions and feedback for up to 16 ids, with duplicates, in any order; a bound; batch sizes."""
    events: list[Prediction | Feedback] = []
    for i in range(draw(st.integers(1, 16))):
        pid = f"p{i}"
        for copy in range(draw(st.integers(0, 2))):
            events.append(pred(pid, float(draw(st.integers(0, 50))), version=f"v{copy}"))
        for _ in range(draw(st.integers(0, 2))):
            events.append(fb(pid, float(draw(st.integers(0, 50))), draw(st.sampled_from(["0", "1"]))))
    events = draw(st.permutations(events))
    max_entries = draw(st.integers(1, 8))
    batches = draw(st.lists(st.integers(1, 6), min_size=1, max_size=len(events) + 1))
    return events, max_entries, batches


def split(events: list[Any], sizes: list[int]) -> list[list[Any]]:
    out, i, sizes = [], 0, sizes or [1]
    while i < len(events):
        size = sizes[len(out) % len(sizes)]
        out.append(events[i:i + size])
        i += size
    return out


def replay(log: list[tuple[bytes, bytes | None]]) -> PartitionState:
    state = PartitionState(0)
    for key, value in log:
        state.apply(key, value)
    state.finish_recovery()
    return state


@settings(max_examples=300, deadline=None)
@given(run=bounded_runs())
def test_any_interleaving_stays_within_the_bound_and_matches_the_list_oracle(run: Any) -> None:
    events, max_entries, sizes = run
    with pytest.MonkeyPatch.context() as patch:  # full snapshots and multi-part records even in tiny runs
        patch.setattr(state_module, "PART_ENTRIES", 2)
        check_bounded_run(events, max_entries, split(events, sizes))


def check_bounded_run(events: list[Prediction | Feedback], max_entries: int,
                      batches: list[list[Prediction | Feedback]]) -> None:
    log: list[tuple[bytes, bytes | None]] = []
    store = PartitionState(0, send=lambda _p, key, value: log.append((key, value)), full_every=3)
    join = FeedbackJoin(store, ttl_seconds=NO_TTL, max_entries=max_entries)
    oracle = ListJoin(max_entries)
    pairs: dict[str, list[Any]] = {}
    for batch in batches:
        for event in batch:
            pair = offer(join, event)
            assert (pair is not None) == oracle.offer(event), event
            if pair is not None:
                pairs.setdefault(pair.prediction.prediction_id, []).append(pair)
            assert len(join.store) <= max_entries
        store.save_snapshot({})
        assert keys_and_states(join) == [tuple(row) for row in oracle.rows]
        # What the changelog holds gives back this very table, in order, so a restart evicts the same next.
        assert list(replay(log).joins.items()) == list(store.joins.items())

    c = join.counts
    assert (c.evicted_predictions, c.evicted_feedback, c.evicted_tombstones) == \
        (oracle.evicted[WAITING_PREDICTION], oracle.evicted[WAITING_LABEL], oracle.evicted[JOINED])
    assert c.expired_predictions == c.orphan_feedback == 0
    states = [state for _, state in keys_and_states(join)]
    n_predictions = sum(isinstance(e, Prediction) for e in events)
    # Every prediction taken (not a duplicate) is paired, evicted or still waiting; every label too;
    # every pair left a tombstone that is still there or was evicted.
    assert n_predictions - c.duplicate_predictions == \
        c.pairs + c.evicted_predictions + states.count(WAITING_PREDICTION)
    assert len(events) - n_predictions - c.duplicate_feedback == \
        c.pairs + c.evicted_feedback + states.count(WAITING_LABEL)
    assert c.pairs == c.evicted_tombstones + states.count(JOINED)
    assert sum(map(len, pairs.values())) == c.pairs

    # An id whose entry was never evicted is joined exactly once when both sides came, with the first of each.
    first_prediction: dict[str, Prediction] = {}
    first_label: dict[str, str] = {}
    for event in events:
        if isinstance(event, Prediction):
            first_prediction.setdefault(event.prediction_id, event)
        else:
            first_label.setdefault(event.prediction_id, event.label)
    for pid in (set(first_prediction) | set(first_label)) - oracle.evicted_keys:
        got = pairs.get(pid, [])
        assert len(got) == (pid in first_prediction and pid in first_label), pid
        for pair in got:
            assert pair.prediction == first_prediction[pid] and pair.label == first_label[pid]


@settings(max_examples=150, deadline=None)
@given(run=bounded_runs(), ttl=st.sampled_from([5.0, 20.0, 40.0]), cut=st.integers(0, 30))
def test_with_a_ttl_and_a_restart_counts_still_add_up(run: Any, ttl: float, cut: int) -> None:
    """Eviction and expiry together, and a worker restarted from its changelog after any batch."""
    events, max_entries, sizes = run
    batches = split(events, sizes)
    cut = min(cut, len(batches))

    def start(store: PartitionState) -> FeedbackJoin:
        return FeedbackJoin(store, ttl_seconds=ttl, max_entries=max_entries)

    log: list[tuple[bytes, bytes | None]] = []
    send = lambda _p, key, value: log.append((key, value))  # noqa: E731
    whole = start(PartitionState(0, send=send))
    for batch in batches:
        for event in batch:
            offer(whole, event)
            assert len(whole.store) <= max_entries
        whole.store.save_snapshot({})  # type: ignore[attr-defined]

    restart_log: list[tuple[bytes, bytes | None]] = []
    first = start(PartitionState(0, send=lambda _p, key, value: restart_log.append((key, value))))
    for batch in batches[:cut]:
        for event in batch:
            offer(first, event)
        first.store.save_snapshot({})  # type: ignore[attr-defined]
    recovered = replay(restart_log)
    assert list(recovered.joins.items()) == list(first.store.joins.items())  # type: ignore[attr-defined]
    second = start(recovered)
    second.counts, second.watermark = first.counts, first.watermark  # what Pipeline.restore gives back
    for batch in batches[cut:]:
        for event in batch:
            offer(second, event)
        recovered.save_snapshot({})
    assert list(second.store.items()) == list(whole.store.items())
    assert second.counts == whole.counts

    c = whole.counts
    states = [state for _, state in keys_and_states(whole)]
    n_predictions = sum(isinstance(e, Prediction) for e in events)
    assert n_predictions - c.duplicate_predictions == \
        c.pairs + c.expired_predictions + c.evicted_predictions + states.count(WAITING_PREDICTION)
    assert len(events) - n_predictions - c.duplicate_feedback == \
        c.pairs + c.orphan_feedback + c.evicted_feedback + states.count(WAITING_LABEL)
    assert list(replay(log).joins.items()) == list(whole.store.joins.items())  # type: ignore[attr-defined]


# -- examples ---------------------------------------------------------------------------------


def test_the_oldest_arrival_is_evicted_first_and_a_tombstone_keeps_its_place() -> None:
    join = FeedbackJoin(DictStore(), ttl_seconds=NO_TTL, max_entries=3)
    offer(join, pred("a", 1.0))
    offer(join, pred("b", 2.0))
    offer(join, fb("c", 3.0))
    assert offer(join, fb("a", 4.0)) is not None  # a joins: its tombstone stays first
    offer(join, pred("d", 5.0))
    assert keys_and_states(join) == [("b", "p"), ("c", "l"), ("d", "p")]
    assert (join.counts.evicted_tombstones, join.counts.evicted_predictions) == (1, 0)
    offer(join, pred("e", 6.0))
    offer(join, pred("f", 7.0))
    assert keys_and_states(join) == [("d", "p"), ("e", "p"), ("f", "p")]
    assert (join.counts.evicted_predictions, join.counts.evicted_feedback) == (1, 1)
    assert join.take_evicted() == {"m": 2} and join.take_evicted() == {}  # tombstones are not lost labels


def test_a_label_for_an_evicted_prediction_waits_and_ends_an_orphan() -> None:
    join = FeedbackJoin(DictStore(), ttl_seconds=100.0, max_entries=1)
    offer(join, pred("a", 0.0))
    offer(join, pred("b", 1.0))
    assert offer(join, fb("a", 2.0)) is None
    assert keys_and_states(join) == [("a", "l")] and join.counts.evicted_predictions == 2
    offer(join, fb("clock", 500.0))
    assert join.counts.orphan_feedback == 1 and join.counts.pairs == 0


def test_an_oldest_entry_past_its_ttl_is_expired_not_evicted() -> None:
    join = FeedbackJoin(DictStore(), ttl_seconds=10.0, max_entries=2)
    offer(join, pred("old", 0.0))
    offer(join, pred("b", 15.0))
    offer(join, pred("c", 16.0))  # table full; "old" is 16 s old, past the 10 s TTL
    assert keys_and_states(join) == [("b", "p"), ("c", "p")]
    assert join.counts.expired_predictions == 1 and join.counts.evicted_predictions == 0
    assert join.expire() == {"m": 1} and join.take_evicted() == {}


def test_a_table_above_a_lowered_bound_shrinks_to_it_on_the_next_insert() -> None:
    data = {f"k{i}": [float(i), "m", WAITING_PREDICTION, "[]"] for i in range(10)}
    join = FeedbackJoin(DictStore(data), ttl_seconds=NO_TTL, max_entries=4)
    offer(join, fb("new", 20.0))
    assert [key for key, _ in join.store.items()] == ["k7", "k8", "k9", "new"]
    assert join.counts.evicted_predictions == 7


def test_eviction_warns_once_per_minute_of_event_time(caplog: pytest.LogCaptureFixture) -> None:
    join = FeedbackJoin(DictStore(), ttl_seconds=NO_TTL, max_entries=2)
    with caplog.at_level(logging.WARNING, logger="streams.join"):
        for i in range(50):  # 48 evictions within 50 s of event time: one warning
            offer(join, pred(f"a{i}", float(i)))
        assert len(caplog.records) == 1
        assert "join.max_entries=2" in caplog.text and "1 oldest entries evicted" in caplog.text
        offer(join, pred("late", 62.0))  # a minute after the first warning (at t=2): the next, with the tally
        assert len(caplog.records) == 2
        assert "48 oldest entries evicted" in caplog.records[1].getMessage()
        assert "49 predictions waiting for a label" in caplog.records[1].getMessage()


def test_the_pipeline_reports_evictions_as_a_monitor_stat() -> None:
    cfg = Config.from_mapping({"join": {"max_entries": 3}, "models": [{
        "id": "m", "task": "binary", "features": {"x": "numeric"}, "window": {"events": 10}}]}, environ={})
    build = pipeline_factory(cfg, {"m": Evaluation(cfg.models["m"], None)})
    pipeline = build(DictStore())
    assert pipeline.join.max_entries == 3
    points = []
    for i in range(10):
        event = b'{"prediction_id": "p%d", "model_id": "m", "model_version": "1", "timestamp": %d, ' \
                b'"features": {"x": 1.0}, "prediction": 1}' % (i, i)
        points += pipeline.process([RawMessage(PREDICTION, event, topic="predictions", offset=i)]).points
    points += pipeline.process([RawMessage(FEEDBACK, b'{"prediction_id": "p0", "model_id": "m", '
                                           b'"timestamp": 11, "label": 1}', topic="feedback")]).points
    evicted = [p.fields["value"] for p in points if p.measurement == "monitor" and p.tags["stat"] == "evicted"]
    assert evicted == [7.0]  # p0..p6, in the window they were evicted in
    # The label for p0 waits, and its entry evicts p7: counted in the next window.
    assert pipeline.join.counts.evicted_predictions == 8 and pipeline.join.counts.pairs == 0
