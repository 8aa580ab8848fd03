"""Cohort performance: a prediction-time window's realised figures as its late labels arrive.

A window's ``performance`` is computed from the pairs *joined* during it, so with labels that
arrive hours late it is the performance of whatever predictions happened to be labelled then.
A **cohort** is the set of predictions made in one window (by prediction time); its figures
are computed from the pairs of those predictions whatever window they were joined in, and are
rewritten (same series, same timestamp: the window's end) each time more of its labels arrive,
until the join's TTL. ``label_coverage`` says how much of the cohort is labelled, so a reader
(a dashboard, a policy's ``min_coverage``) can wait for it; until coverage reaches
:data:`ESTIMATE_UNTIL_COVERAGE` the label-free estimate of the same metric is written beside
the realised value, as the field ``estimate``.

Pure: results in, :class:`~detectors.points.Point` s out. The summaries themselves are the
ordinary mergeable :class:`~detectors.performance.ClassificationPerformance` /
:class:`~detectors.fairness.FairnessSummary`.

>>> from detectors.performance import PerformanceResult
>>> r = PerformanceResult(n=3, metrics={"accuracy": 2 / 3})
>>> est = PerformanceResult(n=4, metrics={"accuracy": 0.7})
>>> [p.to_line_protocol() for p in cohort_points(r, None, predictions=4, estimate=est, tags={"model_id": "m"},
...                                                 time_ns=1)]
['cohort_performance,metric=accuracy,model_id=m estimate=0.7,label_coverage=0.75,n=3i,predictions=4i,value=0.6666666666666666 1']
"""

from __future__ import annotations

from typing import Mapping

from detectors.fairness import FairnessResult, fairness_points
from detectors.performance import PerformanceResult, performance_points
from detectors.points import Point

COHORT_PERFORMANCE = "cohort_performance"
COHORT_FAIRNESS = "cohort_fairness"

COHORT_FAIRNESS_METRICS: frozenset[str] = frozenset({"tpr", "fpr", "fnr", "precision", "accuracy"})
"""The per-group fairness metrics that need labels (selection rates need none: ``fairness`` has them)."""

ESTIMATE_UNTIL_COVERAGE = 0.8
"""Below this label coverage a cohort point carries the label-free estimate (``estimate``) beside
its realised ``value``: with few labels the realised figure is noisy, and a label-free estimate
is what a user would read instead."""


def label_coverage(pairs: int, predictions: int) -> float:
    """The labelled share of a cohort's predictions (1 at most: a pair whose prediction counted as
    late in the arrival windows still belongs to its prediction-time cohort).

    >>> label_coverage(3, 4), label_coverage(5, 4), label_coverage(0, 0)
    (0.75, 1.0, 0.0)
    """
    return min(pairs / predictions, 1.0) if predictions > 0 else 0.0


def cohort_points(performance: PerformanceResult, fairness: FairnessResult | None, *, predictions: int,
                  estimate: PerformanceResult | None, tags: Mapping[str, str], time_ns: int) -> list[Point]:
    """A cohort's points: ``cohort_performance`` (tag ``metric``) and ``cohort_fairness`` (tags
    ``attribute``, ``group``, ``metric`` among :data:`COHORT_FAIRNESS_METRICS`), each with
    ``value``, ``n`` (the pairs behind that metric), ``label_coverage`` and ``predictions`` (the
    cohort's predictions); ``estimate`` beside a performance value while coverage is below
    :data:`ESTIMATE_UNTIL_COVERAGE`. A cohort without a labelled pair writes nothing."""
    if performance.n == 0:
        return []
    coverage = label_coverage(performance.n, predictions)
    estimated = estimate.metrics if estimate is not None and coverage < ESTIMATE_UNTIL_COVERAGE else {}
    out = []
    for point in performance_points(performance, tags=tags, time_ns=time_ns, measurement=COHORT_PERFORMANCE):
        fields = {**point.fields, "label_coverage": coverage, "predictions": int(predictions)}
        value = estimated.get(point.tags["metric"])
        if value is not None and value == value:  # not NaN
            fields["estimate"] = float(value)
        out.append(Point(point.measurement, point.tags, fields, time_ns))
    if fairness is not None:
        for point in fairness_points(fairness, tags=tags, time_ns=time_ns):
            if point.tags["metric"] in COHORT_FAIRNESS_METRICS and point.tags["group"] != "all":
                out.append(Point(COHORT_FAIRNESS, point.tags,
                                 {**point.fields, "label_coverage": coverage, "predictions": int(predictions)},
                                 time_ns))
    return out
