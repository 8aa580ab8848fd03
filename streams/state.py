"""The worker's changelog-backed state: the join table and the monitors' snapshots.

State lives in memory, one :class:`PartitionState` per source partition, and
every change is also sent to a changelog topic (``<group_id>-state-changelog``,
compacted where the broker supports it, one partition per source partition).
A starting worker reads the changelog back to its end before it consumes
anything, so a restart resumes with the same join entries and the same open
windows; the source offsets Faust commits are those of batches whose changes
were handed to the producer first.

Why not Faust's own tables: Faust's table recovery waits for the changelog's
high watermark, and the embedded Tansu broker under-reports it when the
producer batches several records (``ListOffsets`` answers fewer than were
written), so recovery never finished. Reading to the end of the topic with a
plain consumer does not depend on that figure.

Record keys: ``j:<prediction_id>`` for join entries (value ``None`` deletes),
``s:monitors`` for the partition's monitor snapshot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson

from streams.join import JoinStore

log = logging.getLogger(__name__)

JOIN_PREFIX = b"j:"
SNAPSHOT_KEY = b"s:monitors"

Send = Callable[[int, bytes, bytes | None], None]
"""Sends one changelog record: (partition, key, value or None for a tombstone)."""


@dataclass
class PartitionState(JoinStore):
    """The in-memory state of one source partition, with every change forwarded to ``send``."""

    partition: int
    send: Send | None = None
    joins: dict[str, dict[str, Any]] = field(default_factory=dict)
    snapshot: dict[str, Any] | None = None

    def get(self, key: str) -> dict[str, Any] | None:
        return self.joins.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        self.joins[key] = value
        if self.send is not None:
            self.send(self.partition, JOIN_PREFIX + key.encode(), orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))

    def delete(self, key: str) -> None:
        if self.joins.pop(key, None) is not None and self.send is not None:
            self.send(self.partition, JOIN_PREFIX + key.encode(), None)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(list(self.joins.items()))

    def save_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        if self.send is not None:
            self.send(self.partition, SNAPSHOT_KEY, orjson.dumps(snapshot, option=orjson.OPT_SERIALIZE_NUMPY))

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Apply one changelog record (recovery)."""
        if key == SNAPSHOT_KEY:
            self.snapshot = orjson.loads(value) if value else None
        elif key.startswith(JOIN_PREFIX):
            name = key[len(JOIN_PREFIX):].decode()
            if value is None:
                self.joins.pop(name, None)
            else:
                self.joins[name] = orjson.loads(value)


def changelog_topic(group_id: str) -> str:
    return f"{group_id}-state-changelog"


def read_to_end(bootstrap: str, topic: str, *, idle_seconds: float = 1.0,
                **client_options: Any) -> Iterator[Any]:
    """Every record of ``topic``, from the beginning to its end (then stops).

    The end is where the reported end offsets are passed and a poll comes back
    empty: the embedded broker under-reports end offsets, so they alone are not
    trusted.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             client_id="driftwarden-recovery", fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=32 * 1024 * 1024, **client_options)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        while True:
            batch = consumer.poll(timeout_ms=int(idle_seconds * 1000), max_records=100_000)
            for messages in batch.values():
                yield from messages
            if not batch and all(consumer.position(tp) >= ends[tp] for tp in partitions):
                return
    finally:
        consumer.close()


def recover(bootstrap: str, topic: str, **options: Any) -> dict[int, PartitionState]:
    """Read the state changelog ``topic`` to its end; return the state per partition."""
    started = time.monotonic()
    states: dict[int, PartitionState] = {}
    records = 0
    for message in read_to_end(bootstrap, topic, **options):
        state = states.setdefault(message.partition, PartitionState(message.partition))
        state.apply(message.key, message.value)
        records += 1
    log.info("recovered %d join entries and %d monitor snapshots from %s (%d records) in %.1fs",
             sum(len(s.joins) for s in states.values()), sum(s.snapshot is not None for s in states.values()),
             topic, records, time.monotonic() - started)
    return states
