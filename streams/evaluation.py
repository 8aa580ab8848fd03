"""Wiring from events to detectors: which summaries a model's window holds, and their points.

:class:`Evaluation` is built once per model from its configuration and
reference profile. It turns events into numpy columns and creates the
window summaries (:class:`WindowSummaries`) and the long-running sequential
detectors (:class:`SequentialState`). All statistics live in ``detectors/``;
this module only routes arrays to them and their results to points.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from operator import itemgetter, methodcaller
from typing import Any, Mapping, Sequence

import numpy as np

from detectors.base import DetectorError, FeatureFrame
from detectors.cohort import cohort_points
from detectors.concept import ConceptDrift, concept_points
from detectors.cusum import CUSUMResult, ReferenceCUSUM, StreamStatus, cusum_points
from detectors.drift import DriftSuite, drift_points
from detectors.estimate import ESTIMATE_MEASUREMENT, ConfidenceBasedEstimate
from detectors.fairness import FairnessSummary, fairness_points
from detectors.label_shift import LabelShift, label_shift_points
from detectors.performance import (ClassificationPerformance, PerformanceResult, RegressionPerformance,
                                   performance_points)
from detectors.profile import as_class_labels
from detectors.sequential import SequentialDrift, sequential_points
from detectors.points import Point
from streams.config import ModelConfig
# the events' field getters are the parser's (one definition for both column readers)
from streams.events import _ATTRIBUTES, _FEATURES, _PREDICTION, _SCORE, _TIME, _TYPE_ERRORS, _VERSION, Prediction
from streams.join import LabelledPair
from streams.partials import Evidence


@dataclass(frozen=True, slots=True)
class PredictionColumns:
    """A micro-batch of one model version's predictions, column by column."""

    timestamps: np.ndarray
    frame: FeatureFrame
    predictions: np.ndarray
    scores: np.ndarray | None
    attributes: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    def take(self, rows: np.ndarray) -> PredictionColumns:
        """The columns of ``rows`` (indices, in their order), as :meth:`Evaluation.columns` gives
        them for those predictions alone: ``scores`` is ``None`` when none of them has a score
        (a score is never NaN: the parser refuses one), ``type_errors`` empty when none had one."""
        frame = self.frame
        scores = self.scores[rows] if self.scores is not None else None
        if scores is not None and np.isnan(scores).all():
            scores = None
        type_errors = {f: mask[rows] for f, mask in frame.type_errors.items()}
        if not any(mask.any() for mask in type_errors.values()):
            type_errors = {}
        return PredictionColumns(
            self.timestamps[rows],
            FeatureFrame(numeric={f: v[rows] for f, v in frame.numeric.items()},
                         categorical={f: v[rows] for f, v in frame.categorical.items()}, type_errors=type_errors),
            self.predictions[rows], scores, {a: v[rows] for a, v in self.attributes.items()})


class PredictionBlock:
    """One model's predictions of one batch of one source partition, in arrival order, with the
    Kafka offset of each: what stage 1 reads column by column.

    The parser's :class:`~streams.events.Prediction` of each event is the join's unit, so the
    block keeps those (no copy) and reads each field of all its rows at once, in C
    (``attrgetter``/``itemgetter`` over the rows, ``zip`` to transpose the features), when a
    column is first asked for: a pane's inputs are then index operations on these columns
    (:meth:`Evaluation.columns`), never a Python loop over its events.
    """

    __slots__ = ("events", "offsets", "_columns", "_versions", "_timestamps")

    def __init__(self, events: Sequence[Prediction] = (), offsets: Sequence[int] | None = None) -> None:
        self.events: list[Prediction] = list(events)
        self.offsets: list[int] = list(offsets) if offsets is not None else [-1] * len(self.events)
        # per evaluation, dropped with it: keyed by the object, not by id(), which a later evaluation
        # (another model or config) can reuse and so read a dead one's columns
        self._columns: weakref.WeakKeyDictionary[Evaluation, PredictionColumns] = weakref.WeakKeyDictionary()
        self._versions: list[str] | None = None
        self._timestamps: np.ndarray | None = None

    def add(self, event: Prediction, offset: int = -1) -> int:
        """Append one prediction (before any column is read); returns its row."""
        self.events.append(event)
        self.offsets.append(offset)
        return len(self.events) - 1

    def __len__(self) -> int:
        return len(self.events)

    @property
    def versions(self) -> list[str]:
        """Each row's model version."""
        if self._versions is None:
            self._versions = list(map(_VERSION, self.events))
        return self._versions

    @property
    def timestamps(self) -> np.ndarray:
        """Each row's event time (epoch seconds)."""
        if self._timestamps is None:
            self._timestamps = np.fromiter(map(_TIME, self.events), dtype=np.float64, count=len(self.events))
        return self._timestamps

    def ids(self, rows: Sequence[int]) -> list[str]:
        events = self.events
        return [events[r].prediction_id for r in rows]

    def scores(self, rows: Sequence[int]) -> list[float | None]:
        """The rows' scores as the events gave them (``None``: no score)."""
        events = self.events
        return [events[r].score for r in rows]


@dataclass(frozen=True, slots=True)
class PairColumns:
    """A micro-batch of labelled pairs, column by column."""

    y_true: np.ndarray
    y_pred: np.ndarray
    scores: np.ndarray | None
    attributes: Mapping[str, np.ndarray]
    timestamps: np.ndarray | None = None
    """When each pair became known: the later of its prediction's and its feedback's event time."""

    def __len__(self) -> int:
        return int(self.y_true.shape[0])


def _objects(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class Evaluation:
    """Builds a model's detectors and feeds them columns."""

    def __init__(self, cfg: ModelConfig, profile: Any | None = None) -> None:
        self.cfg = cfg
        self.profile = profile
        self.numeric = [f for f, kind in cfg.features.items() if kind == "numeric"]
        self.categorical = [f for f, kind in cfg.features.items() if kind == "categorical"]
        self.estimate_template = self._estimate_template()

    # -- columns -----------------------------------------------------------------------------

    def columns(self, block: PredictionBlock | Sequence[Prediction], rows: np.ndarray | None = None) -> PredictionColumns:
        """The columns of a block's ``rows`` (every row when ``None``; a sequence of predictions is
        a block of them): the block's columns are read once per evaluation
        (:meth:`_block_columns`), a subset is an index operation on them."""
        if not isinstance(block, PredictionBlock):
            block = PredictionBlock(block)
        whole = block._columns.get(self)
        if whole is None:
            whole = block._columns[self] = self._block_columns(block)
        return whole if rows is None else whole.take(rows)

    def _block_columns(self, block: PredictionBlock) -> PredictionColumns:
        """Every row of ``block`` column by column, each column read in one C-level pass over the
        rows. A missing numeric feature (``None`` from a hand-made event) is NaN, as in the parser."""
        events = block.events
        n = len(events)
        names = list(self.cfg.features)
        features = list(map(_FEATURES, events))
        if len(names) == 1:
            values: list[Sequence[Any]] = [list(map(itemgetter(names[0]), features))]
        elif names and n:
            values = list(zip(*map(itemgetter(*names), features)))
        else:
            values = [() for _ in names]
        numeric: dict[str, np.ndarray] = {}
        categorical: dict[str, np.ndarray] = {}
        for name, column in zip(names, values):
            if self.cfg.features[name] == "numeric":
                numeric[name] = np.array(column, dtype=np.float64).reshape(n)
            else:
                categorical[name] = _objects(column)
        type_errors: dict[str, np.ndarray] = {}
        errors = list(map(_TYPE_ERRORS, events))
        if any(errors):
            for f in self.cfg.features:
                type_errors[f] = np.fromiter((f in e for e in errors), dtype=bool, count=n)
        frame = FeatureFrame(numeric=numeric, categorical=categorical, type_errors=type_errors)
        predictions = self._labels(list(map(_PREDICTION, events)))
        scores = None
        if self.cfg.task == "binary":
            raw = list(map(_SCORE, events))
            if raw.count(None) < n:
                scores = np.array(raw, dtype=np.float64).reshape(n)  # None -> NaN
        attributes_of = list(map(_ATTRIBUTES, events))
        attributes = {a: _objects(list(map(methodcaller("get", a, "missing"), attributes_of)))
                      for a in self.cfg.attributes}
        return PredictionColumns(block.timestamps, frame, predictions, scores, attributes)

    def pair_columns(self, pairs: Sequence[LabelledPair]) -> PairColumns:
        n = len(pairs)
        y_true = self._labels([p.label for p in pairs])
        y_pred = self._labels([p.prediction.prediction for p in pairs])
        scores = None
        if self.cfg.task == "binary" and any(p.prediction.score is not None for p in pairs):
            scores = np.fromiter(
                (math.nan if p.prediction.score is None else p.prediction.score for p in pairs), np.float64, n)
        attributes = {a: _objects([p.prediction.attributes.get(a, "missing") for p in pairs])
                      for a in self.cfg.attributes}
        timestamps = np.fromiter((max(p.prediction.timestamp, p.feedback_timestamp) for p in pairs), np.float64, n)
        return PairColumns(y_true, y_pred, scores, attributes, timestamps)

    def errors(self, cols: PairColumns) -> np.ndarray:
        """Each pair's error in arrival order: 0/1 (wrong) for a classifier, the absolute error
        for a regression (what the concept detectors and the CUSUM error stream watch)."""
        if self.cfg.task == "regression":
            return np.abs(cols.y_true - cols.y_pred).astype(np.float64)
        return (cols.y_true != cols.y_pred).astype(np.float64)

    def evidence_frame(self, evidence: Evidence) -> Any:
        """A window's evidence rows as one DataFrame with the reference profile's column names:
        features, prediction, score, and the target where a label has arrived. Class labels are
        text, as everywhere in driftwarden (``as_class_labels``)."""
        import pandas as pd

        profile = self.profile
        prediction_col = (profile.prediction if profile is not None else None) or "prediction"
        score_col = (profile.score if profile is not None else None) or "score"
        target_col = (profile.target if profile is not None else None) or "target"
        frame = pd.DataFrame({name: evidence.features.get(name, [None] * len(evidence))
                              for name in self.cfg.features}, columns=list(self.cfg.features))
        frame[prediction_col] = evidence.predictions
        if self.cfg.task == "binary":
            frame[score_col] = [np.nan if s is None else s for s in evidence.scores]
        if evidence.labels:
            frame[target_col] = [evidence.labels.get(pid) for pid in evidence.ids]
        return frame

    def _labels(self, values: Sequence[Any]) -> np.ndarray:
        if self.cfg.task == "regression":
            return np.asarray(values, dtype=np.float64)
        return _objects(values)

    # -- factories ---------------------------------------------------------------------------

    def new_window(self) -> WindowSummaries:
        return WindowSummaries(
            self,
            performance=self._performance(),
            drift=self._drift(),
            feedback_labels=self._feedback_labels(),
            fairness=self._fairness(),
            estimate=self.estimate_template.fresh() if self.estimate_template is not None else None,
        )

    def restore_window(self, state: Mapping[str, Any]) -> WindowSummaries:
        perf_cls = RegressionPerformance if self.cfg.task == "regression" else ClassificationPerformance
        return WindowSummaries(
            self,
            performance=perf_cls.restore(state["performance"]),
            drift=DriftSuite.restore(state["drift"], profile=self.profile) if state.get("drift") else None,
            feedback_labels=LabelShift.restore(state["feedback_labels"]) if state.get("feedback_labels") else None,
            fairness=FairnessSummary.restore(state["fairness"]) if state.get("fairness") else None,
            estimate=ConfidenceBasedEstimate.restore(state["estimate"]) if state.get("estimate") else None,
        )

    def new_cohort(self) -> CohortSummaries:
        """The summaries of one prediction-time cohort (its pairs' performance and group figures).
        ROC AUC from the score histograms (within ~1e-4), so a cohort kept for the join's TTL is small."""
        return CohortSummaries(performance=self._performance(cumulative=True), fairness=self._fairness())

    def restore_cohort(self, state: Mapping[str, Any]) -> CohortSummaries:
        perf_cls = RegressionPerformance if self.cfg.task == "regression" else ClassificationPerformance
        return CohortSummaries(performance=perf_cls.restore(state["performance"]),
                               fairness=FairnessSummary.restore(state["fairness"]) if state.get("fairness") else None)

    def new_sequential(self) -> SequentialState:
        """The model-level detectors that run across windows (stage 2)."""
        sequential = SequentialDrift.from_profile(self.profile) if self.profile is not None else None
        task = "regression" if self.cfg.task == "regression" else "classification"
        return SequentialState(self, sequential=sequential, concept=ConceptDrift(task=task),
                               cumulative=self._performance(), cusum=self._cusum())

    def restore_sequential(self, state: Mapping[str, Any]) -> SequentialState:
        perf_cls = RegressionPerformance if self.cfg.task == "regression" else ClassificationPerformance
        return SequentialState(
            self,
            sequential=SequentialDrift.restore(state["sequential"]) if state.get("sequential") else None,
            concept=ConceptDrift.restore(state["concept"]),
            cumulative=perf_cls.restore(state["cumulative"]),
            cusum=self._cusum(),
        )

    def new_cusum(self) -> ReferenceCUSUM | None:
        """CUSUM streams against the reference (stage 1: every micro-batch, in the partition's order)."""
        return self._cusum()

    def restore_cusum(self, state: Mapping[str, Any] | None) -> ReferenceCUSUM | None:
        cusum = self._cusum()
        if state and cusum is not None:
            try:
                return ReferenceCUSUM.restore(state, template=cusum)
            except DetectorError:  # taken with another reference or settings: start the streams afresh
                return self._cusum()
        return cusum

    def _cusum(self) -> ReferenceCUSUM | None:
        """CUSUM streams against the reference (every micro-batch; see :mod:`detectors.cusum`)."""
        if self.profile is None or not self.cfg.cusum.enabled:
            return None
        binary = self.cfg.task == "binary"
        return ReferenceCUSUM.from_profile(
            self.profile, positive_label=self.cfg.positive_label if self.cfg.task != "regression" else None,
            attributes=self.cfg.attributes if binary else (),
            false_alarms_per_million=self.cfg.cusum.false_alarms_per_million)

    def _performance(self, *, cumulative: bool = False) -> ClassificationPerformance | RegressionPerformance:
        """A performance summary. The cumulative one keeps no exact score sample: its ROC AUC
        comes from the score histograms (within ~1e-4), so its snapshot stays small."""
        if self.cfg.task == "regression":
            return RegressionPerformance()
        return ClassificationPerformance(
            positive_label=self.cfg.positive_label if self.cfg.task == "binary" else None,
            auc_sample=0 if cumulative else 10_000)

    def _drift(self) -> DriftSuite | None:
        if self.profile is None:
            return None
        methods = {feature: (spec.method, spec.threshold) for feature, spec in self.cfg.drift.items() if feature != "*"}
        default = self.cfg.drift.get("*")
        options: dict[str, Any] = {}
        if default is not None and default.method != "default":
            options["default_method"] = (default.method, default.threshold)
        return DriftSuite(self.profile, methods=methods, **options)

    def _feedback_labels(self) -> LabelShift | None:
        if self.profile is None or not self.profile.labels or self.cfg.task == "regression":
            return None
        return LabelShift(self.profile.labels)

    def _fairness(self) -> FairnessSummary | None:
        if not self.cfg.attributes or self.cfg.task != "binary":
            return None
        return FairnessSummary(attributes=self.cfg.attributes, intersections=self.cfg.intersections,
                               positive_label=self.cfg.positive_label, min_group_size=self.cfg.min_group_size)

    def _estimate_template(self) -> ConfidenceBasedEstimate | None:
        """CBPE calibrated on the reference sample's scores and labels (binary models with both)."""
        profile = self.profile
        if profile is None or self.cfg.task != "binary" or not profile.score or not profile.target:
            return None
        scores = np.asarray(profile.sample.get(profile.score) or [], dtype=np.float64)
        labels = as_class_labels(np.asarray(profile.sample.get(profile.target) or [], dtype=object))
        keep = np.isfinite(scores)
        if keep.sum() < 50:
            return None
        return ConfidenceBasedEstimate.fit(scores[keep], labels[keep], positive_label=self.cfg.positive_label)


class WindowSummaries:
    """The mergeable summaries of one window (or pane) of one model version."""

    def __init__(
        self,
        evaluation: Evaluation,
        *,
        performance: ClassificationPerformance | RegressionPerformance,
        drift: DriftSuite | None,
        feedback_labels: LabelShift | None,
        fairness: FairnessSummary | None,
        estimate: ConfidenceBasedEstimate | None,
    ) -> None:
        self.evaluation = evaluation
        self.performance = performance
        self.drift = drift
        self.feedback_labels = feedback_labels
        self.fairness = fairness
        self.estimate = estimate

    def add_predictions(self, batch: PredictionColumns) -> None:
        if self.drift is not None:
            self.drift.update(batch.frame, batch.predictions, batch.scores)
        if self.fairness is not None:
            self.fairness.update_predictions(batch.predictions, batch.attributes)
        if self.estimate is not None and batch.scores is not None:
            self.estimate.update(batch.scores, batch.predictions)

    def add_pairs(self, cols: PairColumns) -> None:
        if isinstance(self.performance, RegressionPerformance):
            self.performance.update(cols.y_true, cols.y_pred)
        else:
            self.performance.update(cols.y_true, cols.y_pred, cols.scores)
        if self.feedback_labels is not None:
            self.feedback_labels.update(cols.y_true)
        if self.fairness is not None:
            self.fairness.update(cols.y_true, cols.y_pred, cols.attributes)

    def merge(self, other: WindowSummaries) -> WindowSummaries:
        self.performance.merge(other.performance)
        for name in ("drift", "feedback_labels", "fairness", "estimate"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None:
                mine.merge(theirs)
        return self

    def copy(self) -> WindowSummaries:
        return self.evaluation.restore_window(self.snapshot())

    def points(self, *, tags: Mapping[str, str], time_ns: int) -> list[Point]:
        out = performance_points(self.performance.result(), tags=tags, time_ns=time_ns)
        if self.drift is not None:
            report = self.drift.result()
            if report.n:  # a window of late labels only (end of input) has no inputs to compare
                out.extend(drift_points(report, tags=tags, time_ns=time_ns))
        if self.feedback_labels is not None:
            shift = self.feedback_labels.result()
            if shift.n:
                out.extend(label_shift_points(shift, source="feedback", tags=tags, time_ns=time_ns))
        if self.fairness is not None:
            out.extend(fairness_points(self.fairness.result(), tags=tags, time_ns=time_ns))
        if self.estimate is not None:
            out.extend(performance_points(self.estimate.result(), tags=tags, time_ns=time_ns,
                                          measurement=ESTIMATE_MEASUREMENT))
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "performance": self.performance.snapshot(),
            "drift": self.drift.snapshot(reference=False) if self.drift is not None else None,
            "feedback_labels": self.feedback_labels.snapshot() if self.feedback_labels is not None else None,
            "fairness": self.fairness.snapshot() if self.fairness is not None else None,
            "estimate": self.estimate.snapshot() if self.estimate is not None else None,
        }


class CohortSummaries:
    """The mergeable summaries of one prediction-time cohort: performance and per-group figures of
    the pairs whose *prediction* falls in the pane, whenever their label arrived (points:
    :func:`detectors.cohort.cohort_points`)."""

    def __init__(self, *, performance: ClassificationPerformance | RegressionPerformance,
                 fairness: FairnessSummary | None) -> None:
        self.performance = performance
        self.fairness = fairness

    def add_pairs(self, cols: PairColumns) -> None:
        if isinstance(self.performance, RegressionPerformance):
            self.performance.update(cols.y_true, cols.y_pred)
        else:
            self.performance.update(cols.y_true, cols.y_pred, cols.scores)
        if self.fairness is not None:
            self.fairness.update(cols.y_true, cols.y_pred, cols.attributes)

    @property
    def n(self) -> int:
        """Labelled pairs in the cohort."""
        return int(self.performance.result().n)

    def merge(self, other: CohortSummaries) -> CohortSummaries:
        self.performance.merge(other.performance)
        if self.fairness is not None and other.fairness is not None:
            self.fairness.merge(other.fairness)
        return self

    def points(self, *, predictions: int, estimate: PerformanceResult | None, tags: Mapping[str, str],
               time_ns: int) -> list[Point]:
        """The cohort's points at ``time_ns`` (its window's end); ``estimate`` is the window's
        label-free estimate, written beside the realised figures while coverage is low."""
        return cohort_points(self.performance.result(), self.fairness.result() if self.fairness is not None else None,
                             predictions=predictions, estimate=estimate, tags=tags, time_ns=time_ns)

    def snapshot(self) -> dict[str, Any]:
        return {"performance": self.performance.snapshot(),
                "fairness": self.fairness.snapshot() if self.fairness is not None else None}


class SequentialState:
    """Model-level detectors that run across windows (stage 2), fed when a pane closes, in an
    order that depends only on what was merged (source partition, then batch sequence): River's
    sequential detectors on the panes' per-batch feature and score means, concept drift on the
    pairs' errors, and cumulative performance (every closed pane merged once). The CUSUM streams
    run in stage 1; ``cusum`` here is the template that names their streams for the window points."""

    def __init__(self, evaluation: Evaluation, *, sequential: SequentialDrift | None, concept: ConceptDrift,
                 cumulative: ClassificationPerformance | RegressionPerformance,
                 cusum: ReferenceCUSUM | None = None) -> None:
        self.evaluation = evaluation
        self.sequential = sequential
        self.concept = concept
        self.cumulative = cumulative
        self.cusum = cusum

    def add_pane(self, *, means: Sequence[Mapping[str, tuple[float, int]]], errors: Sequence[float],
                 performance: ClassificationPerformance | RegressionPerformance) -> None:
        """A closed pane's inputs: its batches' stream means and its pairs' errors, in merge order."""
        if self.sequential is not None:
            for batch in means:
                self.sequential.update_means(batch)
        if errors:
            self.concept.update(np.asarray(errors, dtype=np.float64))
        self.cumulative.merge(performance)

    def points(self, *, tags: Mapping[str, str], time_ns: int, predictions: int = 1,
               cusum: Sequence[Sequence[float]] | None = None) -> list[Point]:
        """Points at a window's close (no state change; :meth:`start_window` begins the next).
        ``cusum`` is the window's merged CUSUM status per stream (see
        :class:`~streams.partials.PaneDelta`). The sequential drift figures are left out of a
        window without predictions."""
        out: list[Point] = []
        if self.sequential is not None and predictions:
            out.extend(sequential_points(self.sequential.result(), tags=tags, time_ns=time_ns))
        out.extend(concept_points(self.concept.result(), tags=tags, time_ns=time_ns))
        if self.cusum is not None:
            rows = cusum or [[0, 0.0, 0, 0.0] for _ in self.cusum.streams]
            # a stream still in its changed state reports its detection's ratio (>= 1) as its current one
            streams = tuple(StreamStatus(stream=stream, detections=int(row[0]),
                                         ratio=float(row[1] if row[0] else row[3]), n=int(row[2]), n_total=0,
                                         changed=not row[0] and float(row[3]) >= 1.0)
                            for stream, row in zip(self.cusum.streams, rows))
            result = CUSUMResult(streams=streams, columns=self.cusum.columns,
                                 false_alarms_per_million=self.cusum.false_alarms_per_million)
            out.extend(cusum_points(result, tags=tags, time_ns=time_ns))
        return out

    def start_window(self) -> None:
        """Begin the concept detectors' next reporting window."""
        self.concept.start_window()

    def with_cumulative(self, points: list[Point]) -> list[Point]:
        """Add ``cumulative_value``/``cumulative_n`` (since the worker started tracking this version)
        to the window's ``performance`` points, beside the window's own ``value``/``n``."""
        cumulative = {p.tags["metric"]: p for p in performance_points(
            self.cumulative.result(), tags={}, time_ns=0)}
        out = []
        for point in points:
            extra = cumulative.pop(point.tags.get("metric", ""), None) if point.measurement == "performance" else None
            if extra is not None:
                point = Point(point.measurement, point.tags,
                              {**point.fields, "cumulative_value": extra.fields["value"],
                               "cumulative_n": extra.fields["n"]}, point.time_ns)
            out.append(point)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "sequential": self.sequential.snapshot() if self.sequential is not None else None,
            "concept": self.concept.snapshot(),
            "cumulative": self.cumulative.snapshot(),
        }
