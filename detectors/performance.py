"""Performance on labelled prediction/feedback pairs, as mergeable window summaries.

Once feedback has been joined to its prediction, a window of labelled pairs is
summarised by counts and sums that add exactly across partitions:

- :class:`ClassificationPerformance` keeps a confusion matrix over the class
  labels seen (bounded by ``max_classes``), the log-loss and Brier sums, the
  calibration (ECE) bins and, for ROC AUC, per-class score histograms plus a
  bounded exact sample of (score, label) pairs.
- :class:`RegressionPerformance` keeps exact sums for MAE, RMSE, MAPE and R².

Every figure equals scikit-learn's on the same pairs (the tests use it as the
oracle) with one deliberate difference: an *undefined* metric (precision with
no predicted positive, ROC AUC with a single class, R² of a constant target) is
``NaN`` instead of sklearn's warning-and-zero, and :func:`performance_points`
leaves it out, so a dashboard never plots an invented 0.

Labels are object arrays of ``str`` (the worker stringifies class labels, so
``1`` arrives as ``"1"``); ``None`` marks a missing label and the pair is
skipped. Binary scores are a float64 array of P(positive) with ``NaN`` where the
event carried no score; multiclass scores are an ``n × len(classes)`` array in
the order of the ``classes`` given to the constructor (a row with any ``NaN``
is unscored).

>>> import numpy as np
>>> rng = np.random.default_rng(7)
>>> p = rng.random(200)
>>> y = np.where(rng.random(200) < p, "1", "0").astype(object)
>>> pred = np.where(p >= 0.5, "1", "0").astype(object)
>>> perf = ClassificationPerformance(positive_label="1").update(y, pred, p)
>>> r = perf.result()
>>> r.n, round(r.metrics["accuracy"], 3), round(r.metrics["roc_auc"], 3)
(200, 0.75, 0.838)
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Self, Sequence

import numpy as np
import pandas as pd

from detectors.base import DetectorError
from detectors.points import Point

__all__ = [
    "ClassificationPerformance",
    "PerformanceResult",
    "RegressionPerformance",
    "performance_points",
]

OTHER_LABEL = "__other__"
"""Label that absorbs new values once a vocabulary is full (memory stays bounded)."""

_EPS = float(np.finfo(np.float64).eps)
_SNAPSHOT_VERSION = 1

ERR_LENGTHS = "arrays of one micro-batch must have the same length: {}"
ERR_SCORES_RANGE = "scores must be probabilities in [0, 1] (NaN where absent)"
ERR_SCORES_SHAPE = "scores must be 1-D (binary, P(positive)) or n × len(classes) (multiclass); got shape {}"
ERR_MERGE = "cannot merge summaries built with different settings: {}"


@dataclass(frozen=True, slots=True)
class PerformanceResult:
    """Performance of one window.

    ``n`` is the number of labelled pairs. ``metrics`` maps a metric name to its
    value (``NaN`` when undefined on this window). ``metric_n`` gives the number
    of pairs a metric was computed on when that differs from ``n`` (score-based
    metrics use only the pairs that carried a score).
    """

    n: int
    metrics: Mapping[str, float]
    metric_n: Mapping[str, int] = field(default_factory=dict)

    def n_for(self, metric: str) -> int:
        """Number of pairs behind ``metric``."""
        return int(self.metric_n.get(metric, self.n))


def performance_points(
    result: PerformanceResult,
    *,
    tags: Mapping[str, str],
    time_ns: int,
    measurement: str = "performance",
) -> list[Point]:
    """docs/design.md ``performance`` points: one per defined metric, tag ``metric``, fields ``value``, ``n``.

    Undefined (non-finite) metrics are left out rather than written as 0.

    >>> r = PerformanceResult(n=4, metrics={"accuracy": 0.75, "roc_auc": float("nan")})
    >>> [p.to_line_protocol() for p in performance_points(r, tags={"model_id": "m"}, time_ns=1)]
    ['performance,metric=accuracy,model_id=m n=4i,value=0.75 1']
    """
    points = []
    for name, value in result.metrics.items():
        if not math.isfinite(value):
            continue
        points.append(
            Point(
                measurement,
                {**tags, "metric": name},
                {"value": float(value), "n": result.n_for(name)},
                time_ns=time_ns,
            )
        )
    return points


class LabelVocabulary:
    """A bounded, insertion-ordered mapping from label strings to small integer codes.

    Encoding a micro-batch is one ``pandas.factorize`` (hash-based, vectorised)
    plus a dictionary look-up per *distinct* value. Once ``capacity`` labels are
    known, further new labels map to :data:`OTHER_LABEL`, so memory stays bounded
    whatever arrives. Missing values (``None``/``NaN``) encode as ``-1``.

    >>> v = LabelVocabulary(capacity=3)
    >>> v.encode(np.array(["a", "b", None, "a", "c", "d"], dtype=object)).tolist(), v.labels
    ([0, 1, -1, 0, 2, 2], ['a', 'b', '__other__'])
    """

    __slots__ = ("labels", "_index", "capacity")

    def __init__(self, labels: Iterable[str] = (), *, capacity: int = 256) -> None:
        if capacity < 2:
            raise DetectorError("a label vocabulary needs capacity >= 2")
        self.capacity = capacity
        self.labels: list[str] = []
        self._index: dict[str, int] = {}
        for label in labels:
            self.add(str(label))

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, label: str) -> int | None:
        """The code of ``label`` or ``None`` when unknown."""
        return self._index.get(label)

    def add(self, label: str) -> int:
        """The code of ``label``, adding it (or falling back to :data:`OTHER_LABEL`) when new."""
        code = self._index.get(label)
        if code is not None:
            return code
        if len(self.labels) >= self.capacity - 1 and label != OTHER_LABEL:
            label = OTHER_LABEL
            code = self._index.get(label)
            if code is not None:
                return code
        self._index[label] = len(self.labels)
        self.labels.append(label)
        return self._index[label]

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Codes (int64) of ``values``; ``-1`` where a value is missing."""
        codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
        if len(uniques) == 0:
            return np.full(len(codes), -1, dtype=np.int64)
        lookup = np.fromiter((self.add(str(u)) for u in uniques), dtype=np.int64, count=len(uniques))
        lookup = np.append(lookup, -1)  # code -1 indexes the sentinel slot
        return lookup[codes]

    def remap(self, other: LabelVocabulary) -> np.ndarray:
        """Array mapping ``other``'s codes to this vocabulary's codes (adding labels as needed)."""
        return np.fromiter((self.add(label) for label in other.labels), dtype=np.int64, count=len(other))


def positive_mask(labels: np.ndarray, positive: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels == positive, label present)`` for an object array of labels, in one hash pass.

    >>> [m.tolist() for m in positive_mask(np.array(["1", None, "0"], dtype=object), "1")]
    [[True, False, False], [True, False, True]]
    """
    codes, uniques = pd.factorize(np.asarray(labels, dtype=object), use_na_sentinel=True)
    is_positive = np.fromiter((str(u) == positive for u in uniques), dtype=bool, count=len(uniques))
    return np.append(is_positive, False)[codes], codes >= 0


def _check_lengths(*arrays: np.ndarray) -> None:
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise DetectorError(ERR_LENGTHS.format(sorted(lengths)))


def _grow_square(matrix: np.ndarray, k: int) -> np.ndarray:
    if matrix.shape[0] >= k:
        return matrix
    grown = np.zeros((k, k), dtype=matrix.dtype)
    grown[: matrix.shape[0], : matrix.shape[1]] = matrix
    return grown


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with ``NaN`` where ``den == 0`` (undefined, not zero)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def confusion_metrics(confusion: np.ndarray, positive: int | None) -> dict[str, float]:
    """Label metrics from a confusion matrix (rows: true class, columns: predicted class; counts or expectations).

    Macro averages run over the classes seen as a true or predicted label, and
    skip classes on which a metric is undefined (sklearn's ``zero_division=np.nan``).
    With ``positive`` (a class index), also ``precision``, ``recall``, ``f1`` of that class.

    >>> confusion_metrics(np.array([[5, 1], [2, 2]]), positive=1)["f1"]
    0.5714285714285714
    """
    n = float(confusion.sum())  # float: expected confusion matrices (detectors.estimate) are real-valued
    tp = np.diag(confusion).astype(np.float64)
    pred = confusion.sum(axis=0).astype(np.float64)
    true = confusion.sum(axis=1).astype(np.float64)
    seen = (pred + true) > 0
    precision = _divide(tp, pred)
    recall = _divide(tp, true)
    f1 = _divide(2 * tp, pred + true)
    out = {
        "accuracy": float(tp.sum() / n) if n else math.nan,
        "precision_macro": _nanmean(precision[seen]),
        "recall_macro": _nanmean(recall[seen]),
        "f1_macro": _nanmean(f1[seen]),
    }
    if positive is not None:
        if positive < len(tp):
            out["precision"] = float(precision[positive])
            out["recall"] = float(recall[positive])
            out["f1"] = float(f1[positive])
        else:
            out["precision"] = out["recall"] = out["f1"] = math.nan
    return out


def auc_from_counts(positives: np.ndarray, negatives: np.ndarray) -> float:
    """ROC AUC from counts of positives and negatives per ascending score level.

    Pairs at the same level count one half (the Mann–Whitney statistic with
    mid-ranks, which is what ``roc_auc_score`` computes). ``NaN`` without both classes.

    >>> auc_from_counts(np.array([0, 1, 2]), np.array([2, 1, 0]))
    0.9444444444444444
    """
    n_pos = float(positives.sum())
    n_neg = float(negatives.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    neg_below = np.cumsum(negatives, dtype=np.float64) - negatives
    wins = float(np.dot(positives.astype(np.float64), neg_below + 0.5 * negatives))
    return wins / (n_pos * n_neg)


def exact_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Exact ROC AUC of ``scores`` against the boolean mask ``positive`` (ties count one half)."""
    levels, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, weights=positive.astype(np.float64), minlength=len(levels))
    neg = np.bincount(inverse, weights=(~positive).astype(np.float64), minlength=len(levels))
    return auc_from_counts(pos, neg)


def _float_list(values: np.ndarray) -> list[float]:
    return np.asarray(values, dtype=np.float64).ravel().tolist()


def _pack(values: np.ndarray, dtype: str) -> str:
    """Array as base64 of little-endian bytes: exact, compact and fast to (de)serialise in JSON."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def _unpack(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).copy()


def _sparse(counts: np.ndarray) -> dict[str, str]:
    """Non-zero cells of a count array (flat index, count), packed with :func:`_pack`."""
    flat = counts.ravel()
    nz = np.flatnonzero(flat)
    return {"index": _pack(nz, "<i8"), "count": _pack(flat[nz], "<i8")}


def _dense(state: Mapping[str, str], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(int(np.prod(shape)), dtype=np.int64)
    out[_unpack(state["index"], "<i8")] = _unpack(state["count"], "<i8")
    return out.reshape(shape)


class ClassificationPerformance:
    """Mergeable performance summary of labelled classification pairs.

    Parameters
    ----------
    classes
        Known class labels, in the column order of multiclass ``scores``. Labels
        not listed are discovered on the fly (up to ``max_classes``; later new
        labels count as :data:`OTHER_LABEL`). Required for multiclass scores.
    positive_label
        The positive class of a binary model. Enables ``precision``/``recall``/
        ``f1`` of that class and 1-D ``scores`` (P(positive)).
    calibration_bins
        Equal-width bins on [0, 1] for the expected calibration error. Binary:
        ECE = Σ_b |Σ_{i∈b} y_i − Σ_{i∈b} p_i| / n over P(positive). Multiclass:
        the top-label version, binning max_k p_k against "argmax is the true class".
    auc_bins
        Equal-width score bins per scored class for the ROC AUC fallback.
    auc_sample
        Capacity (scored pairs) of the exact sample behind ROC AUC.
    max_classes
        Bound on the confusion matrix (``max_classes²`` counts).

    ROC AUC is **exact** (equal to ``roc_auc_score``) while the window's scored
    pairs fit in ``auc_sample``: the pairs themselves are kept. Past that the
    sample is dropped and AUC comes from the per-class score histograms, where
    two scores in the same ``1/auc_bins``-wide bin count as a tie: the error is at
    most half the share of positive–negative pairs that share a bin (≈1e-4 for a
    smooth score density with the default 4096 bins). Either way the merge law is
    exact: the merged summary holds the union's sample iff the union fits.
    Multiclass AUC is the one-vs-rest macro average (``multi_class="ovr"``) over
    score columns whose class occurs both as true and as other label.

    Memory: ``max_classes²`` + (scored classes × 2 × ``auc_bins``) counts +
    ``calibration_bins`` × 3 + ``auc_sample`` × scored classes floats.
    """

    def __init__(
        self,
        *,
        classes: Sequence[str] | None = None,
        positive_label: str | None = None,
        calibration_bins: int = 10,
        auc_bins: int = 4096,
        auc_sample: int = 10_000,
        max_classes: int = 256,
    ) -> None:
        if calibration_bins < 1 or auc_bins < 1 or auc_sample < 0:
            raise DetectorError("calibration_bins and auc_bins must be >= 1, auc_sample >= 0")
        self.classes = tuple(str(c) for c in classes) if classes is not None else None
        self.positive_label = str(positive_label) if positive_label is not None else None
        self.calibration_bins = calibration_bins
        self.auc_bins = auc_bins
        self.auc_sample = auc_sample
        self.max_classes = max_classes
        if self.positive_label is not None:
            self.score_labels: tuple[str, ...] = (self.positive_label,)
        else:
            self.score_labels = self.classes or ()
        self._reset()

    def _reset(self) -> None:
        initial = list(self.classes or ())
        if self.positive_label is not None and self.positive_label not in initial:
            initial.append(self.positive_label)
        self._vocab = LabelVocabulary(initial, capacity=self.max_classes)
        k = len(self._vocab)
        self._confusion = np.zeros((k, k), dtype=np.int64)
        s = len(self.score_labels)
        self._scored = 0
        self._log_loss_sum = 0.0
        self._brier_sum = 0.0
        self._ece_count = np.zeros(self.calibration_bins, dtype=np.int64)
        self._ece_confidence = np.zeros(self.calibration_bins, dtype=np.float64)
        self._ece_hits = np.zeros(self.calibration_bins, dtype=np.float64)
        self._auc_hist = np.zeros((s, 2, self.auc_bins), dtype=np.int64)
        self._sample_scores: list[np.ndarray] = []
        self._sample_true: list[np.ndarray] = []
        self._sample_size = 0
        self._sample_overflow = False
        # column of each score label in the vocabulary (score labels are in it from the start)
        self._score_codes = np.array([self._vocab.add(c) for c in self.score_labels], dtype=np.int64)

    # ------------------------------------------------------------------ update
    def update(self, y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None = None) -> Self:
        """Fold a micro-batch of labelled pairs (and optional scores) into the summary."""
        y_true = np.asarray(y_true, dtype=object)
        y_pred = np.asarray(y_pred, dtype=object)
        _check_lengths(y_true, y_pred)
        t = self._vocab.encode(y_true)
        p = self._vocab.encode(y_pred)
        k = len(self._vocab)
        self._confusion = _grow_square(self._confusion, k)
        ok = (t >= 0) & (p >= 0)
        if not ok.all():
            t_ok, p_ok = t[ok], p[ok]
        else:
            t_ok, p_ok = t, p
        self._confusion += np.bincount(t_ok * k + p_ok, minlength=k * k).reshape(k, k)
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64)
            _check_lengths(y_true, scores)
            self._update_scores(t, scores)
        return self

    def _update_scores(self, t: np.ndarray, scores: np.ndarray) -> None:
        s = len(self.score_labels)
        if scores.ndim == 1 and self.positive_label is not None:
            scores = scores[:, None]
        if scores.ndim != 2 or scores.shape[1] != s or s == 0:
            raise DetectorError(ERR_SCORES_SHAPE.format(scores.shape))
        keep = (t >= 0) & ~np.isnan(scores).any(axis=1)
        if not keep.all():
            scores, t = scores[keep], t[keep]
        m = len(t)
        if m == 0:
            return
        if scores.min() < 0.0 or scores.max() > 1.0:
            raise DetectorError(ERR_SCORES_RANGE)
        # one-hot of the true class over score columns
        truth = t[:, None] == self._score_codes[None, :]
        bins = self.calibration_bins
        if self.positive_label is not None:
            prob = scores[:, 0]
            y = truth[:, 0]
            p_true = np.where(y, prob, 1.0 - prob)
            self._log_loss_sum += float(-np.log(np.clip(p_true, _EPS, 1 - _EPS)).sum())
            self._brier_sum += float(np.square(prob - y).sum())
            confidence, hits = prob, y.astype(np.float64)
        else:
            p_true = np.where(truth.any(axis=1), (scores * truth).sum(axis=1), 0.0)
            self._log_loss_sum += float(-np.log(np.clip(p_true, _EPS, 1 - _EPS)).sum())
            self._brier_sum += float(np.square(scores - truth).sum())
            top = scores.argmax(axis=1)
            confidence = scores[np.arange(m), top]
            hits = (self._score_codes[top] == t).astype(np.float64)
        cbin = np.minimum((confidence * bins).astype(np.int64), bins - 1)
        self._ece_count += np.bincount(cbin, minlength=bins)
        self._ece_confidence += np.bincount(cbin, weights=confidence, minlength=bins)
        self._ece_hits += np.bincount(cbin, weights=hits, minlength=bins)
        self._scored += m
        b = self.auc_bins
        abin = np.minimum((scores * b).astype(np.int64), b - 1)
        flat = (np.arange(s)[None, :] * 2 + truth) * b + abin
        self._auc_hist += np.bincount(flat.ravel(), minlength=s * 2 * b).reshape(s, 2, b)
        if not self._sample_overflow:
            if self._sample_size + m <= self.auc_sample:
                self._sample_scores.append(scores.copy())
                self._sample_true.append(t.copy())
                self._sample_size += m
            else:
                self._drop_sample()

    def _drop_sample(self) -> None:
        self._sample_overflow = True
        self._sample_scores, self._sample_true, self._sample_size = [], [], 0

    # ------------------------------------------------------------------- merge
    def _settings(self) -> tuple[Any, ...]:
        return (self.positive_label, self.score_labels, self.calibration_bins, self.auc_bins, self.auc_sample)

    def merge(self, other: Self) -> Self:
        """Fold ``other`` (same settings) into this summary, exactly."""
        if self._settings() != other._settings():
            raise DetectorError(ERR_MERGE.format((self._settings(), other._settings())))
        remap = self._vocab.remap(other._vocab)
        k = len(self._vocab)
        self._confusion = _grow_square(self._confusion, k)
        np.add.at(self._confusion, (remap[:, None], remap[None, :]), other._confusion)
        self._scored += other._scored
        self._log_loss_sum += other._log_loss_sum
        self._brier_sum += other._brier_sum
        self._ece_count += other._ece_count
        self._ece_confidence += other._ece_confidence
        self._ece_hits += other._ece_hits
        self._auc_hist += other._auc_hist
        if self._sample_overflow or other._sample_overflow or self._sample_size + other._sample_size > self.auc_sample:
            self._drop_sample()
        elif other._sample_size:
            self._sample_scores.extend(s.copy() for s in other._sample_scores)
            self._sample_true.extend(remap[t] for t in other._sample_true)
            self._sample_size += other._sample_size
        return self

    # ------------------------------------------------------------------ result
    @property
    def n(self) -> int:
        """Labelled pairs seen."""
        return int(self._confusion.sum())

    @property
    def auc_exact(self) -> bool:
        """Whether ``roc_auc`` comes from the exact sample (the window fitted in it)."""
        return not self._sample_overflow

    def result(self) -> PerformanceResult:
        """Metrics of the window so far (the summary is not changed)."""
        positive = self._vocab.get(self.positive_label) if self.positive_label is not None else None
        metrics = confusion_metrics(self._confusion, positive)
        metric_n: dict[str, int] = {}
        if self.score_labels:
            m = self._scored
            ece = float(np.abs(self._ece_hits - self._ece_confidence).sum() / m) if m else math.nan
            metrics.update(
                roc_auc=self._roc_auc(),
                log_loss=self._log_loss_sum / m if m else math.nan,
                brier=self._brier_sum / m if m else math.nan,
                ece=ece,
            )
            metric_n = {name: m for name in ("roc_auc", "log_loss", "brier", "ece")}
        return PerformanceResult(n=self.n, metrics=metrics, metric_n=metric_n)

    def _roc_auc(self) -> float:
        per_column = np.full(len(self.score_labels), np.nan)
        if not self._sample_overflow:
            if not self._sample_size:
                return math.nan
            scores = np.concatenate(self._sample_scores)
            truth = np.concatenate(self._sample_true)
            for j, code in enumerate(self._score_codes):
                per_column[j] = exact_auc(scores[:, j], truth == code)
        else:
            for j in range(len(self.score_labels)):
                per_column[j] = auc_from_counts(self._auc_hist[j, 1], self._auc_hist[j, 0])
        return _nanmean(per_column)

    # --------------------------------------------------------------- snapshot
    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state (floats round-trip exactly through JSON)."""
        return {
            "kind": "classification_performance",
            "version": _SNAPSHOT_VERSION,
            "classes": list(self.classes) if self.classes is not None else None,
            "positive_label": self.positive_label,
            "calibration_bins": self.calibration_bins,
            "auc_bins": self.auc_bins,
            "auc_sample": self.auc_sample,
            "max_classes": self.max_classes,
            "labels": list(self._vocab.labels),
            "confusion": _sparse(self._confusion),
            "scored": self._scored,
            "log_loss_sum": self._log_loss_sum,
            "brier_sum": self._brier_sum,
            "ece_count": self._ece_count.tolist(),
            "ece_confidence": _float_list(self._ece_confidence),
            "ece_hits": _float_list(self._ece_hits),
            "auc_hist": _sparse(self._auc_hist),
            "sample_overflow": self._sample_overflow,
            "sample_scores": _pack(np.concatenate(self._sample_scores) if self._sample_size else [], "<f8"),
            "sample_true": _pack(np.concatenate(self._sample_true) if self._sample_size else [], "<i4"),
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild a summary equal to the one that produced ``state``."""
        self = cls(
            classes=state["classes"],
            positive_label=state["positive_label"],
            calibration_bins=state["calibration_bins"],
            auc_bins=state["auc_bins"],
            auc_sample=state["auc_sample"],
            max_classes=state["max_classes"],
        )
        self._vocab = LabelVocabulary(state["labels"], capacity=self.max_classes)
        k = len(self._vocab)
        self._confusion = _dense(state["confusion"], (k, k))
        self._scored = int(state["scored"])
        self._log_loss_sum = float(state["log_loss_sum"])
        self._brier_sum = float(state["brier_sum"])
        self._ece_count = np.asarray(state["ece_count"], dtype=np.int64)
        self._ece_confidence = np.asarray(state["ece_confidence"], dtype=np.float64)
        self._ece_hits = np.asarray(state["ece_hits"], dtype=np.float64)
        self._auc_hist = _dense(state["auc_hist"], self._auc_hist.shape)
        self._sample_overflow = bool(state["sample_overflow"])
        true = _unpack(state["sample_true"], "<i4").astype(np.int64)
        if len(true):
            scores = _unpack(state["sample_scores"], "<f8").reshape(len(true), -1)
            self._sample_scores, self._sample_true, self._sample_size = [scores], [true], len(true)
        return self


class RegressionPerformance:
    """Mergeable regression performance: exact sums for MAE, RMSE, MAPE and R².

    Keeps n, Σ|e|, Σe², Σ|e|/max(|y|, ε) (sklearn's MAPE, ε = float64 eps) and the
    target's mean and centred sum of squares, combined across batches and
    partitions with Chan et al.'s parallel formula, so R² stays accurate for
    targets far from zero. Pairs with a ``NaN`` on either side are skipped. R² is
    ``NaN`` for a constant target (sklearn would report 1.0 or 0.0).

    >>> import numpy as np
    >>> y = np.array([3.0, -0.5, 2.0, 7.0]); yhat = np.array([2.5, 0.0, 2.0, 8.0])
    >>> r = RegressionPerformance().update(y, yhat).result()
    >>> {k: round(v, 4) for k, v in r.metrics.items()}
    {'mae': 0.5, 'rmse': 0.6124, 'mape': 0.3274, 'r2': 0.9486}
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._n = 0
        self._abs = 0.0
        self._sq = 0.0
        self._ape = 0.0
        self._mean = 0.0
        self._m2 = 0.0

    def update(self, y_true: np.ndarray, y_pred: np.ndarray) -> Self:
        """Fold a micro-batch of (target, prediction) pairs."""
        y_true = np.asarray(y_true, dtype=np.float64)
        y_pred = np.asarray(y_pred, dtype=np.float64)
        _check_lengths(y_true, y_pred)
        ok = ~(np.isnan(y_true) | np.isnan(y_pred))
        if not ok.all():
            y_true, y_pred = y_true[ok], y_pred[ok]
        n = len(y_true)
        if n == 0:
            return self
        err = np.abs(y_pred - y_true)
        mean = float(y_true.mean())
        m2 = float(np.square(y_true - mean).sum())
        self._combine(n, float(err.sum()), float(np.dot(err, err)),
                      float((err / np.maximum(np.abs(y_true), _EPS)).sum()), mean, m2)
        return self

    def _combine(self, n: int, abs_: float, sq: float, ape: float, mean: float, m2: float) -> None:
        total = self._n + n
        delta = mean - self._mean
        self._m2 += m2 + delta * delta * self._n * n / total
        self._mean += delta * n / total
        self._n = total
        self._abs += abs_
        self._sq += sq
        self._ape += ape

    def merge(self, other: Self) -> Self:
        """Fold ``other`` into this summary."""
        if other._n:
            self._combine(other._n, other._abs, other._sq, other._ape, other._mean, other._m2)
        return self

    def result(self) -> PerformanceResult:
        """``mae``, ``rmse``, ``mape`` and ``r2`` of the pairs so far."""
        n = self._n
        if n == 0:
            nan = math.nan
            return PerformanceResult(n=0, metrics={"mae": nan, "rmse": nan, "mape": nan, "r2": nan})
        r2 = 1.0 - self._sq / self._m2 if self._m2 > 0 else math.nan
        return PerformanceResult(
            n=n,
            metrics={"mae": self._abs / n, "rmse": math.sqrt(self._sq / n), "mape": self._ape / n, "r2": r2},
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "kind": "regression_performance",
            "version": _SNAPSHOT_VERSION,
            "n": self._n,
            "abs": self._abs,
            "sq": self._sq,
            "ape": self._ape,
            "mean": self._mean,
            "m2": self._m2,
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild the summary that produced ``state``."""
        self = cls()
        self._n = int(state["n"])
        self._abs, self._sq, self._ape = float(state["abs"]), float(state["sq"]), float(state["ape"])
        self._mean, self._m2 = float(state["mean"]), float(state["m2"])
        return self
