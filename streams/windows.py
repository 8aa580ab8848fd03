"""Stage 2 of a model's windows: merge the panes of every source partition, close, decide.

A :class:`ModelWindows` receives the :class:`~streams.partials.ModelPartial` s of one model
from every source partition (in the worker: the internal topic ``<group_id>-panes``, keyed by
``model_id``, so one owner per model; in ``replay``: in-process, through the same codec) and

- merges each partial once: per source partition it remembers the last batch sequence merged
  and ignores a partial at or below it (a re-published batch); an idle marker carries the
  sequence number of its source's last batch, so it is taken at that number too;
- keeps every source partition's watermark; the model's watermark is their minimum over the
  partitions that are not idle (an idle partition — caught up and silent — stops holding
  it back until it publishes again, as Flink's ``withIdleness``);
- closes an event-time pane when that watermark reaches its end plus ``allowed_lateness``
  (a count pane when its source says it is complete), merges the window's panes, computes
  its points once, feeds the model-level sequential detectors once, evaluates the policy once,
  and returns the window with its alerts and retrain requests;
- counts a delta for a pane it has already closed as ``late`` (possible only after idleness
  or with a partition it had never heard of);
- keeps, per event-time pane, the **cohort** of the pairs predicted in it (whenever their label
  came: :mod:`detectors.cohort`): a window's ``cohort_performance``/``cohort_fairness`` are
  written at its close and rewritten, same series and timestamp, whenever a later partial
  brings more of its labels, until the window's end plus the join's TTL has passed the
  watermark; then the cohort is dropped (memory: one small summary per pane within the TTL).

Everything it returns depends only on the set of partials merged, not on the order the
source partitions' partials interleave (the tests check every interleaving they can draw).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from detectors.performance import PerformanceResult
from detectors.points import Point
from retrain.events import Alert, RetrainTrigger
from retrain.policy import COHORT_MEASUREMENTS, PolicyEngine
from streams.config import ModelConfig
from streams.evaluation import CohortSummaries, Evaluation, WindowSummaries
from streams.monitor import Panes, evidence_rows, version_evaluation
from streams.partials import Evidence, Instant, ModelPartial, PaneDelta

NS = 1_000_000_000


@dataclass
class WindowOutput:
    """A closed model window: its bounds (event time, ns), size and every point it produced."""

    model_id: str
    model_version: str
    start_ns: int
    end_ns: int
    n: int
    points: list[Point]
    evidence: Evidence | None = None
    """The window's recent rows, as columns (for the retrain job's Evidently report)."""
    offsets: dict[int, tuple[int, int]] | None = None
    """Per source partition, first and last offset of the window's prediction messages."""
    instant: bool = False
    """Not a closed window but a sequential detection between closes (a CUSUM stream crossed its
    threshold): ``start_ns == end_ns`` is the detecting event's time, ``points`` its point(s)."""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A retrain trigger and the window that fired it (its evidence and offsets)."""

    trigger: RetrainTrigger
    window: WindowOutput


@dataclass
class Decided:
    """What merging one partial produced: closed windows and instant detections in the order
    they happened, and the policy's alerts and retrain requests."""

    windows: list[WindowOutput] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    jobs: list[JobRequest] = field(default_factory=list)
    updates: list[Point] = field(default_factory=list)
    """Cohort points of windows closed earlier, rewritten with the labels this partial brought."""

    @property
    def points(self) -> list[Point]:
        """Every window's and detection's points, then the cohort updates. Wall-clock figures
        (``monitor`` ``throughput``, ``lag``) are not among them: the worker writes those stamped
        with processing time."""
        return [p for w in self.windows for p in w.points] + self.updates

    def extend(self, other: Decided) -> Decided:
        self.windows.extend(other.windows)
        self.alerts.extend(other.alerts)
        self.jobs.extend(other.jobs)
        self.updates.extend(other.updates)
        return self


@dataclass
class _Source:
    seq: int = -1
    watermark: float = -math.inf
    idle: bool = False


@dataclass
class _Pane:
    summaries: WindowSummaries
    n: int = 0
    pairs: int = 0
    start: float = math.inf
    end: float = -math.inf
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    inputs: list[tuple[int, int, list[dict[str, tuple[float, int]]], list[float]]] = field(default_factory=list)
    """(source, seq, stream means, errors) of each merged delta, for the sequential detectors."""
    cusum: list[list[float]] | None = None
    """Per CUSUM stream: detections, largest ratio at a detection, observations."""
    cusum_current: dict[int, list[float | None]] = field(default_factory=dict)
    """Per source partition, each stream's statistic/threshold after its last observation here."""
    counters: dict[str, int] = field(default_factory=dict)
    evidence: Evidence = field(default_factory=Evidence)
    complete: bool = False
    """A count pane its source has filled."""

    def add(self, delta: PaneDelta, source: int, seq: int, evaluation: Evaluation, limit: int) -> None:
        if delta.summaries is not None:
            self.summaries.merge(evaluation.restore_window(delta.summaries))
        self.n += delta.n
        self.pairs += delta.pairs
        self.start = min(self.start, delta.start)
        self.end = max(self.end, delta.end)
        if delta.first_offset is not None and delta.last_offset is not None:
            low, high = self.offsets.get(source, (delta.first_offset, delta.last_offset))
            self.offsets[source] = (min(low, delta.first_offset), max(high, delta.last_offset))
        if delta.means or delta.errors:
            self.inputs.append((source, seq, delta.means, delta.errors))
        if delta.cusum is not None:
            if self.cusum is None:
                self.cusum = [[0, 0.0, 0] for _ in delta.cusum]
            current = self.cusum_current.setdefault(source, [None] * len(delta.cusum))
            for k, (mine, theirs) in enumerate(zip(self.cusum, delta.cusum)):
                mine[0] += theirs[0]
                mine[1] = max(mine[1], theirs[1])
                mine[2] += theirs[2]
                if theirs[3] is not None:  # this source's latest statistic (sources merge in seq order)
                    current[k] = theirs[3]
        for name, value in delta.counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        if delta.evidence is not None:
            self.evidence.extend(delta.evidence, limit=limit)

    def cusum_status(self) -> list[list[float]] | None:
        """``[detections, ratio at a detection, observations, current ratio]`` per stream, the
        current ratio the largest over the source partitions."""
        if self.cusum is None:
            return None
        out = []
        for k, (detections, ratio, n) in enumerate(self.cusum):
            currents = [c[k] for c in self.cusum_current.values() if c[k] is not None]
            out.append([detections, ratio, n, max(currents) if currents else 0.0])
        return out

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state. The evidence rows stay out: they would make every batch's state record
        up to ~100 KB larger, and a report after a restart with fewer rows changes no figure."""
        return {"summaries": self.summaries.snapshot(), "n": self.n, "pairs": self.pairs,
                "start": self.start if math.isfinite(self.start) else None,
                "end": self.end if math.isfinite(self.end) else None,
                "offsets": [[s, a, b] for s, (a, b) in sorted(self.offsets.items())],
                "inputs": [[s, q, [{k: list(v) for k, v in m.items()} for m in means], errors]
                           for s, q, means, errors in self.inputs],
                "cusum": self.cusum, "cusum_current": [[s, c] for s, c in sorted(self.cusum_current.items())],
                "counters": dict(self.counters), "complete": self.complete}

    @classmethod
    def restore(cls, state: Mapping[str, Any], evaluation: Evaluation) -> _Pane:
        return cls(evaluation.restore_window(state["summaries"]), n=int(state["n"]), pairs=int(state["pairs"]),
                   start=state["start"] if state["start"] is not None else math.inf,
                   end=state["end"] if state["end"] is not None else -math.inf,
                   offsets={int(s): (int(a), int(b)) for s, a, b in state["offsets"]},
                   inputs=[(int(s), int(q), [{k: (float(v[0]), int(v[1])) for k, v in m.items()} for m in means],
                            [float(e) for e in errors]) for s, q, means, errors in state["inputs"]],
                   cusum=state["cusum"], cusum_current={int(s): list(c) for s, c in state["cusum_current"]},
                   counters=dict(state["counters"]),
                   complete=bool(state["complete"]))


@dataclass
class _Cohort:
    """The pairs predicted in one pane (whenever their labels came), and once the pane has closed
    its predictions and, if a window ended with it, that window's label-free estimate."""

    summaries: CohortSummaries
    predictions: int = 0
    closed: bool = False
    """A window ended with this pane (its cohort points are written and rewritten)."""
    estimate: dict[str, Any] | None = None
    """That window's label-free estimate: ``{"n", "metrics"}``."""

    def snapshot(self) -> dict[str, Any]:
        return {"summaries": self.summaries.snapshot(), "predictions": self.predictions, "closed": self.closed,
                "estimate": self.estimate}

    @classmethod
    def restore(cls, state: Mapping[str, Any], evaluation: Evaluation) -> _Cohort:
        return cls(evaluation.restore_cohort(state["summaries"]), int(state["predictions"]), bool(state["closed"]),
                   state.get("estimate"))


class _VersionWindows:
    """Open panes, the last closed panes (sliding windows) and the sequential state of a version."""

    def __init__(self, owner: ModelWindows, version: str) -> None:
        self.owner = owner
        self.version = version
        self.evaluation: Evaluation = owner.evaluation_for(version)
        self.open: dict[int, _Pane] = {}
        self.closed: deque[_Pane] = deque(maxlen=max(owner.panes_per_window - 1, 0))
        self.last_closed: int | None = None
        self.sequential = self.evaluation.new_sequential()
        self.counters: dict[str, int] = {}
        self.cohorts: dict[int, _Cohort] = {}
        """Per event-time pane, its cohort (kept until the last window holding it is TTL old)."""
        self.cohort_order: list[int] = []
        """The cohorts' pane ids as a heap (oldest first, for expiry)."""

    def cohort(self, pane_id: int) -> _Cohort:
        found = self.cohorts.get(pane_id)
        if found is None:
            found = self.cohorts[pane_id] = _Cohort(self.evaluation.new_cohort())
            heapq.heappush(self.cohort_order, pane_id)
        return found

    def pane(self, pane_id: int) -> _Pane:
        found = self.open.get(pane_id)
        if found is None:
            found = self.open[pane_id] = _Pane(self.evaluation.new_window())
        return found

    def count(self, name: str, value: int) -> None:
        if value:
            self.counters[name] = self.counters.get(name, 0) + value

    def snapshot(self) -> dict[str, Any]:
        return {"open": {str(k): p.snapshot() for k, p in self.open.items()},
                "closed": [p.snapshot() for p in self.closed], "last_closed": self.last_closed,
                "sequential": self.sequential.snapshot(), "counters": dict(self.counters),
                "cohorts": {str(k): c.snapshot() for k, c in sorted(self.cohorts.items())}}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.open = {int(k): _Pane.restore(v, self.evaluation) for k, v in state["open"].items()}
        self.closed.clear()
        self.closed.extend(_Pane.restore(v, self.evaluation) for v in state["closed"])
        self.last_closed = state["last_closed"]
        self.sequential = self.evaluation.restore_sequential(state["sequential"])
        self.counters = dict(state["counters"])
        self.cohorts = {int(k): _Cohort.restore(v, self.evaluation) for k, v in (state.get("cohorts") or {}).items()}
        self.cohort_order = sorted(self.cohorts)


class ModelWindows:
    """Stage 2 of one model: every source partition's panes merged into model windows."""

    def __init__(self, cfg: ModelConfig, evaluation: Evaluation, *, sources: Iterable[int] = (0,),
                 policy: PolicyEngine | None = None, registry: Any = None,
                 label_ttl: float = 7 * 24 * 3600.0) -> None:
        self.cfg = cfg
        self.label_ttl = float(label_ttl)
        """How long after a window's end its cohort takes late labels (the join's TTL: a label
        later than that cannot join its prediction anyway)."""
        self.evaluation = evaluation
        self.registry = registry
        self.policy = policy
        self.panes = Panes.of(cfg.window)
        self.by_events, self.panes_per_window = self.panes.by_events, self.panes.panes_per_window
        self.evidence_limit = evidence_rows(cfg.window.events)
        self.sources: dict[int, _Source] = {s: _Source() for s in sources}
        self.versions: dict[str, _VersionWindows] = {}
        self.duplicates = 0
        self.held: list[tuple[int, int, int, int, Instant]] = []
        """CUSUM detections not yet decided: ``(time_ns, source, seq, index, instant)``. A detection is
        decided once the watermark has passed its time, in that order and between the window
        closes around it, so the policy sees every partition's detections and windows in one
        order whatever the interleaving of partials (a detection waits at most the partitions'
        skew plus ``allowed_lateness``)."""

    def evaluation_for(self, version: str) -> Evaluation:
        return version_evaluation(self.evaluation, self.registry, self.cfg.id, version)

    def _version(self, version: str) -> _VersionWindows:
        if version not in self.versions:
            self.versions[version] = _VersionWindows(self, version)
        return self.versions[version]

    @property
    def watermark(self) -> float:
        """The minimum watermark over the source partitions that are not idle (``-inf`` while
        one has never published; ``+inf`` once every one has ended). Once every source is idle,
        the largest of their watermarks, as Flink's watermark valve does: an idle source stops
        holding the watermark back, also when the last active one turns idle before it (a
        partition that never had data turns idle no sooner than one that is caught up)."""
        active = [s.watermark for s in self.sources.values() if not s.idle]
        if active:
            return min(active)
        return max((s.watermark for s in self.sources.values()), default=-math.inf)

    # -- merging ---------------------------------------------------------------------------------

    def merge(self, partial: ModelPartial) -> Decided:
        """Merge one partial (once per source partition and sequence number) and close what its
        watermark lets close."""
        out = Decided()
        source = self.sources.setdefault(partial.source, _Source())
        # an idle marker names the last batch its source published (it takes no number of its own,
        # so it needs no state of stage 1 and a copy of it is harmless)
        if partial.seq < source.seq or (partial.seq == source.seq and not partial.idle):
            self.duplicates += 1
            return out
        source.seq = partial.seq
        source.idle = partial.idle
        if partial.watermark is not None:
            source.watermark = max(source.watermark, float(partial.watermark))
        if partial.final:
            source.watermark = math.inf
        touched: set[tuple[str, int]] = set()
        for delta in partial.panes:
            if delta.cohort is not None and self._add_cohort(delta):
                touched.add((delta.version, delta.pane))
            self._add(delta, partial.source, partial.seq)
        # the windows already closed whose cohort this partial grew (rewritten after the closes)
        closed_before = {(name, end) for name, pane in touched for end in range(pane, pane + self.panes_per_window)
                         if end in self.versions[name].cohorts and self.versions[name].cohorts[end].closed}
        # detections and closes in event-time order: a detection inside a window is decided
        # before the window's close (the policy sees them as they happened)
        self.held.extend((i.time_ns, partial.source, partial.seq, k, i) for k, i in enumerate(partial.instants))
        self.held.sort(key=lambda item: item[:4])
        for version, pane_id in self._due():
            end = version.open[pane_id].end if self.by_events else self.panes.end(pane_id)
            end_ns = int(round(end * NS)) if math.isfinite(end) else 0
            while self.held and self.held[0][0] <= end_ns:
                self._instant(self.held.pop(0)[4], out)
            self._close(version, pane_id, out)
        # count windows (one source partition) decide at once; event time once the watermark passed
        ready = math.inf if self.by_events else self.watermark * NS
        while self.held and self.held[0][0] <= ready:
            self._instant(self.held.pop(0)[4], out)
        self._cohort_updates(closed_before, out)
        self._expire_cohorts()
        return out

    # -- cohorts (by prediction time) ---------------------------------------------------------------

    def _cohort_expired(self, pane_id: int) -> bool:
        """Whether the last window holding ``pane_id`` ended more than the join's TTL before the
        watermark (its cohort can get no more labels)."""
        last_end = self.panes.end(pane_id + self.panes_per_window - 1)
        return last_end + self.label_ttl < self.watermark

    def _add_cohort(self, delta: PaneDelta) -> bool:
        """Merge a delta's cohort share (into a closed window's cohort too); False if it expired."""
        version = self._version(delta.version)
        if self.by_events or (delta.pane not in version.cohorts and self._cohort_expired(delta.pane)):
            return False
        assert delta.cohort is not None
        version.cohort(delta.pane).summaries.merge(version.evaluation.restore_cohort(delta.cohort))
        return True

    def _cohort_window(self, version: _VersionWindows, end_pane: int) -> tuple[int, int, list[Point]]:
        """(start_ns, end_ns, points) of the cohort of the window that ended with ``end_pane``."""
        ids = [k for k in range(end_pane - self.panes_per_window + 1, end_pane + 1) if k in version.cohorts]
        merged = version.evaluation.new_cohort()
        for k in ids:
            merged.merge(version.cohorts[k].summaries)
        end = version.cohorts[end_pane]
        estimate = (PerformanceResult(n=int(end.estimate["n"]), metrics=dict(end.estimate["metrics"]))
                    if end.estimate is not None else None)
        start_ns = int(round((end_pane - self.panes_per_window + 1) * self.panes.pane_size * NS))
        end_ns = int(round(self.panes.end(end_pane) * NS))
        tags = {"model_id": self.cfg.id, "model_version": version.version}
        points = merged.points(predictions=sum(version.cohorts[k].predictions for k in ids), estimate=estimate,
                               tags=tags, time_ns=end_ns)
        return start_ns, end_ns, points

    def _close_cohort(self, version: _VersionWindows, pane_id: int, n: int, window: WindowSummaries) -> list[Point]:
        """At a window's close: its last pane's predictions and the window's estimate; its cohort points."""
        cohort = version.cohort(pane_id)
        cohort.predictions, cohort.closed = n, True
        if window.estimate is not None:
            result = window.estimate.result()
            cohort.estimate = {"n": result.n, "metrics": dict(result.metrics)}
        return self._cohort_window(version, pane_id)[2]

    def _cohort_updates(self, closed_before: set[tuple[str, int]], out: Decided) -> None:
        """Rewrite the cohort points of every window closed before this partial whose cohort it grew."""
        for name, end in sorted(closed_before, key=lambda item: (item[1], item[0])):
            version = self.versions[name]
            start_ns, end_ns, points = self._cohort_window(version, end)
            out.updates.extend(points)
            if self.policy is not None and points:
                decision = self.policy.evaluate_cohort(model_id=self.cfg.id, model_version=name,
                                                       window_start_ns=start_ns, window_end_ns=end_ns, points=points)
                out.alerts.extend(decision.alerts)
                out.jobs.extend(JobRequest(trigger, WindowOutput(self.cfg.id, name, start_ns, end_ns, 0, points))
                                for trigger in decision.jobs)

    def _expire_cohorts(self) -> None:
        for version in self.versions.values():
            heap = version.cohort_order
            while heap and self._cohort_expired(heap[0]):
                version.cohorts.pop(heapq.heappop(heap), None)

    def _add(self, delta: PaneDelta, source: int, seq: int) -> None:
        version = self._version(delta.version)
        closed = (not self.by_events and version.last_closed is not None and delta.pane <= version.last_closed)
        if closed:  # stage 1 sent it before its watermark passed, but stage 2 had closed the pane
            version.count("late", delta.n)
            version.count("late_pairs", delta.pairs)
            for name, value in delta.counters.items():
                version.count(name, value)
            return
        pane = version.pane(delta.pane)
        pane.add(delta, source, seq, version.evaluation, self.evidence_limit)
        pane.complete = pane.complete or delta.complete

    def _due(self) -> list[tuple[_VersionWindows, int]]:
        """The panes to close now, in order: event time, when the watermark passed their
        deadline; count windows, when their source filled them (or every source ended)."""
        ended = all(math.isinf(s.watermark) and s.watermark > 0 for s in self.sources.values())
        if self.by_events:
            return [(version, pane_id) for version in self.versions.values() for pane_id in sorted(version.open)
                    if ended or version.open[pane_id].complete]
        watermark = self.watermark
        due = sorted((pane_id, order, version) for order, version in enumerate(self.versions.values())
                     for pane_id in version.open if self.panes.deadline(pane_id) <= watermark)
        return [(version, pane_id) for pane_id, _, version in due]

    def _instant(self, instant: Instant, out: Decided) -> None:
        version = self._version(instant.version)
        evidence = Evidence()
        for pane in [*version.closed, *(version.open[k] for k in sorted(version.open))]:
            evidence.extend(pane.evidence, limit=self.evidence_limit)
        window = WindowOutput(self.cfg.id, instant.version, instant.time_ns, instant.time_ns, 0, [instant.point],
                              evidence, None, instant=True)
        out.windows.append(window)
        if self.policy is not None:
            decision = self.policy.evaluate_instant(model_id=self.cfg.id, model_version=instant.version,
                                                    time_ns=instant.time_ns, points=window.points)
            out.alerts.extend(decision.alerts)
            out.jobs.extend(JobRequest(trigger, window) for trigger in decision.jobs)

    def _close(self, version: _VersionWindows, pane_id: int, out: Decided) -> None:
        pane = version.open.pop(pane_id)
        if not self.by_events:
            version.last_closed = pane_id if version.last_closed is None else max(version.last_closed, pane_id)
        if not pane.n and not pane.pairs:  # only counters: they go with the next window
            for name, value in pane.counters.items():
                version.count(name, value)
            return
        if not self.by_events:
            pane.start = min(pane.start, pane_id * self.panes.pane_size)
            pane.end = max(pane.end, self.panes.end(pane_id))
        sequential = version.sequential
        inputs = sorted(pane.inputs, key=lambda item: (item[0], item[1]))
        sequential.add_pane(means=[m for _, _, means, _ in inputs for m in means],
                            errors=[e for _, _, _, errors in inputs for e in errors],
                            performance=pane.summaries.performance)
        panes = [*version.closed, pane]
        if len(panes) == 1:  # tumbling: the pane is the window
            window = pane.summaries
        else:
            # the oldest pane leaves the window with this close (the deque is full): merge into it,
            # as into its copy (its summaries are read by no later window, snapshot or detection)
            leaving = len(version.closed) == version.closed.maxlen
            window = panes[0].summaries if leaving else panes[0].summaries.copy()
            for other in panes[1:]:
                window.merge(other.summaries)
        version.closed.append(pane)
        n = sum(p.n for p in panes)
        pairs = sum(p.pairs for p in panes)
        offsets: dict[int, tuple[int, int]] = {}
        for p in panes:
            for source, (low, high) in p.offsets.items():
                a, b = offsets.get(source, (low, high))
                offsets[source] = (min(a, low), max(b, high))
        start, end = min(p.start for p in panes), max(p.end for p in panes)
        end_ns = int(round(end * NS)) if math.isfinite(end) else 0
        start_ns = int(round(start * NS)) if math.isfinite(start) else end_ns
        tags = {"model_id": self.cfg.id, "model_version": version.version}
        cusum = pane.cusum_status()  # since the last close, as the concept detectors report
        points = sequential.with_cumulative(window.points(tags=tags, time_ns=end_ns))
        points.extend(sequential.points(tags=tags, time_ns=end_ns, predictions=n, cusum=cusum))
        sequential.start_window()
        stats: dict[str, float] = {"events": float(n), "pairs": float(pairs), "join_rate": pairs / n if n else 0.0}
        counters, version.counters = version.counters, {}
        for name, value in pane.counters.items():
            counters[name] = counters.get(name, 0) + value
        stats.update({name: float(value) for name, value in counters.items()})
        stats.setdefault("dead_letters", 0.0)
        points.extend(Point("monitor", {**tags, "stat": stat}, {"value": value}, end_ns)
                      for stat, value in sorted(stats.items()))
        if not self.by_events:
            points.extend(self._close_cohort(version, pane_id, pane.n, window))
        if len(panes) == 1 and version.closed.maxlen == 0:
            # tumbling: the pane is dropped now, and its evidence (unique ids, at most the limit:
            # Evidence.extend made it) is what a copy of it would be
            evidence = pane.evidence
        else:
            evidence = Evidence()
            for p in panes:
                evidence.extend(p.evidence, limit=self.evidence_limit)
        latest = self.evaluation_for(version.version)
        if latest is not version.evaluation:  # a new reference was registered for this version
            version.evaluation = latest
            version.sequential = latest.new_sequential()
            version.closed.clear()
            version.open = {k: _Pane(latest.new_window()) if not p.n else p for k, p in version.open.items()}
        output = WindowOutput(self.cfg.id, version.version, start_ns, end_ns, n, points, evidence,
                              offsets or None)
        out.windows.append(output)
        if self.policy is not None:
            decision = self.policy.evaluate(model_id=self.cfg.id, model_version=version.version,
                                            window_start_ns=start_ns, window_end_ns=end_ns, points=points)
            out.alerts.extend(decision.alerts)
            out.jobs.extend(JobRequest(trigger, output) for trigger in decision.jobs)
            cohort = [p for p in points if p.measurement in COHORT_MEASUREMENTS]
            if cohort:
                decision = self.policy.evaluate_cohort(model_id=self.cfg.id, model_version=version.version,
                                                       window_start_ns=start_ns, window_end_ns=end_ns, points=cohort)
                out.alerts.extend(decision.alerts)
                out.jobs.extend(JobRequest(trigger, output) for trigger in decision.jobs)

    # -- snapshot --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"sources": {str(k): [s.seq, s.watermark if math.isfinite(s.watermark) else None, s.idle,
                                     s.watermark > 0 and math.isinf(s.watermark)]
                            for k, s in self.sources.items()},
                "versions": {v: m.snapshot() for v, m in self.versions.items()},
                "policy": self.policy.snapshot() if self.policy is not None else None,
                "duplicates": self.duplicates,
                "held": [[t, source, seq, k, i.to_dict()] for t, source, seq, k, i in self.held]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.sources = {}
        for key, (seq, watermark, idle, ended) in state["sources"].items():
            mark = math.inf if ended else (float(watermark) if watermark is not None else -math.inf)
            self.sources[int(key)] = _Source(int(seq), mark, bool(idle))
        self.versions = {}
        for version, snap in state["versions"].items():
            self._version(version).restore(snap)
        if self.policy is not None and state.get("policy") is not None:
            self.policy.restore(state["policy"])
        self.duplicates = int(state.get("duplicates", 0))
        self.held = [(int(t), int(source), int(seq), int(k), Instant.from_dict(doc))
                     for t, source, seq, k, doc in state.get("held", [])]

