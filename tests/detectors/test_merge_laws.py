"""Merge laws (hypothesis): splitting a stream anywhere and merging the parts gives the
unsplit summary; snapshot -> JSON -> restore gives an equal summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.base import FeatureFrame, Summary
from detectors.drift import CategoricalDriftSummary, DriftSuite, NumericDriftSummary
from detectors.label_shift import CategoryCounts, LabelShift
from detectors.profile import NumericProfile, ReferenceProfile
from detectors.quality import DataQualitySummary

SETTINGS = settings(max_examples=60, deadline=None)

floats = st.one_of(
    st.floats(min_value=-50, max_value=50, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.0, 1.0]),
)
categories = st.one_of(st.sampled_from(["a", "b", "c", "u1", "u2", "u3", "u4"]), st.none())


def same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN (repr of floats is exact)."""
    return repr(a) == repr(b)


def round_trip(state: dict) -> dict:
    return json.loads(json.dumps(state, allow_nan=False))


REF_NUM = NumericProfile.from_values(np.random.default_rng(0).normal(0, 10, 500), bins=8)


@SETTINGS
@given(values=st.lists(floats, max_size=120), cuts=st.lists(st.integers(0, 120), max_size=4),
       seed=st.integers(0, 2**32 - 1), capacity=st.integers(1, 30), method=st.sampled_from(["ks", "psi"]))
def test_numeric_summary_split_merge_equals_unsplit(values, cuts, seed, capacity, method):
    keys = np.random.default_rng(seed).random(len(values))
    arr = np.asarray(values, dtype=np.float64)
    whole = NumericDriftSummary(REF_NUM, method=method, capacity=capacity).update(arr, keys)
    parts = [
        NumericDriftSummary(REF_NUM, method=method, capacity=capacity).update(arr[a:b], keys[a:b])
        for a, b in _bounds(len(values), cuts)
    ]
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    assert merged.counts.tolist() == whole.counts.tolist() and merged.n_missing == whole.n_missing
    # the bounded sample is the bottom-k by key of the union: identical values, order aside
    assert sorted(merged.sample.tolist()) == sorted(whole.sample.tolist())
    expected_size = min(capacity, whole.n) if method == "ks" else 0  # psi keeps no sample
    assert len(whole.sample) == expected_size
    assert same(merged.result(), whole.result())
    # commutative: merging in reverse order gives the same result
    rev = [NumericDriftSummary(REF_NUM, method=method, capacity=capacity).update(arr[a:b], keys[a:b])
           for a, b in _bounds(len(values), cuts)][::-1]
    acc = rev[0]
    for p in rev[1:]:
        acc.merge(p)
    assert same(acc.result(), whole.result())
    back = NumericDriftSummary.restore(round_trip(whole.snapshot()))
    assert back.snapshot() == whole.snapshot() and same(back.result(), whole.result())


def _bounds(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({min(c, n) for c in cuts})
    edges = [0, *points, n]
    return list(zip(edges, edges[1:]))


@SETTINGS
@given(values=st.lists(categories, max_size=80), cuts=st.lists(st.integers(0, 80), max_size=4),
       max_unseen=st.integers(0, 3))
def test_category_counts_split_merge_equals_unsplit_in_any_order(values, cuts, max_unseen):
    cats = ["a", "b", "c"]
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    whole = CategoryCounts(cats, max_unseen=max_unseen).update(arr)
    parts = [CategoryCounts(cats, max_unseen=max_unseen).update(arr[a:b]) for a, b in _bounds(len(values), cuts)]
    for order in (parts, parts[::-1]):
        acc = CategoryCounts(cats, max_unseen=max_unseen)
        for p in order:
            acc.merge(p)
        assert acc.snapshot() == whole.snapshot()
    assert whole.n + whole.n_missing == len(values)
    assert CategoryCounts.restore(round_trip(whole.snapshot())).snapshot() == whole.snapshot()
    summary = CategoricalDriftSummary({"a": 5, "b": 3, "c": 2}, max_unseen=max_unseen).update(arr)
    back = CategoricalDriftSummary.restore(round_trip(summary.snapshot()))
    assert same(back.result(), summary.result())


@SETTINGS
@given(labels=st.lists(st.one_of(st.sampled_from([0, 1, 2, "1", "x"]), st.none()), max_size=60),
       cuts=st.lists(st.integers(0, 60), max_size=3))
def test_label_shift_split_merge_equals_unsplit(labels, cuts):
    ref = {"0": 10, "1": 20, "2": 5}
    arr = np.empty(len(labels), dtype=object)
    arr[:] = labels
    whole = LabelShift(ref).update(arr)
    merged = LabelShift(ref)
    for a, b in _bounds(len(labels), cuts):
        merged.merge(LabelShift(ref).update(arr[a:b]))
    assert merged.snapshot() == whole.snapshot() and same(merged.result(), whole.result())
    assert same(LabelShift.restore(round_trip(whole.snapshot())).result(), whole.result())


def _suite_profile() -> ReferenceProfile:
    rng = np.random.default_rng(1)
    n = 2000
    df = pd.DataFrame({
        "x": rng.normal(0, 1, n), "k": rng.integers(0, 3, n).astype(float),
        "c": rng.choice(["a", "b", "c"], n), "label": rng.integers(0, 2, n), "s": rng.random(n),
    })
    return ReferenceProfile.from_frame(df, model_id="m", target="label", prediction="label", score="s")


PROFILE = _suite_profile()


@st.composite
def windows(draw):
    n = draw(st.integers(0, 60))
    x = draw(st.lists(floats, min_size=n, max_size=n))
    k = draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 7.0, float("nan")]), min_size=n, max_size=n))
    c = draw(st.lists(categories, min_size=n, max_size=n))
    preds = draw(st.lists(st.sampled_from([0, 1, 5]), min_size=n, max_size=n))
    scores = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    errors = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    cuts = draw(st.lists(st.integers(0, n), max_size=4))
    return x, k, c, preds, scores, errors, cuts


def _frame(x, k, c, errors) -> FeatureFrame:
    return FeatureFrame.build(numeric={"x": x, "k": k}, categorical={"c": c}, type_errors={"c": errors})


@SETTINGS
@given(window=windows(), method=st.sampled_from(["psi", "ks", "wasserstein", "jensenshannon"]))
def test_drift_suite_split_merge_equals_unsplit(window, method):
    x, k, c, preds, scores, errors, cuts = window
    make = lambda seed: DriftSuite(PROFILE, methods={"x": (method, None)}, seed=seed)  # noqa: E731
    whole = make(0).update(_frame(x, k, c, errors), np.array(preds), np.array(scores))
    merged = make(0)
    for i, (a, b) in enumerate(_bounds(len(x), cuts)):
        # every partition samples with its own seed: the window fits the capacity, so samples are exact
        part = make(i + 1).update(_frame(x[a:b], k[a:b], c[a:b], errors[a:b]), np.array(preds[a:b]),
                                  np.array(scores[a:b]))
        merged.merge(part)
    assert same(merged.result(), whole.result())
    assert isinstance(whole, Summary)
    state = round_trip(whole.snapshot(reference=False))
    back = DriftSuite.restore(state, profile=PROFILE)
    assert back.snapshot(reference=False) == whole.snapshot(reference=False)
    assert same(back.result(), whole.result())


@SETTINGS
@given(window=windows())
def test_quality_split_merge_equals_unsplit(window):
    x, k, c, _, _, errors, cuts = window
    whole = DataQualitySummary(PROFILE).update(_frame(x, k, c, errors))
    merged = DataQualitySummary(PROFILE)
    for a, b in _bounds(len(x), cuts):
        merged.merge(DataQualitySummary(PROFILE).update(_frame(x[a:b], k[a:b], c[a:b], errors[a:b])))
    assert same(merged.result(), whole.result())
    assert same(DataQualitySummary.restore(round_trip(whole.snapshot())).result(), whole.result())


def test_every_summary_satisfies_the_protocol():
    for obj in (
        NumericDriftSummary(REF_NUM),
        CategoricalDriftSummary({"a": 1}),
        LabelShift({"a": 1}),
        DataQualitySummary(PROFILE),
        DriftSuite(PROFILE),
    ):
        assert isinstance(obj, Summary), type(obj).__name__


@pytest.mark.parametrize("capacity", [5, 50])
def test_overflowing_suite_sample_stays_bounded(capacity):
    suite = DriftSuite(PROFILE, methods={"x": ("ks", None)}, capacity=capacity)
    rng = np.random.default_rng(0)
    for _ in range(20):
        suite.update(FeatureFrame.build(numeric={"x": rng.normal(size=100), "k": np.zeros(100)},
                                        categorical={"c": ["a"] * 100}))
    x = suite._numeric["x"]
    assert x.sample.size == capacity and x._values.size < 2 * capacity
    assert len(suite.snapshot(reference=False)["numeric"]["x"]["values"]) == capacity
