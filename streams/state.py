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


Every record is cut by its encoded size, never by a count of entries: a record
is encoded once as a byte stream, which is sent in *pieces* of at most
:data:`RECORD_BYTES` each (``{"seq"|"epoch", "part"[, "parts"]}\n`` then the
bytes, Zstandard-compressed unless that would not make them smaller: ``"zs": 1`` in the
header (zlib, ``"z": 1``, before); the last piece says how many there are). Recovery joins a record's pieces and decodes it only when all of them are back, so no changelog record
exceeds the broker's limit whatever the entries hold (a 50 KB category value, a
join entry of a whole megabyte), and a record cut short by a crash is ignored
like a missing one. Records written before this format (one JSON document each)
are still read.
"""

from __future__ import annotations

import itertools
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import orjson
import zstandard

from streams.join import JoinStore, packed_json
from streams.join_store import ColumnarStore
from streams.kafka import close_client

log = logging.getLogger(__name__)

MONITORS_KEY = b"s:monitors"
MARKER_KEY = b"m:join"
INTENT_KEY = b"i:batch"
DELTA_SLOTS = 1000
"""Delta records cycle through this many keys; compaction keeps the latest of each."""
FULL_EVERY = 200
"""Default batches between two full snapshots of the join table (``join.full_snapshot_every``, which
reaches :attr:`PartitionState.full_every`); must stay below DELTA_SLOTS / 2."""
RECORD_BYTES = 512 * 1024
"""Most bytes in one changelog record's value (the broker's and producer's limit is about 1 MB)."""
READ_POLL_SECONDS = 0.2
"""A state read's poll: how often it checks whether it is at the end (the end itself is the high
watermark a fetch reported, not an empty poll), so also how long an empty topic takes to read."""
READ_FETCH_WAIT_MS = 50
"""How long a state read's fetch waits at a partition's end (:func:`read_records`)."""
PART_ENTRIES = 2000
"""Join entries encoded at a time while a record is built (bounds the memory of a full snapshot)."""

Send = Callable[[int, bytes, bytes | None], None]
"""Sends one changelog record: (partition, key, value or None for a tombstone)."""


def record_json(value: Any) -> bytes:
    """A changelog record's JSON (a waiting entry's prediction packed as it is logged: :func:`~streams.join.packed_json`)."""
    return orjson.dumps(value, default=packed_json, option=orjson.OPT_SERIALIZE_NUMPY)


def _fresh_recovery() -> dict[str, Any]:
    """What recovery collects before :meth:`PartitionState.finish_recovery`: records of the older
    format (``deltas``, ``chunks``), pieces of the current one by record, the last marker."""
    return {"deltas": {}, "chunks": {}, "delta_pieces": {}, "full_pieces": {}, "snapshots": {}, "marker": None}


def _object(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of one JSON object whose members are given as encoded ``"key":value`` chunks."""
    yield b"{"
    first = True
    for chunk in chunks:
        if chunk:
            if not first:
                yield b","
            yield chunk
            first = False
    yield b"}"


def _members(items: list[tuple[str, Any]]) -> Iterator[bytes]:
    """``items`` as the comma-separated members of a JSON object, :data:`PART_ENTRIES` at a time."""
    for i in range(0, len(items), PART_ENTRIES):
        yield record_json(dict(items[i:i + PART_ENTRIES]))[1:-1]


def _piece(header: dict[str, Any], body: bytes) -> bytes:
    """One piece's record value: ``header``, a newline, then ``body`` Zstandard-compressed at level 1
    (``"zs": 1`` in the header) — the JSON of join entries and summaries, the same keys again and
    again, shrinks five to six times, three times faster than zlib's fastest level, which pieces
    were written with before (``"z": 1``, still read) — or as it is when that would not make it smaller."""
    packed = zstandard.ZstdCompressor(level=1).compress(body)
    if len(packed) < len(body):
        return record_json({**header, "zs": 1}) + b"\n" + packed
    return record_json(header) + b"\n" + body


def _unpacked(header: dict[str, Any], body: bytes) -> bytes:
    """A piece's bytes as they were before :func:`_piece` compressed them."""
    if header.get("zs"):
        return zstandard.ZstdDecompressor().decompress(body)
    return zlib.decompress(body) if header.get("z") else body


def _pieces(stream: Iterable[bytes], header: dict[str, Any]) -> Iterator[bytes]:
    """The values of the records that carry ``stream`` (the encoded bytes of one logical record):
    per at most :data:`RECORD_BYTES` of the stream, one :func:`_piece` whose header is ``header``
    with its ``part`` (and, on the last, ``parts``). orjson never writes a raw newline, so the
    first one ends the header. Pieces are produced one ahead, so only the last knows it is last."""
    limit = RECORD_BYTES
    buffer = bytearray()
    part = 0
    pending: bytes | None = None
    for chunk in stream:
        buffer += chunk
        while len(buffer) > limit:
            if pending is not None:
                yield _piece({**header, "part": part - 1}, pending)
            pending, buffer = bytes(buffer[:limit]), buffer[limit:]
            part += 1
    if pending is not None:
        yield _piece({**header, "part": part - 1}, pending)
    yield _piece({**header, "part": part, "parts": part + 1}, bytes(buffer))


def _split(value: bytes) -> tuple[dict[str, Any], bytes] | None:
    """A piece's header and bytes; ``None`` for a record in the older one-document format."""
    head, newline, body = value.partition(b"\n")
    return (orjson.loads(head), body) if newline else None


def _joined(pieces: dict[int, tuple[dict[str, Any], bytes]], parts: int | None, *, decode: bool = True) -> Any:
    """The logical record of ``pieces`` (part -> header, bytes) once all ``parts`` are there, else
    ``None``; decompressed when its header says so (pieces written before compression are not);
    its JSON decoded unless ``decode`` is false (a binary frame: its bytes)."""
    if parts is None or any(i not in pieces for i in range(parts)):
        return None
    whole = b"".join(_unpacked(header, body) for header, body in (pieces[i] for i in range(parts)))
    return orjson.loads(whole) if decode else whole


@dataclass
class PartitionState(JoinStore):
    """The in-memory state of one source partition; its changes are logged batch by batch.

    The join table is logged as one *delta* record per batch (the entries set and
    deleted in it, keys ``d:<seq mod DELTA_SLOTS>:<part>``) and, every
    ``full_every`` batches (``join.full_snapshot_every``), as a *full snapshot* (keys ``f:<epoch mod 2>:<part>``)
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
    full_every: int = field(default_factory=lambda: FULL_EVERY)
    """Batches between two full snapshots (``join.full_snapshot_every``; read at construction)."""
    joins: ColumnarStore = field(default_factory=ColumnarStore)
    snapshot: dict[str, Any] | None = None
    seq: int = 0
    epoch: int = 0
    marker_seq: int = 0
    progress: dict[str, int] = field(default_factory=dict)
    """Input topic -> next offset to read, as of the last saved batch (``seq``)."""
    intent: dict[str, Any] | None = None
    """The last intent logged: ``{"seq": n, "ranges": {topic: [start, end]}}``."""
    recovered_from: str | None = None
    """What :meth:`finish_recovery` built the join table from, when a full snapshot was its base."""
    _sets: dict[str, list[Any]] = field(default_factory=dict)
    _deletes: set[str] = field(default_factory=set)
    _recovery: dict[str, Any] = field(default_factory=lambda: _fresh_recovery())

    def __post_init__(self) -> None:
        if self.full_every < 1 or 2 * self.full_every >= DELTA_SLOTS:
            raise ValueError(f"full_every={self.full_every}: expected 1 to {(DELTA_SLOTS - 1) // 2} batches "
                             f"(recovery may need two intervals of deltas; {DELTA_SLOTS} are kept)")

    # -- JoinStore ---------------------------------------------------------------------------

    def get(self, key: str) -> list[Any] | None:
        return self.joins.get(key)

    def set(self, key: str, value: list[Any]) -> None:
        self.joins.set(key, value)
        self._sets[key] = value

    def delete(self, key: str) -> None:
        if self.joins.pop(key, None) is not None:
            self._sets.pop(key, None)
            self._deletes.add(key)

    def items(self) -> Iterator[tuple[str, list[Any]]]:
        return iter(list(self.joins.items()))

    def oldest(self) -> tuple[str, list[Any]] | None:
        return self.joins.oldest()

    def expiring(self, horizon: float) -> list[tuple[str, list[Any]]]:
        return self.joins.expiring(horizon)

    def prefetch(self, keys: Sequence[str]) -> None:
        self.joins.prefetch(keys)

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
            self.send(self.partition, INTENT_KEY, record_json(self.intent))

    def pending(self) -> dict[str, tuple[int, int]] | None:
        """The range of the batch in doubt (intent logged, state not), else None."""
        if self.intent is None or int(self.intent["seq"]) != self.seq + 1:
            return None
        return {topic: (int(a), int(b)) for topic, (a, b) in self.intent["ranges"].items()}

    def save_snapshot(self, snapshot: dict[str, Any], progress: dict[str, int] | None = None) -> None:
        """End of a batch, once its outputs are acknowledged: log its join changes, then the
        monitors' snapshot with the offsets consumed so far (``progress``: topic -> next offset).

        The delta is ``{"del": [...], "set": {...}}`` in pieces under ``d:<seq mod DELTA_SLOTS>:<part>``.
        The monitors' snapshot ``{"seq", "snapshot", "progress"}`` is one ``s:monitors`` record (one
        :func:`_piece`) when it fits in :data:`RECORD_BYTES`; a larger one goes in pieces under
        ``s:<seq mod 2>:<part>`` (two slots, so a crash while writing one leaves the other whole),
        then ``s:monitors`` names them: ``{"seq", "parts"}``. (A plain JSON ``s:monitors``, as
        written before records were compressed, is still read.)"""
        self.snapshot = snapshot
        self.seq += 1
        if progress:
            self.progress.update(progress)
        if self.send is not None:
            delta = itertools.chain((b'{"del":', record_json(sorted(self._deletes)), b',"set":'),
                                    _object(_members(list(self._sets.items()))), (b"}",))
            for i, piece in enumerate(_pieces(delta, {"seq": self.seq})):
                self.send(self.partition, b"d:%d:%d" % (self.seq % DELTA_SLOTS, i), piece)
            record = record_json({"seq": self.seq, "snapshot": snapshot, "progress": self.progress})
            if len(record) <= RECORD_BYTES:  # one piece (compressed): the record itself
                self.send(self.partition, MONITORS_KEY, _piece({"seq": self.seq, "part": 0, "parts": 1}, record))
            else:
                parts = 0
                for parts, piece in enumerate(_pieces([record], {"seq": self.seq}), start=1):
                    self.send(self.partition, b"s:%d:%d" % (self.seq % 2, parts - 1), piece)
                self.send(self.partition, MONITORS_KEY, record_json({"seq": self.seq, "parts": parts}))
        self._sets.clear()
        self._deletes.clear()
        if self.seq - self.marker_seq >= self.full_every:
            self.save_full()

    def save_full(self) -> None:
        """Log the whole join table (its binary frame, :meth:`~streams.join_store.ColumnarStore.to_frame`,
        in pieces under ``f:<epoch mod 2>:<part>`` with ``"bin": 1`` in their headers), then the marker
        that makes it the recovery base. (A table logged before frames, ``{"entries": {...}}`` as
        JSON, is still read.)"""
        self.epoch += 1
        if self.send is not None:
            parts = 0
            for parts, piece in enumerate(_pieces([self.joins.to_frame()], {"epoch": self.epoch, "bin": 1}), start=1):
                self.send(self.partition, b"f:%d:%d" % (self.epoch % 2, parts - 1), piece)
            self.send(self.partition, MARKER_KEY, record_json({"epoch": self.epoch, "parts": parts, "seq": self.seq}))
        self.marker_seq = self.seq

    # -- recovery ----------------------------------------------------------------------------

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Take one changelog record (recovery); :meth:`finish_recovery` builds the state."""
        if value is None:
            return
        if key == MONITORS_KEY:
            split = _split(value)
            doc = orjson.loads(value) if split is None else _joined({0: split}, 1)
            if "parts" in doc and "snapshot" not in doc:  # a large snapshot: its pieces came just before (same partition)
                pieces = self._recovery["snapshots"].get(int(doc["seq"]), {})
                whole = _joined(pieces, int(doc["parts"]))
                if whole is None:
                    log.warning("partition %d: monitors' snapshot %s is incomplete in the changelog; "
                                "keeping the previous one", self.partition, doc["seq"])
                    return
                doc = whole
            self.snapshot = doc["snapshot"]
            self.seq = int(doc["seq"])  # the commit point: later deltas are of a batch in doubt
            self.progress = {str(t): int(o) for t, o in (doc.get("progress") or {}).items()}
            self._recovery["snapshots"] = {}
            return
        if key == INTENT_KEY:
            self.intent = orjson.loads(value)
            return
        if key == MARKER_KEY:
            self._recovery["marker"] = orjson.loads(value)
            return
        kind = key[:2]
        if kind not in (b"d:", b"f:", b"s:"):
            return
        split = _split(value)
        if split is None:  # the older format: each part a whole JSON document
            doc = orjson.loads(value)
            if kind == b"d:":
                self._recovery["deltas"][(int(doc["seq"]), int(doc["part"]))] = doc
            elif kind == b"f:":
                self._recovery["chunks"][(int(doc["epoch"]), int(doc["part"]))] = doc
            return
        header, body = split
        if kind == b"d:":
            pieces = self._recovery["delta_pieces"].setdefault(int(header["seq"]), {})
        elif kind == b"f:":
            pieces = self._recovery["full_pieces"].setdefault(int(header["epoch"]), {})
        else:
            pieces = self._recovery["snapshots"].setdefault(int(header["seq"]), {})
        pieces[int(header["part"])] = (header, body)

    def finish_recovery(self) -> None:
        """Build the join table of the last saved batch (``seq``): the newest complete snapshot up
        to it and the deltas after it, not those of a batch whose state record never came."""
        marker = self._recovery["marker"]
        chunks, deltas = self._recovery["chunks"], self._recovery["deltas"]
        self.joins = ColumnarStore()
        base = 0
        if marker is not None and int(marker["seq"]) > self.seq:  # written after the commit point
            marker = None
        if marker is not None:
            epoch, parts = int(marker["epoch"]), int(marker["parts"])
            pieces = self._recovery["full_pieces"].get(epoch)
            binary = bool(pieces) and all(header.get("bin") for header, _ in pieces.values())
            table = _joined(pieces, parts, decode=not binary) if pieces else None
            if table is not None and binary:
                self.joins = ColumnarStore.from_frame(table)
            elif table is not None:
                self.joins.update(table["entries"])
            elif all((epoch, i) in chunks for i in range(parts)):  # the older format
                for i in range(parts):
                    self.joins.update(chunks[(epoch, i)]["entries"])
            else:
                marker = None
            if marker is not None:
                base = int(marker["seq"])
                self.epoch = epoch
                self.recovered_from = (f"full snapshot {epoch} ({'frame' if binary else 'JSON'}, batch {base}, "
                                       f"{len(self.joins)} entries), then the deltas to batch {self.seq}")
        self.marker_seq = base
        logged: dict[tuple[int, int], Any] = dict(deltas)
        for seq, pieces in self._recovery["delta_pieces"].items():
            last = [header["parts"] for header, _ in pieces.values() if "parts" in header]
            whole = _joined(pieces, last[0] if last else None)
            if whole is not None:
                logged[(seq, 0)] = whole
        for (seq, _part), delta in sorted(logged.items()):
            if seq <= base or seq > self.seq:  # before the snapshot, or of a batch in doubt
                continue
            for name in delta["del"]:
                self.joins.pop(name, None)
            self.joins.update(delta["set"])
        self._recovery = _fresh_recovery()


def changelog_topic(group_id: str) -> str:
    return f"{group_id}-state-changelog"


NO_FETCH_SECONDS = 120.0
"""How long a reader waits for a fetch to tell a partition's end before it reads on as if there."""


def read_to_end(bootstrap: str, topic: str, *, idle_seconds: float = READ_POLL_SECONDS, partitions: list[int] | None = None,
                **client_options: Any) -> Iterator[Any]:
    """Every record of ``topic`` (or of its ``partitions``), from the beginning to its end (then stops).

    The end is each partition's high watermark as a fetch reported it (see :func:`read_records`).
    """
    for record in read_records(bootstrap, topic, idle_seconds=idle_seconds, partitions=partitions,
                               **client_options):
        if record is None:
            return
        yield record


def read_records(bootstrap: str, topic: str, *, since_ms: int | None = None, idle_seconds: float = READ_POLL_SECONDS,
                 partitions: list[int] | None = None, **client_options: Any) -> Iterator[Any | None]:
    """The records of ``topic`` from the first one stamped at or after ``since_ms`` (Kafka record
    timestamp, ms; ``None``: from the beginning), then whatever is appended, until the caller stops.

    Yields ``None`` after every poll (of at most ``idle_seconds``) that leaves it at the end of
    every partition: at the high watermark a fetch of that partition reported. Reported end
    offsets are not used (the embedded broker answers them wrong), and an empty poll before a
    partition's first fetch has answered is not its end (on a loaded machine the first poll often
    comes back empty: a state read that stopped there would restart a partition without its
    state). Only a broker that answers no fetch for :data:`NO_FETCH_SECONDS` ends the wait, with
    a warning. A caller can so wait for records
    in flight, also on a topic written all the time, and decide when to stop (:func:`read_to_end` stops at
    the first ``None``). The seek uses ``offsets_for_times``: on a Kafka broker it skips every
    record stamped before ``since_ms``; a broker that cannot answer (the embedded Tansu answers
    offset 0) makes it read from the beginning, which is slower, never wrong.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             client_id="driftwarden-reader", fetch_max_bytes=64 * 1024 * 1024,
                             # a fetch at a partition's end waits this long for records: the broker's
                             # default (500 ms) made every read of an empty or caught-up topic that slow
                             fetch_max_wait_ms=READ_FETCH_WAIT_MS,
                             max_partition_fetch_bytes=32 * 1024 * 1024, **client_options)
    try:
        wanted = sorted(consumer.partitions_for_topic(topic) or ()) if partitions is None else sorted(partitions)
        tps = [TopicPartition(topic, p) for p in wanted]
        if not tps:
            yield None
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        if since_ms is not None and since_ms > 0:
            for tp, found in consumer.offsets_for_times({tp: int(since_ms) for tp in tps}).items():
                if found is None:  # nothing stamped that late yet: only what comes next
                    consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, found.offset)
        waited_since = time.monotonic()
        warned = False

        def at_end(tp: Any) -> bool:
            # only a fetch's own high watermark says where the end is: the embedded broker answers
            # ListOffsets with a wrong end, and an empty poll before the first fetch completes (a
            # loaded machine) says nothing about the partition
            highwater = consumer.highwater(tp)
            return highwater is not None and consumer.position(tp) >= highwater

        while True:
            batch = consumer.poll(timeout_ms=int(idle_seconds * 1000), max_records=100_000)
            for messages in batch.values():
                yield from messages
            if batch:
                waited_since = time.monotonic()
            ended = [at_end(tp) for tp in tps]
            if all(ended):
                yield None
            elif not batch and time.monotonic() - waited_since > NO_FETCH_SECONDS:
                if not warned:  # a broker that never answers a fetch: say so, and read what there is
                    log.warning("%s: no fetch of partitions %s answered in %.0f s; reading on as if at their end",
                                topic, [tp.partition for tp, done in zip(tps, ended) if not done], NO_FETCH_SECONDS)
                    warned = True
                yield None
    finally:
        close_client(consumer)


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
