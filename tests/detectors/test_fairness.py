"""Fairness summary against fairlearn as the oracle, plus merge, snapshot and points."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from fairlearn import metrics as flm
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, precision_score

from detectors.base import DetectorError, Summary
from detectors.fairness import (
    DISPARITY_METRICS,
    GROUP_METRICS,
    MISSING_GROUP,
    FairnessResult,
    FairnessSummary,
    fairness_points,
    worst_groups,
)

TOL = 1e-12


def population(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Labels and decisions whose error rates differ by sex and race."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(np.array(["F", "M"], dtype=object), n, p=[0.45, 0.55])
    race = rng.choice(np.array(["Black", "White", "Asian"], dtype=object), n, p=[0.3, 0.5, 0.2])
    base = 0.35 + 0.1 * (sex == "M") + 0.05 * (race == "Asian")
    y = rng.random(n) < base
    flip = rng.random(n) < (0.15 + 0.1 * (race == "Black") + 0.05 * (sex == "F"))
    pred = y ^ flip
    as_label = lambda b: np.where(b, "1", "0").astype(object)  # noqa: E731
    return as_label(y), as_label(pred), {"sex": sex, "race": race}


def metric_frame(y: np.ndarray, pred: np.ndarray, sensitive: pd.Series | pd.DataFrame) -> flm.MetricFrame:
    return flm.MetricFrame(
        metrics={
            "selection_rate": flm.selection_rate,
            "tpr": flm.true_positive_rate,
            "fpr": flm.false_positive_rate,
            "fnr": flm.false_negative_rate,
            "precision": lambda a, b: precision_score(a, b, zero_division=np.nan),
            "accuracy": accuracy_score,
            "count": flm.count,
        },
        y_true=(y == "1").astype(int),
        y_pred=(pred == "1").astype(int),
        sensitive_features=sensitive,
    )


def fairlearn_disparities(y: np.ndarray, pred: np.ndarray, sensitive: pd.Series | pd.DataFrame) -> dict[str, float]:
    yt, yp = (y == "1").astype(int), (pred == "1").astype(int)
    return {
        "demographic_parity_difference": flm.demographic_parity_difference(yt, yp, sensitive_features=sensitive),
        "demographic_parity_ratio": flm.demographic_parity_ratio(yt, yp, sensitive_features=sensitive),
        "equalized_odds_difference": flm.equalized_odds_difference(yt, yp, sensitive_features=sensitive),
        "equal_opportunity_difference": flm.equal_opportunity_difference(yt, yp, sensitive_features=sensitive),
    }


def assert_matches_fairlearn(result: FairnessResult, y: np.ndarray, pred: np.ndarray, attrs: dict[str, np.ndarray]) -> None:
    cases = {
        "sex": pd.Series(attrs["sex"], name="sex"),
        "race": pd.Series(attrs["race"], name="race"),
        "sex*race": pd.DataFrame({"sex": attrs["sex"], "race": attrs["race"]}),
    }
    for key, sensitive in cases.items():
        frame = metric_frame(y, pred, sensitive)
        by_group = frame.by_group
        ours = result.attributes[key]
        assert len(ours.groups) == len(by_group)
        for index, row in by_group.iterrows():
            name = "|".join(index) if isinstance(index, tuple) else index
            group = ours.groups[name]
            for metric in GROUP_METRICS:
                assert group.metric(metric) == pytest.approx(row[metric], abs=TOL), (key, name, metric)
            assert group.n == row["count"]
        want = fairlearn_disparities(y, pred, sensitive)
        for metric, value in want.items():
            assert ours.disparities[metric] == pytest.approx(value, abs=TOL), (key, metric)


def test_every_figure_equals_fairlearn_including_intersections() -> None:
    y, pred, attrs = population(1, 6000)
    summary = FairnessSummary(
        attributes=["sex", "race"], intersections=[("sex", "race")], positive_label="1", min_group_size=1
    )
    result = summary.update(y, pred, attrs).result()
    assert result.selection_source == "labelled"
    assert_matches_fairlearn(result, y, pred, attrs)
    sizes = pd.crosstab(attrs["sex"], attrs["race"])
    assert result.attributes["sex*race"].groups["F|Black"].n == sizes.loc["F", "Black"]
    # the disparities are not trivially zero on this population
    assert result.attributes["race"].disparities["equalized_odds_difference"] > 0.05


@settings(max_examples=10, deadline=None)  # ~1.2 s each (fairlearn's MetricFrame)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(300, 1500),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=4),
    restore_at=st.integers(0, 5),
)
def test_split_merge_restore_equal_fairlearn(seed: int, n: int, cuts: list[float], restore_at: int) -> None:
    y, pred, attrs = population(seed, n)
    bounds = [0, *sorted(int(c * n) for c in cuts), n]
    settings_ = dict(attributes=["sex", "race"], intersections=[("sex", "race")], positive_label="1", min_group_size=1)
    parts = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = FairnessSummary(**settings_).update(y[lo:hi], pred[lo:hi], {k: v[lo:hi] for k, v in attrs.items()})
        if i == restore_at:
            part = FairnessSummary.restore(json.loads(json.dumps(part.snapshot(), allow_nan=False)))
        parts.append(part)
    merged = parts[-1]
    for part in reversed(parts[:-1]):  # groups discovered in another order
        merged.merge(part)
    whole = FairnessSummary(**settings_).update(y, pred, attrs).result()
    got = merged.result()
    for key, attr in whole.attributes.items():
        # integer counts: exact equality (repr, because NaN != NaN and groups arrive in another order)
        assert repr(sorted(got.attributes[key].groups.items())) == repr(sorted(attr.groups.items()))
        for metric, value in attr.disparities.items():
            assert got.attributes[key].disparities[metric] == pytest.approx(value, abs=TOL, nan_ok=True)
    if all(g.n >= 1 for g in got.attributes["sex*race"].groups.values()) and len(got.attributes["sex*race"].groups) == 6:
        assert_matches_fairlearn(got, y, pred, attrs)


def test_min_group_size_excludes_small_groups_from_disparities_only() -> None:
    y, pred, attrs = population(2, 3000)
    attrs["race"][:20] = "Pacific"  # a tiny group with an extreme selection rate
    pred[:20] = "1"
    summary = FairnessSummary(attributes=["race"], positive_label="1", min_group_size=30)
    race = summary.update(y, pred, attrs).result().attributes["race"]
    assert race.groups["Pacific"].n == 20 and race.groups["Pacific"].selection_rate == 1.0
    big = attrs["race"] != "Pacific"
    want = fairlearn_disparities(y[big], pred[big], pd.Series(attrs["race"][big]))
    for metric, value in want.items():
        assert race.disparities[metric] == pytest.approx(value, abs=TOL), metric
    assert race.n == int(big.sum())
    everyone = fairlearn_disparities(y, pred, pd.Series(attrs["race"]))
    assert race.disparities["demographic_parity_difference"] < everyone["demographic_parity_difference"]


def test_selection_rate_before_labels_from_predictions() -> None:
    _, pred, attrs = population(3, 4000)
    summary = FairnessSummary(attributes=["sex"], intersections=[("sex", "race")], positive_label="1", min_group_size=1)
    result = summary.update_predictions(pred, attrs).result()
    assert result.selection_source == "predictions"
    dummy = np.zeros(len(pred), dtype=int)
    yp = (pred == "1").astype(int)
    for key, sensitive in {"sex": attrs["sex"], "sex*race": pd.DataFrame(attrs)[["sex", "race"]]}.items():
        frame = flm.MetricFrame(metrics=flm.selection_rate, y_true=dummy, y_pred=yp, sensitive_features=sensitive)
        for index, value in frame.by_group.items():
            name = "|".join(index) if isinstance(index, tuple) else index
            group = result.attributes[key].groups[name]
            assert group.selection_rate == pytest.approx(value, abs=TOL)
            assert group.n == 0 and group.n_predictions > 0 and math.isnan(group.tpr)
        assert result.attributes[key].disparities["demographic_parity_difference"] == pytest.approx(
            flm.demographic_parity_difference(dummy, yp, sensitive_features=sensitive), abs=TOL)
        assert math.isnan(result.attributes[key].disparities["equalized_odds_difference"])
    names = {(p.tags["group"], p.tags["metric"]) for p in fairness_points(result, tags={}, time_ns=0)}
    assert ("all", "demographic_parity_difference") in names and ("F", "tpr") not in names


def test_worst_groups_matches_metricframe_ranking() -> None:
    y, pred, attrs = population(4, 5000)
    result = FairnessSummary(
        attributes=["sex", "race"], intersections=[("sex", "race")], positive_label="1", min_group_size=30
    ).update(y, pred, attrs).result()
    frame = metric_frame(y, pred, pd.DataFrame({"sex": attrs["sex"], "race": attrs["race"]}))
    expected = frame.by_group["accuracy"].sort_values().index[:3]
    got = worst_groups(result, "accuracy", k=3, attribute="sex*race")
    assert [g.group for g in got] == ["|".join(i) for i in expected]
    worst_fpr = worst_groups(result, "fpr", k=1)[0]
    assert worst_fpr.fpr == max(g.fpr for a in result.attributes.values() for g in a.groups.values())
    with pytest.raises(DetectorError):
        worst_groups(result, "f1")


def test_points_follow_design_names() -> None:
    y, pred, attrs = population(5, 2000)
    result = FairnessSummary(attributes=["sex"], intersections=[("sex", "race")], positive_label="1").update(
        y, pred, attrs).result()
    points = fairness_points(result, tags={"model_id": "m", "model_version": "2"}, time_ns=42)
    assert {p.measurement for p in points} == {"fairness"}
    for p in points:
        assert set(p.tags) == {"model_id", "model_version", "attribute", "group", "metric"}
        assert set(p.fields) == {"value", "n"} and isinstance(p.fields["n"], int)
    all_points = [p for p in points if p.tags["group"] == "all"]
    assert {p.tags["metric"] for p in all_points} == set(DISPARITY_METRICS)
    assert {p.tags["attribute"] for p in all_points} == {"sex", "sex*race"}
    by_key = {(p.tags["attribute"], p.tags["group"], p.tags["metric"]): p for p in points}
    female = result.attributes["sex"].groups["F"]
    assert by_key[("sex", "F", "accuracy")].fields == {"value": female.accuracy, "n": female.n}
    assert by_key[("sex", "all", "demographic_parity_ratio")].fields["n"] == 2000


def test_missing_values_groups_and_bounds() -> None:
    y = np.array(["1", "0", None, "1"], dtype=object)
    pred = np.array(["1", "1", "1", None], dtype=object)
    attrs = {"region": np.array(["n", None, "s", "s"], dtype=object)}
    result = FairnessSummary(attributes=["region"], positive_label="1", min_group_size=1).update(
        y, pred, attrs).result()
    groups = result.attributes["region"].groups
    assert groups["n"].n == 1 and groups[MISSING_GROUP].n == 1 and groups["s"].n == 0
    many = np.array([f"g{i}" for i in range(50)], dtype=object)
    bounded = FairnessSummary(attributes=["id"], positive_label="1", max_groups=10).update(
        many, many, {"id": many})
    assert len(bounded.result().attributes["id"].groups) == 10
    with pytest.raises(DetectorError):
        FairnessSummary(attributes=["sex"], positive_label="1").update(y, pred, attrs)
    with pytest.raises(DetectorError):
        FairnessSummary(attributes=["region"], positive_label="1").update(y, pred, {"region": np.array(["a"])})


def test_snapshot_is_strict_json() -> None:
    y, pred, attrs = population(6, 500)
    summary = FairnessSummary(attributes=["sex", "race"], positive_label="1").update(y, pred, attrs)
    summary.update_predictions(pred, attrs)
    restored = FairnessSummary.restore(json.loads(json.dumps(summary.snapshot(), allow_nan=False)))
    assert repr(restored.result()) == repr(summary.result())
    assert isinstance(summary, Summary)

