"""What stage 1 hands to stage 2: per model and batch, the deltas of every touched pane.

Model-level windows run in two stages (Flink's local–global aggregation):

- **stage 1**, per source partition (:class:`~streams.monitor.ModelMonitor`), turns a
  batch's predictions and labelled pairs into, per touched (model version, event-time pane),
  the *delta* of every mergeable summary the window needs (:class:`PaneDelta`), and runs
  the CUSUM streams in the partition's order (their detections travel as :class:`Instant`);
- **stage 2**, per model (:class:`~streams.windows.ModelWindows`), merges the deltas of all
  source partitions and closes a window when the watermark (the minimum over the source
  partitions that are not idle) passes its end plus ``allowed_lateness``.

One :class:`ModelPartial` per (model, batch) carries the source partition, the batch's
sequence number in that partition (stage 2 merges each ``(source, seq)`` once) and the
partition's event-time watermark for the model. :func:`encode` / :func:`decode` are the
codec of the internal topic (codec 2): JSON (orjson) compressed with zstd level 1,
deterministic bytes for the same partial (a re-processed batch publishes the same message).
:func:`decode` also reads codec 1 (the same JSON compressed with zlib), so a rolling upgrade
drains what older workers published.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson
import zstandard

from detectors.points import Point

CODEC_VERSION = 2
READS_CODECS = (1, 2)
"""Codec versions :func:`decode` reads: 1 is the same JSON compressed with zlib."""


@dataclass
class Evidence:
    """A window's recent rows for the retrain job's report, as columns: each row's prediction id,
    feature values, prediction and score; ``labels`` maps a prediction id to its label.
    Bounded by the producer (stage 1 caps rows per pane delta; stage 2 per window)."""

    ids: list[str] = field(default_factory=list)
    features: dict[str, list[Any]] = field(default_factory=dict)
    predictions: list[Any] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    labels: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, other: Evidence, *, limit: int) -> Evidence:
        """Append ``other``'s rows (its labels too), then keep the last ``limit`` rows.

        Column by column: rows whose id is already here are skipped, and a feature this
        evidence has not held yet is back-filled with ``None`` for its earlier rows (once per
        feature, not per row: building that filler for every row made a window's merge quadratic)."""
        seen = set(self.ids)
        keep: list[int] = [i for i, pid in enumerate(other.ids) if pid not in seen] if seen else list(range(len(other.ids)))
        if len(set(other.ids)) < len(other.ids):  # an id twice within other: its first row only
            keep = _first_of_each(other.ids, keep)
        whole = len(keep) == len(other.ids)
        before = len(self.ids)
        self.ids.extend(other.ids if whole else [other.ids[i] for i in keep])
        for name, values in other.features.items() if keep else ():
            column = self.features.get(name)
            if column is None:
                column = self.features[name] = [None] * before
            column.extend(values if whole else [values[i] for i in keep])
        self.predictions.extend(other.predictions if whole else [other.predictions[i] for i in keep])
        self.scores.extend(other.scores if whole else [other.scores[i] for i in keep])
        self.labels.update(other.labels)
        self.keep_last(limit)
        return self

    def keep_last(self, rows: int) -> int:
        """Keep the last ``rows`` rows (and the labels of their ids); return how many were dropped."""
        cut = len(self.ids) - max(rows, 0)
        if cut <= 0:
            return 0
        dropped = self.ids[:cut]
        self.ids = self.ids[cut:]
        self.features = {k: v[cut:] for k, v in self.features.items()}
        self.predictions = self.predictions[cut:]
        self.scores = self.scores[cut:]
        for pid in dropped:
            self.labels.pop(pid, None)
        return cut

    def to_dict(self) -> dict[str, Any]:
        return {"ids": self.ids, "features": self.features, "predictions": self.predictions,
                "scores": self.scores, "labels": self.labels}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Evidence:
        return cls(list(doc["ids"]), {k: list(v) for k, v in doc["features"].items()}, list(doc["predictions"]),
                   list(doc["scores"]), dict(doc["labels"]))


def _first_of_each(ids: list[str], rows: Any) -> list[int]:
    """Of ``rows`` (indexes into ``ids``), those that hold an id for the first time among them."""
    seen: set[str] = set()
    out = []
    for i in rows:
        if ids[i] not in seen:
            seen.add(ids[i])
            out.append(i)
    return out


@dataclass
class PaneDelta:
    """What one batch of one source partition added to one pane of one model version.

    ``pane`` is the pane index (event time: ``floor(t / pane_size)``; count windows: the
    partition's pane counter). ``summaries`` is the :class:`~streams.evaluation.WindowSummaries`
    snapshot of the batch's share of the pane; ``means`` the per-feed stream means and
    ``errors`` the pairs' errors in arrival order (the model-level sequential detectors are
    fed from them when the pane closes); ``cusum`` per CUSUM stream ``[detections, largest
    ratio at a detection, observations, statistic/threshold after the stream's last
    observation in the pane (None: none; >= 1: the stream is still in the changed state of an
    earlier detection, see :class:`detectors.cusum.PageCUSUM`)]``; ``cohort`` the
    :class:`~streams.evaluation.CohortSummaries` snapshot of the batch's pairs whose *prediction*
    is in this pane (event-time windows; it may reach a pane stage 2 has closed, until the join's
    TTL: :mod:`detectors.cohort`); ``counters`` the worker
    counters (late, dead letters, expired, ...) that fell in this pane; ``complete`` marks a
    count pane that this batch filled.
    """

    version: str
    pane: int
    n: int = 0
    pairs: int = 0
    start: float = math.inf
    end: float = -math.inf
    first_offset: int | None = None
    last_offset: int | None = None
    summaries: dict[str, Any] | None = None
    means: list[dict[str, tuple[float, int]]] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    cusum: list[list[float]] | None = None
    counters: dict[str, int] = field(default_factory=dict)
    evidence: Evidence | None = None
    complete: bool = False
    cohort: dict[str, Any] | None = None

    def count(self, name: str, value: int = 1) -> None:
        if value:
            self.counters[name] = self.counters.get(name, 0) + value

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.version, "p": self.pane, "n": self.n, "pairs": self.pairs,
                "start": _finite(self.start), "end": _finite(self.end),
                "offsets": [self.first_offset, self.last_offset], "summaries": self.summaries,
                "means": [{k: list(v) for k, v in m.items()} for m in self.means], "errors": self.errors,
                "cusum": self.cusum, "counters": self.counters,
                "evidence": self.evidence.to_dict() if self.evidence is not None else None,
                "complete": self.complete, "cohort": self.cohort}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PaneDelta:
        first, last = doc["offsets"]
        return cls(
            version=doc["v"], pane=int(doc["p"]), n=int(doc["n"]), pairs=int(doc["pairs"]),
            start=doc["start"] if doc["start"] is not None else math.inf,
            end=doc["end"] if doc["end"] is not None else -math.inf,
            first_offset=first, last_offset=last, summaries=doc["summaries"],
            means=[{k: (float(v[0]), int(v[1])) for k, v in m.items()} for m in doc["means"]],
            errors=[float(e) for e in doc["errors"]], cusum=doc["cusum"], counters=dict(doc["counters"]),
            evidence=Evidence.from_dict(doc["evidence"]) if doc["evidence"] is not None else None,
            complete=bool(doc["complete"]), cohort=doc.get("cohort"))


@dataclass(frozen=True)
class Instant:
    """A CUSUM stream's detection in stage 1, at the detecting event's time (ns)."""

    version: str
    time_ns: int
    point: Point

    def to_dict(self) -> dict[str, Any]:
        p = self.point
        return {"v": self.version, "t": self.time_ns, "point": [p.measurement, p.tags, p.fields, p.time_ns]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Instant:
        measurement, tags, fields, time_ns = doc["point"]
        return cls(doc["v"], int(doc["t"]), Point(measurement, dict(tags), dict(fields), int(time_ns)))


@dataclass
class ModelPartial:
    """One model's share of one batch of one source partition (the internal topic's message,
    keyed by ``model_id``).

    ``watermark`` is the largest event time the partition has seen for the model (``None``
    before any); ``idle`` says the partition is caught up and silent (it stops holding the watermark back
    until its next non-idle partial);
    ``final`` is the end of input (replay): every pane of this source may close.
    """

    model_id: str
    source: int
    seq: int
    watermark: float | None
    panes: list[PaneDelta] = field(default_factory=list)
    instants: list[Instant] = field(default_factory=list)
    idle: bool = False
    final: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"codec": CODEC_VERSION, "model_id": self.model_id, "source": self.source, "seq": self.seq,
                "watermark": self.watermark, "idle": self.idle, "final": self.final,
                "panes": [p.to_dict() for p in self.panes], "instants": [i.to_dict() for i in self.instants]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ModelPartial:
        if doc.get("codec") not in READS_CODECS:
            raise ValueError(f"partial codec {doc.get('codec')!r} is not one of {READS_CODECS}: "
                             "stage 1 runs a newer driftwarden than stage 2; upgrade the stage 2 workers")
        return cls(doc["model_id"], int(doc["source"]), int(doc["seq"]), doc["watermark"],
                   [PaneDelta.from_dict(p) for p in doc["panes"]], [Instant.from_dict(i) for i in doc["instants"]],
                   bool(doc["idle"]), bool(doc["final"]))


EVIDENCE_BYTES = 512 * 1024
"""Most bytes of evidence (as JSON, before compression) one partial carries. A Kafka message holds
~1 MB; evidence rows repeat the events' own values, so a sub-batch of events with long strings
(1,024-character categories, say) would otherwise make a partial the producer refuses — and
stage 2 would lose that batch's panes. Evidence is a sample for the retrain report: past this,
the oldest rows are dropped (counted as ``evidence_trimmed``), never a summary."""


def fit_evidence(panes: list[PaneDelta], most: int = EVIDENCE_BYTES) -> int:
    """Drop the oldest evidence rows of ``panes`` until their evidence is at most ``most`` bytes of
    JSON; return the rows dropped (0 almost always: 1,000 rows of 20 features are ~300 KB).

    The cut depends on the rows alone, so a batch processed again drops the same rows. The largest
    evidence is cut first, to the share of its rows that would fit, until all fit.

    >>> big = PaneDelta("1", 0, evidence=Evidence([f"p{i}" for i in range(100)], {"x": ["a" * 100] * 100},
    ...                                          [0] * 100, [None] * 100, {"p0": 1, "p99": 0}))
    >>> fit_evidence([big], most=2_000), len(big.evidence), sorted(big.evidence.labels)
    (84, 16, ['p99'])
    """
    sizes = {i: _json_size(d.evidence.to_dict()) for i, d in enumerate(panes) if d.evidence is not None and len(d.evidence)}
    total = sum(sizes.values())
    dropped = 0
    while total > most and sizes:
        i = max(sizes, key=lambda k: (sizes[k], -k))
        evidence = panes[i].evidence
        assert evidence is not None
        rows = len(evidence)
        room = most - (total - sizes[i])
        keep = min(int(rows * max(room, 0) / sizes[i]), rows - 1)
        dropped += evidence.keep_last(keep)
        total -= sizes[i]
        sizes[i] = _json_size(evidence.to_dict()) if len(evidence) else 0
        total += sizes[i]
        if not sizes[i]:
            del sizes[i]
    return dropped


def _json_size(doc: Any) -> int:
    return len(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame's first bytes; a zlib stream's first is 0x78
_compressor = zstandard.ZstdCompressor(level=1)
_decompressor = zstandard.ZstdDecompressor()


def encode(partial: ModelPartial, codec: int = CODEC_VERSION) -> bytes:
    """The internal topic's bytes for ``partial``: orjson, then zstd level 1 (``codec`` 1: zlib
    level 1, what a stage 2 older than codec 2 reads — ``kafka.panes_codec`` during a rolling upgrade).

    JSON of counts, bin edges and evidence rows compresses ~3x; on the benchmark's partials zstd
    level 1 costs half of zlib level 1's CPU to encode and a third less to decompress, and its
    bytes are ~10 % fewer (``python -m bench.stage2``).

    >>> p = ModelPartial("credit", 0, 7, 1.7e9, [PaneDelta("1", 3, n=10, errors=[0.5] * 10)])
    >>> data = encode(p); data[:4] == _ZSTD_MAGIC, decode(data) == p
    (True, True)
    """
    doc = partial.to_dict()
    if codec == 1:
        return zlib.compress(orjson.dumps({**doc, "codec": 1}, option=orjson.OPT_SERIALIZE_NUMPY), 1)
    if codec != CODEC_VERSION:
        raise ValueError(f"partial codec {codec!r}: this version writes {READS_CODECS}")
    return _compressor.compress(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def decode(data: bytes) -> ModelPartial:
    """Inverse of :func:`encode`; also reads codec 1 (zlib)."""
    if data[:4] == _ZSTD_MAGIC:
        return ModelPartial.from_dict(orjson.loads(_decompressor.decompress(data)))
    return ModelPartial.from_dict(orjson.loads(zlib.decompress(data)))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
