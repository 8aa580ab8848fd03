"""Pure parts of the delivery protocol: recovery of progress and intents, the event-time merge,
fault specs, the sink's error text."""

from __future__ import annotations

import heapq
import random
from collections import deque
from typing import Any, NamedTuple

import pytest

from streams.consumer import _merged, _ranges_of
from streams.faults import Faults
from streams.pipeline import FEEDBACK, PREDICTION, RawMessage
from streams.sinks import _describe
from streams.state import PartitionState


def _logged() -> tuple[PartitionState, list[tuple[bytes, bytes | None]]]:
    records: list[tuple[bytes, bytes | None]] = []
    return PartitionState(0, send=lambda p, k, v: records.append((k, v))), records


def _recovered(records: list[tuple[bytes, bytes | None]]) -> PartitionState:
    state = PartitionState(0)
    for key, value in records:
        state.apply(key, value)
    state.finish_recovery()
    return state


def test_recovery_resumes_at_the_progress_of_the_last_saved_batch() -> None:
    live, records = _logged()
    live.save_intent({"p": (0, 10), "f": (0, 4)})
    live.set("a", [1])
    live.save_snapshot({"n": 1}, {"p": 10, "f": 4})
    live.save_intent({"p": (10, 20)})
    live.set("b", [2])
    live.save_snapshot({"n": 2}, {"p": 20})
    state = _recovered(records)
    assert (state.seq, state.progress, state.snapshot) == (2, {"p": 20, "f": 4}, {"n": 2})
    assert dict(state.joins) == {"a": [1], "b": [2]}
    assert state.pending() is None


def test_a_batch_whose_state_never_came_is_in_doubt_and_its_join_changes_are_not_applied() -> None:
    live, records = _logged()
    live.save_intent({"p": (0, 10)})
    live.set("a", [1])
    live.save_snapshot({"n": 1}, {"p": 10})
    live.save_intent({"p": (10, 25), "f": (3, 9)})
    live.set("b", [2])
    live.delete("a")
    live.save_snapshot({"n": 2}, {"p": 25, "f": 9})
    # killed after the delta record of batch 2, before its monitors record
    cut = next(i for i, (k, _) in enumerate(records) if k == b"s:monitors" and i > 3)
    state = _recovered(records[:cut])
    assert state.seq == 1 and state.snapshot == {"n": 1} and state.progress == {"p": 10}
    assert dict(state.joins) == {"a": [1]}  # batch 2's delta left out: it is processed again
    assert state.pending() == {"p": (10, 25), "f": (3, 9)}


def test_no_state_at_all_but_an_intent_is_a_first_batch_in_doubt() -> None:
    live, records = _logged()
    live.save_intent({"p": (0, 7)})
    state = _recovered(records)
    assert state.seq == 0 and state.snapshot is None and state.pending() == {"p": (0, 7)}


class _TP(NamedTuple):
    topic: str
    partition: int


def _rank(topic: str) -> int:
    return {"predictions": 0, "feedback": 1}[topic]


@pytest.mark.parametrize("seed", range(5))
def test_the_merge_gives_replays_order_however_fetches_fall(seed: int) -> None:
    """Records fed in random chunks, merged whenever nothing with a backlog is empty, come out in
    the order ``replay`` gives (heapq.merge by time, predictions first on ties)."""
    rng = random.Random(seed)
    streams: dict[str, list[tuple[float, RawMessage]]] = {}
    for topic, kind in (("predictions", PREDICTION), ("feedback", FEEDBACK)):
        times = sorted(rng.choice([rng.uniform(0, 100), float(rng.randint(0, 100))]) for _ in range(300))
        streams[topic] = [(t, RawMessage(kind, b"", None, topic, 0, i)) for i, t in enumerate(times)]
    expected = [m for _, m in heapq.merge(*[[((t, _rank(k), m.offset), m) for t, m in v] for k, v in
                                            streams.items()], key=lambda item: item[0])]
    tps = {topic: _TP(topic, 0) for topic in streams}
    buffers: dict[Any, deque[tuple[float, RawMessage]]] = {tp: deque() for tp in tps.values()}
    fetched = {topic: 0 for topic in streams}
    out: list[RawMessage] = []
    while len(out) < len(expected):
        topic = rng.choice(list(streams))
        take = rng.randint(0, 40)
        buffers[tps[topic]].extend(streams[topic][fetched[topic]:fetched[topic] + take])
        fetched[topic] = min(fetched[topic] + take, len(streams[topic]))
        out.extend(_merged(buffers, _rank, lambda tp: fetched[tp.topic] < len(streams[tp.topic]),
                           limit=rng.randint(1, 100)))
    assert out == expected


def test_the_merge_waits_for_a_topic_with_a_backlog_and_not_for_one_without() -> None:
    p, f = _TP("predictions", 0), _TP("feedback", 0)
    message = RawMessage(PREDICTION, b"", None, "predictions", 0, 0)
    buffers = {p: deque([(1.0, message)]), f: deque()}
    assert _merged(buffers, _rank, lambda tp: tp == f, limit=None) == []
    assert _merged(buffers, _rank, lambda tp: False, limit=None) == [message]


def test_ranges_cover_each_topics_offsets() -> None:
    messages = [RawMessage(PREDICTION, b"", None, "p", 0, o) for o in (5, 6, 7)] + \
        [RawMessage(FEEDBACK, b"", None, "f", 0, 2)]
    assert _ranges_of(messages) == {"p": (5, 8), "f": (2, 3)}


def test_fault_specs() -> None:
    faults = Faults.from_environ({"DRIFTWARDEN_FAULT": "kill:after-outputs:7, kill:mid-outputs:2"})
    assert faults.armed_at("after-outputs", 7) and faults.armed_at("mid-outputs", 2)
    assert not faults.armed_at("after-outputs", 6)
    assert Faults.from_environ({"DRIFTWARDEN_FAULT": "kill:windows.mid-state:3"}, stage="windows").armed_at("mid-state", 3)
    assert not Faults.from_environ({}).armed
    with pytest.raises(ValueError, match="after-intent, mid-outputs, after-outputs, mid-state, after-state"):
        Faults.from_environ({"DRIFTWARDEN_FAULT": "kill:somewhere:3"})
    # a stage prefix arms the fault in that stage only
    spec = {"DRIFTWARDEN_FAULT": "kill:windows.after-state:2, kill:after-intent:4"}
    windows, source = Faults.from_environ(spec, stage="windows"), Faults.from_environ(spec)
    assert windows.armed_at("after-state", 2) and not windows.armed_at("after-intent", 4)
    assert source.armed_at("after-intent", 4) and not source.armed_at("after-state", 2)
    with pytest.raises(ValueError, match="stage one of source, windows"):
        Faults.from_environ({"DRIFTWARDEN_FAULT": "kill:nowhere.after-state:2"})


def test_the_error_text_of_a_refused_connection() -> None:
    """The old callback raised ``'NewConnectionError' object has no attribute 'splitlines'``."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    refused = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    assert "Connection refused" in _describe(refused)
    assert "Connection refused" in _describe(MaxRetryError(None, "/api/v2/write", refused))

    class Http(Exception):
        status, reason = 503, "Service Unavailable\nmore"

    assert _describe(Http()) == "HTTP 503: Service Unavailable"


# -- quiet partitions: what makes stage 1 publish idle markers -------------------------------------


class _QuietStage:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def quiet(self, partitions: list[int]) -> None:
        self.calls.append(partitions)


class _FakeKafka:
    """What SourceConsumer asks aiokafka's consumer for: assignment and high watermarks."""

    def __init__(self, highwater: dict[Any, int | None]) -> None:
        self.highwater_of = highwater

    def assignment(self) -> set[Any]:
        return set(self.highwater_of)

    def highwater(self, tp: Any) -> int | None:
        return self.highwater_of[tp]


class _Producer:
    async def send(self, *record: Any) -> Any:
        import asyncio

        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_a_caught_up_partition_is_quiet_once_per_spell_after_the_idle_timeout() -> None:
    import asyncio

    from streams.config import Config
    from streams.consumer import SourceConsumer
    from streams.outbox import Outbox
    from streams.sinks import DiscardSink

    p0, f0, p1, f1 = _TP("predictions", 0), _TP("feedback", 0), _TP("predictions", 1), _TP("feedback", 1)
    stage = _QuietStage()
    consumer = SourceConsumer(Config.from_mapping({}, environ={}), topics={"predictions": PREDICTION,
                                                                           "feedback": FEEDBACK},
                              stage=stage, outbox=Outbox(), producer=_Producer, sink=DiscardSink(), idle_timeout=5.0)
    # partition 0: read to its high watermark; partition 1: its feedback has a backlog
    consumer._consumer = _FakeKafka({p0: 10, f0: 4, p1: 8, f1: 9})
    consumer._next = {p0: 10, f0: 4, p1: 8, f1: 3}
    now = __import__("time").monotonic()
    consumer._heard = {0: now - 1.0, 1: now - 60.0}
    asyncio.run(consumer._announce_quiet())
    assert stage.calls == []  # 0: heard from a second ago; 1: not caught up
    consumer._heard[0] = now - 6.0
    asyncio.run(consumer._announce_quiet())
    asyncio.run(consumer._announce_quiet())
    assert stage.calls == [[0]]  # once per quiet spell
    consumer._next[f1] = 9
    consumer._buffers[f1] = deque([(1.0, RawMessage(FEEDBACK, b"", None, "feedback", 1, 8))])
    asyncio.run(consumer._announce_quiet())
    assert stage.calls == [[0]]  # fetched but not handed on yet: not quiet
    consumer._buffers.clear()
    asyncio.run(consumer._announce_quiet())
    assert stage.calls == [[0], [1]]
    # before its first fetch a partition's high watermark is unknown: never quiet
    consumer._consumer.highwater_of[p0] = None
    consumer._quiet.discard(0)
    asyncio.run(consumer._announce_quiet())
    assert stage.calls == [[0], [1]]


# -- the commit a killed worker owed -----------------------------------------------------------------


class _ResumingStage:
    """A stage whose partitions resume where their (given) state says."""

    def __init__(self, resumes: dict[int, Any]) -> None:
        self.resumes = resumes

    async def assigned(self, partitions: list[int], committed: set[int]) -> None:
        pass

    def resume(self, partition: int) -> Any:
        return self.resumes.get(partition)


class _GroupKafka:
    """What SourceConsumer asks aiokafka's consumer for on assignment: committed offsets, seeks,
    pauses, commits."""

    def __init__(self, committed: dict[Any, int]) -> None:
        self.offsets = dict(committed)
        self.positions: dict[Any, int] = {}
        self.paused: set[Any] = set()
        self.commits: list[dict[Any, int]] = []

    async def committed(self, tp: Any) -> int | None:
        return self.offsets.get(tp)

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: 0 for tp in tps}

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    def pause(self, *tps: Any) -> None:
        self.paused.update(tps)

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))
        self.offsets.update(offsets)


def test_a_successor_commits_the_progress_its_killed_predecessor_saved_but_did_not_commit() -> None:
    """A worker killed after a batch's state was acknowledged and before its commit (``after-state``)
    leaves the group's offsets behind the state's progress. Its successor resumes at the progress;
    had that batch been the last of the input, nothing would commit again until more input came,
    and the lag would show work that is done. On assignment it commits the progress where that is
    ahead — never a batch in doubt (it is read again, then committed), never a partition without
    state."""
    import asyncio

    from streams.config import Config
    from streams.consumer import Resume, SourceConsumer
    from streams.outbox import Outbox
    from streams.sinks import DiscardSink

    p0, f0, p1, f1, p2, f2 = (_TP(t, p) for p in (0, 1, 2) for t in ("predictions", "feedback"))
    stage = _ResumingStage({
        0: Resume(positions={"predictions": 10, "feedback": 4}),  # predictions' last commit owed
        1: Resume(positions={"predictions": 5, "feedback": 6}, pending={"predictions": (5, 9)}),
    })
    kafka = _GroupKafka({p0: 7, f0: 4, p2: 3})
    consumer = SourceConsumer(Config.from_mapping({}, environ={}), topics={"predictions": PREDICTION,
                                                                           "feedback": FEEDBACK},
                              stage=stage, outbox=Outbox(), producer=_Producer, sink=DiscardSink())
    consumer._consumer = kafka

    async def assign() -> None:
        await consumer._on_assigned([p0, f0, p1, f1, p2, f2])
        await consumer._drain()

    asyncio.run(assign())
    assert kafka.positions == {p0: 10, f0: 4, p1: 5, f1: 6, p2: 3, f2: 0}
    assert kafka.paused == {f1}  # partition 1 re-reads its batch in doubt first
    assert kafka.commits == [{p0: 10, f1: 6}]
    asyncio.run(assign())  # assigned again (a rebalance): nothing is owed any more
    assert kafka.commits == [{p0: 10, f1: 6}]
