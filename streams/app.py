"""The worker's Faust application.

Predictions and feedback are read in micro-batches by a
:class:`~streams.consumer.SourceConsumer` (a service of this app: aiokafka's
``getmany``, not one Faust event per message). Each batch goes to the
partition's :class:`~streams.pipeline.Pipeline`, and what comes out goes to the
sinks: points to InfluxDB, rejects to ``dead-letters``, alerts to ``alerts``,
retrain jobs to ``retrain-jobs``, joined pairs to ``labelled`` — all through
Faust's producer. Every batch goes through the delivery protocol of
:mod:`streams.consumer` (intent, outputs and points acknowledged, state with
progress, commit).

State (the join table and, after each batch, a snapshot of every model's
open windows) is kept per partition and sent to a changelog topic; see
:mod:`streams.state` for how a restarted worker resumes from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import faust
from faust.app.base import BootStrategy

from streams.config import Config
from detectors.points import Point
from streams.consumer import Batch, Resume, SourceConsumer
from streams.faults import Faults
from streams.join import JoinStore, labelled_messages
from streams.kafka import client_options, faust_credentials
from streams.outbox import Outbox
from streams.pipeline import FEEDBACK, PREDICTION, Outcome, Pipeline
from streams.sinks import PointSink
from streams.state import PartitionState, changelog_topic, recover

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _PartitionWork:
    """What one partition's part of a batch produced, and its snapshot right after it (saved once
    the outputs are acknowledged)."""

    partition: int
    state: PartitionState
    outcome: Outcome
    snapshot: dict[str, Any]


class _WithoutFaustConsumer(BootStrategy):
    """Faust's producer, timers and services, but not its consumer: the source topics are read by
    :class:`SourceConsumer` (and Faust's consumer would join the same group)."""

    enable_kafka_consumer = False


class WorkerApp(faust.App):
    BootStrategy = _WithoutFaustConsumer


def create_app(
    cfg: Config,
    *,
    pipeline_factory: Callable[[JoinStore, int], Pipeline],
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
    stats: dict[str, Any] = {"events": 0, "batches": 0, "failed_batches": 0}
    last = {"messages": 0, "at": time.monotonic()}

    def pipeline_for(partition: int) -> tuple[Pipeline, PartitionState]:
        entry = pipelines.get(partition)
        if entry is None:
            state = recovered.pop(partition, None) or PartitionState(partition)
            state.send = send_change
            pipeline = pipeline_factory(state, partition)
            if state.snapshot:
                pipeline.restore(state.snapshot)
                log.info("partition %d: resumed %d join entries and the open windows from the changelog",
                         partition, len(state.joins))
            pairs_before[partition] = pipeline.join.counts.pairs
            entry = pipelines[partition] = (pipeline, state)
        return entry

    async def take_partitions(partitions: list[int]) -> None:
        """Read the state of newly assigned partitions back from the changelog before their first
        batch: always, since the partition's last owner (another worker, or this one before a
        rebalance) may have moved it on after any earlier read. ``recovered`` (tests) is used as is."""
        (echo or log.info)(f"PARTITIONS assigned {partitions} of {topics.predictions}/{topics.feedback}")
        for partition in [p for p in recovered if p not in partitions]:
            del recovered[partition]
        missing = [p for p in partitions if p not in pipelines and p not in recovered]
        if missing:
            states = await asyncio.get_running_loop().run_in_executor(
                None, lambda: recover(cfg.kafka.bootstrap, changelog_name, partitions=missing,
                                      **client_options(cfg)))
            recovered.update(states)

    async def give_up_partitions(partitions: list[int]) -> None:
        """Their batches are committed and their state is in the changelog: let them go, so a later
        assignment reads the state the next owner left."""
        for partition in partitions:
            entry = pipelines.pop(partition, None)
            if entry is not None:
                for name, count in done(partition, entry[0]).items():
                    given_up[name] += count
            recovered.pop(partition, None)
        (echo or log.info)(f"PARTITIONS revoked {partitions} (committed; state in {changelog_name})")

    Work = list[_PartitionWork]

    class WorkerStage:
        """The source stage: predictions and feedback in, pipeline per partition, outputs out."""

        def intend(self, partition: int, ranges: dict[str, tuple[int, int]]) -> None:
            pipeline_for(partition)[1].save_intent(ranges)

        def process(self, batch: Batch) -> Work:
            started = time.monotonic()
            work: Work = []
            for partition, messages in batch.items():
                pipeline, state = pipeline_for(partition)
                try:
                    outcome = pipeline.process(messages)
                except Exception:  # never a crashed worker: log, count, go on with the next batch
                    log.exception("partition %d: a batch of %d messages failed", partition, len(messages))
                    stats["failed_batches"] += 1
                    outcome = Outcome()
                work.append(_PartitionWork(partition, state, outcome, pipeline.snapshot()))
            if not stats["batches"]:
                last["at"] = stats["first_at"] = started  # rates count from the first batch, not from start-up
            stats["events"] += sum(len(messages) for messages in batch.values())
            stats["batches"] += 1
            return work

        async def emit(self, work: Work) -> None:
            for part in work:
                outcome = part.outcome
                sink.write(outcome.points)
                sink.write(_processing_points(outcome, stats))
                for dead in outcome.dead_letters:
                    outbox.put(topics.dead_letters, dead.message.key, dead.to_json())
                for key, value, stamp in labelled_messages(outcome.pairs):  # arrays of pairs: a few per batch
                    outbox.put(topics.labelled, key, value, timestamp=stamp)
            if on_outcome is not None:
                for part in work:
                    await _maybe_await(on_outcome(part.outcome))

        def save(self, work: Work, ends: dict[int, dict[str, int]]) -> None:
            for part in work:
                part.state.save_snapshot(part.snapshot, ends.get(part.partition))

        def resume(self, partition: int) -> Resume | None:
            state = pipeline_for(partition)[1]
            if not state.progress and state.pending() is None:
                return None
            return Resume(dict(state.progress), state.pending())

        async def assigned(self, partitions: list[int]) -> None:
            await take_partitions(partitions)

        async def revoked(self, partitions: list[int]) -> None:
            await give_up_partitions(partitions)

    consumer: SourceConsumer[Work] = SourceConsumer(
        cfg, topics={topics.predictions: PREDICTION, topics.feedback: FEEDBACK}, stage=WorkerStage(),
        outbox=outbox, producer=lambda: app.producer, sink=sink, merge=cfg.kafka.merge_by_event_time,
        faults=Faults.from_environ(), beacon=app.beacon)
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


def _processing_points(outcome: Outcome, stats: dict[str, Any]) -> list[Point]:
    """The wall-clock figures of the windows a batch closed, as their own ``monitor`` points stamped
    with processing time (``throughput``: this worker's messages/s since its first batch; ``lag``:
    seconds from the window's end to now). They are kept out of the window's points, which depend
    on the events alone (a window re-processed after a crash gives the same points)."""
    if not outcome.windows:
        return []
    now = time.time()
    rate = stats["events"] / max(time.monotonic() - stats["first_at"], 1e-9) if "first_at" in stats else 0.0
    out = []
    for window in outcome.windows:
        if window.instant:
            continue
        tags = {"model_id": window.model_id, "model_version": window.model_version}
        out.append(Point("monitor", {**tags, "stat": "throughput"}, {"value": float(rate)}, int(now * 1e9)))
        out.append(Point("monitor", {**tags, "stat": "lag"}, {"value": max(now - window.end_ns / 1e9, 0.0)},
                         int(now * 1e9)))
    return out


async def _maybe_await(value: Any) -> None:
    if hasattr(value, "__await__"):
        await value


