"""Stage 1 of a model's windows, per source partition: a batch in, the panes' deltas out.

A :class:`ModelMonitor` turns one batch of a model's predictions, labelled pairs and
counter marks (in arrival order) into a :class:`~streams.partials.ModelPartial`: per touched
(model version, pane) the delta of every mergeable summary. It keeps no window open:
stage 2 (:class:`~streams.windows.ModelWindows`) merges the deltas of every source
partition and closes the windows. What stage 1 keeps is what must follow the partition's
own order: the event-time watermark (largest timestamp seen for the model), the count
windows' pane counter, and the CUSUM streams (fast detections, at the detecting event).

Windows:

- ``{seconds: S}`` (event time): pane ``floor(t / pane_size)``; an event whose pane's end
  plus ``allowed_lateness`` is at or below the partition's watermark when it arrives is
  *late*: counted (``monitor stat=late``, in the pane of the watermark then), left out of
  the windows — its label still reaches the join;
- ``{events: N}``: panes of N predictions in the partition's arrival order (one source
  partition only: see :func:`check_count_windows`);
- ``slide``: windows made of the last ``size / slide`` panes (merged by stage 2).

A labelled pair counts, in event-time windows, in the pane of its own event time (the later
of its prediction's and its label's timestamps), so its window does not depend on how events
were spread over partitions; a pair late by that time counts in the pane of the watermark when
it joined, and so does a dead letter. In count windows both count in the pane open when they
arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from detectors.cusum import ReferenceCUSUM, cusum_detection_points
from detectors.sequential import SCORE_STREAM, stream_means
from retrain.metrics import monitor_counter
from streams.config import ConfigError, ModelConfig, WindowConfig
from streams.evaluation import Evaluation, PairColumns, PredictionBlock, PredictionColumns
from streams.join import LabelledPair
from streams.partials import Evidence, Instant, ModelPartial, PaneDelta, fit_evidence

NS = 1_000_000_000
_EMPTY_BLOCK = PredictionBlock()
"""The block between batches (a monitor holds its batch's block only while it adds the batch)."""


class Arrival(NamedTuple):
    """One item of a model's batch, in arrival order: a prediction (its row in the batch's
    :class:`~streams.evaluation.PredictionBlock`), a labelled pair just joined, or a counter mark
    (a dead letter)."""

    row: int = -1
    pair: LabelledPair | None = None
    mark: str | None = None


@dataclass(frozen=True)
class Panes:
    """A model's window cut into panes: the one rule both stages use for which pane an event
    is in and when an event-time pane closes (stage 1 calls an event late by the same
    deadline at which stage 2 closes its pane)."""

    by_events: bool
    pane_size: float
    panes_per_window: int
    lateness: float

    @classmethod
    def of(cls, window: WindowConfig) -> Panes:
        by_events = window.events is not None
        size = float(window.events if by_events else window.seconds)  # type: ignore[arg-type]
        pane = float(window.slide or size)
        return cls(by_events, pane, int(round(size / pane)), float(window.allowed_lateness))

    def deadline(self, pane: int) -> float:
        """Event time at which an event-time pane closes: its end plus the allowed lateness."""
        return (pane + 1) * self.pane_size + self.lateness

    def end(self, pane: int) -> float:
        return (pane + 1) * self.pane_size


def version_evaluation(evaluation: Evaluation, registry: Any, model_id: str, version: str) -> Evaluation:
    """The version's own reference (registered from ``model-updates``), else the configured one."""
    return evaluation if registry is None else registry.evaluation(model_id, version)


def evidence_rows(window_events: int | None) -> int:
    """Rows a window keeps for the retrain report (as before stage 2: 1,000 to 5,000)."""
    return int(min(max(window_events or 1000, 1000), 5000))


def check_count_windows(models: Mapping[str, ModelConfig], partitions: int) -> None:
    """Count windows are panes of N predictions in one partition's arrival order: with several
    source partitions there is no arrival order of the model's events to cut, so refuse."""
    if partitions <= 1:
        return
    for model_id, model in models.items():
        if model.window.events is not None:
            raise ConfigError(
                f"models[{model_id}].window.events: count windows need a single source partition, and the "
                f"source topics have {partitions}; use an event-time window ({{seconds: S}}), which is merged "
                "across partitions, or one partition")


def _feature_columns(events: Sequence[Any], names: Sequence[str]) -> dict[str, list[Any]]:
    """The events' features column by column (``None`` where an event lacks one), each column read
    in C (``itemgetter`` over the events' feature mappings, ``zip`` to transpose)."""
    names = list(names)
    if not events or not names:
        return {name: [None] * len(events) for name in names}
    features = [e.features for e in events]
    try:
        rows = list(map(itemgetter(*names), features)) if len(names) > 1 else [(f[names[0]],) for f in features]
    except KeyError:  # a hand-made event without every feature
        return {name: [f.get(name) for f in features] for name in names}
    return {name: list(column) for name, column in zip(names, zip(*rows))}


class _VersionPanes:
    """Stage-1 state of one model version: the count windows' pane, the CUSUM streams."""

    def __init__(self, owner: ModelMonitor, version: str) -> None:
        self.owner = owner
        self.version = version
        self.evaluation: Evaluation = owner.evaluation_for(version)
        self.cusum: ReferenceCUSUM | None = self.evaluation.new_cusum()
        self.cusum_pane: int | None = None
        """The pane whose CUSUM reporting window is open (a detection is new once per pane)."""
        self.counter = 0  # count windows: the open pane
        self.filled = 0  # count windows: predictions in the open pane

    def snapshot(self) -> dict[str, Any]:
        return {"counter": self.counter, "filled": self.filled, "cusum_pane": self.cusum_pane,
                "cusum": self.cusum.snapshot(reference=False) if self.cusum is not None else None}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.counter, self.filled = int(state["counter"]), int(state["filled"])
        self.cusum_pane = state["cusum_pane"]
        self.cusum = self.evaluation.restore_cusum(state.get("cusum"))


class _Deltas:
    """The deltas one batch builds, by (version, pane), in the order they were first touched."""

    def __init__(self, monitor: ModelMonitor) -> None:
        self.monitor = monitor
        self.panes: dict[tuple[str, int], tuple[PaneDelta, Any]] = {}
        self.cohorts: dict[tuple[str, int], Any] = {}
        self.instants: list[Instant] = []

    def get(self, version: _VersionPanes, pane: int) -> PaneDelta:
        key = (version.version, pane)
        found = self.panes.get(key)
        if found is None:
            found = self.panes[key] = (PaneDelta(version.version, pane), version.evaluation.new_window())
        return found[0]

    def summaries(self, version: _VersionPanes, pane: int) -> Any:
        self.get(version, pane)
        return self.panes[(version.version, pane)][1]

    def cohort(self, version: _VersionPanes, pane: int) -> Any:
        """The batch's :class:`~streams.evaluation.CohortSummaries` of the pairs predicted in ``pane``."""
        self.get(version, pane)
        key = (version.version, pane)
        if key not in self.cohorts:
            self.cohorts[key] = version.evaluation.new_cohort()
        return self.cohorts[key]

    def finish(self) -> list[PaneDelta]:
        out = []
        for key, (delta, summaries) in self.panes.items():
            if delta.n or delta.pairs:
                delta.summaries = summaries.snapshot()
            cohort = self.cohorts.get(key)
            if cohort is not None:
                delta.cohort = cohort.snapshot()
            out.append(delta)
        return out


class ModelMonitor:
    """Stage 1 of one configured model in one source partition, across its versions."""

    def __init__(self, cfg: ModelConfig, evaluation: Evaluation, *, registry: Any = None) -> None:
        self.cfg = cfg
        self.evaluation = evaluation
        self.registry = registry
        self.panes = Panes.of(cfg.window)
        self.by_events, self.pane_size = self.panes.by_events, self.panes.pane_size
        self.evidence_cap = max(evidence_rows(cfg.window.events) // self.panes.panes_per_window, 1)
        self.watermark = -math.inf
        self.versions: dict[str, _VersionPanes] = {}
        self.pending: dict[str, int] = {}
        """Counters noted before this partition saw any event of the model (go to its first pane)."""
        self._block: PredictionBlock = _EMPTY_BLOCK
        """The block of the batch being added (:meth:`add_batch`)."""

    def evaluation_for(self, version: str) -> Evaluation:
        return version_evaluation(self.evaluation, self.registry, self.cfg.id, version)

    def _version(self, version: str) -> _VersionPanes:
        if version not in self.versions:
            self.versions[version] = _VersionPanes(self, version)
        return self.versions[version]

    # -- a batch -------------------------------------------------------------------------------

    def add_batch(self, arrivals: Sequence[Arrival], *, source: int, seq: int,
                  counters: Mapping[str, int] | None = None,
                  block: PredictionBlock | None = None) -> ModelPartial | None:
        """The partial of one batch: ``arrivals`` of this model in arrival order (a prediction is
        its row of ``block``, the batch's predictions of this model), and worker counters
        (expired, evicted, ...) for the pane open when the batch began. ``None`` when the batch
        neither touched the model nor moved anything."""
        deltas = _Deltas(self)
        self._block = block if block is not None else PredictionBlock()
        before = self.watermark
        # the batch's counters go to the pane open when the batch began (else the first one it opens)
        start_pane = (self._current_pane(next(reversed(self.versions.values())))
                      if self.versions and (self.by_events or math.isfinite(before)) else None)
        try:
            if self.by_events:
                self._by_count(arrivals, deltas)
            else:
                self._by_time(arrivals, deltas)
        finally:
            self._block = _EMPTY_BLOCK
        extra = {name: value for name, value in {**self.pending, **(counters or {})}.items() if value}
        if extra:
            if self.versions:
                latest = next(reversed(self.versions.values()))
                if start_pane is None:  # the model's first batch: the first pane it opened
                    opened = [pane for version, pane in deltas.panes if version == latest.version]
                    start_pane = opened[0] if opened else self._current_pane(latest)
                delta = deltas.get(latest, start_pane)
                for name, value in extra.items():
                    delta.count(name, value)
                self.pending.clear()
            else:
                for name, value in (counters or {}).items():
                    self.pending[name] = self.pending.get(name, 0) + value
        panes = deltas.finish()
        if not panes and not deltas.instants and self.watermark == before:
            return None
        trimmed = fit_evidence(panes)
        if trimmed:
            panes[-1].count(monitor_counter("evidence_trimmed"), trimmed)
        return ModelPartial(self.cfg.id, source, seq, self.watermark if math.isfinite(self.watermark) else None,
                            panes, deltas.instants)

    def idle(self, *, source: int, seq: int) -> ModelPartial:
        """The idle marker of this partition for the model (see :class:`ModelPartial`)."""
        return ModelPartial(self.cfg.id, source, seq, self.watermark if math.isfinite(self.watermark) else None,
                            idle=True)

    def end_of_input(self, *, source: int, seq: int) -> ModelPartial:
        """The final partial (replay's end of input): every pane of this source may close."""
        return ModelPartial(self.cfg.id, source, seq, self.watermark if math.isfinite(self.watermark) else None,
                            final=True)

    def _current_pane(self, version: _VersionPanes) -> int:
        if self.by_events:
            return version.counter
        return int(math.floor(self.watermark / self.pane_size)) if math.isfinite(self.watermark) else 0

    def _by_time(self, arrivals: Sequence[Arrival], deltas: _Deltas) -> None:
        """Event-time panes; lateness and the pane of each pair and mark are decided with the
        watermark as it was when each item arrived (so batching does not move them)."""
        size = self.pane_size
        block = self._block
        rows = np.fromiter((a.row for a in arrivals if a.row >= 0), dtype=np.int64)
        timestamps = block.timestamps[rows]
        seen = np.maximum.accumulate(np.concatenate([[self.watermark], timestamps]))
        # predictions before arrival j: position of j among predictions
        before = np.cumsum([0] + [a.row >= 0 for a in arrivals]).astype(np.int64)
        pane_ids = np.floor(timestamps / size).astype(np.int64)
        late = self.panes.deadline(pane_ids) <= seen[:-1]  # type: ignore[arg-type]

        def home(at: float) -> int:
            return int(math.floor(at / size)) if math.isfinite(at) else 0

        by_version: dict[str, list[int]] = {}
        versions = block.versions
        for k, row in enumerate(rows.tolist()):
            by_version.setdefault(versions[row], []).append(k)
        for version_name, chosen in by_version.items():
            version = self._version(version_name)
            mine = np.asarray(chosen, dtype=np.int64)
            keep = mine[~late[mine]]
            for pane_id in np.unique(pane_ids[keep]):
                self._feed(version, int(pane_id), rows[keep[pane_ids[keep] == pane_id]], deltas)
            for k in mine[late[mine]]:
                deltas.get(version, home(float(seen[k]))).count("late")
        pairs: dict[tuple[str, int], list[LabelledPair]] = {}
        marks: list[tuple[int, str]] = []
        for i, arrival in enumerate(arrivals):
            if arrival.pair is not None:
                # a pair's event time is the later of its prediction's and its label's; a pair
                # that is late by it counts in the pane open when it joined
                pair = arrival.pair
                at = int(math.floor(max(pair.prediction.timestamp, pair.feedback_timestamp) / size))
                now = float(seen[before[i]])
                if self.panes.deadline(at) <= now:
                    at = home(now)
                pairs.setdefault((arrival.pair.prediction.model_version, at), []).append(arrival.pair)
            elif arrival.mark is not None:
                marks.append((home(float(seen[before[i]])), arrival.mark))
        for (version_name, pane_id), chosen_pairs in sorted(pairs.items(), key=lambda item: item[0][1]):
            self._add_pairs(self._version(version_name), pane_id, chosen_pairs, deltas)
        self._cohorts([a.pair for a in arrivals if a.pair is not None], deltas)
        self.watermark = float(seen[-1])
        self._marks(marks, deltas)

    def _by_count(self, arrivals: Sequence[Arrival], deltas: _Deltas) -> None:
        """Count panes: a pane closes right after its N-th prediction; a pair or mark goes to
        the version's pane open when it arrived."""
        size = int(self.pane_size)
        block = self._block
        versions, timestamps = block.versions, block.timestamps.tolist()
        marks: list[tuple[int, str]] = []
        run: list[int] = []
        run_version: _VersionPanes | None = None
        waiting: dict[str, tuple[int, list[LabelledPair]]] = {}  # per version: its open pane's pairs

        def flush_pairs(version: _VersionPanes) -> None:
            pane, pairs = waiting.pop(version.version, (0, []))
            self._add_pairs(version, pane, pairs, deltas)

        for arrival in arrivals:
            row = arrival.row
            if row >= 0:
                version = self._version(versions[row])
                if run_version is not version and run:
                    self._feed(run_version, run_version.counter, run, deltas)  # type: ignore[union-attr,arg-type]
                    run = []
                run_version = version
                run.append(row)
                version.filled += 1
                if timestamps[row] > self.watermark:
                    self.watermark = timestamps[row]
                if version.filled >= size:
                    self._feed(version, version.counter, run, deltas)
                    flush_pairs(version)
                    run = []
                    deltas.get(version, version.counter).complete = True
                    version.counter += 1
                    version.filled = 0
            elif arrival.pair is not None:
                version = self._version(arrival.pair.prediction.model_version)
                pane, pairs = waiting.setdefault(version.version, (version.counter, []))
                pairs.append(arrival.pair)
            elif arrival.mark is not None:
                if self.versions:
                    latest = run_version or next(reversed(self.versions.values()))
                    marks.append((latest.counter, arrival.mark))
                else:
                    self.pending[monitor_counter(arrival.mark)] = self.pending.get(arrival.mark, 0) + 1
        if run and run_version is not None:
            self._feed(run_version, run_version.counter, run, deltas)
        for name in list(waiting):
            flush_pairs(self.versions[name])
        self._marks(marks, deltas)

    def _marks(self, marks: Sequence[tuple[int, str]], deltas: _Deltas) -> None:
        if not marks:
            return
        for _, name in marks:
            monitor_counter(name)
        if not self.versions:
            for _, name in marks:
                self.pending[name] = self.pending.get(name, 0) + 1
            return
        latest = next(reversed(self.versions.values()))
        for pane, name in marks:
            deltas.get(latest, pane).count(name)

    # -- feeding one pane ------------------------------------------------------------------------

    def _open_cusum_window(self, version: _VersionPanes, pane: int) -> None:
        if version.cusum is not None and (version.cusum_pane is None or pane > version.cusum_pane):
            if version.cusum_pane is not None:
                version.cusum.start_window()
            version.cusum_pane = pane

    def _feed(self, version: _VersionPanes, pane: int, rows: Sequence[int] | np.ndarray, deltas: _Deltas) -> None:
        """One pane's predictions of the batch: ``rows`` of the batch's block, in arrival order."""
        if not len(rows):
            return
        block = self._block
        rows = np.asarray(rows, dtype=np.int64)
        cols = version.evaluation.columns(block, rows)
        delta = deltas.get(version, pane)
        delta.n += len(cols)
        delta.start = min(delta.start, float(cols.timestamps.min()))
        delta.end = max(delta.end, float(cols.timestamps.max()))
        offsets = [o for o in map(block.offsets.__getitem__, rows.tolist()) if o >= 0]
        if offsets:
            low, high = min(offsets), max(offsets)
            delta.first_offset = low if delta.first_offset is None else min(delta.first_offset, low)
            delta.last_offset = high if delta.last_offset is None else max(delta.last_offset, high)
        deltas.summaries(version, pane).add_predictions(cols)
        names = [*version.evaluation.numeric, SCORE_STREAM]
        delta.means.append(stream_means(cols.frame, cols.scores, names))
        room = self._evidence_room(delta)
        if room:
            chosen = rows[:room].tolist()
            frame = cols.frame
            features = {name: (frame.numeric[name] if name in frame.numeric else frame.categorical[name])[:room].tolist()
                        for name in self.cfg.features}
            self._extend_evidence(delta, block.ids(chosen), features, cols.predictions[:room].tolist(),
                                  block.scores(chosen))
        self._cusum(version, pane, delta, deltas, cols, None)

    def _add_pairs(self, version: _VersionPanes, pane: int, pairs: Sequence[LabelledPair], deltas: _Deltas) -> None:
        if not pairs:
            return
        cols = version.evaluation.pair_columns(pairs)
        delta = deltas.get(version, pane)
        delta.pairs += len(cols)
        deltas.summaries(version, pane).add_pairs(cols)
        delta.errors.extend(version.evaluation.errors(cols).tolist())
        known = set(delta.evidence.ids) if delta.evidence is not None else set()
        room = self._evidence_room(delta)
        if room:
            events = [p.prediction for p in pairs if p.prediction.prediction_id not in known][:room]
            self._extend_evidence(delta, [e.prediction_id for e in events], _feature_columns(events, self.cfg.features),
                                  [e.prediction for e in events], [e.score for e in events])
        assert delta.evidence is not None
        kept = set(delta.evidence.ids)
        delta.evidence.labels.update({p.prediction.prediction_id: p.label for p in pairs
                                      if p.prediction.prediction_id in kept})
        self._cusum(version, pane, delta, deltas, None, cols)

    def _cohorts(self, pairs: Sequence[LabelledPair], deltas: _Deltas) -> None:
        """Each pair also counts in its *prediction's* pane, the cohort of the window it was predicted
        in (however late its label came: stage 2 keeps a closed window's cohort for the join's TTL)."""
        cohorts: dict[tuple[str, int], list[LabelledPair]] = {}
        for pair in pairs:
            pane = int(math.floor(pair.prediction.timestamp / self.pane_size))
            cohorts.setdefault((pair.prediction.model_version, pane), []).append(pair)
        for (version_name, pane), chosen in sorted(cohorts.items(), key=lambda item: item[0][1]):
            version = self._version(version_name)
            deltas.cohort(version, pane).add_pairs(version.evaluation.pair_columns(chosen))

    def _evidence_room(self, delta: PaneDelta) -> int:
        """Rows the pane's evidence still takes (its evidence started if it had none)."""
        if delta.evidence is None:
            delta.evidence = Evidence()
        return max(self.evidence_cap - len(delta.evidence), 0)

    @staticmethod
    def _extend_evidence(delta: PaneDelta, ids: list[str], features: Mapping[str, list[Any]],
                         predictions: list[Any], scores: list[float | None]) -> None:
        """Append rows to the pane's evidence, column by column (features as the events hold
        them: NaN for a missing numeric, ``None`` for a missing category; scores ``None`` when absent)."""
        evidence = delta.evidence
        assert evidence is not None
        if not ids:
            return
        evidence.ids.extend(ids)
        for name, values in features.items():
            evidence.features.setdefault(name, []).extend(values)
        evidence.predictions.extend(predictions)
        evidence.scores.extend(scores)

    def _cusum(self, version: _VersionPanes, pane: int, delta: PaneDelta, deltas: _Deltas,
               predictions: PredictionColumns | None, pairs: PairColumns | None) -> None:
        """Feed the CUSUM streams in the partition's order; their new detections become instants,
        the pane's share of each stream's window status goes into the delta."""
        cusum = version.cusum
        if cusum is None:
            return
        if predictions is None and (pairs is None or self.cfg.task == "regression" or pairs.timestamps is None):
            return
        self._open_cusum_window(version, pane)
        before = cusum.result().streams
        if predictions is not None:
            cusum.update(predictions.frame, predictions.predictions, predictions.attributes)
            times = predictions.timestamps
        else:
            assert pairs is not None and pairs.timestamps is not None
            cusum.update_errors(version.evaluation.errors(pairs))
            times = pairs.timestamps
        tags = {"model_id": self.cfg.id, "model_version": version.version}
        for detection in cusum.new:
            time_ns = int(round(float(times[detection.row]) * NS))
            deltas.instants.append(Instant(version.version, time_ns,
                                           cusum_detection_points(detection, tags=tags, time_ns=time_ns)))
        after = cusum.result().streams
        status = delta.cusum if delta.cusum is not None else [[0, 0.0, 0, None] for _ in after]
        for row, (old, new) in zip(status, zip(before, after)):
            detections = new.detections - old.detections
            row[0] += detections
            if detections > 0:
                row[1] = max(row[1], new.ratio)
            row[2] += new.n - old.n
            if new.n > old.n and new.detections == 0:  # the stream's statistic after its last observation
                row[3] = new.ratio
        delta.cusum = status

    # -- snapshot --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"watermark": self.watermark if math.isfinite(self.watermark) else None,
                "versions": {v: m.snapshot() for v, m in self.versions.items()}, "pending": dict(self.pending)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.watermark = state["watermark"] if state.get("watermark") is not None else -math.inf
        self.versions = {}
        for version, snap in state.get("versions", {}).items():
            self._version(version).restore(snap)
        self.pending = dict(state.get("pending", {}))

