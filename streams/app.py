"""The Faust application: one agent over ``predictions`` and ``feedback``.

The agent is thin: it takes micro-batches of raw messages (``take_events``),
hands them to the partition's :class:`~streams.pipeline.Pipeline`, and passes
what comes out to the sinks: points to InfluxDB, rejects to ``dead-letters``,
alerts to ``alerts``, retrain jobs to ``retrain-jobs``, joined pairs to
``labelled``. Offsets are acknowledged only after a batch is done.

State (the join table and, after each batch, a snapshot of every model's
open windows) is kept per partition and sent to a changelog topic; see
:mod:`streams.state` for how a restarted worker resumes from it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import faust
import orjson

from streams.config import Config
from streams.join import JoinStore
from streams.pipeline import FEEDBACK, PREDICTION, Outcome, Pipeline, RawMessage
from streams.sinks import PointSink
from streams.state import PartitionState, changelog_topic

log = logging.getLogger(__name__)

LABELLED_PER_MESSAGE = 500
"""Pairs per ``labelled`` message (a JSON array), keeping messages well under 1 MB."""



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
    app = faust.App(
        cfg.kafka.group_id,
        broker=[f"kafka://{host}" for host in cfg.kafka.bootstrap.split(",")],
        broker_credentials=_credentials(cfg),
        store="memory://",
        datadir=str(cfg.worker.state_dir),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=cfg.kafka.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=5,
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        broker_max_poll_interval=30,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=max(4 * cfg.kafka.batch_size, 4096),
        web_enabled=False,
        producer_linger_ms=5,
        table_cleanup_interval=3600,
    )
    source = app.topic(topics.predictions, topics.feedback, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    dead_letters = app.topic(topics.dead_letters, key_serializer="raw", value_serializer="raw")
    labelled = app.topic(topics.labelled, key_serializer="raw", value_serializer="raw")
    changelog = app.topic(changelog_topic(cfg.kafka.group_id), key_serializer="raw", value_serializer="raw",
                          partitions=cfg.kafka.partitions)
    recovered = recovered or {}
    pipelines: dict[int, tuple[Pipeline, PartitionState]] = {}

    def send_change(partition: int, key: bytes, value: bytes | None) -> None:
        changelog.send_soon(key=key, value=value, partition=partition)
    stats = {"events": 0, "batches": 0, "failed_batches": 0, "started": time.monotonic()}
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
            entry = pipelines[partition] = (pipeline, state)
        return entry

    @app.agent(source, name="monitor")
    async def monitor(stream: faust.Stream) -> None:
        async for events in stream.take_events(cfg.kafka.batch_size, within=cfg.kafka.batch_timeout):
            started = time.monotonic()
            by_partition: dict[int, list[RawMessage]] = {}
            for event in events:
                message = event.message
                kind = FEEDBACK if message.topic == topics.feedback else PREDICTION
                by_partition.setdefault(message.partition, []).append(
                    RawMessage(kind, message.value or b"", message.key, message.topic, message.partition,
                               message.offset))
            outcomes = []
            # Everything up to the state snapshot is synchronous: a cancellation (shutdown) can only
            # land between batches or in the awaits below, after the batch's state is recorded.
            for partition, messages in by_partition.items():
                pipeline, state = pipeline_for(partition)
                try:
                    outcome = pipeline.process(messages)
                except Exception:  # never a crashed worker: log, count, go on with the next batch
                    log.exception("partition %d: a batch of %d messages failed", partition, len(messages))
                    stats["failed_batches"] += 1
                    continue
                sink.write(outcome.points)
                for dead in outcome.dead_letters:
                    dead_letters.send_soon(key=dead.message.key, value=dead.to_json())
                by_model: dict[str, list[Any]] = {}
                for pair in outcome.pairs:
                    by_model.setdefault(pair.prediction.model_id, []).append(_pair_doc(pair))
                for model_id, docs in by_model.items():  # arrays of pairs: a few messages per batch
                    for i in range(0, len(docs), LABELLED_PER_MESSAGE):
                        labelled.send_soon(key=model_id.encode(),
                                           value=orjson.dumps(docs[i:i + LABELLED_PER_MESSAGE]))
                state.save_snapshot(pipeline.snapshot())
                outcomes.append(outcome)
            if on_outcome is not None:
                for outcome in outcomes:
                    await _maybe_await(on_outcome(outcome))
            if not stats["batches"]:
                last["at"] = started  # rates count from the first batch, not from start-up
            stats["events"] += len(events)
            stats["batches"] += 1

    @app.timer(interval=30.0)
    async def report_progress() -> None:
        """A line every 30 s while messages flow: the worker is alive and how fast it goes."""
        now = time.monotonic()
        if stats["events"] == last["messages"]:
            return
        rate = (stats["events"] - last["messages"]) / max(now - last["at"], 1e-9)
        last.update(messages=stats["events"], at=now)
        events = sum(p.events_seen for p, _ in pipelines.values())
        dead = sum(p.dead_letter_count for p, _ in pipelines.values())
        pairs = sum(p.join.counts.pairs for p, _ in pipelines.values())
        line = (f"PROGRESS {stats['events']} messages ({rate:.0f}/s over the last 30 s), {events} events, "
                f"{pairs} labelled pairs, {dead} dead letters, {stats['failed_batches']} failed batches")
        (echo or log.info)(line)

    app.driftwarden_pipelines = pipelines  # type: ignore[attr-defined]
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
