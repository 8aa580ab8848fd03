"""The worker's runtime: a Faust app carrying the two stages of docs/design.md §2.

- **Stage 1, the source stage**, reads predictions and feedback in micro-batches
  (:class:`~streams.consumer.SourceConsumer`, aiokafka's ``getmany``, consumer group
  ``kafka.group_id``). Per source partition a :class:`~streams.pipeline.SourcePipeline`
  parses, validates and joins; its outputs are dead letters, labelled pairs and, per touched
  model, one :class:`~streams.partials.ModelPartial` published on the internal topic
  ``<group_id>-panes`` (keyed by ``model_id``, partition :func:`panes_partition`). A caught-up
  source partition silent for ``kafka.idle_timeout`` publishes idle markers.
- **Stage 2, the windows stage**, reads the internal topic with the same consumer class
  (consumer group ``<group_id>-windows``, no event-time merge: one topic). Per partition of
  the internal topic a :class:`~streams.pipeline.Merger` holds the windows of the models keyed
  there — the same :class:`~streams.windows.ModelWindows` that ``replay`` runs — and writes
  points to the sink, alerts and retrain jobs through ``on_outcome``.

Both run every batch through the delivery protocol of :mod:`streams.consumer` (intent,
outputs and points acknowledged, state with progress, commit), each with its own
:class:`~streams.outbox.Outbox` and its own compacted state changelog
(``<group_id>-state-changelog``, ``<group_id>-windows-changelog``). Stage 1's partials are
outputs of its batch: acknowledged before its state and commit, so after a crash the batch
is re-read exactly and re-publishes the same ``(source, seq)``, which stage 2 drops.
:class:`WorkerRuntime` holds both stages and the worker's figures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Protocol, TypeVar

import faust
from faust.app.base import BootStrategy
from kafka.partitioner.default import murmur2

from detectors.points import Point
from streams import caught
from streams.config import Config
from streams.collector import collect_due, one_collection_per_batch
from streams.consumer import Batch, Resume, SourceConsumer
from streams.faults import Faults
from streams.join import JoinStore, labelled_messages
from streams.kafka import client_options, faust_credentials
from streams.outbox import Outbox
from streams.partials import encode
from streams.pipeline import FEEDBACK, PREDICTION, Merger, Outcome, SourceOutcome, SourcePipeline
from streams.sinks import DiscardSink, PointSink
from streams.state import READ_POLL_SECONDS, PartitionState, changelog_topic, recover

log = logging.getLogger(__name__)

PARTIAL = "partial"
"""The message kind of the internal topic."""
RECOVERY_RETRY_SECONDS = (3.0, 10.0)
"""Longer waits for a first poll when a partition with a committed offset came back without state."""


def panes_topic(group_id: str) -> str:
    """The internal topic stage 1 publishes partials on (delete retention, not compacted)."""
    return f"{group_id}-panes"


def windows_group(group_id: str) -> str:
    """Stage 2's consumer group: its own, so a rebalance of one stage does not stop the other."""
    return f"{group_id}-windows"


def windows_changelog_topic(group_id: str) -> str:
    """Stage 2's state changelog (compacted; one partition per partition of the internal topic)."""
    return f"{group_id}-windows-changelog"


def panes_partition(model_id: str, partitions: int) -> int:
    """The internal topic's partition of a model (Kafka's default partitioner: murmur2 of the key),
    so one stage-2 owner merges every partial of a model."""
    return (murmur2(model_id.encode()) & 0x7FFFFFFF) % partitions


class _WithoutFaustConsumer(BootStrategy):
    """Faust's producer, timers and services, but not its consumer: the topics are read by the
    stages' :class:`SourceConsumer` s (and Faust's consumer would join the same group)."""

    enable_kafka_consumer = False


class WorkerApp(faust.App):
    BootStrategy = _WithoutFaustConsumer


@dataclass
class WorkerStats:
    """What this worker did, for its progress lines, its ``throughput`` points and its summary."""

    messages: int = 0
    """Source messages in batches this worker processed."""
    batches: int = 0
    failed_batches: int = 0
    """Source batches whose pipeline raised (logged and counted; the batch goes on without them)."""
    first_at: float | None = None
    """Monotonic time of the first source batch (rates count from it, not from start-up)."""
    reported: tuple[int, float] = (0, 0.0)
    """Messages and monotonic time of the last progress line."""
    given_up: dict[str, int] = field(default_factory=lambda: {"events": 0, "pairs": 0, "dead_letters": 0})
    """What this worker did on source partitions it no longer holds."""


class Stateful(Protocol):
    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


H = TypeVar("H", bound=Stateful)


@dataclass(frozen=True)
class _PartitionWork(Generic[H]):
    """What one partition's part of a batch produced, and its snapshot right after it (saved once
    the outputs are acknowledged)."""

    partition: int
    state: PartitionState
    outcome: Any
    snapshot: dict[str, Any]


class _Partitions(Generic[H]):
    """A stage's per-partition holders (a source pipeline, a merger) with their changelog-backed
    state: built on first use from the state read back at assignment, let go at revocation."""

    def __init__(self, cfg: Config, *, label: str, changelog: str, outbox: Outbox,
                 build: Callable[[PartitionState, int], H], echo: Callable[[str], None],
                 taken: Callable[[int, H], None] | None = None) -> None:
        self.cfg = cfg
        self.label = label
        self.changelog = changelog
        self.outbox = outbox
        self.build = build
        self.echo = echo
        self.taken = taken
        """Called with each holder once it is restored (before its first batch here)."""
        self.held: dict[int, tuple[H, PartitionState]] = {}
        self.recovered: dict[int, PartitionState] = {}

    def entry(self, partition: int) -> tuple[H, PartitionState]:
        found = self.held.get(partition)
        if found is None:
            state = self.recovered.pop(partition, None) or PartitionState(partition)
            state.send = self._send
            state.full_every = self.cfg.join.full_snapshot_every
            holder = self.build(state, partition)
            if state.snapshot:
                holder.restore(state.snapshot)
                log.info("%s partition %d: resumed from %s", self.label, partition, self.changelog)
            if state.recovered_from is not None:
                self.echo(f"{self.label} partition {partition}: join table from {state.recovered_from}")
            if self.taken is not None:
                self.taken(partition, holder)
            found = self.held[partition] = (holder, state)
        return found

    def _send(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.outbox.put(self.changelog, key, value, partition)

    def intend(self, partition: int, ranges: dict[str, tuple[int, int]]) -> None:
        self.entry(partition)[1].save_intent(ranges)

    def save(self, work: list[_PartitionWork[H]], ends: dict[int, dict[str, int]]) -> None:
        for part in work:
            part.state.save_snapshot(part.snapshot, ends.get(part.partition))

    def resume(self, partition: int) -> Resume | None:
        state = self.entry(partition)[1]
        if not state.progress and state.pending() is None:
            return None
        return Resume(dict(state.progress), state.pending())

    async def assigned(self, partitions: list[int], topics: str, committed: set[int]) -> None:
        """Read the state of newly assigned partitions back from the changelog before their first
        batch: always, since the partition's last owner (another worker, or this one before a
        rebalance) may have moved it on after any earlier read. A partition with a committed offset
        has state (saved before the commit): if the read brought none (a first poll slow to bring
        records, on a broker that under-reports end offsets, as Tansu does, ends the read), it is
        read again with longer waits."""
        self.echo(f"PARTITIONS assigned {partitions} of {topics}")
        self.recovered = {p: s for p, s in self.recovered.items() if p in partitions}
        missing = [p for p in partitions if p not in self.held and p not in self.recovered]
        for attempt, idle_seconds in enumerate((READ_POLL_SECONDS, *RECOVERY_RETRY_SECONDS)):
            if not missing:
                break
            if attempt:
                log.warning("%s partitions %s have committed offsets but no state was read from %s; reading "
                            "it again", self.label, missing, self.changelog)
            cfg, wanted = self.cfg, list(missing)
            states = await asyncio.get_running_loop().run_in_executor(
                None, lambda: recover(cfg.kafka.bootstrap, self.changelog, partitions=wanted,
                                      idle_seconds=idle_seconds, **client_options(cfg)))
            self.recovered.update(states)
            missing = [p for p in missing if p in committed
                       and (p not in states or (states[p].snapshot is None and states[p].intent is None))]
        if missing:
            log.error("%s partitions %s: no state in %s although offsets were committed; they start afresh",
                      self.label, missing, self.changelog)

    def revoked(self, partitions: list[int]) -> list[tuple[int, H]]:
        """Let the partitions go (their batches are committed, their state is in the changelog, so a
        later assignment reads the state the next owner left); returns the holders let go."""
        gone = []
        for partition in partitions:
            entry = self.held.pop(partition, None)
            if entry is not None:
                gone.append((partition, entry[0]))
            self.recovered.pop(partition, None)
        self.echo(f"PARTITIONS revoked {partitions} (committed; state in {self.changelog})")
        return gone


class SourceStage:
    """Stage 1 as a :class:`~streams.consumer.Stage`: predictions and feedback of each source
    partition through its :class:`SourcePipeline`; dead letters, labelled pairs and the partials
    (on the internal topic) are the batch's outputs."""

    def __init__(self, cfg: Config, *, build: Callable[[JoinStore, int], SourcePipeline], outbox: Outbox,
                 panes: str, panes_partitions: int, stats: WorkerStats, echo: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.panes = panes
        self.panes_partitions = panes_partitions
        self.stats = stats
        self.pairs_before: dict[int, int] = {}
        """Pairs a partition's restored join had counted before this worker took it over."""
        self.partitions: _Partitions[SourcePipeline] = _Partitions(
            cfg, label="source", changelog=changelog_topic(cfg.kafka.group_id), outbox=outbox,
            build=build, echo=echo, taken=self._taken)

    def _taken(self, partition: int, pipeline: SourcePipeline) -> None:
        self.pairs_before[partition] = pipeline.join.counts.pairs

    def done(self, partition: int, pipeline: SourcePipeline) -> dict[str, int]:
        return {"events": pipeline.events_seen, "dead_letters": pipeline.dead_letter_count,
                "pairs": pipeline.join.counts.pairs - self.pairs_before.get(partition, 0)}

    def totals(self) -> dict[str, int]:
        """Events, labelled pairs and dead letters this worker processed, over all partitions it held."""
        out = dict(self.stats.given_up)
        for partition, (pipeline, _) in self.partitions.held.items():
            for name, count in self.done(partition, pipeline).items():
                out[name] += count
        return out

    # -- Stage ---------------------------------------------------------------------------------

    def intend(self, partition: int, ranges: dict[str, tuple[int, int]]) -> None:
        self.partitions.intend(partition, ranges)

    def process(self, batch: Batch) -> list[_PartitionWork[SourcePipeline]]:
        started = time.monotonic()
        work = []
        for partition, messages in batch.items():
            pipeline, state = self.partitions.entry(partition)
            try:
                outcome = pipeline.process(messages)
            except Exception:  # never a crashed worker: log, count, go on with the next batch
                caught.report(log, "partition %d: a batch of %d messages failed", partition, len(messages))
                self.stats.failed_batches += 1
                outcome = SourceOutcome()
            work.append(_PartitionWork(partition, state, outcome, pipeline.snapshot()))
        if self.stats.first_at is None:
            self.stats.first_at = started
            self.stats.reported = (0, started)
        self.stats.messages += sum(len(messages) for messages in batch.values())
        self.stats.batches += 1
        return work

    async def emit(self, work: list[_PartitionWork[SourcePipeline]]) -> None:
        topics = self.cfg.kafka.topics
        for part in work:
            outcome: SourceOutcome = part.outcome
            for dead in outcome.dead_letters:
                self.outbox.put(topics.dead_letters, dead.message.key, dead.to_json())
            for key, value, stamp in labelled_messages(outcome.pairs):  # arrays of pairs: a few per batch
                self.outbox.put(topics.labelled, key, value, timestamp=stamp)
            self._publish(outcome.partials)

    def _publish(self, partials: list[Any]) -> None:
        for partial in partials:
            self.outbox.put(self.panes, partial.model_id.encode(), encode(partial, self.cfg.kafka.panes_codec),
                            panes_partition(partial.model_id, self.panes_partitions))

    def save(self, work: list[_PartitionWork[SourcePipeline]], ends: dict[int, dict[str, int]]) -> None:
        self.partitions.save(work, ends)

    def resume(self, partition: int) -> Resume | None:
        return self.partitions.resume(partition)

    async def assigned(self, partitions: list[int], committed: set[int]) -> None:
        topics = self.cfg.kafka.topics
        await self.partitions.assigned(partitions, f"{topics.predictions}/{topics.feedback}", committed)

    async def revoked(self, partitions: list[int]) -> None:
        for partition, pipeline in self.partitions.revoked(partitions):
            for name, count in self.done(partition, pipeline).items():
                self.stats.given_up[name] += count

    def quiet(self, partitions: list[int]) -> None:
        """Idle markers of caught-up, silent source partitions (no state change: see
        :meth:`SourcePipeline.idle`)."""
        for partition in partitions:
            self._publish(self.partitions.entry(partition)[0].idle())


class WindowsStage:
    """Stage 2 as a :class:`~streams.consumer.Stage`: the partials of each partition of the
    internal topic through its :class:`Merger`; points to the sink, alerts and retrain jobs
    through ``on_outcome`` (which queues them on this stage's outbox)."""

    def __init__(self, cfg: Config, *, build: Callable[[], Merger], outbox: Outbox, sink: PointSink,
                 stats: WorkerStats, on_outcome: Callable[[Outcome], Awaitable[None] | None] | None,
                 echo: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.sink = sink
        self.stats = stats
        self.on_outcome = on_outcome
        self.windows_closed = 0
        self.partitions: _Partitions[Merger] = _Partitions(
            cfg, label="windows", changelog=windows_changelog_topic(cfg.kafka.group_id), outbox=outbox,
            build=lambda state, partition: build(), echo=echo)

    def intend(self, partition: int, ranges: dict[str, tuple[int, int]]) -> None:
        self.partitions.intend(partition, ranges)

    def process(self, batch: Batch) -> list[_PartitionWork[Merger]]:
        work = []
        for partition, messages in batch.items():
            merger, state = self.partitions.entry(partition)
            outcome = Outcome()
            with one_collection_per_batch():
                for message in messages:
                    merger.merge_message(message.value, outcome)
            self.windows_closed += len(outcome.windows)
            work.append(_PartitionWork(partition, state, outcome, merger.snapshot()))
        return work

    async def emit(self, work: list[_PartitionWork[Merger]]) -> None:
        for part in work:
            outcome: Outcome = part.outcome
            self.sink.write(outcome.points)
            self.sink.write(processing_points(outcome, self.stats))
            if self.on_outcome is not None:
                result = self.on_outcome(outcome)
                if result is not None:
                    await result

    def save(self, work: list[_PartitionWork[Merger]], ends: dict[int, dict[str, int]]) -> None:
        self.partitions.save(work, ends)

    def resume(self, partition: int) -> Resume | None:
        return self.partitions.resume(partition)

    async def assigned(self, partitions: list[int], committed: set[int]) -> None:
        await self.partitions.assigned(partitions, panes_topic(self.cfg.kafka.group_id), committed)

    async def revoked(self, partitions: list[int]) -> None:
        self.partitions.revoked(partitions)

    def quiet(self, partitions: list[int]) -> None:
        """Nothing: stage 2 publishes only what its batches decide."""


class WorkerRuntime:
    """The worker: a Faust app (producer, timers, services) carrying both stages, each a
    :class:`SourceConsumer` with its own outbox and changelog, and the worker's figures.

    ``source_pipeline`` builds stage 1 of a source partition (its join store, its number);
    ``merger`` builds stage 2 of a partition of the internal topic, which has
    ``panes_partitions`` partitions. Nothing connects until :attr:`app` starts."""

    def __init__(self, cfg: Config, *, source_pipeline: Callable[[JoinStore, int], SourcePipeline],
                 merger: Callable[[], Merger], sink: PointSink, panes_partitions: int,
                 on_outcome: Callable[[Outcome], Awaitable[None] | None] | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.echo = echo or log.info
        group = cfg.kafka.group_id
        topics = cfg.kafka.topics
        self.app = WorkerApp(
            group,
            broker=[f"kafka://{host}" for host in cfg.kafka.bootstrap.split(",")],
            broker_credentials=faust_credentials(cfg),
            store="memory://",
            datadir=str(cfg.worker.state_dir),
            key_serializer="raw",
            value_serializer="raw",
            topic_partitions=cfg.kafka.partitions,
            topic_replication_factor=1,
            web_enabled=False,
            producer_linger_ms=5,
        )
        self.stats = WorkerStats()
        self.source_outbox = Outbox(topics.dead_letters)
        self.windows_outbox = Outbox(topics.dead_letters)
        self.source = SourceStage(cfg, build=source_pipeline, outbox=self.source_outbox, panes=panes_topic(group),
                                  panes_partitions=panes_partitions, stats=self.stats, echo=self.echo)
        self.windows = WindowsStage(cfg, build=merger, outbox=self.windows_outbox, sink=sink, stats=self.stats,
                                    on_outcome=on_outcome, echo=self.echo)
        producer = lambda: self.app.producer  # noqa: E731 - the app's producer exists once it starts
        # stage 1 writes no points: its batches do not wait for the TSDB (stage 2's do)
        self.source_consumer: SourceConsumer[Any] = SourceConsumer(
            cfg, topics={topics.predictions: PREDICTION, topics.feedback: FEEDBACK}, stage=self.source,
            outbox=self.source_outbox, producer=producer, sink=DiscardSink(), merge=cfg.kafka.merge_by_event_time,
            faults=Faults.from_environ(stage="source"), idle_timeout=cfg.kafka.idle_timeout, name="source",
            beacon=self.app.beacon)
        self.windows_consumer: SourceConsumer[Any] = SourceConsumer(
            cfg, topics={panes_topic(group): PARTIAL}, stage=self.windows, outbox=self.windows_outbox,
            producer=producer, sink=sink, group_id=windows_group(group), merge=False,
            faults=Faults.from_environ(stage="windows"), name="windows", stateless_from_committed=False,
            beacon=self.app.beacon)
        self.app.service(self.source_consumer)
        self.app.service(self.windows_consumer)
        self.app.timer(interval=30.0)(self.report_progress)
        self.app.timer(interval=1.0)(self.collect_garbage)

    @property
    def publish(self) -> Callable[..., None]:
        """Queue one message with stage 2's batch output (alerts, jobs: acknowledged before the
        batch's state and commit)."""
        return self.windows_outbox.put

    def totals(self) -> dict[str, int]:
        """Events, labelled pairs and dead letters this worker processed, over all partitions it held."""
        return self.source.totals()

    async def collect_garbage(self) -> None:
        """The collection that is due, if any, while no batch boundary comes (a batch waiting for
        acknowledgements, a quiet topic): cyclic garbage waits at most a second
        (:mod:`streams.collector`)."""
        collect_due()

    async def report_progress(self) -> None:
        """A line every 30 s while messages flow: the worker is alive and how fast it goes."""
        now = time.monotonic()
        before, at = self.stats.reported
        if self.stats.messages == before:
            return
        rate = (self.stats.messages - before) / max(now - at, 1e-9)
        self.stats.reported = (self.stats.messages, now)
        so_far = self.totals()
        failed_commits = self.source_consumer.failed_commits + self.windows_consumer.failed_commits
        self.echo(f"PROGRESS {self.stats.messages} messages ({rate:.0f}/s over the last 30 s), {so_far['events']} "
                  f"events, {so_far['pairs']} labelled pairs, {so_far['dead_letters']} dead letters, "
                  f"{self.windows.windows_closed} windows closed, {self.stats.failed_batches} failed batches, "
                  f"{failed_commits} failed commits")


def processing_points(outcome: Outcome, stats: WorkerStats) -> list[Point]:
    """The wall-clock figures of the windows a batch closed, as their own ``monitor`` points stamped
    with processing time (``throughput``: this worker's source messages/s since its first batch;
    ``lag``: seconds from the window's end to now). They are kept out of the window's points, which
    depend on the events alone (a window re-processed after a crash gives the same points)."""
    if not outcome.windows:
        return []
    now = time.time()
    rate = stats.messages / max(time.monotonic() - stats.first_at, 1e-9) if stats.first_at is not None else 0.0
    out = []
    for window in outcome.windows:
        if window.instant:
            continue
        tags = {"model_id": window.model_id, "model_version": window.model_version}
        out.append(Point("monitor", {**tags, "stat": "throughput"}, {"value": float(rate)}, int(now * 1e9)))
        out.append(Point("monitor", {**tags, "stat": "lag"}, {"value": max(now - window.end_ns / 1e9, 0.0)},
                         int(now * 1e9)))
    return out
