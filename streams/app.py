"""The Faust application: one agent over ``predictions`` and ``feedback``.

The agent is thin: it takes micro-batches of raw messages (``take_events``),
hands them to the partition's :class:`~streams.pipeline.Pipeline`, and passes
what comes out to the sinks: points to InfluxDB, rejects to ``dead-letters``,
alerts to ``alerts``, retrain jobs to ``retrain-jobs``, joined pairs to
``labelled``. Offsets are acknowledged only after a batch is done.

State lives in two changelog-backed tables, so a restarted worker resumes
where it stopped:

- ``joins``: the join state keyed by ``prediction_id`` (TTL on event time);
- ``monitor-state``: per partition, a snapshot of every model's open window
  and sequential detectors, written after each batch.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

import faust
import orjson

from streams.config import Config
from streams.join import JoinStore
from streams.pipeline import FEEDBACK, PREDICTION, Outcome, Pipeline, RawMessage
from streams.sinks import PointSink

log = logging.getLogger(__name__)

STATE_KEY = b"partition-%d"


class TableStore(JoinStore):
    """A :class:`~streams.join.JoinStore` over a Faust table, for one source partition.

    Writes go to the table's local store and its changelog partition explicitly,
    because one batch mixes events of several partitions (Faust would otherwise
    take the partition of whichever event is current).
    """

    def __init__(self, table: Any, partition: int) -> None:
        self.table = table
        self.partition = partition

    # Keys are kept as bytes: that is what recovery from the changelog yields with the raw key codec.

    def get(self, key: str) -> dict[str, Any] | None:
        return self.table.data.get(key.encode())

    def set(self, key: str, value: dict[str, Any]) -> None:
        raw = key.encode()
        self.table.data[raw] = value
        self.table.send_changelog(self.partition, raw, value)

    def delete(self, key: str) -> None:
        raw = key.encode()
        if raw in self.table.data:
            del self.table.data[raw]
            self.table.send_changelog(self.partition, raw, None, value_serializer="raw")

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter([(k.decode() if isinstance(k, bytes) else k, v) for k, v in self.table.data.items()])


def create_app(
    cfg: Config,
    *,
    pipeline_factory: Callable[[JoinStore], Pipeline],
    sink: PointSink,
    on_outcome: Callable[[Outcome], None] | None = None,
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
    table_schema = faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json")
    joins = app.Table("joins", default=None, schema=table_schema, partitions=cfg.kafka.partitions)
    state = app.Table("monitor-state", default=None, schema=table_schema, partitions=cfg.kafka.partitions)
    pipelines: dict[int, Pipeline] = {}
    stats = {"events": 0, "batches": 0, "started": time.monotonic()}

    def pipeline_for(partition: int) -> Pipeline:
        pipeline = pipelines.get(partition)
        if pipeline is None:
            pipeline = pipelines[partition] = pipeline_factory(TableStore(joins, partition))
            saved = state.data.get(STATE_KEY % partition)
            if saved:
                pipeline.restore(saved)
                log.info("partition %d: resumed monitor state from the changelog", partition)
        return pipeline

    @app.agent(source, name="monitor")
    async def monitor(stream: faust.Stream) -> None:
        async for events in stream.take_events(cfg.kafka.batch_size, within=cfg.kafka.batch_timeout):
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
                pipeline = pipeline_for(partition)
                outcome = pipeline.process(messages)
                sink.write(outcome.points)
                for dead in outcome.dead_letters:
                    dead_letters.send_soon(key=dead.message.key, value=dead.to_json())
                for pair in outcome.pairs:
                    labelled.send_soon(key=pair.prediction.model_id.encode(), value=_pair_json(pair))
                key = STATE_KEY % partition
                state.data[key] = snapshot = pipeline.snapshot()
                state.send_changelog(partition, key, snapshot)
                outcomes.append(outcome)
            if on_outcome is not None:
                for outcome in outcomes:
                    await _maybe_await(on_outcome(outcome))
            stats["events"] += len(events)
            stats["batches"] += 1

    @app.timer(interval=10.0)
    async def report_progress() -> None:
        elapsed = max(time.monotonic() - stats["started"], 1e-9)
        log.info("processed %d messages in %d batches (%.0f messages/s)", stats["events"], stats["batches"],
                 stats["events"] / elapsed)

    app.driftwarden_pipelines = pipelines  # type: ignore[attr-defined]
    return app


async def _maybe_await(value: Any) -> None:
    if hasattr(value, "__await__"):
        await value


def _pair_json(pair: Any) -> bytes:
    p = pair.prediction
    return orjson.dumps({"prediction_id": p.prediction_id, "model_id": p.model_id,
                         "model_version": p.model_version, "timestamp": p.timestamp,
                         "prediction": p.prediction, "score": p.score, "label": pair.label,
                         "attributes": dict(p.attributes), "features": dict(p.features),
                         "feedback_timestamp": pair.feedback_timestamp})


def _credentials(cfg: Config) -> Any:
    if not cfg.kafka.sasl_username:
        return None
    return faust.SASLCredentials(username=cfg.kafka.sasl_username, password=cfg.kafka.sasl_password.value)
