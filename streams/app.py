"""The worker's Faust application.

Predictions and feedback are read in micro-batches by a
:class:`~streams.consumer.SourceConsumer` (a service of this app: aiokafka's
``getmany``, not one Faust event per message). Each batch goes to the
partition's :class:`~streams.pipeline.Pipeline`, and what comes out goes to the
sinks: points to InfluxDB, rejects to ``dead-letters``, alerts to ``alerts``,
retrain jobs to ``retrain-jobs``, joined pairs to ``labelled`` — all through
Faust's producer. Offsets are committed only after a batch is done and its
output acknowledged.

State (the join table and, after each batch, a snapshot of every model's
open windows) is kept per partition and sent to a changelog topic; see
:mod:`streams.state` for how a restarted worker resumes from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import faust
from faust.app.base import BootStrategy

from streams.config import Config
from streams.consumer import Batch, SourceConsumer
from streams.join import JoinStore, labelled_messages
from streams.kafka import client_options, faust_credentials
from streams.pipeline import Outcome, Pipeline
from streams.sinks import PointSink
from streams.state import PartitionState, changelog_topic, recover

log = logging.getLogger(__name__)


_Record = tuple[str, bytes | None, bytes | None, int | None, float | None]
"""An output record: topic, key, value, partition (``None``: by key), timestamp (epoch s; ``None``: now)."""


class Outbox:
    """Messages a batch produced, sent through the app's producer; :meth:`delivered` returns once
    the broker has acknowledged every one of them (Faust's ``send_soon`` buffer gives no such
    point: its flush returns while messages still wait in it).

    A record the producer or the broker refuses as such (too large, corrupt) is replaced by a
    dead letter that references it (``dead_letters`` topic: its topic, partition, size and
    SHA-256, no payload) and the batch goes on: one record never stops the worker, which would
    read the same batch again on restart and stop again. Anything else (the broker is away)
    still raises, and the batch is not committed."""

    def __init__(self, dead_letters: str = "dead-letters") -> None:
        self.dead_letters = dead_letters
        self.queued: list[_Record] = []
        self.in_flight: list[tuple[Any, _Record | None]] = []
        self.refused = 0
        """Records refused and replaced by a dead letter, since start."""
        self._producer: Any = None

    def put(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
            timestamp: float | None = None) -> None:
        """Queue a message; ``timestamp`` (epoch seconds) is its Kafka timestamp (default: now)."""
        self.queued.append((topic, key, value, partition, timestamp))

    async def send(self, producer: Any) -> None:
        self._producer = producer
        queued, self.queued = self.queued, []
        for record in queued:
            try:
                self.in_flight.append((await producer.send(*record, None), record))
            except Exception as exc:  # the producer's own size check refuses at once
                if not _is_refusal(exc):
                    raise
                self.in_flight.append((await self._refer(record, exc), None))

    async def delivered(self) -> None:
        in_flight, self.in_flight = self.in_flight, []
        if not in_flight:
            return
        results = await asyncio.gather(*(future for future, _ in in_flight), return_exceptions=True)
        refused = []
        for (_, record), result in zip(in_flight, results):
            if not isinstance(result, BaseException):
                continue
            if record is None or not _is_refusal(result):
                raise result
            refused.append(await self._refer(record, result))
        if refused:
            await asyncio.gather(*refused)

    async def _refer(self, record: _Record, exc: Exception) -> Any:
        """Send the dead letter that stands for a refused record; return its delivery future."""
        from streams.pipeline import DeadLetter, RawMessage

        topic, key, value, partition, _ = record
        size = len(value or b"")
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        self.refused += 1
        log.error("the broker refused a record of %d bytes for %s (%s); a dead letter references it instead",
                  size, topic, type(cause).__name__)
        letter = DeadLetter(RawMessage("output", value or b"", key, topic, -1 if partition is None else partition),
                            reason=f"output record of {size} bytes for topic {topic!r} refused "
                                   f"({type(cause).__name__}: {cause}); not delivered",
                            payload_bytes=0)
        return await self._producer.send(self.dead_letters, (key or b"")[:256] or None, letter.to_json(),
                                         None, None, None)


def _is_refusal(exc: BaseException) -> bool:
    """True for an error that refuses one record (not the connection); Faust wraps the producer's
    own errors in ``ProducerSendError``."""
    from aiokafka import errors

    refusals = (errors.MessageSizeTooLargeError, errors.RecordListTooLargeError, errors.RecordTooLargeError,
                errors.CorruptRecordException)
    return isinstance(exc, refusals) or isinstance(exc.__cause__, refusals)


class _WithoutFaustConsumer(BootStrategy):
    """Faust's producer, timers and services, but not its consumer: the source topics are read by
    :class:`SourceConsumer` (and Faust's consumer would join the same group)."""

    enable_kafka_consumer = False


class WorkerApp(faust.App):
    BootStrategy = _WithoutFaustConsumer


def create_app(
    cfg: Config,
    *,
    pipeline_factory: Callable[[JoinStore], Pipeline],
    sink: PointSink,
    recovered: dict[int, PartitionState] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    echo: Callable[[str], None] | None = None,
) -> faust.App:
    """Build the worker's Faust app. Nothing connects until the app starts."""
    topics = cfg.kafka.topics
    app = WorkerApp(
        cfg.kafka.group_id,
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
    changelog_name = changelog_topic(cfg.kafka.group_id)
    outbox = Outbox(topics.dead_letters)
    recovered = recovered or {}
    pipelines: dict[int, tuple[Pipeline, PartitionState]] = {}
    given_up = {"events": 0, "pairs": 0, "dead_letters": 0}
    """What this worker did on partitions it no longer holds (for its progress lines and summary)."""
    pairs_before: dict[int, int] = {}
    """Pairs a partition's restored join had counted before this worker took it over."""

    def done(partition: int, pipeline: Pipeline) -> dict[str, int]:
        return {"events": pipeline.events_seen, "dead_letters": pipeline.dead_letter_count,
                "pairs": pipeline.join.counts.pairs - pairs_before.get(partition, 0)}

    def totals() -> dict[str, int]:
        """Events, labelled pairs and dead letters this worker processed, over all partitions it held."""
        out = dict(given_up)
        for partition, (pipeline, _) in pipelines.items():
            for name, count in done(partition, pipeline).items():
                out[name] += count
        return out

    def send_change(partition: int, key: bytes, value: bytes | None) -> None:
        outbox.put(changelog_name, key, value, partition)
    stats = {"events": 0, "batches": 0, "failed_batches": 0}
    last = {"messages": 0, "at": time.monotonic()}

    def pipeline_for(partition: int) -> tuple[Pipeline, PartitionState]:
        entry = pipelines.get(partition)
        if entry is None:
            state = recovered.pop(partition, None) or PartitionState(partition)
            state.send = send_change
            pipeline = pipeline_factory(state)
            if state.snapshot:
                pipeline.restore(state.snapshot)
                log.info("partition %d: resumed %d join entries and the open windows from the changelog",
                         partition, len(state.joins))
            pairs_before[partition] = pipeline.join.counts.pairs
            entry = pipelines[partition] = (pipeline, state)
        return entry

    stale: set[int] = set()
    """Partitions given up since the changelog was read: another worker may have moved them on."""

    async def assigned(partitions: list[int]) -> None:
        """Partitions given up earlier: read their state back from the changelog before their first
        batch (every partition's state was read at start-up, before the app started)."""
        (echo or log.info)(f"PARTITIONS assigned {partitions} of {topics.predictions}/{topics.feedback}")
        for partition in [p for p in recovered if p not in partitions]:
            # read at start-up but owned by another worker since: that worker moves it on
            del recovered[partition]
            stale.add(partition)
        missing = sorted(stale.intersection(partitions))
        if missing:
            states = await asyncio.get_running_loop().run_in_executor(
                None, lambda: recover(cfg.kafka.bootstrap, changelog_name, partitions=missing,
                                      **client_options(cfg)))
            recovered.update(states)
            stale.difference_update(missing)

    async def revoked(partitions: list[int]) -> None:
        """Their batches are committed and their state is in the changelog: let them go, so a later
        assignment reads the state the next owner left."""
        for partition in partitions:
            entry = pipelines.pop(partition, None)
            if entry is not None:
                for name, count in done(partition, entry[0]).items():
                    given_up[name] += count
            recovered.pop(partition, None)
        stale.update(partitions)
        (echo or log.info)(f"PARTITIONS revoked {partitions} (committed; state in {changelog_name})")

    async def handle(batch: Batch) -> None:
        started = time.monotonic()
        outcomes = []
        for partition, messages in batch.items():
            pipeline, state = pipeline_for(partition)
            try:
                outcome = pipeline.process(messages)
            except Exception:  # never a crashed worker: log, count, go on with the next batch
                log.exception("partition %d: a batch of %d messages failed", partition, len(messages))
                stats["failed_batches"] += 1
                continue
            sink.write(outcome.points)
            for dead in outcome.dead_letters:
                outbox.put(topics.dead_letters, dead.message.key, dead.to_json())
            for key, value, stamp in labelled_messages(outcome.pairs):  # arrays of pairs: a few messages per batch
                outbox.put(topics.labelled, key, value, timestamp=stamp)
            state.save_snapshot(pipeline.snapshot())
            outcomes.append(outcome)
        if on_outcome is not None:
            for outcome in outcomes:
                await _maybe_await(on_outcome(outcome))
        await outbox.send(app.producer)
        if not stats["batches"]:
            last["at"] = started  # rates count from the first batch, not from start-up
        stats["events"] += sum(len(messages) for messages in batch.values())
        stats["batches"] += 1

    consumer = SourceConsumer(cfg, handle=handle, before_commit=outbox.delivered,
                              assigned=assigned, revoked=revoked, beacon=app.beacon)
    app.service(consumer)

    @app.timer(interval=30.0)
    async def report_progress() -> None:
        """A line every 30 s while messages flow: the worker is alive and how fast it goes."""
        now = time.monotonic()
        if stats["events"] == last["messages"]:
            return
        rate = (stats["events"] - last["messages"]) / max(now - last["at"], 1e-9)
        last.update(messages=stats["events"], at=now)
        so_far = totals()
        line = (f"PROGRESS {stats['events']} messages ({rate:.0f}/s over the last 30 s), {so_far['events']} events, "
                f"{so_far['pairs']} labelled pairs, {so_far['dead_letters']} dead letters, "
                f"{stats['failed_batches']} failed batches, {consumer.failed_commits} failed commits")
        (echo or log.info)(line)

    app.driftwarden_totals = totals  # type: ignore[attr-defined]
    app.driftwarden_outbox = outbox  # type: ignore[attr-defined]
    return app


async def _maybe_await(value: Any) -> None:
    if hasattr(value, "__await__"):
        await value


