"""Drift tests against independent oracles: scipy, a hand-written PSI, and Evidently's own stattests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from evidently.legacy.calculations.stattests import registry as ev_registry
from evidently.legacy.calculations.stattests.chisquare_stattest import _chi_stat_test
from evidently.legacy.calculations.stattests.jensenshannon import _jensenshannon
from evidently.legacy.calculations.stattests.ks_stattest import _ks_stat_test
from evidently.legacy.calculations.stattests.psi import _psi
from evidently.legacy.calculations.stattests.wasserstein_distance_norm import _wasserstein_distance_norm
from evidently.legacy.core import ColumnType
from scipy import stats
from scipy.spatial import distance

from detectors.stattests import (
    STATTESTS,
    auto_method,
    chisquare,
    fill_zeros,
    get_stattest,
    jensenshannon,
    ks,
    psi,
    wasserstein,
    wasserstein_1d,
)

TOL = 1e-9


def hand_psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """PSI written out from the definition, with Evidently's zero replacement."""
    ref_counts = np.asarray(ref_counts, float)
    cur_counts = np.asarray(cur_counts, float)
    keep = (ref_counts > 0) | (cur_counts > 0)
    total = 0.0
    r = ref_counts[keep] / ref_counts.sum()
    c = cur_counts[keep] / cur_counts.sum()

    def eps(shares: np.ndarray) -> float:
        smallest = min(s for s in shares if s > 0)
        return smallest / 1e6 if smallest <= 0.0001 else 0.0001

    er, ec = eps(r), eps(c)
    for ri, ci in zip(r, c):
        ri = ri if ri > 0 else er
        ci = ci if ci > 0 else ec
        total += (ri - ci) * math.log(ri / ci)
    return total


def category_series(rng: np.random.Generator, probs: list[float], n: int, names: str = "abcdefgh") -> pd.Series:
    return pd.Series(rng.choice(list(names[: len(probs)]), size=n, p=probs))


def aligned_counts(ref: pd.Series, cur: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(ref) | set(cur))
    rc = ref.value_counts()
    cc = cur.value_counts()
    return (np.array([rc.get(k, 0) for k in keys]), np.array([cc.get(k, 0) for k in keys]))


CATEGORY_CASES = [
    ([0.5, 0.3, 0.2], [0.5, 0.3, 0.2], 2000, 500),
    ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5], 2000, 500),
    ([0.7, 0.2, 0.1, 0.0], [0.4, 0.2, 0.1, 0.3], 1500, 800),  # a category unseen in the reference
    ([0.6, 0.3, 0.1], [0.9, 0.1, 0.0], 3000, 400),  # a category absent from the current window
    ([0.99998, 0.00002], [0.5, 0.5], 100_000, 400),  # smallest share <= 1e-4: the other replacement rule
]


@pytest.mark.parametrize("ref_p, cur_p, n_ref, n_cur", CATEGORY_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_binned_tests_equal_evidently_on_categories(ref_p, cur_p, n_ref, n_cur, seed):
    rng = np.random.default_rng(seed)
    ref = category_series(rng, ref_p, n_ref)
    cur = category_series(rng, cur_p, n_cur)
    rc, cc = aligned_counts(ref, cur)

    ours = psi(rc, cc)
    ev_value, ev_drift = _psi(ref, cur, ColumnType.Categorical, 0.1)
    assert ours.value == pytest.approx(ev_value, abs=TOL)
    assert ours.value == pytest.approx(hand_psi(rc, cc), abs=TOL)
    assert ours.drifted == bool(ev_drift)

    ours = jensenshannon(rc, cc)
    ev_value, ev_drift = _jensenshannon(ref, cur, ColumnType.Categorical, 0.1)
    assert ours.value == pytest.approx(ev_value, abs=TOL)
    assert ours.value == pytest.approx(distance.jensenshannon(rc / rc.sum(), cc / cc.sum()), abs=TOL)
    assert ours.drifted == bool(ev_drift)

    ours = chisquare(rc, cc)
    with np.errstate(divide="ignore", invalid="ignore"):
        ev_p, ev_drift = _chi_stat_test(ref, cur, ColumnType.Categorical, 0.05)
    assert ours.p_value == pytest.approx(ev_p, abs=TOL)
    assert ours.value == ours.p_value
    assert ours.drifted == bool(ev_drift)
    if (rc > 0).all():
        sp = stats.chisquare(cc, rc * cc.sum() / rc.sum())
        assert ours.statistic == pytest.approx(sp.statistic, rel=TOL)
        assert ours.p_value == pytest.approx(sp.pvalue, abs=TOL)
    else:
        assert ours.statistic == math.inf and ours.p_value == 0.0


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("n_ref, n_cur", [(800, 300), (5000, 1000), (20_000, 12_000)])
def test_sample_tests_equal_scipy_and_evidently(shift, n_ref, n_cur):
    rng = np.random.default_rng(int(shift * 10) + n_ref)
    ref = rng.normal(3.0, 2.0, n_ref)
    cur = rng.normal(3.0 + 2.0 * shift, 2.0, n_cur)

    ours = ks(ref, cur)
    oracle = stats.ks_2samp(ref, cur, method="auto")
    assert ours.statistic == pytest.approx(oracle.statistic, abs=TOL)
    assert ours.p_value == pytest.approx(oracle.pvalue, abs=TOL)
    ev_p, ev_drift = _ks_stat_test(pd.Series(ref), pd.Series(cur), ColumnType.Numerical, 0.05)
    assert ours.value == pytest.approx(ev_p, abs=TOL)
    assert ours.drifted == bool(ev_drift)

    ours = wasserstein(ref, cur)
    oracle_w = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert ours.value == pytest.approx(oracle_w, abs=TOL)
    ev_w, ev_drift = _wasserstein_distance_norm(pd.Series(ref), pd.Series(cur), ColumnType.Numerical, 0.1)
    assert ours.value == pytest.approx(ev_w, abs=TOL)
    assert ours.drifted == bool(ev_drift)


def test_wasserstein_1d_equals_scipy_with_ties_and_unequal_sizes():
    rng = np.random.default_rng(3)
    for _ in range(50):
        u = np.sort(rng.integers(0, 7, rng.integers(1, 300)).astype(float))
        v = np.sort(rng.integers(-2, 5, rng.integers(1, 300)).astype(float))
        assert wasserstein_1d(u, v) == pytest.approx(stats.wasserstein_distance(u, v), abs=TOL)


def test_wasserstein_constant_reference_uses_evidently_floor():
    ref = np.full(100, 5.0)
    cur = np.full(50, 5.01)
    ours = wasserstein(ref, cur)
    ev_w, _ = _wasserstein_distance_norm(pd.Series(ref), pd.Series(cur), ColumnType.Numerical, 0.1)
    assert ours.value == pytest.approx(ev_w, rel=1e-9)
    assert ours.value == pytest.approx(0.01 / 0.001, rel=1e-9)
    assert ours.drifted


def test_discrete_numeric_psi_equals_evidently_per_value_binning():
    # Evidently bins numeric features with <= 20 distinct values per value; with counts per value
    # our binned PSI must be identical.
    rng = np.random.default_rng(5)
    ref = pd.Series(rng.integers(0, 6, 4000).astype(float))
    cur = pd.Series(rng.choice([0, 1, 2, 3, 4, 5], 700, p=[0.3, 0.3, 0.1, 0.1, 0.1, 0.1]).astype(float))
    rc, cc = aligned_counts(ref, cur)
    ev_value, _ = _psi(ref, cur, ColumnType.Numerical, 0.1)
    assert psi(rc, cc).value == pytest.approx(ev_value, abs=TOL)


def test_fill_zeros_matches_evidently_rule():
    assert fill_zeros(np.array([0.2, 0.8, 0.0])).tolist() == [0.2, 0.8, 0.0001]
    shares = np.array([0.99995, 0.00005, 0.0])
    assert fill_zeros(shares)[2] == pytest.approx(0.00005 / 1e6)


def test_threshold_comparisons_follow_evidently():
    r = psi([10, 20, 70], [20, 20, 60])
    assert psi([10, 20, 70], [20, 20, 60], threshold=r.value).drifted  # >=
    r = jensenshannon([10, 20, 70], [20, 20, 60])
    assert jensenshannon([10, 20, 70], [20, 20, 60], threshold=r.value).drifted  # >=
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(0.2, 1, 200)
    r = ks(a, b)
    assert ks(a, b, threshold=r.p_value).drifted  # p <= threshold
    r = chisquare([50, 50], [60, 40])
    assert not chisquare([50, 50], [60, 40], threshold=r.p_value).drifted  # p < threshold
    r = wasserstein(a, b)
    assert wasserstein(a, b, threshold=r.value).drifted  # >=


def test_default_thresholds_and_registry():
    assert set(STATTESTS) == {"psi", "jensenshannon", "wasserstein", "ks", "chisquare"}
    assert {k: v.default_threshold for k, v in STATTESTS.items()} == {
        "psi": 0.1,
        "jensenshannon": 0.1,
        "wasserstein": 0.1,
        "ks": 0.05,
        "chisquare": 0.05,
    }
    # Evidently's own defaults for the same names
    assert ev_registry.get_registered_stattest("psi", ColumnType.Numerical).default_threshold == 0.1
    assert ev_registry.get_registered_stattest("jensenshannon", ColumnType.Numerical).default_threshold == 0.1
    assert ev_registry.get_registered_stattest("wasserstein", ColumnType.Numerical).default_threshold == 0.1
    assert ev_registry.get_registered_stattest("ks", ColumnType.Numerical).default_threshold == 0.05
    assert ev_registry.get_registered_stattest("chisquare", ColumnType.Categorical).default_threshold == 0.05
    assert STATTESTS["psi"](np.array([1, 2]), np.array([2, 1])).threshold == 0.1
    with pytest.raises(ValueError, match="does not apply"):
        get_stattest("ks", "categorical")
    with pytest.raises(ValueError, match="unknown"):
        get_stattest("nope", "numeric")


@pytest.mark.parametrize("kind", ["numeric", "categorical"])
@pytest.mark.parametrize("ref_n", [10, 999, 1000, 1001, 50_000])
@pytest.mark.parametrize("n_unique", [1, 2, 3, 5, 6, 40])
def test_auto_method_mirrors_evidently_default(kind, ref_n, n_unique):
    # Build data with exactly n_unique values; Evidently counts them over reference + current,
    # so the current window repeats reference values only.
    ref_values = np.arange(ref_n) % n_unique
    ref = pd.Series(ref_values.astype(float) if kind == "numeric" else ref_values.astype(str))
    cur = ref.iloc[: min(ref_n, 50)]
    ct = ColumnType.Numerical if kind == "numeric" else ColumnType.Categorical
    expected = ev_registry._get_default_stattest(ref, cur, ct).name
    expected = {"z": "chisquare"}.get(expected, expected)  # no z-test here: documented substitution
    assert auto_method(kind, ref_n, min(n_unique, ref_n)) == expected


def test_empty_sides_are_undefined_not_errors():
    for name, test in STATTESTS.items():
        r = test(np.array([], dtype=float), np.array([], dtype=float))
        assert math.isnan(r.value) and not r.drifted, name
    assert math.isnan(psi([0, 0], [1, 2]).value)
    assert chisquare([5], [7]).p_value == 1.0  # one category: nothing to test
