"""The metric table of docs/design.md, encoded once.

Every point the worker writes is a :class:`detectors.points.Point` whose
measurement, tags and fields appear here. Dashboards, InfluxDB checks, the
default policies and their tests read this module instead of repeating names.
It is a pure constant module: no imports beyond the standard library.

>>> tags, fields = METRICS["feature_drift"]
>>> sorted(tags)
['feature', 'method', 'model_id', 'model_version']
>>> sorted(fields)
['delta', 'drift', 'n', 'sd_ratio', 'threshold', 'value']
>>> is_known("performance", tags={"metric": "accuracy"}, fields=("value",))
True
>>> is_known("performance", tags={"metric": "accuarcy"})
False
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Iterable, Mapping

COMMON_TAGS: frozenset[str] = frozenset({"model_id", "model_version"})
"""Tags every point carries."""


def _m(tags: Iterable[str], fields: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    return COMMON_TAGS | frozenset(tags), frozenset(fields)


METRICS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = MappingProxyType(
    {
        # method=cusum also: delta (the signed change size its detecting column is tuned to, in reference
        # sds) and, for a variance column, sd_ratio; threshold 1 (value = statistic / threshold)
        "feature_drift": _m({"feature", "method"}, {"value", "drift", "threshold", "n", "delta", "sd_ratio"}),
        "prediction_drift": _m({"method", "target"}, {"value", "drift", "n", "threshold", "delta"}),
        # per class: reference_share/current_share; class="all": value, drift, threshold, n
        "label_shift": _m(
            {"source", "class"},
            {"reference_share", "current_share", "value", "drift", "threshold", "n"},
        ),
        "data_quality": _m({"feature", "check"}, {"rate", "count"}),
        # cumulative_*: the same metric over all pairs of the model version so far
        "performance": _m({"metric"}, {"value", "n", "cumulative_value", "cumulative_n"}),
        "performance_estimate": _m({"metric"}, {"value", "n"}),
        "concept_drift": _m({"detector"}, {"drift", "n", "value", "threshold", "delta"}),
        "fairness": _m({"attribute", "group", "metric"}, {"value", "n", "threshold", "delta"}),
        # by prediction time (detectors/cohort.py): the window's predictions, whatever window their labels
        # joined in, rewritten at the window's end as labels arrive; estimate: the label-free figure,
        # written while label_coverage < 0.8
        "cohort_performance": _m({"metric"}, {"value", "n", "label_coverage", "predictions", "estimate"}),
        "cohort_fairness": _m({"attribute", "group", "metric"}, {"value", "n", "label_coverage", "predictions"}),
        "monitor": _m({"stat"}, {"value"}),
    }
)
"""measurement -> (tag keys, field names), exactly as the worker writes them."""

PERFORMANCE_METRICS: frozenset[str] = frozenset(
    {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier", "mae", "rmse", "mape", "r2",
     # beside docs/design.md's names: macro averages (multiclass, and binary too) and calibration error
     "precision_macro", "recall_macro", "f1_macro", "ece"}
)
FAIRNESS_GROUP_METRICS: frozenset[str] = frozenset(
    {"selection_rate", "tpr", "fpr", "fnr", "precision", "accuracy",
     # beside docs/design.md's names: the CUSUM on the group's selection rate (detectors/cusum.py);
     # value = statistic / threshold, >= 1 when it detected a change
     "selection_rate_cusum"}
)
"""Fairness metrics written per group (tag ``group`` = the group's value)."""
FAIRNESS_DISPARITY_METRICS: frozenset[str] = frozenset(
    {
        "demographic_parity_difference",
        "demographic_parity_ratio",
        "equalized_odds_difference",
        "equal_opportunity_difference",
    }
)
"""Fairness metrics written with ``group="all"``."""
COHORT_MEASUREMENTS: frozenset[str] = frozenset({"cohort_performance", "cohort_fairness"})
"""Measurements of prediction-time windows (rewritten as labels arrive; fields ``label_coverage``)."""
COHORT_FAIRNESS_METRICS: frozenset[str] = frozenset({"tpr", "fpr", "fnr", "precision", "accuracy"})
"""``cohort_fairness`` metrics: the per-group ones that need labels (``detectors.cohort``)."""
DATA_QUALITY_CHECKS: frozenset[str] = frozenset({"missing", "out_of_range", "unseen_category", "type_error"})
"""Values of the ``check`` tag of ``data_quality`` (``detectors.quality.CHECKS``)."""
MONITOR_WINDOW_STATS: frozenset[str] = frozenset({"dead_letters", "join_rate", "events", "pairs"})
"""``monitor`` stats every closed window carries."""
MONITOR_COUNTERS: frozenset[str] = frozenset(
    {"dead_letters",  # rejected input of the model (every window carries it, 0 when none)
     "late",  # predictions for a window already closed (streams/monitor.py)
     "expired",  # predictions whose label never came within join.ttl_seconds (streams/pipeline.py)
     "evicted",  # unjoined entries dropped because the join table was full (join.max_entries)
     "dead_letters_unattributed",  # rejected input of no known model, counted on every model
     "internal_errors",  # batches a model's detectors failed on (logged; the worker goes on)
     "evidence_trimmed",  # evidence rows dropped so that a partial fits a Kafka message (streams/partials.py)
     # input beyond a validation limit (dead-lettered, counted in dead_letters too), per limit key:
     # streams.events.Limits and the time checks against the stream (streams/pipeline.py)
     *(f"rejected_{key}" for key in ("max_message_bytes", "max_array_length", "max_fields", "max_string_length",
                                     "max_depth", "max_future_seconds", "max_past_seconds"))}
)
"""``monitor`` counters a window carries when they occurred in it; ``ModelMonitor.count`` refuses
any other name, so a counter cannot be written without being in this table."""
MONITOR_PROCESS_STATS: frozenset[str] = frozenset({"throughput", "lag", "influx_outage_seconds"})
"""``monitor`` stats stamped with processing time, not a window's end (wall-clock figures:
streams/app.py, streams/worker.py)."""
MONITOR_STATS: frozenset[str] = MONITOR_WINDOW_STATS | MONITOR_COUNTERS | MONITOR_PROCESS_STATS


def monitor_counter(name: str) -> str:
    """``name`` if it is a counter of the metric table, else ``ValueError`` saying where to add it:
    every writer of a ``monitor`` counter goes through this, so none can be written unlisted.

    >>> monitor_counter("late")
    'late'
    """
    if name not in MONITOR_COUNTERS:
        raise ValueError(f"monitor counter {name!r} is not in retrain.metrics.MONITOR_COUNTERS "
                         f"({', '.join(sorted(MONITOR_COUNTERS))}): add it there (and to README's metric table)")
    return name

TAG_VALUES: Mapping[tuple[str, str], frozenset[str]] = MappingProxyType(
    {
        ("prediction_drift", "target"): frozenset({"prediction", "score"}),
        ("label_shift", "source"): frozenset({"prediction", "feedback"}),
        ("data_quality", "check"): DATA_QUALITY_CHECKS,
        ("performance", "metric"): PERFORMANCE_METRICS,
        ("performance_estimate", "metric"): PERFORMANCE_METRICS,
        ("cohort_performance", "metric"): PERFORMANCE_METRICS,
        ("cohort_fairness", "metric"): COHORT_FAIRNESS_METRICS,
        ("fairness", "metric"): FAIRNESS_GROUP_METRICS | FAIRNESS_DISPARITY_METRICS,
        ("monitor", "stat"): MONITOR_STATS,
    }
)
"""(measurement, tag) -> the closed set of values that tag takes. Tags not listed
here (``feature``, ``method``, ``class``, ``group``, ``attribute``, ...) take open values.
``monitor``'s ``stat`` lists the stats every window carries; the worker may add counters."""

BOOL_FIELDS: frozenset[str] = frozenset({"drift"})
"""Fields written as booleans; every other field is a number."""


def is_known(measurement: str, *, tags: Mapping[str, str] | None = None, fields: Iterable[str] = ()) -> bool:
    """Whether a measurement, tag filter and field names are ones the worker writes."""
    spec = METRICS.get(measurement)
    if spec is None:
        return False
    tag_keys, field_names = spec
    for key, value in (tags or {}).items():
        if key not in tag_keys:
            return False
        allowed = TAG_VALUES.get((measurement, key))
        if allowed is not None and value not in allowed:
            return False
    return all(name in field_names for name in fields)
