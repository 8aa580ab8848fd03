"""Group fairness of a binary decision, from mergeable per-group confusion counts.

Fairlearn's ``MetricFrame`` computes metrics by group from the full arrays;
streaming fairness needs the same figures from counts that add across
partitions and windows (fairlearn issue 655). :class:`FairnessSummary` keeps, per
sensitive attribute and per intersection of attributes, the four confusion
counts of every group for the positive label, and derives fairlearn's group
metrics and disparity metrics from them. The tests check every figure against
fairlearn.

Naming. An intersection of attributes ``("sex", "race")`` is reported as the
attribute ``"sex*race"`` whose groups are the joined values ``"F|Black"``
(the same groups as fairlearn's ``MetricFrame`` with a two-column
``sensitive_features``). A missing attribute value is its own group,
:data:`MISSING_GROUP`; once ``max_groups`` groups are known for an attribute,
new values count in :data:`~detectors.performance.OTHER_LABEL`, so memory is
bounded by attributes × ``max_groups`` × 6 counts.

Two ways in:

- :meth:`FairnessSummary.update` takes labelled pairs and counts TP/FP/FN/TN per group;
- :meth:`FairnessSummary.update_predictions` takes predictions alone (labels
  may arrive days later) and counts predictions and predicted positives per
  group, so ``selection_rate`` and demographic parity exist per window before
  any feedback. When a summary has counted predictions this way, its
  ``selection_rate`` and demographic-parity figures come from those counts
  (``FairnessResult.selection_source == "predictions"``); otherwise from the
  predictions of the labelled pairs (``"labelled"``). Feed a given prediction
  through one path per summary.

>>> import numpy as np
>>> y = np.array(["1", "0", "1", "0", "1", "0"], dtype=object)
>>> pred = np.array(["1", "0", "0", "1", "1", "1"], dtype=object)
>>> sex = np.array(["F", "F", "F", "M", "M", "M"], dtype=object)
>>> fair = FairnessSummary(attributes=["sex"], positive_label="1", min_group_size=1)
>>> r = fair.update(y, pred, {"sex": sex}).result()
>>> r.attributes["sex"].groups["M"].selection_rate, r.attributes["sex"].disparities["demographic_parity_difference"]
(1.0, 0.6666666666666667)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Self, Sequence

import numpy as np
import pandas as pd

from detectors.base import DetectorError
from detectors.performance import LabelVocabulary, _check_lengths, _divide, positive_mask
from detectors.points import Point

__all__ = [
    "AttributeFairness",
    "FairnessResult",
    "FairnessSummary",
    "GroupFairness",
    "GROUP_METRICS",
    "DISPARITY_METRICS",
    "fairness_points",
    "worst_groups",
]

MISSING_GROUP = "(missing)"
"""Group of events whose attribute value is missing."""

INTERSECTION_SEPARATOR = "*"
"""Joins attribute names of an intersection: ``sex*race``."""

GROUP_SEPARATOR = "|"
"""Joins group values of an intersection: ``F|Black``."""

ALL_GROUPS = "all"
"""The ``group`` tag of disparity metrics."""

GROUP_METRICS = ("selection_rate", "tpr", "fpr", "fnr", "precision", "accuracy")
DISPARITY_METRICS = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "equal_opportunity_difference",
)
_LOWER_IS_WORSE = {"accuracy": True, "tpr": True, "precision": True, "selection_rate": True,
                   "fpr": False, "fnr": False}

ERR_ATTRIBUTE = "attribute {!r} is not in the batch (got {})"
ERR_METRIC = "unknown group metric {!r}; expected one of {}"
ERR_MERGE = "cannot merge fairness summaries with different settings"

_TN, _FP, _FN, _TP = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class GroupFairness:
    """Metrics of one group of one attribute (``NaN`` where undefined).

    ``n`` counts labelled pairs; ``n_predictions`` counts the predictions behind
    ``selection_rate`` (equal to ``n`` when the selection source is labelled pairs).
    """

    attribute: str
    group: str
    n: int
    n_predictions: int
    selection_rate: float
    tpr: float
    fpr: float
    fnr: float
    precision: float
    accuracy: float

    def metric(self, name: str) -> float:
        """The value of group metric ``name``."""
        if name not in GROUP_METRICS:
            raise DetectorError(ERR_METRIC.format(name, GROUP_METRICS))
        return float(getattr(self, name))

    def n_for(self, name: str) -> int:
        """Number of events behind group metric ``name``."""
        return self.n_predictions if name == "selection_rate" else self.n


@dataclass(frozen=True, slots=True)
class AttributeFairness:
    """Groups and disparities of one attribute (or intersection).

    Disparities are taken over *eligible* groups only: ``n ≥ min_group_size``
    (for demographic parity: ``n_predictions ≥ min_group_size``) and a defined
    metric. ``n`` / ``n_predictions`` total the eligible groups' counts.
    """

    attribute: str
    groups: Mapping[str, GroupFairness]
    disparities: Mapping[str, float]
    n: int
    n_predictions: int

    def n_for(self, disparity: str) -> int:
        """Number of events behind disparity metric ``disparity``."""
        return self.n_predictions if disparity.startswith("demographic_parity") else self.n


@dataclass(frozen=True, slots=True)
class FairnessResult:
    """Fairness of one window: per attribute name (intersections as ``"a*b"``)."""

    attributes: Mapping[str, AttributeFairness]
    min_group_size: int
    selection_source: str


class _GroupCounts:
    """Per-group counts of one attribute key: labelled confusion and prediction counts."""

    __slots__ = ("vocab", "confusion", "predictions")

    def __init__(self, capacity: int) -> None:
        self.vocab = LabelVocabulary(capacity=capacity)
        self.confusion = np.zeros((0, 4), dtype=np.int64)  # tn, fp, fn, tp
        self.predictions = np.zeros((0, 2), dtype=np.int64)  # predictions, predicted positive

    def grow(self) -> None:
        g = len(self.vocab)
        if self.confusion.shape[0] < g:
            self.confusion = np.vstack([self.confusion, np.zeros((g - self.confusion.shape[0], 4), np.int64)])
            self.predictions = np.vstack([self.predictions, np.zeros((g - self.predictions.shape[0], 2), np.int64)])


class FairnessSummary:
    """Mergeable per-group confusion counts for fairness metrics (fairlearn's definitions).

    Parameters
    ----------
    attributes
        Sensitive attributes, each reported on its own.
    intersections
        Tuples of attributes reported jointly, e.g. ``[("sex", "race")]`` → ``"sex*race"``.
    positive_label
        The favourable / positive decision (string, as the worker stringifies labels).
    min_group_size
        Groups with fewer events are reported but do not enter disparity metrics
        or :func:`worst_groups`.
    max_groups
        Bound on groups per attribute (later new values count as ``__other__``).
    """

    def __init__(
        self,
        *,
        attributes: Sequence[str],
        intersections: Sequence[Sequence[str]] = (),
        positive_label: str,
        min_group_size: int = 30,
        max_groups: int = 1000,
    ) -> None:
        self.attributes = tuple(attributes)
        self.intersections = tuple(tuple(combo) for combo in intersections)
        self.positive_label = str(positive_label)
        self.min_group_size = min_group_size
        self.max_groups = max_groups
        for combo in self.intersections:
            if len(combo) < 2:
                raise DetectorError(f"an intersection needs at least two attributes: {combo!r}")
        self.keys = self.attributes + tuple(INTERSECTION_SEPARATOR.join(c) for c in self.intersections)
        self._reset()

    def _reset(self) -> None:
        self._counts = {key: _GroupCounts(self.max_groups) for key in self.keys}
        self._predictions_seen = 0

    # ------------------------------------------------------------------ update
    def _needed(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.attributes + tuple(a for c in self.intersections for a in c)))

    def _group_codes(self, attributes: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Group index (per attribute key) of every row, via one factorize per attribute."""
        factorized: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in self._needed():
            if name not in attributes:
                raise DetectorError(ERR_ATTRIBUTE.format(name, sorted(attributes)))
            values = np.asarray(attributes[name], dtype=object)
            _check_lengths(values, np.empty(n))
            codes, uniques = pd.factorize(values, use_na_sentinel=True)
            labels = [str(u) for u in uniques]
            missing = codes < 0
            if missing.any():  # missing is its own group, after the present values
                labels.append(MISSING_GROUP)
                codes = np.where(missing, len(uniques), codes)
            names = np.array(labels, dtype=object)
            factorized[name] = (codes, names)
        out: dict[str, np.ndarray] = {}
        for name in self.attributes:
            codes, names = factorized[name]
            out[name] = self._lookup(name, codes, names)
        for combo in self.intersections:
            key = INTERSECTION_SEPARATOR.join(combo)
            combined = np.zeros(n, dtype=np.int64)
            space = 1
            for attr in combo:
                combined = combined * len(factorized[attr][1]) + factorized[attr][0]
                space *= len(factorized[attr][1])
            if space <= 4 * n + 64:  # small product space: index it directly
                uniques = np.flatnonzero(np.bincount(combined, minlength=space))
                codes = np.searchsorted(uniques, combined)
            else:
                codes, uniques = pd.factorize(combined)
            names = []
            for value in uniques:
                parts = []
                for attr in reversed(combo):
                    attr_names = factorized[attr][1]
                    value, part = divmod(int(value), len(attr_names))
                    parts.append(attr_names[part])
                names.append(GROUP_SEPARATOR.join(reversed(parts)))
            out[key] = self._lookup(key, codes, np.array(names, dtype=object))
        return out

    def _lookup(self, key: str, codes: np.ndarray, names: np.ndarray) -> np.ndarray:
        counts = self._counts[key]
        table = np.fromiter((counts.vocab.add(str(g)) for g in names), dtype=np.int64, count=len(names))
        counts.grow()
        return table[codes]

    def _positive(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(is positive, is present) masks of a label array."""
        return positive_mask(labels, self.positive_label)

    def update(self, y_true: np.ndarray, y_pred: np.ndarray, attributes: Mapping[str, np.ndarray]) -> Self:
        """Count labelled pairs per group (pairs missing either label are skipped)."""
        y_true = np.asarray(y_true, dtype=object)
        y_pred = np.asarray(y_pred, dtype=object)
        _check_lengths(y_true, y_pred)
        t_pos, t_ok = self._positive(y_true)
        p_pos, p_ok = self._positive(y_pred)
        ok = t_ok & p_ok
        cell = 2 * t_pos.astype(np.int64) + p_pos
        groups = self._group_codes(attributes, len(y_true))
        everything = ok.all()
        if not everything:
            cell = cell[ok]
        for key, g in groups.items():
            counts = self._counts[key]
            if not everything:
                g = g[ok]
            size = counts.confusion.shape[0]
            counts.confusion += np.bincount(g * 4 + cell, minlength=size * 4).reshape(size, 4)
        return self

    def update_predictions(self, y_pred: np.ndarray, attributes: Mapping[str, np.ndarray]) -> Self:
        """Count predictions (no labels needed) per group for selection rate and demographic parity.

        Every non-missing prediction counts once in its group; predicted positives
        are those equal to ``positive_label``.
        """
        y_pred = np.asarray(y_pred, dtype=object)
        p_pos, p_ok = self._positive(y_pred)
        groups = self._group_codes(attributes, len(y_pred))
        everything = p_ok.all()
        weights = p_pos.astype(np.float64)
        if not everything:
            weights = weights[p_ok]
        for key, g in groups.items():
            counts = self._counts[key]
            if not everything:
                g = g[p_ok]
            size = counts.predictions.shape[0]
            counts.predictions[:, 0] += np.bincount(g, minlength=size)
            counts.predictions[:, 1] += np.bincount(g, weights=weights, minlength=size).astype(np.int64)
        self._predictions_seen += int(p_ok.sum())
        return self

    # ------------------------------------------------------------------- merge
    def _settings(self) -> tuple[Any, ...]:
        return (self.attributes, self.intersections, self.positive_label, self.min_group_size, self.max_groups)

    def merge(self, other: Self) -> Self:
        """Fold ``other`` (same settings) into this summary, exactly."""
        if self._settings() != other._settings():
            raise DetectorError(ERR_MERGE)
        for key, theirs in other._counts.items():
            mine = self._counts[key]
            remap = mine.vocab.remap(theirs.vocab)
            mine.grow()
            np.add.at(mine.confusion, remap, theirs.confusion)
            np.add.at(mine.predictions, remap, theirs.predictions)
        self._predictions_seen += other._predictions_seen
        return self

    # ------------------------------------------------------------------ result
    @property
    def selection_source(self) -> str:
        """``"predictions"`` once :meth:`update_predictions` has counted anything, else ``"labelled"``."""
        return "predictions" if self._predictions_seen else "labelled"

    def result(self) -> FairnessResult:
        """Group metrics and disparities of the window so far (the summary is not changed)."""
        from_predictions = self._predictions_seen > 0
        out = {}
        for key, counts in self._counts.items():
            c = counts.confusion.astype(np.float64)
            tn, fp, fn, tp = c[:, _TN], c[:, _FP], c[:, _FN], c[:, _TP]
            n = c.sum(axis=1)
            if from_predictions:
                n_sel = counts.predictions[:, 0].astype(np.float64)
                selected = counts.predictions[:, 1].astype(np.float64)
            else:
                n_sel, selected = n, tp + fp
            # one division for all six metrics, in GROUP_METRICS order
            table = _divide(
                np.vstack([selected, tp, fp, fn, tp, tp + tn]),
                np.vstack([n_sel, tp + fn, fp + tn, tp + fn, tp + fp, n]),
            )
            n_list, n_sel_list = n.astype(np.int64).tolist(), n_sel.astype(np.int64).tolist()
            groups = {
                label: GroupFairness(key, label, n_list[i], n_sel_list[i], *row)
                for i, (label, row) in enumerate(zip(counts.vocab.labels, table.T.tolist()))
            }
            selection, tpr, fpr = table[0], table[1], table[2]
            eligible = n >= self.min_group_size
            eligible_sel = n_sel >= self.min_group_size
            sel = _finite(selection[eligible_sel])
            tpr_diff = _spread(_finite(tpr[eligible]))
            fpr_diff = _spread(_finite(fpr[eligible]))
            disparities = {
                "demographic_parity_difference": _spread(sel),
                "demographic_parity_ratio": _ratio(sel),
                "equalized_odds_difference": max(tpr_diff, fpr_diff) if not (
                    math.isnan(tpr_diff) or math.isnan(fpr_diff)) else math.nan,
                "equal_opportunity_difference": tpr_diff,
            }
            out[key] = AttributeFairness(
                attribute=key,
                groups=groups,
                disparities=disparities,
                n=int(n[eligible].sum()),
                n_predictions=int(n_sel[eligible_sel].sum()),
            )
        return FairnessResult(attributes=out, min_group_size=self.min_group_size,
                              selection_source=self.selection_source)

    # --------------------------------------------------------------- snapshot
    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "kind": "fairness",
            "version": 1,
            "attributes": list(self.attributes),
            "intersections": [list(c) for c in self.intersections],
            "positive_label": self.positive_label,
            "min_group_size": self.min_group_size,
            "max_groups": self.max_groups,
            "predictions_seen": self._predictions_seen,
            "groups": {
                key: {
                    "labels": list(c.vocab.labels),
                    "confusion": c.confusion.tolist(),
                    "predictions": c.predictions.tolist(),
                }
                for key, c in self._counts.items()
            },
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild the summary that produced ``state``."""
        self = cls(
            attributes=state["attributes"],
            intersections=state["intersections"],
            positive_label=state["positive_label"],
            min_group_size=state["min_group_size"],
            max_groups=state["max_groups"],
        )
        self._predictions_seen = int(state["predictions_seen"])
        for key, group_state in state["groups"].items():
            counts = self._counts[key]
            counts.vocab = LabelVocabulary(group_state["labels"], capacity=self.max_groups)
            counts.confusion = np.asarray(group_state["confusion"], dtype=np.int64).reshape(-1, 4)
            counts.predictions = np.asarray(group_state["predictions"], dtype=np.int64).reshape(-1, 2)
        return self


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _spread(values: np.ndarray) -> float:
    return float(values.max() - values.min()) if values.size else math.nan


def _ratio(values: np.ndarray) -> float:
    if not values.size or values.max() == 0:
        return math.nan
    return float(values.min() / values.max())


def worst_groups(
    result: FairnessResult, metric: str = "accuracy", k: int = 3, *, attribute: str | None = None
) -> list[GroupFairness]:
    """The ``k`` worst groups on ``metric`` across attributes (or within ``attribute``).

    Worst means lowest for ``accuracy``, ``tpr``, ``precision`` and
    ``selection_rate``, highest for ``fpr`` and ``fnr``. Only groups with at least
    ``min_group_size`` events and a defined metric are ranked; ties go to the
    larger group, then by name.

    >>> import numpy as np
    >>> y = np.array(["1", "0"] * 50, dtype=object)
    >>> pred = y.copy(); pred[:10] = "0"
    >>> region = np.array(["north"] * 20 + ["south"] * 80, dtype=object)
    >>> r = FairnessSummary(attributes=["region"], positive_label="1", min_group_size=10).update(
    ...     y, pred, {"region": region}).result()
    >>> [(g.group, g.accuracy) for g in worst_groups(r, "accuracy", k=2)]
    [('north', 0.75), ('south', 1.0)]
    """
    if metric not in GROUP_METRICS:
        raise DetectorError(ERR_METRIC.format(metric, GROUP_METRICS))
    lower_is_worse = _LOWER_IS_WORSE[metric]
    candidates = [
        g
        for name, attr in result.attributes.items()
        if attribute is None or name == attribute
        for g in attr.groups.values()
        if g.n_for(metric) >= result.min_group_size and math.isfinite(g.metric(metric))
    ]
    sign = 1.0 if lower_is_worse else -1.0
    candidates.sort(key=lambda g: (sign * g.metric(metric), -g.n_for(metric), g.attribute, g.group))
    return candidates[:k]


def fairness_points(result: FairnessResult, *, tags: Mapping[str, str], time_ns: int) -> list[Point]:
    """docs/design.md ``fairness`` points: tags ``attribute``, ``group``, ``metric``; fields ``value``, ``n``.

    One point per group and defined group metric (groups below ``min_group_size``
    included, with their ``n``), and one per defined disparity metric with
    ``group="all"`` and ``n`` the events in the eligible groups.
    """
    points = []
    for name, attr in result.attributes.items():
        for group in attr.groups.values():
            for metric in GROUP_METRICS:
                value = group.metric(metric)
                if math.isfinite(value):
                    points.append(Point(
                        "fairness",
                        {**tags, "attribute": name, "group": group.group, "metric": metric},
                        {"value": value, "n": group.n_for(metric)},
                        time_ns=time_ns,
                    ))
        for metric in DISPARITY_METRICS:
            value = attr.disparities[metric]
            if math.isfinite(value):
                points.append(Point(
                    "fairness",
                    {**tags, "attribute": name, "group": ALL_GROUPS, "metric": metric},
                    {"value": float(value), "n": attr.n_for(metric)},
                    time_ns=time_ns,
                ))
    return points
