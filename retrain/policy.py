"""Alert and retrain policy: which windows of metric points raise alerts and retrain jobs.

Pure: no I/O and no clocks. Time comes from the window bounds the caller passes.
A :class:`Rule` is a set of :class:`Condition` s over the metric points of one
window (the :class:`~detectors.points.Point` s the worker writes); the
:class:`PolicyEngine` keeps, per model and rule, a small state machine with
hysteresis and a cooldown, and returns a :class:`Decision` per window.

A window where none of a rule's conditions has a point (no labels yet, or too
few samples) leaves that rule untouched: it neither breaches nor clears, and
does not count towards ``fire_after``, ``clear_after`` or ``cooldown_windows``.

>>> rule = Rule(name="accuracy", conditions=[Condition(measurement="performance",
...     tags={"metric": "accuracy"}, op="<", threshold=0.8)], fire_after=2, clear_after=2)
>>> engine = PolicyEngine([rule])
>>> def window(i, accuracy):
...     p = Point("performance", {"model_id": "m", "model_version": "1", "metric": "accuracy"},
...               {"value": accuracy, "n": 500}, time_ns=(i + 1) * 60_000_000_000)
...     d = engine.evaluate(model_id="m", model_version="1", window_start_ns=i * 60_000_000_000,
...                         window_end_ns=(i + 1) * 60_000_000_000, points=[p])
...     return [a.state for a in d.alerts]
>>> [window(i, acc) for i, acc in enumerate([0.9, 0.7, 0.7, 0.9, 0.7, 0.9, 0.9, 0.9])]
[[], [], ['firing'], [], [], [], ['resolved'], []]
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from dataclasses import field as _field
from enum import Enum
from typing import Any, Callable, Iterable, Literal, Mapping, Self, Sequence

from detectors.points import Point
from retrain.events import Alert, Observation, RetrainTrigger, alert_id
from retrain.metrics import COHORT_MEASUREMENTS, METRICS, TAG_VALUES

Op = Literal[">", ">=", "<", "<=", "=="]
Combine = Literal["any", "all"]
Severity = Literal["info", "warning", "critical"]

OPS: Mapping[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
}
COMBINES: tuple[str, ...] = ("any", "all")
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
SNAPSHOT_FORMAT = 1

ERR_OP = "{where}: op must be one of {choices}, got {value!r}"
ERR_BOOL_OP = "{where}: a boolean threshold ({value!r}) needs op '==', got {op!r}"
ERR_THRESHOLD = "{where}: threshold must be a finite number or a boolean, got {value!r}"
ERR_MEASUREMENT = "{where}: unknown measurement {value!r} (known: {choices})"
ERR_FIELD = "{where}: measurement {measurement!r} has no field {value!r} (fields: {choices})"
ERR_TAG = "{where}: measurement {measurement!r} has no tag {value!r} (tags: {choices})"
ERR_TAG_VALUE = "{where}: tag {key}={value!r} is never written (values: {choices})"
ERR_INT = "{where}: {key} must be an integer >= {minimum}, got {value!r}"
ERR_TEXT = "{where}: {key} must be a non-empty string, got {value!r}"
ERR_CHOICE = "{where}: {key} must be one of {choices}, got {value!r}"
ERR_UNKNOWN_KEY = "{where}: unknown key {key!r} (known: {choices})"
ERR_MISSING_KEY = "{where}: missing required key {key!r}"
ERR_MIXED = "{where}: give either 'conditions' or one inline condition ({keys}), not both"
ERR_DUPLICATE = "{where}: duplicate rule name {name!r}"
ERR_WINDOW = "window_end_ns ({end!r}) must be an integer >= window_start_ns ({start!r})"
ERR_SNAPSHOT = "snapshot: {problem}"


class PolicyError(ValueError):
    """A rule, a rule config or an evaluate call is invalid; the message names the key."""


# -- conditions ----------------------------------------------------------------------


class Verdict(Enum):
    """Three-valued outcome of a condition or rule in one window."""

    BREACH = "breach"
    CLEAR = "clear"
    NO_DATA = "no_data"


@dataclass(frozen=True, slots=True)
class ConditionResult:
    """What one condition saw in one window."""

    condition: Condition
    verdict: Verdict
    matching: tuple[Observation, ...]
    breaching: tuple[Observation, ...]

    def primary(self) -> Observation | None:
        """The most extreme observation: among breaching ones if any, else among all."""
        pool = self.breaching or self.matching
        if not pool:
            return None
        return _most_extreme(pool, self.condition.op)


_CONDITION_KEYS = ("measurement", "field", "tags", "op", "threshold", "min_count", "min_samples", "count_by",
                   "min_coverage")


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """A test on the points of one measurement in one window.

    Points match on ``measurement`` and on every tag in ``tags`` (exact; a tag not
    named matches anything) and must carry ``field``. With ``min_coverage`` > 0 (cohort
    measurements only) a point whose ``label_coverage`` is missing or below it is ignored,
    so a rule waits for a prediction-time window's labels. With ``min_samples`` > 0 a
    point whose ``n`` field is missing or below it is ignored. The condition
    breaches when at least ``min_count`` matching points satisfy
    ``field <op> threshold`` (counting distinct values of the tag ``count_by`` when
    given, e.g. ``feature``), is clear when points matched but too few breached,
    and has no data when no point matched.

    >>> c = Condition(measurement="feature_drift", field="drift", op="==", threshold=True,
    ...               min_count=2, count_by="feature")
    >>> pts = [Point("feature_drift", {"feature": f, "method": "psi"}, {"drift": d, "value": v}, 0)
    ...        for f, d, v in [("age", True, 0.4), ("income", False, 0.01), ("channel", True, 0.3)]]
    >>> c.evaluate(pts).verdict.value, c.evaluate(pts[:2]).verdict.value, c.evaluate([]).verdict.value
    ('breach', 'clear', 'no_data')
    """

    measurement: str
    field: str = "value"
    tags: Mapping[str, str] = _field(default_factory=dict)
    op: Op
    threshold: float | bool
    min_count: int = 1
    min_samples: int = 0
    count_by: str | None = None
    min_coverage: float = 0.0

    def __post_init__(self) -> None:
        where = f"condition on {self.measurement!r}"
        spec = METRICS.get(self.measurement) if isinstance(self.measurement, str) else None
        if spec is None:
            raise PolicyError(
                ERR_MEASUREMENT.format(where="condition", value=self.measurement, choices=sorted(METRICS))
            )
        tag_keys, fields = spec
        if self.field not in fields:
            raise PolicyError(
                ERR_FIELD.format(where=where, measurement=self.measurement, value=self.field, choices=sorted(fields))
            )
        if not isinstance(self.tags, Mapping):
            raise PolicyError(f"{where}: tags must be a mapping of tag -> value, got {self.tags!r}")
        tags = {}
        for key, value in self.tags.items():
            if key not in tag_keys:
                raise PolicyError(
                    ERR_TAG.format(where=where, measurement=self.measurement, value=key, choices=sorted(tag_keys))
                )
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise PolicyError(f"{where}: tag {key!r} must be a string, got {value!r}")
            allowed = TAG_VALUES.get((self.measurement, key))
            if allowed is not None and str(value) not in allowed:
                raise PolicyError(
                    ERR_TAG_VALUE.format(where=where, key=key, value=value, choices=sorted(allowed))
                )
            tags[str(key)] = str(value)
        object.__setattr__(self, "tags", tags)
        if self.op not in OPS:
            raise PolicyError(ERR_OP.format(where=where, choices=tuple(OPS), value=self.op))
        if isinstance(self.threshold, bool):
            if self.op != "==":
                raise PolicyError(ERR_BOOL_OP.format(where=where, value=self.threshold, op=self.op))
        elif not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold):
            raise PolicyError(ERR_THRESHOLD.format(where=where, value=self.threshold))
        _check_int(where, "min_count", self.min_count, 1)
        _check_int(where, "min_samples", self.min_samples, 0)
        coverage = self.min_coverage
        if isinstance(coverage, bool) or not isinstance(coverage, (int, float)) or not 0.0 <= coverage <= 1.0:
            raise PolicyError(f"{where}: min_coverage must be a number from 0 to 1, got {coverage!r}")
        if coverage and self.measurement not in COHORT_MEASUREMENTS:
            raise PolicyError(f"{where}: min_coverage applies to the cohort measurements "
                              f"({', '.join(sorted(COHORT_MEASUREMENTS))}), whose points carry label_coverage")
        object.__setattr__(self, "min_coverage", float(coverage))
        if self.count_by is not None and self.count_by not in tag_keys:
            raise PolicyError(
                ERR_TAG.format(where=where, measurement=self.measurement, value=self.count_by, choices=sorted(tag_keys))
            )

    def observe(self, point: Point) -> Observation | None:
        """The observation of ``point`` if it matches this condition, else ``None``."""
        if point.measurement != self.measurement:
            return None
        for key, value in self.tags.items():
            if point.tags.get(key) != value:
                return None
        return self._observe(point)

    def _observe(self, point: Point) -> Observation | None:
        """:meth:`observe` of a point already known to have this measurement and these tags."""
        value = point.fields.get(self.field)
        if value is None or isinstance(value, str):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        n = point.fields.get("n")
        n = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) else None
        if self.min_samples > 0 and (n is None or n < self.min_samples):
            return None
        if self.min_coverage > 0:
            coverage = _number(point.fields.get("label_coverage"))
            if coverage is None or coverage < self.min_coverage:
                return None
        score = _number(point.fields.get("value")) if self.field != "value" else None
        return Observation(
            measurement=self.measurement,
            field=self.field,
            tags={k: str(v) for k, v in point.tags.items() if k not in ("model_id", "model_version")},
            value=value,
            op=self.op,
            threshold=self.threshold,
            score=score,
            point_threshold=_number(point.fields.get("threshold")),
            n=n,
            change=_change(point),
        )

    def breaches(self, observation: Observation) -> bool:
        """Whether one observation satisfies ``field <op> threshold``."""
        value = observation.value
        if isinstance(self.threshold, bool):
            return bool(value) == self.threshold
        return OPS[self.op](float(value), float(self.threshold))

    def evaluate(self, points: Iterable[Point] | WindowPoints) -> ConditionResult:
        if isinstance(points, WindowPoints):  # only the points of this measurement with these tags, in order
            observed = (self._observe(p) for p in points.matching(self.measurement, self.tags))
        else:
            observed = (self.observe(p) for p in points)
        matching = tuple(o for o in observed if o is not None)
        breaching = tuple(o for o in matching if self.breaches(o))
        if not matching:
            verdict = Verdict.NO_DATA
        else:
            if self.count_by is None:
                count = len(breaching)
            else:
                count = len({o.tags.get(self.count_by, "") for o in breaching})
            verdict = Verdict.BREACH if count >= self.min_count else Verdict.CLEAR
        return ConditionResult(self, verdict, matching, breaching)

    def describe(self) -> str:
        tags = ",".join(f"{k}={v}" for k, v in sorted(self.tags.items()))
        threshold = str(self.threshold).lower() if isinstance(self.threshold, bool) else f"{self.threshold:g}"
        text = f"{self.measurement}{'{' + tags + '}' if tags else ''}.{self.field} {self.op} {threshold}"
        if self.min_count > 1:
            text += f" on >= {self.min_count} {self.count_by + 's' if self.count_by else 'points'}"
        if self.min_coverage:
            text += f" at label coverage >= {self.min_coverage:g}"
        return text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "measurement": self.measurement,
            "field": self.field,
            "tags": dict(self.tags),
            "op": self.op,
            "threshold": self.threshold,
            "min_count": self.min_count,
            "min_samples": self.min_samples,
        }
        if self.count_by is not None:
            out["count_by"] = self.count_by
        if self.min_coverage:
            out["min_coverage"] = self.min_coverage
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "condition") -> Condition:
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: expected a mapping, got {data!r}")
        for key in data:
            if key not in _CONDITION_KEYS:
                raise PolicyError(ERR_UNKNOWN_KEY.format(where=where, key=key, choices=_CONDITION_KEYS))
        for key in ("measurement", "op", "threshold"):
            if key not in data:
                raise PolicyError(ERR_MISSING_KEY.format(where=where, key=key))
        try:
            return cls(**data)
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None


class WindowPoints:
    """One window's points grouped for the conditions: by measurement, then by a condition's tags
    (each group built once per window, on first use, the points in their order). A condition reads
    only its group, so a window costs one pass over its points, not one per condition; the
    verdicts and observations are those of :meth:`Condition.evaluate` on the plain points (the
    group holds exactly the points :meth:`Condition.observe` would not reject for their
    measurement or tags, in the same order)."""

    __slots__ = ("points", "_by_measurement", "_by_tags")

    def __init__(self, points: Iterable[Point]) -> None:
        self.points: Sequence[Point] = points if isinstance(points, (list, tuple)) else list(points)
        """The window's points, in their order."""
        by_measurement: dict[str, list[Point]] = {}
        for point in self.points:
            group = by_measurement.get(point.measurement)
            if group is None:
                by_measurement[point.measurement] = [point]
            else:
                group.append(point)
        self._by_measurement = by_measurement
        self._by_tags: dict[tuple[str, tuple[tuple[str, str], ...]], list[Point]] = {}

    def matching(self, measurement: str, tags: Mapping[str, str]) -> list[Point]:
        """The points of ``measurement`` that carry every tag of ``tags`` with its value."""
        key = (measurement, tuple(tags.items()))
        found = self._by_tags.get(key)
        if found is None:
            found = self._by_measurement.get(measurement, [])
            if tags:
                items = tuple(tags.items())
                found = [p for p in found if all(p.tags.get(k) == v for k, v in items)]
            self._by_tags[key] = found
        return found


# -- rules --------------------------------------------------------------------------------

_RULE_KEYS = (
    "name",
    "conditions",
    "combine",
    "fire_after",
    "clear_after",
    "cooldown_windows",
    "severity",
    "retrain",
    "description",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """Conditions combined with ``any``/``all``, and when to fire and resolve.

    ``fire_after`` consecutive breaching windows fire the rule; ``clear_after``
    consecutive clear windows resolve it (hysteresis); after a resolve the rule
    cannot fire again for ``cooldown_windows`` windows (breaching windows in the
    cooldown still count towards ``fire_after``). ``retrain`` makes a firing
    request a retrain job. Combining is three-valued: ``all`` breaches when every
    condition breaches and is clear when any condition is clear; ``any`` breaches
    when any condition breaches and is clear when none breaches and one is clear.
    """

    name: str
    conditions: Sequence[Condition]
    combine: Combine = "any"
    fire_after: int = 1
    clear_after: int = 1
    cooldown_windows: int = 0
    severity: Severity = "warning"
    retrain: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise PolicyError(ERR_TEXT.format(where="rule", key="name", value=self.name))
        where = f"rule {self.name!r}"
        if isinstance(self.conditions, (str, bytes, Mapping)) or not isinstance(self.conditions, Iterable):
            raise PolicyError(f"{where}: conditions must be a list of Condition, got {self.conditions!r}")
        conditions = tuple(self.conditions)
        if not conditions:
            raise PolicyError(f"{where}: needs at least one condition")
        for c in conditions:
            if not isinstance(c, Condition):
                raise PolicyError(f"{where}: conditions must be Condition objects, got {c!r}")
        if len({c.measurement in COHORT_MEASUREMENTS for c in conditions}) > 1:
            raise PolicyError(f"{where}: conditions on cohort measurements ({', '.join(sorted(COHORT_MEASUREMENTS))}) "
                              "cannot be combined with others: a cohort window is decided when its labels have "
                              "arrived, other windows at their close; make two rules")
        object.__setattr__(self, "conditions", conditions)
        if self.combine not in COMBINES:
            raise PolicyError(ERR_CHOICE.format(where=where, key="combine", choices=COMBINES, value=self.combine))
        if self.severity not in SEVERITIES:
            raise PolicyError(ERR_CHOICE.format(where=where, key="severity", choices=SEVERITIES, value=self.severity))
        _check_int(where, "fire_after", self.fire_after, 1)
        _check_int(where, "clear_after", self.clear_after, 1)
        _check_int(where, "cooldown_windows", self.cooldown_windows, 0)
        if not isinstance(self.retrain, bool):
            raise PolicyError(f"{where}: retrain must be true or false, got {self.retrain!r}")
        if not isinstance(self.description, str):
            raise PolicyError(f"{where}: description must be a string, got {self.description!r}")

    def evaluate(self, points: Sequence[Point] | WindowPoints) -> tuple[Verdict, tuple[ConditionResult, ...]]:
        """The rule's verdict on one window's points, and what each condition saw."""
        if not isinstance(points, WindowPoints):
            points = WindowPoints(points)
        results = tuple(c.evaluate(points) for c in self.conditions)
        verdicts = [r.verdict for r in results]
        if self.combine == "all":
            if all(v is Verdict.BREACH for v in verdicts):
                return Verdict.BREACH, results
            if any(v is Verdict.CLEAR for v in verdicts):
                return Verdict.CLEAR, results
            return Verdict.NO_DATA, results
        if any(v is Verdict.BREACH for v in verdicts):
            return Verdict.BREACH, results
        if any(v is Verdict.CLEAR for v in verdicts):
            return Verdict.CLEAR, results
        return Verdict.NO_DATA, results

    @property
    def cohort(self) -> bool:
        """A rule on prediction-time windows (:meth:`PolicyEngine.evaluate_cohort` decides it)."""
        return self.conditions[0].measurement in COHORT_MEASUREMENTS

    def describe(self) -> str:
        return f" {self.combine.upper()} ".join(c.describe() for c in self.conditions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "conditions": [c.to_dict() for c in self.conditions],
            "combine": self.combine,
            "fire_after": self.fire_after,
            "clear_after": self.clear_after,
            "cooldown_windows": self.cooldown_windows,
            "severity": self.severity,
            "retrain": self.retrain,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "rule") -> Rule:
        """Build a rule from config. One condition may be written inline::

            {name: low-accuracy, measurement: performance, tags: {metric: accuracy},
             op: "<", threshold: 0.8, min_samples: 100, severity: critical}
        """
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: expected a mapping, got {data!r}")
        if "name" not in data:
            raise PolicyError(ERR_MISSING_KEY.format(where=where, key="name"))
        if not isinstance(data["name"], str) or not data["name"].strip():
            raise PolicyError(ERR_TEXT.format(where=where, key="name", value=data["name"]))
        base = where
        where = f"{where} {data['name']!r}"
        for key in data:
            if key not in _RULE_KEYS and key not in _CONDITION_KEYS:
                raise PolicyError(ERR_UNKNOWN_KEY.format(where=where, key=key, choices=_RULE_KEYS + _CONDITION_KEYS))
        inline = {k: v for k, v in data.items() if k in _CONDITION_KEYS}
        if "conditions" in data:
            if inline:
                raise PolicyError(ERR_MIXED.format(where=where, keys=", ".join(sorted(inline))))
            raw = data["conditions"]
            if not isinstance(raw, (list, tuple)) or not raw:
                raise PolicyError(f"{where}: conditions must be a non-empty list, got {raw!r}")
            conditions = [Condition.from_dict(c, where=f"{where} conditions[{i}]") for i, c in enumerate(raw)]
        elif inline:
            conditions = [Condition.from_dict(inline, where=where)]
        else:
            raise PolicyError(ERR_MISSING_KEY.format(where=where, key="conditions"))
        options = {k: v for k, v in data.items() if k in _RULE_KEYS and k not in ("name", "conditions")}
        try:
            return cls(name=data["name"], conditions=conditions, **options)
        except PolicyError as exc:
            raise PolicyError(f"{base}: {exc}") from None


def rules_from_config(entries: Sequence[Mapping[str, Any]], *, where: str = "policies") -> list[Rule]:
    """Rules from a config list (a model's ``policies``); names must be unique."""
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        raise PolicyError(f"{where}: expected a list of rules, got {entries!r}")
    rules = [Rule.from_dict(entry, where=f"{where}[{i}]") for i, entry in enumerate(entries)]
    _check_unique(rules, where)
    return rules


WINDOWED_DRIFT_METHODS: tuple[str, ...] = ("psi", "jensenshannon")
"""Windowed drift tests the default rules alert on: the distance tests that
:class:`detectors.drift.DriftSuite` calibrates to its false-alarm budget (distance over its
threshold *and* the pooled chi-square test significant at the window's share of the budget).
``ks``, ``chisquare`` and ``wasserstein`` flag a fixed share of stationary windows (5 % for the
p-value tests at 0.05) and River's sequential detectors on batch means (``adwin``, ...) have no
stated false-alarm rate: write your own rules to alert on them."""

COHORTS_REMEMBERED = 1000
"""Decided cohort windows a rule remembers per model (its snapshot stays small): a window is
decided again only if it is rewritten after this many later windows were decided."""

WINDOWED_MIN_SAMPLES = 100
"""Values a window's drift point needs before a default rule reads it (a replay's final partial
window of a few dozen events tells little and is left out)."""


def _drift_conditions(measurement: str, *, min_count: int = 1, count_by: str | None = None,
                      tags: Mapping[str, str] | None = None) -> list[Condition]:
    """``drift == true`` on the calibrated windowed tests (at least :data:`WINDOWED_MIN_SAMPLES`
    values) and on the CUSUM streams (any number: a sequential detection is calibrated whenever
    it happens)."""
    extra = dict(tags or {})
    windowed = [Condition(measurement=measurement, field="drift", tags={**extra, "method": m}, op="==", threshold=True,
                          min_count=min_count, count_by=count_by, min_samples=WINDOWED_MIN_SAMPLES)
                for m in WINDOWED_DRIFT_METHODS]
    cusum = Condition(measurement=measurement, field="drift", tags={**extra, "method": "cusum"}, op="==",
                      threshold=True, min_count=min_count, count_by=count_by)
    return [*windowed, cusum]


def default_rules() -> list[Rule]:
    """The documented default policies, for a model whose config names none.

    ===================================  =====================================================  ========
    rule                                 breaches when                                          severity
    ===================================  =====================================================  ========
    feature-drift                        ``feature_drift.drift`` (PSI/JS window, or CUSUM)      warning
    multi-feature-drift (retrain)        the same on >= 3 features, 2 windows                   critical
    label-shift                          ``label_shift{class=all}.drift`` (n >= 100)            warning
    prediction-drift                     ``prediction_drift.drift`` (PSI/JS window, or CUSUM)   warning
    data-quality-missing                 ``data_quality{check=missing}.rate`` > 0.1             warning
    performance-accuracy                 ``performance{metric=accuracy}`` < 0.8 (n >= 200)      critical
    estimated-accuracy                   ``performance_estimate{metric=accuracy}`` < 0.8        warning
    concept-drift                        ``concept_drift{detector=cusum}.drift``                warning
    fairness-demographic-parity          ``demographic_parity_ratio`` < 0.8 (four-fifths)       warning
    fairness-equalized-odds              ``equalized_odds_difference`` > 0.1                    warning
    drift-and-estimated-decay (retrain)  drift on >= 3 features AND estimated accuracy < 0.8    critical
    ===================================  =====================================================  ========

    Drift rules alert only on calibrated detectors (:data:`WINDOWED_DRIFT_METHODS` and the CUSUM
    streams, whose thresholds are set for a stated false-alarm rate); the windowed test and the
    CUSUM of one change are conditions of *one* rule, so they raise one alert. DDM, EDDM and
    ADWIN on the error stream are not in the defaults: they have no stated false-alarm rate, and
    DDM/EDDM alerted at the first window of a stationary real dataset. The drift rules fire on
    one breach (a CUSUM detection fires them between window closes), stay firing while the
    change holds (a CUSUM stream that detected keeps reporting ``drift`` until its return test
    shows the reference level again: :class:`detectors.cusum.PageCUSUM`) and resolve after 3
    clear windows, so a persisting change is one alert, however weak; the threshold rules (accuracy,
    fairness) need 2 breaching windows and resolve after 3 clear ones, so a metric near its
    threshold raises one alert, not one per window. Windows without a rule's data (no labels
    yet, a stream that observed nothing) neither breach nor clear. The retrain rules wait 10
    windows after a resolve before they can fire again.
    """
    drift_3 = _drift_conditions("feature_drift", min_count=3, count_by="feature")
    est_accuracy = Condition(
        measurement="performance_estimate", tags={"metric": "accuracy"}, op="<", threshold=0.8, min_samples=200
    )
    return [
        Rule(name="feature-drift", conditions=_drift_conditions("feature_drift"), clear_after=3, severity="warning",
             description="Input drift on at least one feature (windowed PSI, or a CUSUM stream between windows)."),
        Rule(name="multi-feature-drift", conditions=drift_3, fire_after=2, clear_after=3, cooldown_windows=10,
             severity="critical", retrain=True,
             description="Input drift on three or more features for two windows in a row."),
        Rule(name="label-shift",
             conditions=[Condition(measurement="label_shift", field="drift", tags={"class": "all"}, op="==",
                                   threshold=True, min_samples=WINDOWED_MIN_SAMPLES)],
             clear_after=3, description="The class distribution moved away from the reference."),
        Rule(name="prediction-drift", conditions=_drift_conditions("prediction_drift"), clear_after=3,
             description="The distribution of predictions or scores drifted (windowed, or a CUSUM stream)."),
        Rule(name="data-quality-missing",
             conditions=[Condition(measurement="data_quality", field="rate", tags={"check": "missing"}, op=">",
                                   threshold=0.1)],
             fire_after=2, clear_after=3, description="More than 10% of a feature's values are missing."),
        Rule(name="performance-accuracy",
             conditions=[Condition(measurement="performance", tags={"metric": "accuracy"}, op="<", threshold=0.8,
                                   min_samples=200)],
             fire_after=2, clear_after=3, severity="critical",
             description="Realised accuracy below 0.8 on >= 200 labels, two windows in a row."),
        Rule(name="estimated-accuracy", conditions=[est_accuracy], fire_after=2, clear_after=3,
             description="Label-free estimated accuracy below 0.8, two windows in a row."),
        Rule(name="concept-drift",
             conditions=[Condition(measurement="concept_drift", field="drift", tags={"detector": "cusum"}, op="==",
                                   threshold=True)],
             clear_after=3, description="The CUSUM on the error rate of labelled pairs detected a rise."),
        Rule(name="fairness-demographic-parity",
             conditions=[Condition(measurement="fairness", tags={"group": "all", "metric": "demographic_parity_ratio"},
                                   op="<", threshold=0.8, min_samples=200)],
             fire_after=2, clear_after=3, description="Selection-rate ratio below the four-fifths rule."),
        Rule(name="fairness-equalized-odds",
             conditions=[Condition(measurement="fairness", tags={"group": "all", "metric": "equalized_odds_difference"},
                                   op=">", threshold=0.1, min_samples=200)],
             fire_after=2, clear_after=3, description="TPR or FPR differs by more than 0.1 between groups."),
        Rule(name="drift-and-estimated-decay",
             conditions=[Condition(measurement="feature_drift", field="drift", tags={"method": "psi"}, op="==",
                                   threshold=True, min_count=3, count_by="feature",
                                   min_samples=WINDOWED_MIN_SAMPLES), est_accuracy],
             combine="all", clear_after=3, cooldown_windows=10, severity="critical", retrain=True,
             description="Windowed drift on three or more features while estimated accuracy is below 0.8."),
    ]  # fmt: skip


# -- the engine ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What one window produced: alert transitions and (at most one) retrain trigger."""

    alerts: tuple[Alert, ...] = ()
    jobs: tuple[RetrainTrigger, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.alerts or self.jobs)


@dataclass(slots=True)
class _RuleState:
    model_version: str
    firing: bool = False
    breach_streak: int = 0
    clear_streak: int = 0
    cooldown: int = 0
    last_end_ns: int | None = None
    streak_start_ns: int | None = None
    since_ns: int | None = None
    incident_id: str | None = None
    last_instant_ns: int | None = None
    cohorts_decided: list[int] = _field(default_factory=list)
    """A cohort rule's recently decided windows (their ends), so each is decided once."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "firing": self.firing,
            "breach_streak": self.breach_streak,
            "clear_streak": self.clear_streak,
            "cooldown": self.cooldown,
            "last_end_ns": self.last_end_ns,
            "streak_start_ns": self.streak_start_ns,
            "since_ns": self.since_ns,
            "incident_id": self.incident_id,
            "last_instant_ns": self.last_instant_ns,
            "cohorts_decided": list(self.cohorts_decided),
        }


class PolicyEngine:
    """Evaluates rules window by window, per model; state per (model_id, rule).

    - A rule fires once after ``fire_after`` consecutive breaching windows and
      resolves once after ``clear_after`` consecutive clear windows; in between
      nothing is emitted, so a flapping metric raises one alert.
    - Windows in which a rule has no data do not move its state. A window that
      ends at or before the last window the rule saw (a redelivery after a
      restart) is ignored by that rule.
    - When the model's version changes, a firing alert of the old version is
      resolved and the streaks start over; the cooldown carries over.
    - Retrain rules that fire in the same window make one :class:`RetrainTrigger`.

    :meth:`snapshot` returns JSON-serialisable state; :meth:`restore` loads it.
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise PolicyError(f"PolicyEngine: expected Rule objects, got {rule!r}")
        _check_unique(self.rules, "PolicyEngine")
        self._reset()

    def _reset(self) -> None:
        self._states: dict[tuple[str, str], _RuleState] = {}

    def firing(self) -> tuple[tuple[str, str], ...]:
        """The (model_id, rule) pairs whose alert is firing, sorted."""
        return tuple(sorted(k for k, s in self._states.items() if s.firing))

    def evaluate(
        self,
        *,
        model_id: str,
        model_version: str,
        window_start_ns: int,
        window_end_ns: int,
        points: Sequence[Point],
    ) -> Decision:
        """Evaluate one window of one model. Points of other models or versions are ignored."""
        if not isinstance(model_id, str) or not model_id:
            raise PolicyError(ERR_TEXT.format(where="evaluate", key="model_id", value=model_id))
        if isinstance(model_version, int) and not isinstance(model_version, bool):
            model_version = str(model_version)
        if not isinstance(model_version, str):
            raise PolicyError(ERR_TEXT.format(where="evaluate", key="model_version", value=model_version))
        if (
            not _is_int(window_start_ns)
            or not _is_int(window_end_ns)
            or window_end_ns < window_start_ns
        ):
            raise PolicyError(ERR_WINDOW.format(start=window_start_ns, end=window_end_ns))
        own = [
            p
            for p in points
            if p.tags.get("model_id", model_id) == model_id
            and p.tags.get("model_version", model_version) == model_version
        ]
        window = WindowPoints(own)
        alerts: list[Alert] = []
        fired_retrain: list[tuple[Rule, tuple[ConditionResult, ...]]] = []
        for rule in self.rules:
            if rule.cohort:
                continue
            state = self._state(rule, model_id, model_version, window_start_ns, window_end_ns, alerts)
            verdict, results = rule.evaluate(window)
            if verdict is Verdict.NO_DATA:
                continue
            if state.last_end_ns is not None and window_end_ns <= state.last_end_ns:
                continue
            state.last_end_ns = window_end_ns
            self._step(rule, state, verdict, results, model_id, window_start_ns, window_end_ns, alerts, fired_retrain)
        return Decision(alerts=tuple(alerts), jobs=self._jobs(model_id, model_version, window_start_ns, window_end_ns,
                                                               fired_retrain))

    def evaluate_cohort(self, *, model_id: str, model_version: str, window_start_ns: int, window_end_ns: int,
                        points: Sequence[Point]) -> Decision:
        """Evaluate the rules on cohort measurements on one prediction-time window's points, at its
        close or when late labels rewrote them. Each rule decides a window once: the first time
        its points give a verdict (a condition's ``min_coverage`` and ``min_samples`` hold back a
        window whose labels have not arrived yet); decided windows count towards ``fire_after``,
        ``clear_after`` and the cooldown in the order they were decided."""
        own = [p for p in points if p.tags.get("model_id", model_id) == model_id
               and p.tags.get("model_version", model_version) == model_version]
        window = WindowPoints(own)
        alerts: list[Alert] = []
        fired_retrain: list[tuple[Rule, tuple[ConditionResult, ...]]] = []
        for rule in self.rules:
            if not rule.cohort:
                continue
            verdict, results = rule.evaluate(window)
            if verdict is Verdict.NO_DATA:
                continue
            state = self._state(rule, model_id, model_version, window_start_ns, window_end_ns, alerts)
            if window_end_ns in state.cohorts_decided:
                continue
            state.cohorts_decided = [*state.cohorts_decided[-(COHORTS_REMEMBERED - 1):], window_end_ns]
            self._step(rule, state, verdict, results, model_id, window_start_ns, window_end_ns, alerts, fired_retrain)
        return Decision(alerts=tuple(alerts), jobs=self._jobs(model_id, model_version, window_start_ns, window_end_ns,
                                                               fired_retrain))

    def _step(self, rule: Rule, state: _RuleState, verdict: Verdict, results: tuple[ConditionResult, ...],
              model_id: str, window_start_ns: int, window_end_ns: int, alerts: list[Alert],
              fired_retrain: list[tuple[Rule, tuple[ConditionResult, ...]]]) -> None:
        """One decided window of one rule: streaks, cooldown, firing and resolving."""
        cooling = state.cooldown > 0
        if cooling:
            state.cooldown -= 1
        if verdict is Verdict.BREACH:
            state.clear_streak = 0
            if state.breach_streak == 0:
                state.streak_start_ns = window_start_ns
            state.breach_streak += 1
            if not state.firing and not cooling and state.breach_streak >= rule.fire_after:
                state.firing = True
                state.since_ns = state.streak_start_ns
                alert = self._alert(rule, state, "firing", model_id, window_start_ns, window_end_ns, results)
                state.incident_id = alert.alert_id
                alerts.append(alert)
                if rule.retrain:
                    fired_retrain.append((rule, results))
        else:
            state.breach_streak = 0
            state.streak_start_ns = None
            if state.firing:
                state.clear_streak += 1
                if state.clear_streak >= rule.clear_after:
                    alerts.append(
                        self._alert(rule, state, "resolved", model_id, window_start_ns, window_end_ns, results)
                    )
                    state.firing = False
                    state.clear_streak = 0
                    state.since_ns = None
                    state.incident_id = None
                    state.cooldown = rule.cooldown_windows

    def evaluate_instant(self, *, model_id: str, model_version: str, time_ns: int,
                         points: Sequence[Point]) -> Decision:
        """Evaluate points raised between window closes (a sequential detection, at event time
        ``time_ns``), so that an alert fires in the micro-batch that saw the change.

        Only rules that fire on a single breach (``fire_after`` 1) react, and only to a
        breach: a rule that breaches and is neither firing nor cooling down fires, with
        ``window_start``/``window_end`` at ``time_ns``; a firing rule that breaches restarts
        its clear streak. Nothing else moves (streaks, cooldowns and resolving count windows),
        so rules over window figures are untouched by instant points. A detection at or before
        the last instant a rule saw (a redelivery) is ignored.
        """
        if not _is_int(time_ns):
            raise PolicyError(ERR_WINDOW.format(start=time_ns, end=time_ns))
        if isinstance(model_version, int) and not isinstance(model_version, bool):
            model_version = str(model_version)
        own = [p for p in points if p.tags.get("model_id", model_id) == model_id
               and p.tags.get("model_version", model_version) == model_version]
        window = WindowPoints(own)
        alerts: list[Alert] = []
        fired_retrain: list[tuple[Rule, tuple[ConditionResult, ...]]] = []
        for rule in self.rules:
            if rule.fire_after != 1 or rule.cohort:
                continue
            verdict, results = rule.evaluate(window)
            if verdict is not Verdict.BREACH:
                continue
            state = self._state(rule, model_id, model_version, time_ns, time_ns, alerts)
            if state.last_instant_ns is not None and time_ns <= state.last_instant_ns:
                continue
            state.last_instant_ns = time_ns
            if state.firing:
                state.clear_streak = 0
                continue
            if state.cooldown > 0:
                continue
            state.firing = True
            state.breach_streak = max(state.breach_streak, 1)
            state.streak_start_ns = state.streak_start_ns if state.streak_start_ns is not None else time_ns
            state.since_ns = time_ns
            alert = self._alert(rule, state, "firing", model_id, time_ns, time_ns, results)
            state.incident_id = alert.alert_id
            alerts.append(alert)
            if rule.retrain:
                fired_retrain.append((rule, results))
        return Decision(alerts=tuple(alerts), jobs=self._jobs(model_id, model_version, time_ns, time_ns,
                                                               fired_retrain))

    def _state(self, rule: Rule, model_id: str, model_version: str, start_ns: int, end_ns: int,
               alerts: list[Alert]) -> _RuleState:
        """The rule's state for this model; a new version resolves a firing alert of the old one
        (appended to ``alerts``) and starts over, keeping the cooldown."""
        key = (model_id, rule.name)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _RuleState(model_version=model_version)
        elif state.model_version != model_version:
            if state.firing:
                alerts.append(
                    self._alert(rule, state, "resolved", model_id, start_ns, end_ns, (),
                                message=f"{rule.name} resolved: model version changed from "
                                        f"{state.model_version} to {model_version}")
                )
            state = self._states[key] = _RuleState(model_version=model_version, cooldown=state.cooldown)
        return state

    def _jobs(self, model_id: str, model_version: str, start_ns: int, end_ns: int,
              fired_retrain: list[tuple[Rule, tuple[ConditionResult, ...]]]) -> tuple[RetrainTrigger, ...]:
        """One retrain trigger for the retrain rules that fired together (none if none did)."""
        window_start_ns, window_end_ns = start_ns, end_ns
        jobs: tuple[RetrainTrigger, ...] = ()
        if fired_retrain:
            metrics: dict[str, float] = {}
            for _, results in fired_retrain:
                for result in results:
                    for obs in result.breaching:
                        number = obs.number
                        if number is not None:
                            metrics[obs.key] = number
            jobs = (
                RetrainTrigger.create(
                    model_id=model_id,
                    model_version=model_version,
                    rules=[rule.name for rule, _ in fired_retrain],
                    reason="; ".join(f"{rule.name}: {rule.describe()}" for rule, _ in fired_retrain),
                    metrics=metrics,
                    window_start_ns=window_start_ns,
                    window_end_ns=window_end_ns,
                ),
            )
        return jobs

    def _alert(
        self,
        rule: Rule,
        state: _RuleState,
        status: str,
        model_id: str,
        window_start_ns: int,
        window_end_ns: int,
        results: tuple[ConditionResult, ...],
        *,
        message: str | None = None,
    ) -> Alert:
        firing = status == "firing"
        primary: Observation | None = None
        for result in results:
            if firing and not result.breaching:
                continue
            primary = result.primary()
            if primary is not None:
                break
        metric = primary.measurement if primary is not None else rule.conditions[0].measurement
        threshold = primary.number_threshold if primary is not None else _number(rule.conditions[0].threshold)
        breaching = tuple(o for r in results for o in r.breaching) if firing else ()
        detail = primary.detail() if primary is not None else {}
        if message is None:
            crossed = f": {describe_crossing(detail)}" if detail else ""
            if firing:
                message = f"{rule.name} firing{crossed} ({len(breaching)} breaching point(s); rule: {rule.describe()})"
            else:
                message = f"{rule.name} resolved after {rule.clear_after} clear window(s){crossed}"
        this_id = alert_id(
            model_id=model_id,
            model_version=state.model_version,
            rule=rule.name,
            state=status,
            window_start_ns=window_start_ns,
            window_end_ns=window_end_ns,
        )
        return Alert(
            alert_id=this_id,
            model_id=model_id,
            model_version=state.model_version,
            rule=rule.name,
            state=status,  # type: ignore[arg-type]
            severity=rule.severity,
            metric=metric,
            value=primary.number if primary is not None else None,
            threshold=threshold,
            window_start_ns=window_start_ns,
            window_end_ns=window_end_ns,
            since_ns=state.since_ns if state.since_ns is not None else window_start_ns,
            incident_id=this_id if firing else (state.incident_id or this_id),
            retrain=rule.retrain,
            message=message,
            values=breaching,
            detail=detail,
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state (rules are configuration and are not included)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "states": [
                {"model_id": model_id, "rule": rule, **state.to_dict()}
                for (model_id, rule), state in sorted(self._states.items())
            ],
        }

    def restore(self, snapshot: Mapping[str, Any]) -> Self:
        """Replace the state with ``snapshot``; state of rules no longer configured is dropped."""
        if not isinstance(snapshot, Mapping) or snapshot.get("format") != SNAPSHOT_FORMAT:
            raise PolicyError(ERR_SNAPSHOT.format(problem=f"expected format {SNAPSHOT_FORMAT}"))
        names = {rule.name for rule in self.rules}
        states: dict[tuple[str, str], _RuleState] = {}
        for i, entry in enumerate(snapshot.get("states") or ()):
            try:
                key = (str(entry["model_id"]), str(entry["rule"]))
                state = _RuleState(
                    model_version=str(entry["model_version"]),
                    firing=bool(entry["firing"]),
                    breach_streak=int(entry["breach_streak"]),
                    clear_streak=int(entry["clear_streak"]),
                    cooldown=int(entry["cooldown"]),
                    last_end_ns=_opt_int(entry.get("last_end_ns")),
                    streak_start_ns=_opt_int(entry.get("streak_start_ns")),
                    since_ns=_opt_int(entry.get("since_ns")),
                    incident_id=entry.get("incident_id"),
                    last_instant_ns=_opt_int(entry.get("last_instant_ns")),
                    cohorts_decided=[int(t) for t in entry.get("cohorts_decided") or ()],
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise PolicyError(ERR_SNAPSHOT.format(problem=f"states[{i}]: {exc!r}")) from None
            if key[1] in names:
                states[key] = state
        self._states = states
        return self


# -- helpers ----------------------------------------------------------------------------------------


def _change(point: Point) -> str | None:
    """What a CUSUM column that detected is tuned to, from its point's ``delta``/``sd_ratio``."""
    ratio, delta = _number(point.fields.get("sd_ratio")), _number(point.fields.get("delta"))
    if ratio:
        return f"sd ×{ratio:.3g}" if ratio > 1 else f"sd ÷{1 / ratio:.3g}"
    if delta:
        return f"{delta:+g} sd"
    return None


def describe_crossing(detail: Mapping[str, Any]) -> str:
    """One line saying what was crossed, from :meth:`Observation.detail`.

    >>> describe_crossing({"series": "feature_drift.drift{feature=age,method=cusum}", "method": "cusum",
    ...                    "value": 1.031, "threshold": 1.0, "n": 140, "change": "+0.5 sd",
    ...                    "condition": "drift == true"})
    'feature_drift.drift{feature=age,method=cusum} CUSUM statistic 1.031× its threshold (change +0.5 sd, n 140)'
    >>> describe_crossing({"series": "feature_drift.drift{feature=age,method=psi}", "method": "psi",
    ...                    "value": 0.31, "threshold": 0.1, "n": 1000, "condition": "drift == true"})
    'feature_drift.drift{feature=age,method=psi} value 0.31 (threshold 0.1, n 1000)'
    >>> describe_crossing({"series": "performance.value{metric=accuracy}", "value": 0.71, "threshold": 0.8,
    ...                    "n": 400, "condition": "value < 0.8"})
    'performance.value{metric=accuracy} value 0.71 < 0.8 (n 400)'
    """
    series = detail.get("series", "")
    value, threshold, n = detail.get("value"), detail.get("threshold"), detail.get("n")
    extra = [f"change {detail['change']}"] if detail.get("change") else []
    if n is not None:
        extra.append(f"n {n}")
    if detail.get("method") == "cusum" and value is not None:
        return f"{series} CUSUM statistic {value:.4g}× its threshold" + (f" ({', '.join(extra)})" if extra else "")
    condition = str(detail.get("condition", ""))
    if value is None:
        return f"{series} {condition}" + (f" ({', '.join(extra)})" if extra else "")
    if condition.startswith(("drift ", "value == ")) or threshold is None:
        # a boolean test: the statistic and the point's own threshold
        shown = [f"threshold {threshold:.4g}"] if threshold is not None else [condition]
        return f"{series} value {value:.4g} ({', '.join(shown + extra)})"
    op = condition.split(" ")[1] if condition.count(" ") >= 2 else ""
    return f"{series} value {value:.4g} {op} {threshold:.4g}" + (f" ({', '.join(extra)})" if extra else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, (str, bool)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _check_int(where: str, key: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise PolicyError(ERR_INT.format(where=where, key=key, minimum=minimum, value=value))


def _check_unique(rules: Iterable[Rule], where: str) -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise PolicyError(ERR_DUPLICATE.format(where=where, name=rule.name))
        seen.add(rule.name)


def _most_extreme(observations: Sequence[Observation], op: str) -> Observation:
    numbered = [o for o in observations if o.number is not None]
    if not numbered:
        return observations[0]
    if op in ("<", "<="):
        return min(numbered, key=lambda o: o.number)  # type: ignore[arg-type,return-value]
    return max(numbered, key=lambda o: o.number)  # type: ignore[arg-type,return-value]


__all__ = [
    "Alert",
    "Combine",
    "Condition",
    "ConditionResult",
    "Decision",
    "Op",
    "PolicyEngine",
    "PolicyError",
    "RetrainTrigger",
    "Rule",
    "Verdict",
    "WindowPoints",
    "default_rules",
    "rules_from_config",
]
