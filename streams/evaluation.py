"""Wiring from events to detectors: which summaries a model's window holds, and their points.

:class:`Evaluation` is built once per model from its configuration and
reference profile. It turns events into numpy columns and creates the
window summaries (:class:`WindowSummaries`) and the long-running sequential
detectors (:class:`SequentialState`). All statistics live in ``detectors/``;
this module only routes arrays to them and their results to points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from detectors.base import FeatureFrame
from detectors.performance import ClassificationPerformance, RegressionPerformance, performance_points
from detectors.points import Point
from streams.config import ModelConfig
from streams.events import Prediction
from streams.join import LabelledPair


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


@dataclass(frozen=True, slots=True)
class PairColumns:
    """A micro-batch of labelled pairs, column by column."""

    y_true: np.ndarray
    y_pred: np.ndarray
    scores: np.ndarray | None
    attributes: Mapping[str, np.ndarray]

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

    # -- columns -----------------------------------------------------------------------------

    def columns(self, events: Sequence[Prediction]) -> PredictionColumns:
        n = len(events)
        numeric = {f: np.fromiter((e.features[f] for e in events), dtype=np.float64, count=n) for f in self.numeric}
        categorical = {f: _objects([e.features[f] for e in events]) for f in self.categorical}
        type_errors: dict[str, np.ndarray] = {}
        if any(e.type_errors for e in events):
            for f in self.cfg.features:
                type_errors[f] = np.fromiter((f in e.type_errors for e in events), dtype=bool, count=n)
        frame = FeatureFrame(numeric=numeric, categorical=categorical, type_errors=type_errors)
        timestamps = np.fromiter((e.timestamp for e in events), dtype=np.float64, count=n)
        predictions = self._labels([e.prediction for e in events])
        scores = None
        if self.cfg.task == "binary" and any(e.score is not None for e in events):
            scores = np.fromiter((math.nan if e.score is None else e.score for e in events), np.float64, n)
        attributes = {a: _objects([e.attributes.get(a, "missing") for e in events]) for a in self.cfg.attributes}
        return PredictionColumns(timestamps, frame, predictions, scores, attributes)

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
        return PairColumns(y_true, y_pred, scores, attributes)

    def _labels(self, values: Sequence[Any]) -> np.ndarray:
        if self.cfg.task == "regression":
            return np.asarray(values, dtype=np.float64)
        return _objects(values)

    # -- factories ---------------------------------------------------------------------------

    def new_window(self) -> WindowSummaries:
        return WindowSummaries(self, self._performance())

    def restore_window(self, state: Mapping[str, Any]) -> WindowSummaries:
        perf_cls = RegressionPerformance if self.cfg.task == "regression" else ClassificationPerformance
        return WindowSummaries(self, perf_cls.restore(state["performance"]))

    def new_sequential(self) -> SequentialState:
        return SequentialState(self)

    def restore_sequential(self, state: Mapping[str, Any]) -> SequentialState:
        return SequentialState(self)

    def _performance(self) -> ClassificationPerformance | RegressionPerformance:
        if self.cfg.task == "regression":
            return RegressionPerformance()
        return ClassificationPerformance(
            positive_label=self.cfg.positive_label if self.cfg.task == "binary" else None)


class WindowSummaries:
    """The mergeable summaries of one window (or pane) of one model version."""

    def __init__(self, evaluation: Evaluation, performance: ClassificationPerformance | RegressionPerformance) -> None:
        self.evaluation = evaluation
        self.performance = performance

    def add_predictions(self, batch: PredictionColumns) -> None:
        pass

    def add_pairs(self, pairs: Sequence[LabelledPair]) -> None:
        cols = self.evaluation.pair_columns(pairs)
        if isinstance(self.performance, RegressionPerformance):
            self.performance.update(cols.y_true, cols.y_pred)
        else:
            self.performance.update(cols.y_true, cols.y_pred, cols.scores)

    def merge(self, other: WindowSummaries) -> WindowSummaries:
        self.performance.merge(other.performance)
        return self

    def copy(self) -> WindowSummaries:
        return self.evaluation.restore_window(self.snapshot())

    def points(self, *, tags: Mapping[str, str], time_ns: int) -> list[Point]:
        out = performance_points(self.performance.result(), tags=tags, time_ns=time_ns)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"performance": self.performance.snapshot()}


class SequentialState:
    """Detectors that run across windows (River's sequential detectors)."""

    def __init__(self, evaluation: Evaluation) -> None:
        self.evaluation = evaluation

    def add_predictions(self, batch: PredictionColumns) -> None:
        pass

    def add_pairs(self, pairs: Sequence[LabelledPair]) -> None:
        pass

    def points(self, *, tags: Mapping[str, str], time_ns: int) -> list[Point]:
        return []

    def snapshot(self) -> dict[str, Any]:
        return {}
