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
import orjson
from faust.app.base import BootStrategy

from streams.config import Config
from streams.consumer import Batch, SourceConsumer, kafka_security
from streams.join import JoinStore
from streams.pipeline import Outcome, Pipeline
from streams.sinks import PointSink
from streams.state import PartitionState, changelog_topic, recover

log = logging.getLogger(__name__)

LABELLED_PER_MESSAGE = 500
"""Pairs per ``labelled`` message (a JSON array), keeping messages well under 1 MB."""


class Outbox:
    """Messages a batch produced, sent through the app's producer; :meth:`delivered` returns once
    the broker has acknowledged every one of them (Faust's ``send_soon`` buffer gives no such
    point: its flush returns while messages still wait in it)."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.in_flight: list[Any] = []

    def put(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        self.queued.append((topic, key, value, partition))

    async def send(self, producer: Any) -> None:
        queued, self.queued = self.queued, []
        for topic, key, value, partition in queued:
            self.in_flight.append(await producer.send(topic, key, value, partition, None, None))

    async def delivered(self) -> None:
        in_flight, self.in_flight = self.in_flight, []
        if in_flight:
            await asyncio.gather(*in_flight)


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
        broker_credentials=_credentials(cfg),
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
    outbox = Outbox()
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
            pipeline = pipeline_factory(state, partition)
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
                                      **kafka_security(cfg)))
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
            by_model: dict[str, list[Any]] = {}
            for pair in outcome.pairs:
                by_model.setdefault(pair.prediction.model_id, []).append(_pair_doc(pair))
            for model_id, docs in by_model.items():  # arrays of pairs: a few messages per batch
                for i in range(0, len(docs), LABELLED_PER_MESSAGE):
                    outbox.put(topics.labelled, model_id.encode(), orjson.dumps(docs[i:i + LABELLED_PER_MESSAGE]))
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


def _pair_doc(pair: Any) -> dict[str, Any]:
    """A joined pair as published to ``labelled`` (the retrain worker's training data)."""
    p = pair.prediction
    return {"prediction_id": p.prediction_id, "model_id": p.model_id, "model_version": p.model_version,
            "timestamp": p.timestamp, "prediction": p.prediction, "score": p.score, "label": pair.label,
            "attributes": dict(p.attributes), "features": dict(p.features),
            "feedback_timestamp": pair.feedback_timestamp}


def _credentials(cfg: Config) -> Any:
    if not cfg.kafka.sasl_username:
        return None
    return faust.SASLCredentials(username=cfg.kafka.sasl_username, password=cfg.kafka.sasl_password.value)
