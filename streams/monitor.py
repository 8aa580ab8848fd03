"""Per-model windowing: feeds micro-batches to the detectors, closes windows, emits points.

A :class:`ModelMonitor` owns, per model version, the open window's summaries
(a :class:`~streams.evaluation.WindowSummaries`), the long-running sequential
detectors, and the counters of what the worker saw. It does no statistics
itself: it slices batches at window boundaries, turns events into columns,
and asks the detectors for their results when a window closes.

Windows:

- ``{events: N}``: tumbling windows of N predictions in arrival order;
- ``{seconds: S}``: tumbling windows of S seconds of *event time*; a window
  closes when an event at least ``grace`` seconds past its end arrives;
  events for a window already closed are counted as ``late`` and left out;
- ``slide``: sliding windows made of panes of ``slide`` events or seconds;
  each pane's summaries are kept and merged (exactly) into the window.

Labelled pairs count in the window open when they are joined (for event-time
windows: the window holding the largest timestamp seen when they joined).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from detectors.points import Point
from streams.config import ModelConfig
from streams.evaluation import Evaluation, WindowSummaries
from streams.events import Prediction
from streams.join import LabelledPair

NS = 1_000_000_000
DEFAULT_GRACE_SECONDS = 5.0


@dataclass
class WindowOutput:
    """A closed window: its bounds (event time, ns), size and every point it produced."""

    model_id: str
    model_version: str
    start_ns: int
    end_ns: int
    n: int
    points: list[Point]
    evidence: Callable[[], Any] | None = None
    """Builds a DataFrame of the window's recent rows (for the retrain job's Evidently report)."""
    offsets: tuple[int, int] | None = None
    """First and last offset of the window's prediction messages (batch granularity)."""
    instant: bool = False
    """Not a closed window but a sequential detection between closes (a CUSUM stream crossed its
    threshold): ``start_ns == end_ns`` is the detecting event's time, ``points`` its point(s)."""


@dataclass
class _Pane:
    summaries: WindowSummaries
    n: int = 0
    start: float = math.inf
    end: float = -math.inf
    pairs: int = 0
    first_offset: int | None = None
    last_offset: int | None = None

    def note(self, timestamps: np.ndarray, offsets: Sequence[int] | None) -> None:
        if timestamps.size:
            self.n += int(timestamps.size)
            self.start = min(self.start, float(timestamps.min()))
            self.end = max(self.end, float(timestamps.max()))
        if offsets:
            low, high = min(offsets), max(offsets)
            self.first_offset = low if self.first_offset is None else min(self.first_offset, low)
            self.last_offset = high if self.last_offset is None else max(self.last_offset, high)


class _VersionMonitor:
    """Windows and sequential state of one model version."""

    def __init__(self, owner: ModelMonitor, version: str) -> None:
        self.owner = owner
        self.version = version
        self.evaluation: Evaluation = owner.evaluation_for(version)
        window = owner.cfg.window
        self.by_events = window.events is not None
        size = window.events if self.by_events else window.seconds
        self.pane_size: float = float(window.slide or size)  # type: ignore[arg-type]
        self.panes_per_window = int(round(size / self.pane_size))  # type: ignore[operator]
        self.closed: deque[_Pane] = deque(maxlen=max(self.panes_per_window - 1, 0))
        self.open: dict[int, _Pane] = {}
        self.counter = 0  # pane index for count windows
        self.watermark = -math.inf
        self.sequential = self.evaluation.new_sequential()
        self.counters: dict[str, int] = {}
        evidence_size = int(min(max(window.events or 1000, 1000), 5000))
        self.recent: deque[Prediction] = deque(maxlen=evidence_size)
        self.recent_pairs: deque[LabelledPair] = deque(maxlen=evidence_size)
        self.log: list[WindowOutput] = []
        """The last batch's closed windows and instant detections, in the order they happened."""

    # -- feeding -----------------------------------------------------------------------------

    def add_batch(self, events: Sequence[Prediction], pairs: Sequence[LabelledPair],
                  positions: Sequence[int], offsets: Sequence[int] | None = None,
                  marks: Sequence[tuple[int, str]] = ()) -> list[WindowOutput]:
        """Add predictions and pairs as if one at a time, in arrival order.

        ``positions[i]`` is how many of ``events`` arrived before ``pairs[i]`` was joined,
        so each pair lands in the window that was open when it joined; ``offsets`` are the
        Kafka offsets of ``events`` (for the retrain job's data range); ``marks`` are
        counters (a dead letter) placed like pairs.
        """
        self.log = []
        if not self.by_events:
            return self._add_by_time(events, pairs, positions, offsets, marks)
        outputs: list[WindowOutput] = []
        order = np.asarray(positions, dtype=np.int64)
        mark_order = np.asarray([p for p, _ in marks], dtype=np.int64)
        start = 0
        taken = 0
        marked = 0
        while True:
            pane = self._pane(self.counter)
            room = int(self.pane_size) - pane.n
            end = min(start + room, len(events))
            fills = end == start + room
            # A pane that fills closes right after its last prediction: it gets the pairs joined
            # before that (position < end); one that stays open gets every remaining pair.
            upto = int(np.searchsorted(order, end, side="left")) if fills else len(pairs)
            if upto > taken:
                self._add_pairs(pane, pairs[taken:upto])
                taken = upto
            upto = int(np.searchsorted(mark_order, end, side="left")) if fills else len(marks)
            for _, name in marks[marked:upto]:
                self.count(name, 1)
            marked = max(marked, upto)
            self._feed(pane, events[start:end], offsets[start:end] if offsets else None)
            if pane.n >= self.pane_size:
                outputs.append(self._close(self.counter))
                self.counter += 1
            if end >= len(events):
                break
            start = end
        if taken < len(pairs):  # joined after the last pane of this batch closed
            self._add_pairs(self._pane(self.counter), pairs[taken:])
        for _, name in marks[marked:]:
            self.count(name, 1)
        return outputs

    def _add_by_time(self, events: Sequence[Prediction], pairs: Sequence[LabelledPair],
                     positions: Sequence[int], offsets: Sequence[int] | None,
                     marks: Sequence[tuple[int, str]] = ()) -> list[WindowOutput]:
        """Event-time panes. Lateness and the pane of each pair are decided in arrival order:
        with the watermark (largest timestamp so far) as it was when each item arrived."""
        size, grace = self.pane_size, self.owner.grace_seconds
        timestamps = np.fromiter((e.timestamp for e in events), dtype=np.float64, count=len(events))
        # watermark before event i is seen[i]; after the batch, seen[-1]
        seen = np.maximum.accumulate(np.concatenate([[self.watermark], timestamps]))
        pane_ids = np.floor(timestamps / size).astype(np.int64)
        with np.errstate(invalid="ignore"):
            closed_below = np.floor((seen[:-1] - grace) / size)  # panes below this had closed
        late = pane_ids < closed_below
        if self._last_closed_id is not None:
            late |= pane_ids <= self._last_closed_id
        late_at = np.flatnonzero(late)  # arrival index of each late event
        for pane_id in np.unique(pane_ids[~late]):
            chosen = np.flatnonzero((pane_ids == pane_id) & ~late)
            self._feed(self._pane(int(pane_id)), [events[i] for i in chosen],
                       [offsets[i] for i in chosen] if offsets else None)
        if pairs:
            at = seen[np.asarray(positions, dtype=np.int64)]  # watermark when each pair joined
            homes = np.where(np.isfinite(at), np.floor(np.where(np.isfinite(at), at, 0.0) / size), np.nan)
            for home in np.unique(homes[np.isfinite(homes)]):
                chosen = np.flatnonzero(homes == home)
                self._add_pairs(self._pane(int(home)), [pairs[i] for i in chosen])
            unplaced = np.flatnonzero(~np.isfinite(homes))
            if unplaced.size:
                self._add_pairs(self._current_pane(), [pairs[i] for i in unplaced])
        self.watermark = float(seen[-1])
        outputs: list[WindowOutput] = []
        mark_at = np.asarray([p for p, _ in marks], dtype=np.int64)
        counted = marked = 0
        for pane_id in sorted(self.open):
            deadline = (pane_id + 1) * size + grace
            if deadline > self.watermark:
                continue
            # late events and marks count in the first window to close after they arrived
            closes_at = int(np.searchsorted(seen[1:], deadline, side="left"))
            upto = int(np.searchsorted(late_at, closes_at, side="right"))
            self._count_late(upto - counted)
            counted = upto
            upto = int(np.searchsorted(mark_at, closes_at, side="right"))
            for _, name in marks[marked:upto]:
                self.count(name, 1)
            marked = max(marked, upto)
            outputs.append(self._close(pane_id))
        self._count_late(late_at.size - counted)
        for _, name in marks[marked:]:
            self.count(name, 1)
        return outputs

    def _count_late(self, count: int) -> None:
        if count > 0:
            self.counters["late"] = self.counters.get("late", 0) + count

    def _add_pairs(self, pane: _Pane, pairs: Sequence[LabelledPair]) -> None:
        if not pairs:
            return
        pane.pairs += len(pairs)
        cols = self.evaluation.pair_columns(pairs)
        pane.summaries.add_pairs(cols)
        self.sequential.add_pairs(cols)
        self.recent_pairs.extend(pairs)
        self._instants(pane)

    def count(self, name: str, value: int) -> None:
        self.counters[name] = self.counters.get(name, 0) + value

    def flush(self) -> list[WindowOutput]:
        """Close every open pane that saw predictions or pairs (end of input)."""
        self.log = []
        return [self._close(pane_id) for pane_id in sorted(self.open)
                if self.open[pane_id].n > 0 or self.open[pane_id].pairs > 0]

    def _instants(self, pane: _Pane) -> None:
        """Log the sequential detections of the data just fed as instant outputs."""
        tags = {"model_id": self.owner.cfg.id, "model_version": self.version}
        found = self.sequential.take_detections(tags=tags)
        if not found:
            return
        recent, recent_pairs = list(self.recent), list(self.recent_pairs)
        evaluation = self.evaluation
        evidence = lambda: evaluation.evidence_frame(recent, recent_pairs)  # noqa: E731
        offsets = (pane.first_offset, pane.last_offset) if pane.first_offset is not None else None
        for time_ns, point in found:
            self.log.append(WindowOutput(self.owner.cfg.id, self.version, time_ns, time_ns, 0, [point], evidence,
                                         offsets, instant=True))  # type: ignore[arg-type]

    # -- internals ---------------------------------------------------------------------------

    def _first_open_id(self) -> int | None:
        if self.by_events:
            return None
        return self._last_closed_id + 1 if self._last_closed_id is not None else None

    _last_closed_id: int | None = None

    def _pane(self, pane_id: int) -> _Pane:
        pane = self.open.get(pane_id)
        if pane is None:
            pane = self.open[pane_id] = _Pane(self.evaluation.new_window())
        return pane

    def _current_pane(self) -> _Pane:
        if self.by_events:
            return self._pane(self.counter)
        if self.open:
            return self.open[max(self.open)]
        if self.watermark > -math.inf:
            return self._pane(int(math.floor(self.watermark / self.pane_size)))
        return self._pane(0)

    def _feed(self, pane: _Pane, events: Sequence[Prediction], offsets: Sequence[int] | None = None) -> None:
        if not events:
            return
        batch = self.evaluation.columns(events)
        pane.note(batch.timestamps, offsets)
        pane.summaries.add_predictions(batch)
        self.sequential.add_predictions(batch)
        self.recent.extend(events)
        self._instants(pane)

    def _close(self, pane_id: int) -> WindowOutput:
        pane = self.open.pop(pane_id)
        if not self.by_events:
            self._last_closed_id = pane_id
            pane.start = min(pane.start, pane_id * self.pane_size)
            pane.end = max(pane.end, (pane_id + 1) * self.pane_size)
        panes = [*self.closed, pane]
        if len(panes) == 1:  # tumbling: the pane is the window
            window = pane.summaries
        else:
            window = panes[0].summaries.copy()
            for other in panes[1:]:
                window.merge(other.summaries)
        self.closed.append(pane)
        n = sum(p.n for p in panes)
        pairs = sum(p.pairs for p in panes)
        firsts = [p.first_offset for p in panes if p.first_offset is not None]
        lasts = [p.last_offset for p in panes if p.last_offset is not None]
        offsets = (min(firsts), max(lasts)) if firsts else None
        start, end = min(p.start for p in panes), max(p.end for p in panes)
        end_ns = int(round(end * NS)) if math.isfinite(end) else 0
        start_ns = int(round(start * NS)) if math.isfinite(start) else end_ns
        tags = {"model_id": self.owner.cfg.id, "model_version": self.version}
        points = self.sequential.with_cumulative(window.points(tags=tags, time_ns=end_ns))
        points.extend(self.sequential.points(tags=tags, time_ns=end_ns, predictions=n))
        # wall-clock figures (throughput, lag) are not window points: the worker writes them stamped
        # with processing time (streams.app), so a window's points depend on its events alone
        stats: dict[str, float] = {
            "events": float(n),
            "pairs": float(pairs),
            "join_rate": pairs / n if n else 0.0,
        }
        counters, self.counters = self.counters, {}
        stats.update({name: float(value) for name, value in counters.items()})
        stats.setdefault("dead_letters", 0.0)
        points.extend(
            Point("monitor", {**tags, "stat": stat}, {"value": value}, end_ns) for stat, value in sorted(stats.items())
        )
        latest = self.owner.evaluation_for(self.version)
        if latest is not self.evaluation:  # a new reference was registered for this version
            self.evaluation = latest
            self.sequential = latest.new_sequential()
            self.closed.clear()
            self.open = {k: _Pane(latest.new_window()) if not p.n else p for k, p in self.open.items()}
        recent, recent_pairs = list(self.recent), list(self.recent_pairs)
        evidence = lambda: self.evaluation.evidence_frame(recent, recent_pairs)  # noqa: E731
        output = WindowOutput(self.owner.cfg.id, self.version, start_ns, end_ns, n, points, evidence, offsets)
        self.log.append(output)
        return output

    # -- snapshot ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "counter": self.counter,
            "watermark": self.watermark if math.isfinite(self.watermark) else None,
            "last_closed": self._last_closed_id,
            "open": {str(k): _pane_state(p) for k, p in self.open.items()},
            "closed": [_pane_state(p) for p in self.closed],
            "sequential": self.sequential.snapshot(),
            "counters": dict(self.counters),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.counter = int(state["counter"])
        self.watermark = state["watermark"] if state["watermark"] is not None else -math.inf
        self._last_closed_id = state["last_closed"]
        self.open = {int(k): self._pane_from(v) for k, v in state["open"].items()}
        self.closed.clear()
        self.closed.extend(self._pane_from(v) for v in state["closed"])
        self.sequential = self.evaluation.restore_sequential(state["sequential"])
        self.counters = dict(state["counters"])

    def _pane_from(self, state: Mapping[str, Any]) -> _Pane:
        pane = _Pane(self.evaluation.restore_window(state["summaries"]), n=state["n"], pairs=state["pairs"])
        pane.start = state["start"] if state["start"] is not None else math.inf
        pane.end = state["end"] if state["end"] is not None else -math.inf
        pane.first_offset, pane.last_offset = state.get("offsets") or (None, None)
        return pane


def _pane_state(pane: _Pane) -> dict[str, Any]:
    return {
        "summaries": pane.summaries.snapshot(),
        "n": pane.n,
        "pairs": pane.pairs,
        "start": pane.start if math.isfinite(pane.start) else None,
        "end": pane.end if math.isfinite(pane.end) else None,
        "offsets": [pane.first_offset, pane.last_offset],
    }


class ModelMonitor:
    """Everything driftwarden tracks for one configured model, across its versions."""

    def __init__(self, cfg: ModelConfig, evaluation: Evaluation, *, registry: Any = None,
                 grace_seconds: float = DEFAULT_GRACE_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.evaluation = evaluation
        self.registry = registry
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.versions: dict[str, _VersionMonitor] = {}
        self._pending_counts: dict[str, int] = {}

    def evaluation_for(self, version: str) -> Evaluation:
        """The version's own reference (registered from ``model-updates``), else the configured one."""
        if self.registry is None:
            return self.evaluation
        return self.registry.evaluation(self.cfg.id, version)

    def _version(self, version: str) -> _VersionMonitor:
        monitor = self.versions.get(version)
        if monitor is None:
            monitor = self.versions[version] = _VersionMonitor(self, version)
            for name, value in self._pending_counts.items():
                monitor.count(name, value)
            self._pending_counts.clear()
        return monitor

    def add_batch(self, events: Sequence[Prediction], pairs: Sequence[LabelledPair] = (),
                  positions: Sequence[int] = (), offsets: Sequence[int] | None = None,
                  marks: Sequence[tuple[int, str]] = ()) -> list[WindowOutput]:
        """Add a batch's predictions, joined pairs and counter marks (see
        :meth:`_VersionMonitor.add_batch`)."""
        if not pairs:
            positions = ()
        versions = {e.model_version for e in events} | {p.prediction.model_version for p in pairs}
        if len(versions) <= 1:
            if not versions:
                for _, name in marks:
                    self.count(name, 1)
                return []
            return self._version(versions.pop()).add_batch(events, pairs, positions, offsets, marks)
        for _, name in marks:  # several versions in one batch: to the latest version's next window
            self.count(name, 1)
        outputs: list[WindowOutput] = []
        for version in sorted(versions):
            mine = [e.model_version == version for e in events]
            before = np.concatenate([[0], np.cumsum(mine)]).astype(np.int64)
            chosen = [i for i, p in enumerate(pairs) if p.prediction.model_version == version]
            outputs.extend(self._version(version).add_batch(
                [e for e, keep in zip(events, mine) if keep], [pairs[i] for i in chosen],
                [int(before[positions[i]]) for i in chosen],
                [o for o, keep in zip(offsets, mine) if keep] if offsets else None))
        return outputs

    def count(self, name: str, value: int) -> None:
        """Add to a worker counter reported with the next closed window (e.g. dead letters)."""
        if not self.versions:
            self._pending_counts[name] = self._pending_counts.get(name, 0) + value
            return
        latest = next(reversed(self.versions.values()))
        latest.count(name, value)

    def flush(self) -> list[WindowOutput]:
        return [out for monitor in self.versions.values() for out in monitor.flush()]

    def take_log(self) -> list[WindowOutput]:
        """The last :meth:`add_batch` (or :meth:`flush`): every closed window and every instant
        detection (``instant=True``), per version in the order they happened; clears it."""
        out = []
        for monitor in self.versions.values():
            out.extend(monitor.log)
            monitor.log = []
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"versions": {v: m.snapshot() for v, m in self.versions.items()},
                "pending": dict(self._pending_counts)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.versions = {}
        for version, snap in state.get("versions", {}).items():
            self._version(version).restore(snap)
        self._pending_counts = dict(state.get("pending", {}))

