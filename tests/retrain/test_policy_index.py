"""The policy reads a window's points grouped by measurement and tags (:class:`WindowPoints`):
its verdicts and observations are those of each condition reading every point (the oracle:
:meth:`Condition.evaluate` on the plain list, which calls :meth:`Condition.observe` per point)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.points import Point
from retrain.metrics import METRICS, TAG_VALUES
from retrain.policy import Condition, ConditionResult, PolicyEngine, Rule, Verdict, WindowPoints, default_rules

MEASUREMENTS = sorted(METRICS)
FEW = ["feature_drift", "performance", "data_quality", "cohort_performance", "fairness"]
"""Most points and conditions fall on a few measurements, so that conditions match, breach and clear."""


def _measurement() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(FEW), st.sampled_from(FEW), st.sampled_from(MEASUREMENTS))


def _keys(measurement: str) -> tuple[set[str], set[str]]:
    tag_keys, fields = METRICS[measurement]
    return set(tag_keys) - {"model_id", "model_version"}, set(fields)


def _tag_value(measurement: str, key: str) -> st.SearchStrategy[str]:
    allowed = TAG_VALUES.get((measurement, key))
    pool = sorted(allowed)[:2] if allowed else ["a", "psi"]
    return st.sampled_from(pool)


@st.composite
def points(draw: st.DrawFn) -> Point:
    measurement = draw(_measurement())
    tag_keys, fields = _keys(measurement)
    tags = {"model_id": "m", "model_version": "1"}
    for key in sorted(tag_keys):  # every tag, as the detectors write them
        tags[key] = draw(_tag_value(measurement, key))
    values = st.one_of(st.floats(-1, 1), st.floats(-1, 1), st.booleans(), st.integers(-5, 500),
                       st.sampled_from([None, "text", float("nan"), float("inf")]))
    out = {}
    for name in sorted(fields | {"n", "label_coverage"}):
        if draw(st.integers(0, 4)):
            out[name] = draw(st.integers(0, 400)) if name == "n" and draw(st.booleans()) else draw(values)
    return Point(measurement, tags, out, 0)


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    measurement = draw(_measurement())
    tag_keys, fields = _keys(measurement)
    tags = {key: draw(_tag_value(measurement, key))
            for key in draw(st.lists(st.sampled_from(sorted(tag_keys)), unique=True, max_size=2))} if tag_keys else {}
    threshold = draw(st.one_of(st.booleans(), st.floats(-1, 1)))
    op = "==" if isinstance(threshold, bool) else draw(st.sampled_from(["<", "<=", ">", ">=", "=="]))
    return Condition(measurement=measurement, field=draw(st.sampled_from(sorted(fields))), tags=tags, op=op,
                     threshold=threshold, min_count=draw(st.sampled_from([1, 1, 2])), min_samples=draw(st.sampled_from([0, 0, 100])),
                     count_by=draw(st.sampled_from([None, *sorted(tag_keys)])),
                     min_coverage=draw(st.sampled_from([0.0, 0.5])) if measurement.startswith("cohort_") else 0.0)


@settings(max_examples=120, deadline=None)
@given(window=st.lists(points(), max_size=40), drawn=st.lists(conditions(), max_size=8))
def test_grouped_points_give_each_condition_what_every_point_gives(window, drawn):
    grouped = WindowPoints(window)  # one grouping shared by every condition, as the engine does
    for condition in [*drawn, *(c for rule in default_rules() for c in rule.conditions)]:
        assert condition.evaluate(grouped) == condition.evaluate(window)
        assert condition.evaluate(grouped) == condition.evaluate(list(window))  # a cached group, read again


def _per_point(self, points):
    """``Condition.evaluate`` as it was before the grouping: every point through :meth:`Condition.observe`."""
    if isinstance(points, WindowPoints):
        points = points.points
    matching = tuple(o for o in (self.observe(p) for p in points) if o is not None)
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


def _run(engine, windows):
    out = []
    for i, window in enumerate(windows):
        start, end = i * 60_000_000_000, (i + 1) * 60_000_000_000
        out.append(engine.evaluate(model_id="m", model_version="1", window_start_ns=start, window_end_ns=end,
                                   points=window))
        out.append(engine.evaluate_instant(model_id="m", model_version="1", time_ns=end + 1, points=window))
        out.append(engine.evaluate_cohort(model_id="m", model_version="1", window_start_ns=start,
                                          window_end_ns=end, points=window))
    return out, engine.snapshot()


@settings(max_examples=80, deadline=None)
@given(windows=st.lists(st.lists(points(), max_size=30), max_size=6), drawn=st.lists(conditions(), max_size=4))
def test_engine_decides_as_rules_reading_every_point(windows, drawn):
    """The engine's decisions (alerts, jobs, state) against the same engine whose conditions read every point."""
    rules = [*default_rules(), *(Rule(name=f"r{i}", conditions=[c], fire_after=1 + i % 2)
                                 for i, c in enumerate(drawn))]
    grouped = _run(PolicyEngine(rules), windows)
    original = Condition.evaluate
    Condition.evaluate = _per_point
    try:
        oracle = _run(PolicyEngine(rules), windows)
    finally:
        Condition.evaluate = original
    assert grouped == oracle
