"""A stage's input read in micro-batches, and the delivery protocol every batch goes through.

Faust's streams hand an agent one event object per Kafka message, and that
path tops out near 11,000 messages/s on a 2-core machine whatever the agent
does (docs/design.md, "State and its changelog"), while a plain aiokafka consumer reads
and decodes the same messages more than 20 times faster. A stage therefore
reads its input topics with aiokafka's ``getmany``: every fetch is handed to
the stage as one batch of raw records, by partition (the stage keeps its state
per input partition; every input topic of a stage has the same partitions).
The consumer runs as a service of the worker's Faust app, next to Faust's
producer (which carries every output), its timers and the model-updates follower.

Delivery protocol (no Kafka transactions: the embedded broker refuses them),
for batch *n* of a partition, in this order:

1. **intent**: the batch's offset range per input topic is logged to the
   stage's state changelog (sent first, processed meanwhile, acknowledged before
   step 2);
2. **outputs**: every message the batch produced, and its points, are sent and
   acknowledged (the point sink acknowledges: a TSDB outage stalls here, retried
   forever, and nothing further is consumed — backpressure);
3. **state**: the batch's state change, carrying the offsets consumed (the
   *progress*), is logged and acknowledged;
4. **commit**: the group offsets are committed (for lag dashboards and
   handovers; the progress in the state is what a restart resumes from). A
   worker that died between 3 and 4 owes that commit: its successor makes it
   on assignment, where the state's progress is ahead of the group's offset.

On assignment each input partition is read from the progress in its state
(fallback: the committed offset, else the earliest). A partition whose last
intent has no state record was in doubt when its worker died: the first batch
after recovery is exactly the intent's range (what a fetch returns beyond it is
trimmed; the batch waits until all of it is there), so processing — which is
deterministic, given the same state and messages — produces the same outputs a
second time. Outputs therefore reach their topics at least once with identical
contents and deterministic identities (consumers dedup by them), and points
are rewritten with identical values (the TSDB keeps one per series and time).

Fair consumption: with ``merge`` (``kafka.merge_by_event_time``, the default),
the input topic-partitions of one partition number are merged by event time,
as ``replay`` merges its files: fetched records wait in a buffer per
topic-partition and are handed on smallest event time first (ties in the
order of ``topics``), as long as every topic-partition that still has a
backlog has a record buffered — so a backlog of predictions is not read far
ahead of its feedback (no empty windows followed by a huge one after a
restart), and the order does not depend on how fetches happened to fall. A
topic-partition with a full buffer (``kafka.batch_size``) is paused until the
merge has taken from it.

Rebalances: a revoked partition is dropped only after the batch in hand is
done; a partition assigned later gets its state back before its first batch.

Quiet partitions (``idle_timeout``): a partition that is caught up (every one of its
topic-partitions at the high watermark its last fetch reported, nothing buffered, no batch
in doubt) and has fetched nothing for ``idle_timeout`` seconds since its last records (or
its assignment) is handed to :meth:`Stage.quiet` once per quiet spell; what the stage queues
then is sent and acknowledged outside any batch, so it must change no state and be harmless
when repeated (stage 1 publishes idle markers: :meth:`streams.pipeline.SourcePipeline.idle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Mapping, Protocol, TypeVar

from mode import Service

from streams.collector import collect_due
from streams.config import Config
from streams.events import message_time
from streams.faults import Faults
from streams.kafka import client_options
from streams.outbox import Outbox
from streams.pipeline import RawMessage
from streams.sinks import PointSink

log = logging.getLogger(__name__)

Batch = dict[int, list[RawMessage]]
"""Raw messages of one fetch, by input partition (in the order of the stage's topics, then offsets)."""
Ranges = dict[int, dict[str, tuple[int, int]]]
"""Per input partition, per topic: the ``[start, end)`` offsets a batch covers."""

W = TypeVar("W")
STOP_GRACE_SECONDS = 10.0
"""On stop, how long the batch in hand may take before it is abandoned (it is read again on restart)."""


kafka_security = client_options
"""Kept for callers of the old name: :func:`streams.kafka.client_options`."""


@dataclass(frozen=True)
class Resume:
    """Where an input partition's reading resumes, from its state."""

    positions: Mapping[str, int] = field(default_factory=dict)
    """Topic -> next offset (the progress of the last saved batch)."""
    pending: Mapping[str, tuple[int, int]] | None = None
    """The range of the batch in doubt (intent without state): read exactly this first."""


class Stage(Protocol[W]):
    """What a stage does with its batches; :class:`SourceConsumer` runs the protocol around it."""

    def intend(self, partition: int, ranges: dict[str, tuple[int, int]]) -> None:
        """Queue the intent record of the partition's next batch."""

    def process(self, batch: Batch) -> W:
        """Do the batch's work (deterministic: same state and messages, same result)."""

    async def emit(self, work: W) -> None:
        """Queue the batch's output messages on the outbox and its points on the sink."""

    def save(self, work: W, ends: dict[int, dict[str, int]]) -> None:
        """Queue the batch's state records, with the offsets consumed (``ends``) as progress."""

    def resume(self, partition: int) -> Resume | None:
        """Where the partition's reading resumes (None: from the committed offsets)."""

    async def assigned(self, partitions: list[int], committed: set[int]) -> None:
        """Before the first batch of newly assigned partitions: get their state back (``committed``:
        those with a committed offset, which must have state: a batch's state is saved before its commit)."""

    async def revoked(self, partitions: list[int]) -> None:
        """After the last batch of revoked partitions: let them go."""

    def quiet(self, partitions: list[int]) -> None:
        """Caught-up partitions silent for ``idle_timeout``: queue what announces it (no state change)."""


def event_time(message: RawMessage) -> float:
    """The event time of a predictions/feedback message (:func:`streams.events.message_time`)."""
    return message_time(message.value)


@dataclass
class _Pending:
    """A partition's batch in doubt, being re-read: its ranges and what has been fetched of them."""

    ranges: dict[str, tuple[int, int]]
    records: dict[str, list[Any]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


class SourceConsumer(Service, Generic[W]):
    """Consumes ``topics`` (topic -> message kind) as the consumer group ``group_id`` and runs the
    delivery protocol (module docstring) around ``stage`` for every fetch."""

    def __init__(self, cfg: Config, *, topics: Mapping[str, str], stage: Stage[W], outbox: Outbox,
                 producer: Callable[[], Any], sink: PointSink, group_id: str | None = None,
                 merge: bool = True, event_time: Callable[[RawMessage], float] = event_time,
                 faults: Faults | None = None, idle_timeout: float | None = None, name: str = "source",
                 stateless_from_committed: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cfg = cfg
        self.topics = dict(topics)
        self._ranks = {topic: i for i, topic in enumerate(self.topics)}
        self.stage = stage
        self.outbox = outbox
        self.producer = producer
        self.sink = sink
        self.group_id = group_id or cfg.kafka.group_id
        self.merge = merge
        self.event_time = event_time
        self.faults = faults or Faults()
        self.idle_timeout = idle_timeout
        self.name = name
        """What the stage is called in log lines and its client id (``source``, ``windows``)."""
        self.stateless_from_committed = stateless_from_committed
        """A partition without state resumes at its committed offset (else at the beginning: a
        stage whose state is built from all its input, stage 2, re-reads what the topic keeps)."""
        self.batches = 0
        self.failed_commits = 0
        self.merge_waits = 0
        """Fetches after which a partition's merge waited for a topic-partition with a backlog."""
        self._consumer: Any = None
        self._joining: asyncio.Future[None] | None = None
        """The consumer's start (bootstrap and group join), awaited by the loop before its first fetch."""
        self._loop_task: asyncio.Task[None] | None = None
        self._committing: asyncio.Future[None] | None = None
        self._batch_lock = asyncio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._held: set[Any] = set()
        """Topic-partitions paused while their partition's batch in doubt is re-read."""
        self._buffers: dict[Any, deque[tuple[float, RawMessage]]] = {}
        """Fetched records not handed on yet (merge), with their event times."""
        self._full: set[Any] = set()
        """Topic-partitions paused because their buffer is full."""
        self._next: dict[Any, int] = {}
        """Topic-partition -> the offset after the last record fetched (backlog = highwater beyond it)."""
        self._heard: dict[int, float] = {}
        """Partition -> monotonic time its last records were fetched (or it was assigned)."""
        self._quiet: set[int] = set()
        """Partitions handed to :meth:`Stage.quiet` since their last records."""

    async def on_start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.abc import ConsumerRebalanceListener

        kafka = self.cfg.kafka
        owner = self

        class Rebalance(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
                await owner._on_revoked(revoked)

            async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
                await owner._on_assigned(assigned)

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap.split(","),
            group_id=self.group_id,
            client_id=f"{self.group_id}-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=kafka.batch_size,
            # the embedded broker completes a group join only after the rebalance timeout
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            rebalance_timeout_ms=5000,
            # a TSDB outage stalls the loop (backpressure) for as long as it lasts; past this the
            # group moves the partitions on and their state comes back from the changelog
            max_poll_interval_ms=300_000,
            **client_options(self.cfg),
        )
        self._consumer.subscribe(list(self.topics), listener=Rebalance())
        # aiokafka's start() returns once the group has assigned partitions (a group join: seconds,
        # the rebalance delay): joined in the background, so a worker's two stages join their
        # groups at the same time rather than one after the other
        self._joining = asyncio.ensure_future(self._consumer.start())

    async def on_started(self) -> None:
        self._loop_task = asyncio.ensure_future(self._consume())

    async def on_stop(self) -> None:
        task = self._loop_task
        if task is not None:
            locked = False
            try:  # let the batch in hand finish, unless it is stalled (a TSDB outage)
                await asyncio.wait_for(self._batch_lock.acquire(), STOP_GRACE_SECONDS)
                locked = True
            except asyncio.TimeoutError:
                log.warning("stopping in the middle of a batch (its output is not acknowledged): it is read "
                            "again on restart")
            task.cancel()
            with contextlib.suppress(Exception):  # a failed delivery is logged; stop regardless
                await self._drain()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # already logged by the loop
                await task
            if locked:
                self._batch_lock.release()
        if self._joining is not None and not self._joining.done():
            self._joining.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._joining
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: the partitions move on at once

    async def _consume(self) -> None:
        timeout_ms = max(int(self.cfg.kafka.batch_timeout * 1000), 1)
        if self._joining is not None:
            try:
                await self._joining
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("%s: could not join consumer group %s", self.name, self.group_id)
                await self.crash(exc)
                return
        while True:
            try:
                fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.cfg.kafka.batch_size)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading %s failed (%s: %s); retrying in 1 s", "/".join(self.topics),
                            type(exc).__name__, exc)
                await asyncio.sleep(1.0)
                continue
            try:
                if fetched or self._buffers:
                    await self._take(fetched)
                del fetched  # the batch's records go before the collection below
                if self.idle_timeout is not None:
                    await self._announce_quiet()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The batch's output may not have left: stop (exit 1) rather than go past it;
                # a restart re-reads it from the intent in the changelog.
                log.exception("a batch could not be handed on; stopping the worker")
                await self.crash(exc)
                return
            collect_due(batch_boundary=True)  # what the batch held is freed: little to scan (streams.collector)

    async def _take(self, fetched: dict[Any, list[Any]]) -> None:
        """The fetched records (and those buffered before) as one batch through :meth:`_run`."""
        async with self._batch_lock:
            batch, ranges = self._batch_of(fetched)
            if batch:
                await self._run(batch, ranges)

    async def _run(self, batch: Batch, ranges: Ranges) -> None:
        """One batch through the protocol: intent, outputs, state, commit."""
        self.batches += 1
        number = self.batches
        producer = self.producer()
        for partition in sorted(batch):
            self.stage.intend(partition, ranges[partition])
        await self.outbox.send(producer)
        work = self.stage.process(batch)
        await self.outbox.delivered()
        self.faults.check("after-intent", number)
        await self.stage.emit(work)
        if self.faults.armed_at("mid-outputs", number):
            await self.outbox.send(producer, first=len(self.outbox.queued) // 2)
            await self.outbox.delivered()
            self.faults.check("mid-outputs", number)
        await self.outbox.send(producer)
        await self.outbox.delivered()
        await self.sink.delivered()
        self.faults.check("after-outputs", number)
        ends = {p: {topic: end for topic, (_, end) in r.items()} for p, r in ranges.items()}
        self.stage.save(work, ends)
        if self.faults.armed_at("mid-state", number) and self.outbox.queued:
            held = self.outbox.queued[-1]
            await self.outbox.send(producer, first=len(self.outbox.queued) - 1)
            await self.outbox.delivered()
            self.faults.check("mid-state", number, f" (held back {(held[1] or b'').decode(errors='replace')})")
        await self.outbox.send(producer)
        await self.outbox.delivered()
        self.faults.check("after-state", number)
        await self._drain()
        self._committing = asyncio.ensure_future(self._commit(ranges))

    def _batch_of(self, fetched: dict[Any, list[Any]]) -> tuple[Batch, Ranges]:
        """Raw messages by partition and the ranges they cover: merged by event time (``merge``),
        else in the order of ``topics``; a partition re-reading its batch in doubt yields exactly
        that batch, once all of it is there."""
        assignment = self._consumer.assignment()
        batch: Batch = {}
        ranges: Ranges = {}
        touched: set[int] = set()
        for tp in sorted(fetched, key=lambda tp: (tp.partition, self._rank(tp.topic))):
            # a fetch in flight across a seek to where it started returns its records twice: keep
            # only what comes after what was fetched already
            records = [r for r in fetched[tp] if r.offset >= self._next.get(tp, -1)]
            if not records or tp not in assignment:  # revoked while the fetch waited for the lock
                continue
            self._next[tp] = records[-1].offset + 1
            self._heard[tp.partition] = time.monotonic()
            self._quiet.discard(tp.partition)
            pending = self._pending.get(tp.partition)
            if pending is not None:
                self._take_pending(tp, records, pending)
                continue
            buffer = self._buffers.setdefault(tp, deque())
            for r in records:
                message = RawMessage(self.topics[tp.topic], r.value or b"", r.key, tp.topic, tp.partition, r.offset)
                buffer.append((self.event_time(message) if self.merge else 0.0, message))
            touched.add(tp.partition)
        for partition in sorted({tp.partition for tp in self._buffers} | touched):
            messages = self._release(partition, assignment)
            if messages:
                batch[partition] = messages
                ranges[partition] = _ranges_of(messages)
        for partition, pending in list(self._pending.items()):
            if pending.done >= set(pending.ranges):
                del self._pending[partition]
                buffers = {}
                for tp in assignment:
                    if tp.partition == partition and tp.topic in pending.ranges:
                        kind = self.topics[tp.topic]
                        messages = [RawMessage(kind, r.value or b"", r.key, tp.topic, partition, r.offset)
                                    for r in pending.records.get(tp.topic, [])]
                        buffers[tp] = deque((self.event_time(m) if self.merge else 0.0, m) for m in messages)
                batch[partition] = _merged(buffers, self._rank, lambda tp: False, limit=None)
                ranges[partition] = dict(pending.ranges)
                held = {tp for tp in self._held if tp.partition == partition}
                self._held -= held
                if held:
                    self._consumer.resume(*held)
                log.info("partition %d: re-read the batch in doubt %s", partition, pending.ranges)
        return batch, ranges

    def _rank(self, topic: str) -> int:
        """A topic's place in ``topics`` (ties in event time go to the earlier topic)."""
        return self._ranks.get(topic, len(self._ranks))

    def _release(self, partition: int, assignment: Any) -> list[RawMessage]:
        """Take up to ``batch_size`` buffered messages of ``partition`` in merge order; pause the
        topic-partitions whose buffer is full, resume the others."""
        buffers = {tp: self._buffers.setdefault(tp, deque()) for tp in assignment
                   if tp.partition == partition and tp not in self._held}
        if self.merge:
            messages = _merged(buffers, self._rank, self._backlog, limit=self.cfg.kafka.batch_size)
            if any(not b and self._backlog(tp) for tp, b in buffers.items()):
                self.merge_waits += 1
        else:
            messages = [m for tp in sorted(buffers, key=lambda tp: self._rank(tp.topic)) for _, m in buffers[tp]]
            for b in buffers.values():
                b.clear()
        for tp, b in buffers.items():
            if not b:
                self._buffers.pop(tp, None)
            full = len(b) >= self.cfg.kafka.batch_size
            if full and tp not in self._full:
                self._full.add(tp)
                self._consumer.pause(tp)
            elif not full and tp in self._full:
                self._full.discard(tp)
                self._consumer.resume(tp)
        return messages

    def _take_pending(self, tp: Any, records: list[Any], pending: _Pending) -> None:
        """Keep what a fetch returned of the batch in doubt; hold the topic-partition once it is all there."""
        span = pending.ranges.get(tp.topic)
        if span is None:  # not part of the batch in doubt: read it again after it
            self._consumer.seek(tp, records[0].offset)
            self._next[tp] = records[0].offset
            self._hold(tp)
            return
        start, end = span
        pending.records.setdefault(tp.topic, []).extend(r for r in records if start <= r.offset < end)
        if records[-1].offset + 1 >= end:
            pending.done.add(tp.topic)
            self._next[tp] = end
            self._consumer.seek(tp, end)
            self._hold(tp)

    def _hold(self, tp: Any) -> None:
        self._held.add(tp)
        self._consumer.pause(tp)

    async def _announce_quiet(self) -> None:
        """Hand the partitions that have turned quiet (module docstring) to the stage, once per
        quiet spell, and send what it queued."""
        now = time.monotonic()
        due = [p for p, heard in self._heard.items()
               if p not in self._quiet and now - heard >= (self.idle_timeout or 0.0) and p not in self._pending]
        if not due:
            return
        async with self._batch_lock:
            assignment = self._consumer.assignment()
            quiet = []
            for partition in due:
                tps = [tp for tp in assignment if tp.partition == partition]
                if tps and all(self._caught_up(tp) for tp in tps):
                    quiet.append(partition)
            if not quiet:
                return
            self.stage.quiet(quiet)
            await self.outbox.send(self.producer())
            await self.outbox.delivered()
            self._quiet.update(quiet)
            log.info("%s: partitions %s caught up and quiet for %.0f s", self.name, quiet, self.idle_timeout)

    def _caught_up(self, tp: Any) -> bool:
        """True if ``tp`` is fetched up to the high watermark its last fetch reported, with nothing
        buffered or held (unknown before its first fetch: not caught up)."""
        highwater = self._consumer.highwater(tp)
        return (highwater is not None and highwater <= self._next.get(tp, 0) and not self._buffers.get(tp)
                and tp not in self._held and tp not in self._full)

    def _backlog(self, tp: Any) -> bool:
        """True if the broker last reported messages past what has been fetched of ``tp``."""
        highwater = self._consumer.highwater(tp)
        return highwater is not None and highwater > self._next.get(tp, 0)

    async def _drain(self) -> None:
        """Wait for the commit in flight, if any."""
        if self._committing is not None:
            await asyncio.shield(self._committing)
            self._committing = None

    async def _commit(self, ranges: Ranges) -> None:
        from aiokafka import TopicPartition

        offsets = {TopicPartition(topic, partition): end for partition, r in ranges.items()
                   for topic, (_, end) in r.items()}
        try:
            await self._consumer.commit(offsets)
        except Exception as exc:  # the group moved on: the new owner resumes from the state's progress
            self.failed_commits += 1
            log.warning("committing offsets failed (%s: %s); the partitions' owner resumes from the progress "
                        "saved in their state", type(exc).__name__, exc)

    async def _on_revoked(self, revoked: Iterable[Any]) -> None:
        async with self._batch_lock:  # the batch in hand is done first
            await self._drain()
            revoked = list(revoked)
            partitions = sorted({tp.partition for tp in revoked})
            for partition in partitions:
                self._pending.pop(partition, None)
                self._heard.pop(partition, None)
                self._quiet.discard(partition)
            for tp in revoked:
                self._held.discard(tp)
                self._full.discard(tp)
                self._buffers.pop(tp, None)
                self._next.pop(tp, None)
            if partitions:
                await self.stage.revoked(partitions)

    async def _on_assigned(self, assigned: Iterable[Any]) -> None:
        assigned = list(assigned)
        partitions = sorted({tp.partition for tp in assigned})
        async with self._batch_lock:  # no batch of a new partition before its state is back
            offsets = {tp: await self._consumer.committed(tp) for tp in assigned}
            committed = {tp.partition for tp, offset in offsets.items() if (offset or 0) > 0}
            await self.stage.assigned(partitions, committed)
            behind: Ranges = {}
            for partition in partitions:
                resumed = await self._seek(partition, [tp for tp in assigned if tp.partition == partition])
                for tp, position in resumed.items():
                    if position > (offsets[tp] or 0):
                        behind.setdefault(partition, {})[tp.topic] = (position, position)
                self._heard[partition] = time.monotonic()
                self._quiet.discard(partition)
            if behind:
                # the last owner saved these batches' state and died before their commit: commit the
                # state's progress now, or the group's lag stays at the old offsets until more input comes
                log.warning("%s: the last owner saved state it did not commit; committing the progress saved in "
                            "the state, ahead of the group's offsets: %s", self.name,
                            {p: {t: end for t, (_, end) in r.items()} for p, r in behind.items()})
                await self._drain()
                self._committing = asyncio.ensure_future(self._commit(behind))

    async def _seek(self, partition: int, tps: list[Any]) -> dict[Any, int]:
        """Position a newly assigned partition's topic-partitions: at the batch in doubt, else at the
        progress in its state, else at the committed offset, else at the beginning — always by an
        explicit seek, so the offset each one is read from is known (the merge and the filter of
        records fetched twice rely on it). Returns the topic-partitions positioned at their state's
        progress, with that offset (every batch before it is done: its commit is owed)."""
        resume = self.stage.resume(partition) or Resume()
        pending = {t: span for t, span in (resume.pending or {}).items() if span[1] > span[0]}
        resumed: dict[Any, int] = {}
        for tp in tps:
            if tp.topic in pending:
                target = pending[tp.topic][0]
            elif tp.topic in resume.positions:
                target = resumed[tp] = resume.positions[tp.topic]
            else:
                committed = await self._consumer.committed(tp) if self.stateless_from_committed else None
                target = committed if committed is not None else (await self._consumer.beginning_offsets([tp]))[tp]
                if committed is not None and committed > 0:
                    log.warning("%s partition %d: no state in the changelog, resuming %s at its committed offset %d",
                                self.name, partition, tp.topic, committed)
            self._consumer.seek(tp, target)
            self._next[tp] = target
            if pending and tp.topic not in pending:
                self._hold(tp)
        if pending:
            self._pending[partition] = _Pending(pending)
            log.warning("partition %d: a batch was in doubt when the last owner stopped; reading exactly %s first",
                        partition, pending)
        return resumed


def _merged(buffers: dict[Any, deque[tuple[float, RawMessage]]], rank: Callable[[str], int],
            backlog: Callable[[Any], bool], *, limit: int | None) -> list[RawMessage]:
    """Take messages from ``buffers`` smallest event time first (ties: topic rank), while every
    topic-partition with an empty buffer has no backlog (it could hold an earlier message), up
    to ``limit``. The same buffers give the same sequence however fetches fell."""
    out: list[RawMessage] = []
    while limit is None or len(out) < limit:
        if any(not b and backlog(tp) for tp, b in buffers.items()):
            break
        heads = [(b[0][0], rank(tp.topic), tp) for tp, b in buffers.items() if b]
        if not heads:
            break
        _, _, tp = min(heads, key=lambda h: (h[0], h[1]))
        out.append(buffers[tp].popleft()[1])
    return out


def _ranges_of(messages: list[RawMessage]) -> dict[str, tuple[int, int]]:
    """Per topic, ``[first offset, last offset + 1)`` of ``messages``."""
    out: dict[str, tuple[int, int]] = {}
    for m in messages:
        start, end = out.get(m.topic, (m.offset, m.offset + 1))
        out[m.topic] = (min(start, m.offset), max(end, m.offset + 1))
    return out
