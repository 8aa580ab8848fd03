"""Label-free performance estimates from calibrated confidence (NannyML's CBPE idea).

Feedback arrives late or never; the model's own scores arrive with every
prediction. If a score is a *calibrated* probability p that the event is
positive, a prediction of "positive" is a true positive with probability p and
a false positive with probability 1 − p, so the expected confusion matrix of a
window is a sum of calibrated probabilities, and expected accuracy, precision,
recall and F1 follow from it. This is Confidence-Based Performance Estimation
(CBPE, NannyML). It tracks performance changes caused by covariate shift (the
model becomes less sure), not by concept drift (the model is confidently wrong);
the labelled metrics in :mod:`detectors.performance` catch the latter.

Scores are calibrated on reference data (a labelled hold-out set) by
:class:`ScoreCalibration`: equal-frequency bins of the raw score, the positive
rate per bin made monotone with the pool-adjacent-violators algorithm
(isotonic regression on bin means), and linear interpolation between bin
means. The calibration is a few dozen numbers, so it lives in the snapshot.

Expected metrics are ratios of expectations — expected precision is
E[TP] / (E[TP] + E[FP]) — as in CBPE; for a window of hundreds of events this
is within a fraction of a standard error of the expected ratio.

>>> import numpy as np
>>> rng = np.random.default_rng(3)
>>> p = rng.beta(2, 2, 20_000)
>>> y = np.where(rng.random(20_000) < p, "1", "0").astype(object)
>>> cbpe = ConfidenceBasedEstimate.fit(p[:10_000], y[:10_000], positive_label="1")
>>> pred = np.where(p[10_000:] >= 0.5, "1", "0").astype(object)
>>> estimate = cbpe.update(p[10_000:], pred).result().metrics["accuracy"]
>>> realised = float((pred == y[10_000:]).mean())
>>> round(estimate, 3), round(realised, 3)
(0.692, 0.691)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Self, Sequence

import numpy as np
import pandas as pd

from detectors.base import DetectorError
from detectors.performance import PerformanceResult, _check_lengths, confusion_metrics, positive_mask

__all__ = ["ConfidenceBasedEstimate", "ScoreCalibration", "ESTIMATE_MEASUREMENT"]

ESTIMATE_MEASUREMENT = "performance_estimate"
"""Measurement for :func:`detectors.performance.performance_points` of an estimate."""

ERR_REFERENCE = "reference scores and labels must be non-empty and aligned"
ERR_MERGE = "cannot merge estimates fitted on different references or settings"

_BINARY_METRICS = ("accuracy", "precision", "recall", "f1")
_MULTICLASS_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


@dataclass(frozen=True, slots=True)
class ScoreCalibration:
    """A monotone, piecewise-linear map from a raw score to a calibrated probability.

    ``x`` are the mean raw scores of the reference bins (ascending), ``y`` the
    isotonic positive rate of each bin. Between bin means the map is linear; beyond
    the outer bin means the end segments are extended, and the result is clipped
    to [0, 1].

    >>> cal = ScoreCalibration.fit(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]), bins=4)
    >>> cal.x, cal.y
    ((0.1, 0.2, 0.3, 0.4), (0.0, 0.5, 0.5, 1.0))
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        x, y = self.x, self.y
        out = np.interp(scores, x, y)
        if len(x) > 1:
            # extend the end segments instead of flattening them: clamping would pull the
            # most confident scores towards the end bins' means and bias every estimate
            low, high = scores < x[0], scores > x[-1]
            slope_low = (y[1] - y[0]) / (x[1] - x[0])
            slope_high = (y[-1] - y[-2]) / (x[-1] - x[-2])
            out = np.where(low, y[0] + slope_low * (scores - x[0]), out)
            out = np.where(high, y[-1] + slope_high * (scores - x[-1]), out)
        return np.clip(out, 0.0, 1.0)

    @classmethod
    def fit(cls, scores: np.ndarray, outcomes: np.ndarray, *, bins: int = 20) -> ScoreCalibration:
        """Histogram + isotonic calibration of ``scores`` against 0/1 ``outcomes``."""
        scores = np.asarray(scores, dtype=np.float64)
        outcomes = np.asarray(outcomes, dtype=np.float64)
        keep = np.isfinite(scores)
        scores, outcomes = scores[keep], outcomes[keep]
        if scores.size == 0:
            raise DetectorError(ERR_REFERENCE)
        edges = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        index = np.searchsorted(edges, scores, side="right")
        count = np.bincount(index, minlength=len(edges) + 1).astype(np.float64)
        mean_x = np.bincount(index, weights=scores, minlength=len(edges) + 1)
        rate = np.bincount(index, weights=outcomes, minlength=len(edges) + 1)
        used = count > 0
        count, mean_x, rate = count[used], mean_x[used] / count[used], rate[used] / count[used]
        return cls(x=tuple(float(v) for v in mean_x), y=tuple(float(v) for v in _pool_adjacent_violators(rate, count)))

    def to_dict(self) -> dict[str, list[float]]:
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, state: Mapping[str, Sequence[float]]) -> ScoreCalibration:
        return cls(x=tuple(float(v) for v in state["x"]), y=tuple(float(v) for v in state["y"]))


def _pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) fit of ``values`` — a loop over bins, not events."""
    sums: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    for v, w in zip(values.tolist(), weights.tolist()):
        sums.append(v * w)
        totals.append(w)
        sizes.append(1)
        while len(sums) > 1 and sums[-2] / totals[-2] > sums[-1] / totals[-1]:
            s, t, k = sums.pop(), totals.pop(), sizes.pop()
            sums[-1] += s
            totals[-1] += t
            sizes[-1] += k
    return np.repeat(np.array(sums) / np.array(totals), sizes)


class ConfidenceBasedEstimate:
    """Expected confusion matrix of a window from calibrated scores, without labels.

    Build it with :meth:`fit` on reference data. Binary: ``scores`` are
    P(positive) and the expected confusion is, per prediction, E[TP] += p,
    E[FP] += 1 − p when predicted positive, and E[FN] += p, E[TN] += 1 − p when
    predicted negative (p calibrated). Multiclass: each class's score column is
    calibrated one-vs-rest, the row is renormalised to sum to 1, and the whole
    row is added to the predicted class's column of the expected confusion; the
    expected accuracy is then the mean calibrated probability of the predicted
    class. Rows without a (finite) score are skipped.

    Results are :class:`~detectors.performance.PerformanceResult` with
    ``accuracy``, ``precision``, ``recall``, ``f1`` (binary) or ``accuracy``,
    ``precision_macro``, ``recall_macro``, ``f1_macro`` (multiclass); write them
    with ``performance_points(result, ..., measurement=ESTIMATE_MEASUREMENT)``.
    """

    def __init__(
        self,
        *,
        calibrations: Sequence[ScoreCalibration],
        classes: Sequence[str],
        positive_label: str | None = None,
        threshold: float = 0.5,
    ) -> None:
        self.calibrations = tuple(calibrations)
        self.classes = tuple(str(c) for c in classes)
        self.positive_label = str(positive_label) if positive_label is not None else None
        self.threshold = float(threshold)
        binary = self.positive_label is not None
        if binary and len(self.calibrations) != 1:
            raise DetectorError("a binary estimate takes one calibration (of P(positive))")
        if not binary and len(self.calibrations) != len(self.classes):
            raise DetectorError("a multiclass estimate takes one calibration per class")
        self._index = {c: i for i, c in enumerate(self.classes)}
        self._reset()

    def _reset(self) -> None:
        k = 2 if self.positive_label is not None else len(self.classes)
        self._expected = np.zeros((k, k), dtype=np.float64)  # rows: true class, columns: predicted
        self._n = 0

    @classmethod
    def fit(
        cls,
        reference_scores: np.ndarray,
        reference_labels: np.ndarray,
        *,
        positive_label: str | None = None,
        classes: Sequence[str] | None = None,
        threshold: float = 0.5,
        bins: int = 20,
    ) -> Self:
        """Calibrate on labelled reference data.

        Binary: 1-D ``reference_scores`` (P(positive)) and ``positive_label``.
        Multiclass: ``n × len(classes)`` scores in the order of ``classes``.
        ``threshold`` turns binary scores into decisions when :meth:`update` gets no ``y_pred``.
        """
        scores = np.asarray(reference_scores, dtype=np.float64)
        labels = np.asarray(reference_labels, dtype=object)
        if len(scores) == 0 or len(scores) != len(labels):
            raise DetectorError(ERR_REFERENCE)
        known = ~pd.isna(labels)
        if scores.ndim == 1:
            if positive_label is None:
                raise DetectorError("1-D reference scores need positive_label")
            positive = str(positive_label)
            outcomes = labels[known] == positive
            calibration = ScoreCalibration.fit(scores[known], outcomes, bins=bins)
            return cls(calibrations=[calibration], classes=("__negative__", positive),
                       positive_label=positive, threshold=threshold)
        if classes is None or scores.ndim != 2 or scores.shape[1] != len(classes):
            raise DetectorError("multiclass reference scores need classes, one per score column")
        names = [str(c) for c in classes]
        calibrations = [
            ScoreCalibration.fit(scores[known, j], labels[known] == name, bins=bins) for j, name in enumerate(names)
        ]
        return cls(calibrations=calibrations, classes=names, threshold=threshold)

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: P(positive) (binary) or rows summing to 1 (multiclass)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.positive_label is not None:
            return np.clip(self.calibrations[0](scores), 0.0, 1.0)
        q = np.column_stack([cal(scores[:, j]) for j, cal in enumerate(self.calibrations)])
        q = np.clip(q, 0.0, None)
        total = q.sum(axis=1, keepdims=True)
        uniform = np.full_like(q, 1.0 / q.shape[1])
        return np.divide(q, total, out=uniform, where=total > 0)

    def update(self, scores: np.ndarray, y_pred: np.ndarray | None = None) -> Self:
        """Add a micro-batch of scores and (optionally) the predicted labels to the expectation.

        Without ``y_pred`` the decision is ``score >= threshold`` (binary) or the
        arg-max class (multiclass). Predictions outside the known classes and rows
        without a finite score are skipped.
        """
        scores = np.asarray(scores, dtype=np.float64)
        binary = self.positive_label is not None
        if binary and scores.ndim != 1 or not binary and (scores.ndim != 2 or scores.shape[1] != len(self.classes)):
            raise DetectorError(f"scores of shape {scores.shape} do not fit this estimate")
        finite = np.isfinite(scores) if binary else np.isfinite(scores).all(axis=1)
        if binary:
            if y_pred is None:
                decided = scores >= self.threshold
                keep = finite
            else:
                y_pred = np.asarray(y_pred, dtype=object)
                _check_lengths(scores, y_pred)
                decided, present = positive_mask(y_pred, self.positive_label)
                keep = finite & present
            if not keep.all():
                scores, decided = scores[keep], decided[keep]
            p = self.calibrate(scores)
            p_pos, p_neg = float(p[decided].sum()), float(p[~decided].sum())
            n_pos = int(decided.sum())
            n_neg = len(p) - n_pos
            self._expected += np.array([[n_neg - p_neg, n_pos - p_pos], [p_neg, p_pos]])
            self._n += len(p)
            return self
        if y_pred is None:
            predicted = np.where(finite, np.nan_to_num(scores, nan=-np.inf).argmax(axis=1), -1)
        else:
            y_pred = np.asarray(y_pred, dtype=object)
            _check_lengths(scores, y_pred)
            codes, uniques = pd.factorize(y_pred, use_na_sentinel=True)
            lookup = np.array([self._index.get(str(u), -1) for u in uniques] + [-1], dtype=np.int64)
            predicted = lookup[codes]
        keep = finite & (predicted >= 0)
        if not keep.all():
            scores, predicted = scores[keep], predicted[keep]
        q = self.calibrate(scores)
        onehot = np.zeros_like(q)
        onehot[np.arange(len(q)), predicted] = 1.0
        self._expected += q.T @ onehot
        self._n += len(q)
        return self

    def _settings(self) -> tuple[Any, ...]:
        return (self.calibrations, self.classes, self.positive_label, self.threshold)

    def merge(self, other: Self) -> Self:
        """Add ``other``'s expected confusion (same calibration) to this one."""
        if self._settings() != other._settings():
            raise DetectorError(ERR_MERGE)
        self._expected += other._expected
        self._n += other._n
        return self

    @property
    def expected_confusion(self) -> np.ndarray:
        """A copy of the expected confusion matrix (rows: true class, columns: predicted)."""
        return self._expected.copy()

    def result(self) -> PerformanceResult:
        """Expected metrics of the window so far (``NaN`` when empty or undefined)."""
        if self.positive_label is not None:
            metrics = confusion_metrics(self._expected, positive=1)
            names = _BINARY_METRICS
        else:
            metrics = confusion_metrics(self._expected, positive=None)
            names = _MULTICLASS_METRICS
        return PerformanceResult(n=self._n, metrics={name: float(metrics.get(name, math.nan)) for name in names})

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state, calibration included."""
        return {
            "kind": "confidence_based_estimate",
            "version": 1,
            "classes": list(self.classes),
            "positive_label": self.positive_label,
            "threshold": self.threshold,
            "calibrations": [c.to_dict() for c in self.calibrations],
            "expected": [[float(v) for v in row] for row in self._expected],
            "n": self._n,
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild the estimate that produced ``state``."""
        self = cls(
            calibrations=[ScoreCalibration.from_dict(c) for c in state["calibrations"]],
            classes=state["classes"],
            positive_label=state["positive_label"],
            threshold=state["threshold"],
        )
        self._expected = np.asarray(state["expected"], dtype=np.float64).reshape(self._expected.shape)
        self._n = int(state["n"])
        return self

    def fresh(self) -> Self:
        """An empty estimate with the same calibration (for the next window)."""
        return type(self)(calibrations=self.calibrations, classes=self.classes,
                          positive_label=self.positive_label, threshold=self.threshold)
