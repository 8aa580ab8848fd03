"""Policy engine on hand-built sequences of windows.

Each test builds the points of a few windows by hand, feeds them in order and
checks which windows produce which alert transitions and retrain triggers.
"""

from __future__ import annotations

import json
from typing import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.points import Point
from retrain.policy import (
    Condition,
    Decision,
    PolicyEngine,
    PolicyError,
    Rule,
    Verdict,
    default_rules,
    rules_from_config,
)

MINUTE = 60_000_000_000
T0 = 1_800_000_000 * 1_000_000_000


def bounds(i: int) -> tuple[int, int]:
    return T0 + i * MINUTE, T0 + (i + 1) * MINUTE


def tags(model: str = "m", version: str = "1", **extra: str) -> dict[str, str]:
    return {"model_id": model, "model_version": version, **extra}


def accuracy(value: float, *, n: int | None = 500, model: str = "m", version: str = "1",
             measurement: str = "performance") -> Point:
    fields: dict = {"value": value}
    if n is not None:
        fields["n"] = n
    return Point(measurement, tags(model, version, metric="accuracy"), fields, 0)


def drift(features: dict[str, bool], *, method: str = "psi", model: str = "m", version: str = "1",
          scores: dict[str, float] | None = None) -> list[Point]:
    scores = scores or {}
    return [
        Point("feature_drift", tags(model, version, feature=f, method=method),
              {"value": scores.get(f, 0.3 if d else 0.01), "drift": d, "threshold": 0.2, "n": 1000}, 0)
        for f, d in features.items()
    ]


def low_accuracy_rule(**kw) -> Rule:
    return Rule(name="low-accuracy",
                conditions=[Condition(measurement="performance", tags={"metric": "accuracy"}, op="<",
                                      threshold=0.8)], **kw)


BREACH = [accuracy(0.6)]
CLEAR = [accuracy(0.95)]
NODATA: list[Point] = []


def run(engine: PolicyEngine, windows: Sequence[Sequence[Point]], *, model: str = "m", version: str = "1",
        first: int = 0) -> list[Decision]:
    out = []
    for i, points in enumerate(windows, start=first):
        start, end = bounds(i)
        out.append(engine.evaluate(model_id=model, model_version=version, window_start_ns=start,
                                   window_end_ns=end, points=points))
    return out


def transitions(decisions: Sequence[Decision]) -> list[str]:
    """One letter per window: F fired, R resolved, '.' nothing (FR both)."""
    marks = []
    for d in decisions:
        marks.append("".join("F" if a.state == "firing" else "R" for a in d.alerts) or ".")
    return marks


def seq(pattern: str) -> list[list[Point]]:
    """'B' breach, 'C' clear, '-' no data."""
    return [{"B": BREACH, "C": CLEAR, "-": NODATA}[c] for c in pattern]


# -- hysteresis -------------------------------------------------------------------------------


def test_fires_on_first_breach_by_default():
    assert transitions(run(PolicyEngine([low_accuracy_rule()]), seq("CBC"))) == [".", "F", "R"]


@pytest.mark.parametrize(
    "fire_after, pattern, expected",
    [
        (3, "BBB", "..F"),
        (3, "BBCBBB", ".....F"),
        (2, "BCBCBC", "......"),
        (2, "CBBBBB", "..F..."),
    ],
)
def test_fires_after_n_consecutive_breaching_windows(fire_after, pattern, expected):
    engine = PolicyEngine([low_accuracy_rule(fire_after=fire_after, clear_after=99)])
    assert "".join(transitions(run(engine, seq(pattern)))) == expected


@pytest.mark.parametrize(
    "clear_after, pattern, expected",
    [
        (1, "BC", "FR"),
        (3, "BCCC", "F..R"),
        (3, "BCCBCCC", "F.....R"),
        (2, "BCCCCC", "F.R..."),
    ],
)
def test_resolves_after_m_consecutive_clear_windows(clear_after, pattern, expected):
    engine = PolicyEngine([low_accuracy_rule(clear_after=clear_after)])
    assert "".join(transitions(run(engine, seq(pattern)))) == expected


def test_resolved_is_emitted_once():
    decisions = run(PolicyEngine([low_accuracy_rule(clear_after=2)]), seq("BBBCCCCCCC"))
    states = [a.state for d in decisions for a in d.alerts]
    assert states == ["firing", "resolved"]


def test_flapping_metric_raises_one_alert_not_one_per_window():
    engine = PolicyEngine([low_accuracy_rule(clear_after=2)])
    decisions = run(engine, seq("BC" * 20))
    alerts = [a for d in decisions for a in d.alerts]
    assert [a.state for a in alerts] == ["firing"]
    assert engine.firing() == (("m", "low-accuracy"),)


def test_flapping_with_fire_after_never_fires():
    decisions = run(PolicyEngine([low_accuracy_rule(fire_after=2)]), seq("BC" * 20))
    assert not any(decisions)


def test_windows_without_data_do_not_move_the_state():
    engine = PolicyEngine([low_accuracy_rule(fire_after=2, clear_after=2)])
    assert "".join(transitions(run(engine, seq("B--B-C--C")))) == "...F....R"


def test_since_is_the_start_of_the_breaching_streak():
    decisions = run(PolicyEngine([low_accuracy_rule(fire_after=3)]), seq("CBBB"))
    (alert,) = decisions[3].alerts
    assert alert.since_ns == bounds(1)[0]
    assert (alert.window_start_ns, alert.window_end_ns) == bounds(3)


def test_resolve_shares_the_incident_id_of_its_firing():
    decisions = run(PolicyEngine([low_accuracy_rule()]), seq("BC"))
    fired, resolved = decisions[0].alerts[0], decisions[1].alerts[0]
    assert resolved.incident_id == fired.alert_id == fired.incident_id
    assert resolved.alert_id != fired.alert_id
    assert resolved.values == ()
    assert resolved.value == pytest.approx(0.95)


# -- cooldown -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cooldown, pattern, expected",
    [
        (0, "BCBCB", "FRFRF"),
        (3, "BCBBBB", "FR...F"),
        (3, "BCCCCB", "FR...F"),
        (2, "BCCBCB", "FR...F"),
    ],
)
def test_no_new_firing_during_cooldown(cooldown, pattern, expected):
    engine = PolicyEngine([low_accuracy_rule(cooldown_windows=cooldown)])
    assert "".join(transitions(run(engine, seq(pattern)))) == expected


def test_cooldown_counts_only_windows_with_data():
    engine = PolicyEngine([low_accuracy_rule(cooldown_windows=2)])
    assert "".join(transitions(run(engine, seq("BC---BBB")))) == "FR.....F"


def test_cooldown_is_per_model():
    engine = PolicyEngine([low_accuracy_rule(cooldown_windows=5)])
    assert transitions(run(engine, [[accuracy(0.5, model="a")], [accuracy(0.9, model="a")]], model="a")) == ["F", "R"]
    assert transitions(run(engine, [[accuracy(0.5, model="a")]], model="a", first=2)) == ["."]
    assert transitions(run(engine, [[accuracy(0.5, model="b")]], model="b", first=2)) == ["F"]


def test_retrain_rule_triggers_once_and_again_after_cooldown():
    rule = low_accuracy_rule(retrain=True, cooldown_windows=2)
    decisions = run(PolicyEngine([rule]), seq("BBCBBBB"))
    triggers = [(i, t) for i, d in enumerate(decisions) for t in d.jobs]
    assert [i for i, _ in triggers] == [0, 5]
    assert triggers[0][1].job_id != triggers[1][1].job_id
    assert triggers[0][1].rules == ("low-accuracy",)
    assert (triggers[0][1].window_start_ns, triggers[0][1].window_end_ns) == bounds(0)
    assert triggers[0][1].metrics == {"performance.value{metric=accuracy}": 0.6}


# -- conditions: min_samples, min_count ------------------------------------------------------------


def test_min_samples_ignores_small_windows():
    rule = Rule(name="acc", conditions=[Condition(measurement="performance", tags={"metric": "accuracy"},
                                                  op="<", threshold=0.8, min_samples=100)])
    engine = PolicyEngine([rule])
    windows = [[accuracy(0.1, n=10)], [accuracy(0.1, n=None)], [accuracy(0.1, n=99)], [accuracy(0.1, n=100)]]
    assert transitions(run(engine, windows)) == [".", ".", ".", "F"]


def test_min_samples_low_windows_do_not_resolve_either():
    rule = Rule(name="acc", conditions=[Condition(measurement="performance", tags={"metric": "accuracy"},
                                                  op="<", threshold=0.8, min_samples=100)])
    windows = [[accuracy(0.1, n=200)], [accuracy(0.99, n=5)], [accuracy(0.99, n=500)]]
    assert transitions(run(PolicyEngine([rule]), windows)) == ["F", ".", "R"]


def multi_drift_rule(min_count: int = 3, count_by: str | None = "feature") -> Rule:
    return Rule(name="multi", conditions=[Condition(measurement="feature_drift", field="drift", op="==",
                                                    threshold=True, min_count=min_count, count_by=count_by)])


@pytest.mark.parametrize(
    "drifted, expected",
    [
        ({"a": True, "b": True, "c": False, "d": False}, Verdict.CLEAR),
        ({"a": True, "b": True, "c": True, "d": False}, Verdict.BREACH),
        ({"a": True, "b": True, "c": True, "d": True}, Verdict.BREACH),
        ({}, Verdict.NO_DATA),
    ],
)
def test_min_count_counts_breaching_points(drifted, expected):
    verdict, _ = multi_drift_rule().evaluate(drift(drifted))
    assert verdict is expected


def test_count_by_counts_distinct_features_not_methods():
    two_features_two_methods = drift({"a": True, "b": True}, method="psi") + drift({"a": True, "b": True},
                                                                                 method="ks")
    assert multi_drift_rule(count_by="feature").evaluate(two_features_two_methods)[0] is Verdict.CLEAR
    assert multi_drift_rule(count_by=None).evaluate(two_features_two_methods)[0] is Verdict.BREACH


def test_threshold_equal_is_not_a_breach_for_strict_ops():
    at = [accuracy(0.8)]
    strict = Rule(name="s", conditions=[Condition(measurement="performance", op="<", threshold=0.8)])
    loose = Rule(name="l", conditions=[Condition(measurement="performance", op="<=", threshold=0.8)])
    assert strict.evaluate(at)[0] is Verdict.CLEAR
    assert loose.evaluate(at)[0] is Verdict.BREACH


def test_tags_match_exactly_and_unnamed_tags_match_anything():
    rule = low_accuracy_rule()
    f1 = Point("performance", tags(metric="f1"), {"value": 0.1, "n": 500}, 0)
    assert rule.evaluate([f1])[0] is Verdict.NO_DATA
    assert rule.evaluate([accuracy(0.1)])[0] is Verdict.BREACH


def test_non_finite_values_are_no_data():
    assert low_accuracy_rule().evaluate([accuracy(float("nan"))])[0] is Verdict.NO_DATA


def test_drift_alert_reports_the_largest_statistic_and_every_breaching_point():
    rule = Rule(name="fd", conditions=[Condition(measurement="feature_drift", field="drift", op="==",
                                                 threshold=True)])
    points = drift({"age": True, "income": True, "channel": False}, scores={"age": 0.31, "income": 0.45})
    (alert,) = run(PolicyEngine([rule]), [points])[0].alerts
    assert alert.metric == "feature_drift"
    assert alert.value == pytest.approx(0.45)
    assert alert.threshold == pytest.approx(0.2)
    assert sorted(o.tags["feature"] for o in alert.values) == ["age", "income"]
    assert all(o.value is True for o in alert.values)


# -- composite rules --------------------------------------------------------------------------------


def composite(combine: str) -> Rule:
    return Rule(
        name="composite", combine=combine, retrain=True,
        conditions=[
            Condition(measurement="feature_drift", field="drift", op="==", threshold=True, min_count=3,
                      count_by="feature"),
            Condition(measurement="performance_estimate", tags={"metric": "accuracy"}, op="<", threshold=0.8),
        ],
    )


DRIFT3 = drift({"a": True, "b": True, "c": True})
NODRIFT = drift({"a": False, "b": False, "c": False})
EST_LOW = [accuracy(0.7, measurement="performance_estimate")]
EST_OK = [accuracy(0.9, measurement="performance_estimate")]


@pytest.mark.parametrize(
    "points, all_verdict, any_verdict",
    [
        (DRIFT3 + EST_LOW, Verdict.BREACH, Verdict.BREACH),
        (DRIFT3 + EST_OK, Verdict.CLEAR, Verdict.BREACH),
        (NODRIFT + EST_LOW, Verdict.CLEAR, Verdict.BREACH),
        (NODRIFT + EST_OK, Verdict.CLEAR, Verdict.CLEAR),
        (DRIFT3, Verdict.NO_DATA, Verdict.BREACH),
        (NODRIFT, Verdict.CLEAR, Verdict.CLEAR),
        (EST_LOW, Verdict.NO_DATA, Verdict.BREACH),
        ([], Verdict.NO_DATA, Verdict.NO_DATA),
    ],
)
def test_composite_all_and_any_are_three_valued(points, all_verdict, any_verdict):
    assert composite("all").evaluate(points)[0] is all_verdict
    assert composite("any").evaluate(points)[0] is any_verdict


def test_composite_all_fires_only_when_every_condition_breaches():
    engine = PolicyEngine([composite("all")])
    decisions = run(engine, [DRIFT3 + EST_OK, NODRIFT + EST_LOW, DRIFT3, DRIFT3 + EST_LOW])
    assert transitions(decisions) == [".", ".", ".", "F"]
    (job,) = decisions[3].jobs
    assert set(job.metrics) == {
        "feature_drift.drift{feature=a,method=psi}", "feature_drift.drift{feature=b,method=psi}",
        "feature_drift.drift{feature=c,method=psi}", "performance_estimate.value{metric=accuracy}",
    }
    assert job.metrics["performance_estimate.value{metric=accuracy}"] == pytest.approx(0.7)


def test_retrain_rules_firing_together_make_one_trigger():
    rules = [composite("all"), Rule(name="multi", retrain=True, conditions=[composite("all").conditions[0]])]
    (decision,) = run(PolicyEngine(rules), [DRIFT3 + EST_LOW])
    assert len(decision.alerts) == 2
    (job,) = decision.jobs
    assert job.rules == ("composite", "multi")


# -- models, versions, redelivery -----------------------------------------------------------------------


def test_points_of_other_models_and_versions_are_ignored():
    engine = PolicyEngine([low_accuracy_rule()])
    windows = [[accuracy(0.1, model="other")], [accuracy(0.1, version="2")], [accuracy(0.1)]]
    assert transitions(run(engine, windows)) == [".", ".", "F"]


def test_version_change_resolves_the_old_versions_alert():
    engine = PolicyEngine([low_accuracy_rule(fire_after=2)])
    run(engine, seq("BB"))
    (decision,) = run(engine, [[accuracy(0.1, version="2")]], version="2", first=2)
    (resolved,) = decision.alerts
    assert (resolved.state, resolved.model_version) == ("resolved", "1")
    assert "version" in resolved.message
    later = run(engine, [[accuracy(0.1, version="2")]], version="2", first=3)
    assert [(a.state, a.model_version) for a in later[0].alerts] == [("firing", "2")]


def test_a_redelivered_window_is_ignored():
    engine = PolicyEngine([low_accuracy_rule(fire_after=2)])
    run(engine, seq("B"))
    assert transitions(run(engine, seq("B"), first=0)) == ["."]  # same window again
    assert transitions(run(engine, seq("B"), first=1)) == ["F"]


def test_each_rule_keeps_its_own_clock():
    """Late labels for an earlier window still count for the performance rule."""
    drift_rule = Rule(name="fd", conditions=[Condition(measurement="feature_drift", field="drift", op="==",
                                                       threshold=True)])
    engine = PolicyEngine([drift_rule, low_accuracy_rule()])
    run(engine, [drift({"a": False})], first=5)
    assert transitions(run(engine, seq("B"), first=4)) == ["F"]


# -- snapshot / restore --------------------------------------------------------------------------------


WINDOWS = (
    [DRIFT3 + EST_LOW + BREACH, CLEAR, DRIFT3 + BREACH, NODRIFT + EST_OK, BREACH, BREACH]
    + [DRIFT3 + EST_LOW, CLEAR, CLEAR, NODATA, DRIFT3 + EST_LOW + BREACH, CLEAR, CLEAR, CLEAR]
)


def engine_rules() -> list[Rule]:
    return [
        low_accuracy_rule(fire_after=2, clear_after=2, cooldown_windows=1, retrain=True),
        composite("all"),
        Rule(name="multi", conditions=[composite("all").conditions[0]], clear_after=3, cooldown_windows=2),
        *default_rules(),
    ]


def as_dicts(decisions: Sequence[Decision]) -> list:
    return [([a.to_dict() for a in d.alerts], [t.job_id for t in d.jobs]) for d in decisions]


@pytest.mark.parametrize("split", range(len(WINDOWS) + 1))
def test_snapshot_restore_mid_sequence_gives_identical_decisions(split):
    straight = as_dicts(run(PolicyEngine(engine_rules()), WINDOWS))
    first = PolicyEngine(engine_rules())
    head = run(first, WINDOWS[:split])
    saved = json.loads(json.dumps(first.snapshot()))
    resumed = PolicyEngine(engine_rules()).restore(saved)
    tail = run(resumed, WINDOWS[split:], first=split)
    assert as_dicts(head + tail) == straight
    assert any(d.alerts for d in head + tail)


@settings(max_examples=60, deadline=None)
@given(pattern=st.text(alphabet="BC-", max_size=30), split=st.integers(0, 30),
       fire_after=st.integers(1, 3), clear_after=st.integers(1, 3), cooldown=st.integers(0, 3))
def test_snapshot_restore_property(pattern, split, fire_after, clear_after, cooldown):
    split = min(split, len(pattern))

    def rules():
        return [low_accuracy_rule(fire_after=fire_after, clear_after=clear_after, cooldown_windows=cooldown)]

    straight = run(PolicyEngine(rules()), seq(pattern))
    first = PolicyEngine(rules())
    head = run(first, seq(pattern[:split]))
    resumed = PolicyEngine(rules()).restore(json.loads(json.dumps(first.snapshot())))
    tail = run(resumed, seq(pattern[split:]), first=split)
    assert head + tail == straight
    # alerts alternate firing/resolved, starting with firing: never two of a kind in a row
    states = [a.state for d in straight for a in d.alerts]
    assert states == ["firing", "resolved"] * (len(states) // 2) + ["firing"] * (len(states) % 2)


def test_restore_drops_state_of_rules_no_longer_configured():
    engine = PolicyEngine([low_accuracy_rule()])
    run(engine, seq("B"))
    other = PolicyEngine([Rule(name="other", conditions=[Condition(measurement="monitor", op=">", threshold=1)])])
    assert other.restore(engine.snapshot()).firing() == ()


def test_restore_rejects_a_foreign_snapshot():
    with pytest.raises(PolicyError, match="snapshot"):
        PolicyEngine([]).restore({"states": []})


# -- deterministic ids ----------------------------------------------------------------------------------


def test_same_trigger_gives_the_same_ids_in_a_fresh_engine():
    rule = low_accuracy_rule(retrain=True)
    a = run(PolicyEngine([rule]), seq("CB"))[1]
    b = run(PolicyEngine([rule]), seq("CB"))[1]
    assert a.alerts[0].alert_id == b.alerts[0].alert_id
    assert a.jobs[0].job_id == b.jobs[0].job_id


def test_a_different_window_gives_different_ids():
    rule = low_accuracy_rule(retrain=True)
    a = run(PolicyEngine([rule]), seq("B"))[0]
    b = run(PolicyEngine([rule]), seq("B"), first=1)[0]
    assert a.alerts[0].alert_id != b.alerts[0].alert_id
    assert a.jobs[0].job_id != b.jobs[0].job_id


# -- defaults and configuration -----------------------------------------------------------------------------


def fairness(metric: str, value: float) -> Point:
    return Point("fairness", tags(attribute="sex", group="all", metric=metric), {"value": value, "n": 400}, 0)


DEFAULT_BREACHES = {
    "feature-drift": drift({"a": True}),
    "multi-feature-drift": DRIFT3,
    "label-shift": [Point("label_shift", tags(source="feedback", **{"class": "all"}),
                          {"value": 0.3, "drift": True, "threshold": 0.1, "n": 800}, 0)],
    "prediction-drift": [Point("prediction_drift", tags(method="psi", target="score"),
                               {"value": 0.4, "drift": True, "n": 1000}, 0)],
    "data-quality-missing": [Point("data_quality", tags(feature="age", check="missing"),
                                   {"rate": 0.25, "count": 250}, 0)],
    "performance-accuracy": [accuracy(0.7)],
    "estimated-accuracy": EST_LOW,
    "concept-drift": [Point("concept_drift", tags(detector="cusum"), {"drift": True, "n": 900}, 0)],
    "fairness-demographic-parity": [fairness("demographic_parity_ratio", 0.6)],
    "fairness-equalized-odds": [fairness("equalized_odds_difference", 0.25)],
    "drift-and-estimated-decay": DRIFT3 + EST_LOW,
}


def test_default_rules_cover_the_documented_policies():
    rules = {r.name: r for r in default_rules()}
    assert set(rules) == set(DEFAULT_BREACHES)
    assert {n for n, r in rules.items() if r.retrain} == {"multi-feature-drift", "drift-and-estimated-decay"}
    assert rules["drift-and-estimated-decay"].combine == "all"


@pytest.mark.parametrize("name", sorted(DEFAULT_BREACHES))
def test_each_default_rule_breaches_on_its_metric(name):
    (rule,) = [r for r in default_rules() if r.name == name]
    assert rule.evaluate(DEFAULT_BREACHES[name])[0] is Verdict.BREACH
    assert rule.evaluate([])[0] is Verdict.NO_DATA


def test_fairness_four_fifths_rule_at_the_boundary():
    (rule,) = [r for r in default_rules() if r.name == "fairness-demographic-parity"]
    assert rule.evaluate([fairness("demographic_parity_ratio", 0.8)])[0] is Verdict.CLEAR
    assert rule.evaluate([fairness("demographic_parity_ratio", 0.79)])[0] is Verdict.BREACH


def test_rules_round_trip_through_config():
    rules = default_rules()
    assert rules_from_config([r.to_dict() for r in rules]) == rules


def test_inline_condition_config():
    (rule,) = rules_from_config([{"name": "acc", "measurement": "performance", "tags": {"metric": "accuracy"},
                                  "op": "<", "threshold": 0.9, "min_samples": 100, "severity": "critical",
                                  "fire_after": 2}])
    assert rule == Rule(name="acc", severity="critical", fire_after=2,
                        conditions=[Condition(measurement="performance", tags={"metric": "accuracy"}, op="<",
                                              threshold=0.9, min_samples=100)])


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"measurement": "performance", "op": "<", "threshold": 1}, "'name'"),
        ({"name": "x", "measurement": "performance", "op": "<", "threshold": 1, "colour": "red"}, "'colour'"),
        ({"name": "x"}, "'conditions'"),
        ({"name": "x", "measurement": "perfromance", "op": "<", "threshold": 1}, "'perfromance'"),
        ({"name": "x", "measurement": "performance", "field": "rate", "op": "<", "threshold": 1}, "'rate'"),
        ({"name": "x", "measurement": "performance", "tags": {"feature": "a"}, "op": "<", "threshold": 1},
         "'feature'"),
        ({"name": "x", "measurement": "performance", "op": "!=", "threshold": 1}, "op"),
        ({"name": "x", "measurement": "performance", "tags": {"metric": "acuracy"}, "op": "<", "threshold": 1},
         "'acuracy'"),
        ({"name": "x", "measurement": "data_quality", "field": "rate", "tags": {"check": "nulls"}, "op": ">",
          "threshold": 0.1}, "'nulls'"),
        ({"name": "x", "measurement": "feature_drift", "field": "drift", "op": ">", "threshold": True}, "'=='"),
        ({"name": "x", "measurement": "performance", "op": "<", "threshold": "high"}, "threshold"),
        ({"name": "x", "measurement": "performance", "op": "<", "threshold": float("nan")}, "threshold"),
        ({"name": "x", "measurement": "performance", "op": "<", "threshold": 1, "fire_after": 0}, "fire_after"),
        ({"name": "x", "measurement": "performance", "op": "<", "threshold": 1, "clear_after": "2"}, "clear_after"),
        ({"name": "x", "measurement": "performance", "op": "<", "threshold": 1, "min_count": 0}, "min_count"),
        ({"name": "x", "measurement": "performance", "op": "<", "threshold": 1, "severity": "high"}, "severity"),
        ({"name": "x", "measurement": "performance", "op": "<", "threshold": 1, "combine": "xor"}, "combine"),
        ({"name": "x", "measurement": "performance", "op": "<", "threshold": 1, "retrain": "yes"}, "retrain"),
        ({"name": "x", "conditions": []}, "conditions"),
        ({"name": "x", "conditions": [{"measurement": "performance", "op": "<"}]}, "'threshold'"),
        ({"name": "x", "conditions": [{"measurement": "performance", "op": "<", "threshold": 1, "bogus": 1}]},
         "'bogus'"),
        ({"name": "x", "op": "<", "conditions": [{"measurement": "performance", "op": "<", "threshold": 1}]},
         "either"),
    ],
)
def test_config_errors_name_the_bad_key(entry, message):
    with pytest.raises(PolicyError, match=message.replace("(", r"\(")) as info:
        rules_from_config([entry])
    assert "policies[0]" in str(info.value)


def test_duplicate_rule_names_are_rejected():
    entry = {"name": "x", "measurement": "performance", "op": "<", "threshold": 1}
    with pytest.raises(PolicyError, match="duplicate rule name 'x'"):
        rules_from_config([entry, entry])
    with pytest.raises(PolicyError, match="duplicate"):
        PolicyEngine([low_accuracy_rule(), low_accuracy_rule()])


def test_rules_from_config_needs_a_list():
    with pytest.raises(PolicyError, match="expected a list"):
        rules_from_config({"name": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize("start, end", [(10, 5), (1.5, 2), (None, 2)])
def test_evaluate_rejects_bad_windows(start, end):
    with pytest.raises(PolicyError, match="window_end_ns"):
        PolicyEngine([low_accuracy_rule()]).evaluate(model_id="m", model_version="1", window_start_ns=start,
                                                     window_end_ns=end, points=[])


# -- instant points: a sequential detection between window closes ----------------------------------

def cusum_rule(**kw) -> Rule:
    return Rule(name="drift-cusum", conditions=[Condition(measurement="feature_drift", field="drift",
                                                          tags={"method": "cusum"}, op="==", threshold=True)],
                clear_after=2, **kw)


def window(engine: PolicyEngine, i: int, points: list[Point]) -> Decision:
    start, end = bounds(i)
    return engine.evaluate(model_id="m", model_version="1", window_start_ns=start, window_end_ns=end, points=points)


def instant(engine: PolicyEngine, t: int, points: list[Point]) -> Decision:
    return engine.evaluate_instant(model_id="m", model_version="1", time_ns=t, points=points)


def test_an_instant_detection_fires_a_fire_after_1_rule_at_its_event_time() -> None:
    engine = PolicyEngine([cusum_rule(), Rule(name="two", conditions=cusum_rule().conditions, fire_after=2),
                           Rule(name="psi", conditions=[Condition(measurement="feature_drift", field="drift",
                                                                  tags={"method": "psi"}, op="==", threshold=True)])])
    assert not window(engine, 0, drift({"age": False}, method="cusum") + drift({"age": False}))
    t = bounds(1)[0] + 17
    decision = instant(engine, t, drift({"age": True}, method="cusum"))
    assert [(a.rule, a.state, a.window_start_ns, a.window_end_ns) for a in decision.alerts] == \
        [("drift-cusum", "firing", t, t)]
    assert engine.firing() == (("m", "drift-cusum"),)
    # the window close that holds the detection breaches again: no second alert; "two" (fire_after 2)
    # ignored the instant point and counts this window as its first breach; the windowed rule stays quiet
    d = window(engine, 1, drift({"age": True}, method="cusum") + drift({"age": False}))
    assert not d.alerts and engine.firing() == (("m", "drift-cusum"),)
    # two clear windows resolve it, then the cooldown (windows) would apply as usual
    assert not window(engine, 2, drift({"age": False}, method="cusum"))
    d = window(engine, 3, drift({"age": False}, method="cusum"))
    assert ("drift-cusum", "resolved") in [(a.rule, a.state) for a in d.alerts]


def test_instant_points_never_clear_or_move_window_streaks() -> None:
    rule = Rule(name="multi", conditions=[Condition(measurement="feature_drift", field="drift", op="==",
                                                    threshold=True, min_count=2, count_by="feature")], fire_after=2)
    engine = PolicyEngine([rule])
    assert not window(engine, 0, drift({"a": True, "b": True}))
    # one feature's CUSUM detection: "multi" would be clear on it, but instant points do not clear
    assert not instant(engine, bounds(1)[0] + 5, drift({"a": True}, method="cusum"))
    d = window(engine, 1, drift({"a": True, "b": True}))
    assert [(a.rule, a.state) for a in d.alerts] == [("multi", "firing")]


def test_instant_detections_respect_cooldown_and_redelivery_across_snapshots() -> None:
    engine = PolicyEngine([cusum_rule(cooldown_windows=2)])
    t1 = bounds(0)[0] + 1
    first = instant(engine, t1, drift({"age": True}, method="cusum"))
    assert len(first.alerts) == 1
    saved = json.loads(json.dumps(engine.snapshot()))
    assert not instant(engine, t1, drift({"age": True}, method="cusum"))  # redelivered: ignored
    restored = PolicyEngine([cusum_rule(cooldown_windows=2)]).restore(saved)
    assert not instant(restored, t1, drift({"age": True}, method="cusum"))
    # the same sequence on a fresh engine gives the same alert id (idempotent publishing)
    again = instant(PolicyEngine([cusum_rule(cooldown_windows=2)]), t1, drift({"age": True}, method="cusum"))
    assert again.alerts[0].alert_id == first.alerts[0].alert_id
    # resolve, then a detection in the cooldown does not fire; after it, one does
    for i in (1, 2):
        window(engine, i, drift({"age": False}, method="cusum"))
    assert not engine.firing()
    assert not instant(engine, bounds(3)[0] + 1, drift({"age": True}, method="cusum"))
    window(engine, 3, drift({"age": False}, method="cusum"))
    window(engine, 4, drift({"age": False}, method="cusum"))
    assert len(instant(engine, bounds(5)[0] + 1, drift({"age": True}, method="cusum")).alerts) == 1
    # snapshots written before instant points existed still restore
    old = engine.snapshot()
    for state in old["states"]:
        state.pop("last_instant_ns")
    PolicyEngine([cusum_rule()]).restore(old)


def test_an_instant_retrain_rule_makes_one_job() -> None:
    engine = PolicyEngine([cusum_rule(retrain=True)])
    t = bounds(0)[0] + 3
    decision = instant(engine, t, drift({"age": True, "income": True}, method="cusum"))
    assert len(decision.jobs) == 1
    job = decision.jobs[0]
    assert list(job.rules) == ["drift-cusum"] and (job.window_start_ns, job.window_end_ns) == (t, t)


# -- the defaults: calibrated detectors only, one incident = one alert --------------------------------------

W = 60_000_000_000


def cusum_point(kind: str, *, drift: bool, n: int = 1000, at: int = 0, name: str = "a") -> Point:
    """A CUSUM point: ``value`` = statistic / threshold, ``threshold`` 1 (detectors.cusum)."""
    fields = {"value": 1.05 if drift else 0.2, "drift": drift, "threshold": 1.0, "n": n}
    if drift:
        fields["delta"] = 0.5
    if kind == "feature":
        return Point("feature_drift", tags(feature=name, method="cusum"), fields, at)
    return Point("concept_drift", tags(detector="cusum"), fields, at)


def default_states(engine: PolicyEngine, steps: Sequence[tuple[str, list[Point]]]) -> list[tuple[str, str]]:
    """Feed ``("window" | "instant", points)`` steps; the (rule, state) of every alert, in order."""
    out = []
    for i, (kind, points) in enumerate(steps):
        if kind == "instant":
            d = engine.evaluate_instant(model_id="m", model_version="1", time_ns=i * W + W // 2, points=points)
        else:
            d = engine.evaluate(model_id="m", model_version="1", window_start_ns=i * W, window_end_ns=(i + 1) * W,
                                points=points)
        out.extend((a.rule, a.state) for a in d.alerts)
    return out


@pytest.mark.parametrize("point", [
    Point("concept_drift", tags(detector="ddm"), {"drift": True, "n": 900}, 0),
    Point("concept_drift", tags(detector="eddm"), {"drift": True, "n": 900}, 0),
    Point("concept_drift", tags(detector="adwin"), {"drift": True, "n": 900}, 0),
    Point("feature_drift", tags(feature="a", method="adwin"), {"value": 3.0, "drift": True, "threshold": 0, "n": 900}, 0),
    Point("feature_drift", tags(feature="a", method="ks"), {"value": 0.01, "drift": True, "threshold": 0.05, "n": 900},
          0),
    Point("prediction_drift", tags(method="page_hinkley", target="score"), {"value": 2.0, "drift": True, "n": 900}, 0),
])
def test_default_rules_do_not_alert_on_uncalibrated_detectors(point):
    engine = PolicyEngine(default_rules())
    assert default_states(engine, [("window", [point])] * 3) == []


def test_a_window_smaller_than_min_samples_never_raises_a_default_alert():
    small = drift({"a": True, "b": True, "c": True})
    small = [Point(p.measurement, p.tags, {**p.fields, "n": 50}, 0) for p in small]
    shift = Point("label_shift", tags(source="prediction", **{"class": "all"}),
                  {"value": 0.3, "drift": True, "threshold": 0.1, "n": 50}, 0)
    engine = PolicyEngine(default_rules())
    assert default_states(engine, [("window", small + [shift])] * 3) == []


def test_windowed_and_sequential_detections_of_one_change_give_one_alert():
    engine = PolicyEngine(default_rules())
    states = default_states(engine, [
        ("window", drift({"a": False})),
        ("instant", [cusum_point("feature", drift=True, n=400)]),      # CUSUM fires between closes
        ("window", drift({"a": True}) + [cusum_point("feature", drift=True)]),   # PSI sees it at the close
        ("window", drift({"a": True}) + [cusum_point("feature", drift=False)]),
        ("window", drift({"a": False}) + [cusum_point("feature", drift=False)]),
        ("window", drift({"a": False}) + [cusum_point("feature", drift=False)]),
        ("window", drift({"a": False}) + [cusum_point("feature", drift=False)]),
        ("window", drift({"a": False}) + [cusum_point("feature", drift=False)]),
    ])
    assert states == [("feature-drift", "firing"), ("feature-drift", "resolved")]


def test_a_persisting_change_stays_firing_while_detections_keep_coming():
    # detections every few windows (user rules, or several streams of one rule) keep the rule
    # firing; windows in which the error stream saw no labelled pair write no point (no data)
    engine = PolicyEngine(default_rules())
    detected = [cusum_point("concept", drift=True, n=300)]
    quiet = [cusum_point("concept", drift=False, n=300)]
    steps: list[tuple[str, list[Point]]] = []
    for _ in range(6):
        steps += [("instant", detected), ("window", detected), ("window", quiet), ("window", []), ("window", quiet)]
    steps += [("window", quiet)] * 3 + [("window", [])] * 2
    assert default_states(engine, steps) == [("concept-drift", "firing"), ("concept-drift", "resolved")]


def cohort_accuracy(value: float, coverage: float, i: int) -> list[Point]:
    return [Point("cohort_performance", tags(metric="accuracy"),
                  {"value": value, "n": int(1000 * coverage), "label_coverage": coverage, "predictions": 1000},
                  bounds(i)[1])]


def test_a_cohort_rule_decides_each_window_once_when_its_coverage_is_reached():
    rule = Rule(name="cohort-accuracy", fire_after=2, clear_after=1,
                conditions=[Condition(measurement="cohort_performance", tags={"metric": "accuracy"}, op="<",
                                      threshold=0.8, min_coverage=0.8)])
    engine = PolicyEngine([rule])
    states = []

    def rewrite(i: int, value: float, coverage: float) -> None:
        decision = engine.evaluate_cohort(model_id="m", model_version="1", window_start_ns=bounds(i)[0],
                                          window_end_ns=bounds(i)[1], points=cohort_accuracy(value, coverage, i))
        states.extend((a.state, a.window_end_ns) for a in decision.alerts)

    # windows 0 and 1 are rewritten as their labels arrive, out of order; below 0.8 coverage nothing moves
    rewrite(0, 0.5, 0.3)
    rewrite(1, 0.5, 0.5)
    rewrite(0, 0.6, 0.85)   # window 0 decided: breach 1
    rewrite(0, 0.6, 0.95)   # decided already: no second count
    assert states == []
    rewrite(1, 0.7, 0.9)    # window 1 decided: breach 2 -> fires
    assert states == [("firing", bounds(1)[1])]
    rewrite(2, 0.9, 0.9)    # clear -> resolves
    assert states[-1] == ("resolved", bounds(2)[1])
    # the window close of the ordinary windows does not move a cohort rule, and its state survives a snapshot
    assert engine.evaluate(model_id="m", model_version="1", window_start_ns=bounds(3)[0], window_end_ns=bounds(3)[1],
                           points=cohort_accuracy(0.1, 1.0, 3)).alerts == ()
    restored = PolicyEngine([rule]).restore(json.loads(json.dumps(engine.snapshot())))
    assert restored.evaluate_cohort(model_id="m", model_version="1", window_start_ns=bounds(1)[0],
                                    window_end_ns=bounds(1)[1], points=cohort_accuracy(0.1, 1.0, 1)).alerts == ()
