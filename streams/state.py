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

Records (see :class:`PartitionState`): per batch an *intent* (the batch's
offset range per input topic, logged before any of its outputs), a delta of the
join table and the monitors' snapshot with the batch's *progress* (the end
offset consumed per input topic); now and then a full snapshot of the join
table. The monitors' record is the batch's commit point: recovery applies only
the deltas up to its sequence number, and resumes reading at its progress. An
intent newer than it names the batch that was in doubt when the worker died;
its range is read again, exactly, as the first batch (see :mod:`streams.consumer`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson

from streams.join import JoinStore

log = logging.getLogger(__name__)

MONITORS_KEY = b"s:monitors"
MARKER_KEY = b"m:join"
INTENT_KEY = b"i:batch"
DELTA_SLOTS = 1000
"""Delta records cycle through this many keys; compaction keeps the latest of each."""
FULL_EVERY = 200
"""Batches between two full snapshots of the join table (must stay below DELTA_SLOTS / 2)."""
PART_ENTRIES = 2000
"""Join entries per changelog record (keeps records well under a broker's 1 MB message limit)."""

Send = Callable[[int, bytes, bytes | None], None]
"""Sends one changelog record: (partition, key, value or None for a tombstone)."""


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass
class PartitionState(JoinStore):
    """The in-memory state of one source partition; its changes are logged batch by batch.

    The join table is logged as one *delta* record per batch (the entries set and
    deleted in it, keys ``d:<seq mod DELTA_SLOTS>:<part>``) and, every
    ``FULL_EVERY`` batches, as a *full snapshot* (keys ``f:<epoch mod 2>:<part>``)
    followed by a marker (``m:join``) naming it. Recovery loads the newest complete
    snapshot and applies the deltas logged after it. Keys are reused, so on a
    compacted topic the log stays bounded (``DELTA_SLOTS`` + two snapshots). A
    per-record changelog (one message per join entry, as Faust tables do) costs
    three messages per labelled event; this costs a few per batch.

    Recovery gives back the table's order too (the join evicts oldest-first): snapshots
    are written in order, and a delta deletes before it sets, so a key deleted and set
    again in one batch is logged as both and moves to the end, as it did live.
    """

    partition: int
    send: Send | None = None
    joins: OrderedDict[str, list[Any]] = field(default_factory=OrderedDict)
    snapshot: dict[str, Any] | None = None
    seq: int = 0
    epoch: int = 0
    marker_seq: int = 0
    progress: dict[str, int] = field(default_factory=dict)
    """Input topic -> next offset to read, as of the last saved batch (``seq``)."""
    intent: dict[str, Any] | None = None
    """The last intent logged: ``{"seq": n, "ranges": {topic: [start, end]}}``."""
    _sets: dict[str, list[Any]] = field(default_factory=dict)
    _deletes: set[str] = field(default_factory=set)
    _recovery: dict[str, Any] = field(default_factory=lambda: {"deltas": {}, "chunks": {}, "marker": None})

    # -- JoinStore ---------------------------------------------------------------------------

    def get(self, key: str) -> list[Any] | None:
        return self.joins.get(key)

    def set(self, key: str, value: list[Any]) -> None:
        self.joins[key] = value
        self._sets[key] = value

    def delete(self, key: str) -> None:
        if self.joins.pop(key, None) is not None:
            self._sets.pop(key, None)
            self._deletes.add(key)

    def items(self) -> Iterator[tuple[str, list[Any]]]:
        return iter(list(self.joins.items()))

    def oldest(self) -> tuple[str, list[Any]] | None:
        return next(iter(self.joins.items()), None)

    def __len__(self) -> int:
        return len(self.joins)

    def __bool__(self) -> bool:
        # A partition's state with an empty join table is still state (its monitors' snapshot):
        # without this, ``recovered.get(p) or PartitionState(p)`` would drop it.
        return True

    # -- logging -----------------------------------------------------------------------------

    def save_intent(self, ranges: dict[str, tuple[int, int]]) -> None:
        """Start of a batch: log the offset range it covers per input topic (``[start, end)``),
        before any of its outputs is sent; a recovery that finds it without the batch's state
        reads exactly this range again."""
        self.intent = {"seq": self.seq + 1, "ranges": {t: [int(a), int(b)] for t, (a, b) in sorted(ranges.items())}}
        if self.send is not None:
            self.send(self.partition, INTENT_KEY, _dumps(self.intent))

    def pending(self) -> dict[str, tuple[int, int]] | None:
        """The range of the batch in doubt (intent logged, state not), else None."""
        if self.intent is None or int(self.intent["seq"]) != self.seq + 1:
            return None
        return {topic: (int(a), int(b)) for topic, (a, b) in self.intent["ranges"].items()}

    def save_snapshot(self, snapshot: dict[str, Any], progress: dict[str, int] | None = None) -> None:
        """End of a batch, once its outputs are acknowledged: log its join changes, then the
        monitors' snapshot with the offsets consumed so far (``progress``: topic -> next offset)."""
        self.snapshot = snapshot
        self.seq += 1
        if progress:
            self.progress.update(progress)
        if self.send is not None:
            sets = list(self._sets.items())
            parts = max(1, -(-len(sets) // PART_ENTRIES))
            for i in range(parts):
                chunk = dict(sets[i * PART_ENTRIES:(i + 1) * PART_ENTRIES])
                record = {"seq": self.seq, "part": i, "parts": parts, "set": chunk,
                          "del": sorted(self._deletes) if i == 0 else []}
                self.send(self.partition, b"d:%d:%d" % (self.seq % DELTA_SLOTS, i), _dumps(record))
            self.send(self.partition, MONITORS_KEY,
                      _dumps({"seq": self.seq, "snapshot": snapshot, "progress": self.progress}))
        self._sets.clear()
        self._deletes.clear()
        if self.seq - self.marker_seq >= FULL_EVERY:
            self.save_full()

    def save_full(self) -> None:
        """Log the whole join table, then the marker that makes it the recovery base."""
        self.epoch += 1
        if self.send is not None:
            entries = list(self.joins.items())
            parts = max(1, -(-len(entries) // PART_ENTRIES))
            for i in range(parts):
                record = {"epoch": self.epoch, "part": i,
                          "entries": dict(entries[i * PART_ENTRIES:(i + 1) * PART_ENTRIES])}
                self.send(self.partition, b"f:%d:%d" % (self.epoch % 2, i), _dumps(record))
            self.send(self.partition, MARKER_KEY, _dumps({"epoch": self.epoch, "parts": parts, "seq": self.seq}))
        self.marker_seq = self.seq

    # -- recovery ----------------------------------------------------------------------------

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Take one changelog record (recovery); :meth:`finish_recovery` builds the state."""
        if value is None:
            return
        doc = orjson.loads(value)
        if key == MONITORS_KEY:
            self.snapshot = doc["snapshot"]
            self.seq = int(doc["seq"])
            self.progress = {str(t): int(o) for t, o in (doc.get("progress") or {}).items()}
        elif key == INTENT_KEY:
            self.intent = doc
        elif key == MARKER_KEY:
            self._recovery["marker"] = doc
        elif key.startswith(b"d:"):
            self._recovery["deltas"][(int(doc["seq"]), int(doc["part"]))] = doc
        elif key.startswith(b"f:"):
            self._recovery["chunks"][(int(doc["epoch"]), int(doc["part"]))] = doc

    def finish_recovery(self) -> None:
        """Build the join table of the last saved batch (``seq``): the newest complete snapshot up
        to it and the deltas after it, not those of a batch whose state record never came."""
        marker = self._recovery["marker"]
        chunks, deltas = self._recovery["chunks"], self._recovery["deltas"]
        self.joins = OrderedDict()
        base = 0
        if (marker is not None and int(marker["seq"]) <= self.seq
                and all((marker["epoch"], i) in chunks for i in range(marker["parts"]))):
            for i in range(marker["parts"]):
                self.joins.update(chunks[(marker["epoch"], i)]["entries"])
            base = int(marker["seq"])
            self.epoch = int(marker["epoch"])
        self.marker_seq = base
        for (seq, _part), delta in sorted(deltas.items()):
            if seq <= base or seq > self.seq:  # before the snapshot, or of a batch in doubt
                continue
            for name in delta["del"]:
                self.joins.pop(name, None)
            self.joins.update(delta["set"])
        self._recovery = {"deltas": {}, "chunks": {}, "marker": None}


def changelog_topic(group_id: str) -> str:
    return f"{group_id}-state-changelog"


def read_to_end(bootstrap: str, topic: str, *, idle_seconds: float = 1.0, partitions: list[int] | None = None,
                **client_options: Any) -> Iterator[Any]:
    """Every record of ``topic`` (or of its ``partitions``), from the beginning to its end (then stops).

    The end is where the reported end offsets are passed and a poll comes back
    empty: the embedded broker under-reports end offsets, so they alone are not
    trusted.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             client_id="driftwarden-recovery", fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=32 * 1024 * 1024, **client_options)
    try:
        wanted = sorted(consumer.partitions_for_topic(topic) or ()) if partitions is None else sorted(partitions)
        tps = [TopicPartition(topic, p) for p in wanted]
        if not tps:
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        while True:
            batch = consumer.poll(timeout_ms=int(idle_seconds * 1000), max_records=100_000)
            for messages in batch.values():
                yield from messages
            if not batch and all(consumer.position(tp) >= ends[tp] for tp in tps):
                return
    finally:
        consumer.close()


def recover(bootstrap: str, topic: str, **options: Any) -> dict[int, PartitionState]:
    """Read the state changelog ``topic`` to its end; return the state per partition.

    ``options`` go to :func:`read_to_end` (``partitions=[...]`` reads only those)."""
    started = time.monotonic()
    states: dict[int, PartitionState] = {}
    records = 0
    for message in read_to_end(bootstrap, topic, **options):
        state = states.get(message.partition)
        if state is None:
            state = states[message.partition] = PartitionState(message.partition)
        state.apply(message.key, message.value)
        records += 1
    for state in states.values():
        state.finish_recovery()
    log.info("recovered %d join entries and %d monitor snapshots from %s (%d records) in %.1fs",
             sum(len(s.joins) for s in states.values()), sum(s.snapshot is not None for s in states.values()),
             topic, records, time.monotonic() - started)
    return states
