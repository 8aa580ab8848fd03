"""Drift tests: pure functions on binned counts or on samples, following Evidently.

Every test takes the reference side and the current side and a threshold and
returns a :class:`TestResult`. Binned tests (``psi``, ``jensenshannon``,
``chisquare``) take two aligned count vectors (reference bins/categories and
current bins/categories); sample tests (``ks``, ``wasserstein``) take two
samples of finite values. :data:`STATTESTS` is the one explicit registry.

Conventions copied from Evidently 0.7 (``evidently/legacy/calculations/stattests``):

- default thresholds: 0.1 for the distances (``psi``, ``jensenshannon``,
  ``wasserstein``), 0.05 for the p-value tests (``ks``, ``chisquare``);
- drift when ``distance >= threshold``; for ``ks`` when ``p_value <= threshold``;
  for ``chisquare`` when ``p_value < threshold`` (Evidently is not consistent
  between the two tests, and we keep its exact comparisons);
- ``value`` is Evidently's *drift score*: the distance, or the p-value for a
  test (the test statistic is in ``statistic``);
- PSI replaces a zero share by ``0.0001``, or by ``min(non-zero share) / 1e6``
  when the smallest non-zero share is ``<= 0.0001``, separately for each side;
  Jensen-Shannon uses the raw shares (``scipy.spatial.distance.jensenshannon``,
  natural log);
- ``wasserstein`` is the first Wasserstein distance divided by
  ``max(std(reference), 0.001)`` (population std);
- ``ks`` is :func:`scipy.stats.ks_2samp` with its default ``method='auto'``
  (exact p-value for samples up to 10,000 values, asymptotic beyond), as
  Evidently calls it;
- ``chisquare`` is Pearson's goodness-of-fit test of the current counts
  against the reference shares scaled to the current total (Evidently's
  ``chi_stat_test``); bins empty on both sides are left out, as Evidently
  only builds categories seen on either side.

Where driftwarden adds to Evidently: a fixed distance threshold is not a false-alarm
rate. PSI at 0.1 flags most stationary windows of 50 events (the expected PSI of
pure sampling noise is about ``(bins − 1)/n``) and every window of a categorical
with hundreds of levels (PSI ~0.4 on 1,000 events of 500 Zipf-distributed levels,
nothing changed). With ``alpha`` given, ``psi`` and ``jensenshannon`` flag drift
only when the distance reaches its threshold *and* the change is significant at
``alpha``: the two-sample Pearson chi-square test of :func:`pooled_chisquare`, on
the bins after pooling those expected to hold fewer than :data:`MIN_EXPECTED`
current values (rare categories and bins of a small window), so that the
chi-square approximation holds. ``p_value`` is then that test's (computed only when
the distance reaches its threshold, ``None`` otherwise). The distance
itself stays Evidently's (the threshold says how large a change matters; the
test says whether it is noise). :class:`detectors.drift.DriftSuite` sets ``alpha``
per window from its false-alarm budget.

Where streaming binning differs from Evidently: Evidently bins a numeric
feature with more than 20 distinct values into Sturges bins over the *combined*
reference and current data, which needs the whole window; driftwarden uses
fixed reference-quantile bins (see :mod:`detectors.profile`), so binned values
for continuous features are close to but not equal to Evidently's. For
features with at most 20 distinct reference values both bin per value and
agree exactly when the current values are reference values.

>>> r = psi([50, 50], [60, 40])
>>> r.method, round(r.value, 6), r.drifted, r.threshold
('psi', 0.040547, False, 0.1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from scipy.spatial import distance

from detectors.base import DetectorError

FeatureKind = Literal["numeric", "categorical"]

DISTANCE_THRESHOLD = 0.1
"""Evidently's default threshold for PSI, Jensen-Shannon and normed Wasserstein."""
PVALUE_THRESHOLD = 0.05
"""Evidently's default significance level for KS and chi-square."""
WASSERSTEIN_MIN_NORM = 0.001
"""Evidently's floor for the reference std that normalises the Wasserstein distance."""
MIN_EXPECTED = 5.0
"""Expected current count a bin needs in :func:`pooled_chisquare` (Cochran's rule); sparser bins are pooled."""


@dataclass(frozen=True, slots=True)
class TestResult:
    """Outcome of one drift test on one feature.

    ``value`` is compared with ``threshold`` (a distance, or the p-value for
    ``ks``/``chisquare``); ``statistic`` is the test statistic (KS ``D``,
    Pearson chi-square) or the distance itself. Undefined results (an empty
    side) have ``value = statistic = NaN`` and ``drifted = False``.
    """

    __test__ = False  # not a pytest test class

    method: str
    value: float
    drifted: bool
    threshold: float
    p_value: float | None
    statistic: float


@dataclass(frozen=True, slots=True)
class StatTest:
    """A named drift test: how to call it and what it applies to."""

    name: str
    kind: Literal["binned", "sample"]
    feature_types: tuple[FeatureKind, ...]
    default_threshold: float
    func: Callable[..., TestResult]
    takes_alpha: bool = False
    """Whether the test accepts ``alpha`` (a significance level it requires besides its threshold)."""

    def __call__(self, reference: ArrayLike, current: ArrayLike, threshold: float | None = None, *,
                 alpha: float | None = None) -> TestResult:
        """Run the test; ``alpha`` is passed to tests that take it and ignored by the others."""
        threshold = self.default_threshold if threshold is None else threshold
        if self.takes_alpha and alpha is not None:
            return self.func(reference, current, threshold, alpha=alpha)
        return self.func(reference, current, threshold)


def undefined(method: str, threshold: float, *, p_value: bool = False) -> TestResult:
    """The result of a test on an empty side: NaN value, no drift."""
    return TestResult(method, math.nan, False, float(threshold), math.nan if p_value else None, math.nan)


def _occupied(reference: ArrayLike, current: ArrayLike) -> tuple[np.ndarray, np.ndarray] | None:
    """The two count vectors without the bins empty in both; ``None`` when either side is empty."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape:
        raise ValueError(f"count vectors differ in length: {ref.shape} vs {cur.shape}")
    keep = (ref > 0) | (cur > 0)
    ref, cur = ref[keep], cur[keep]
    if ref.sum() <= 0 or cur.sum() <= 0:
        return None
    return ref, cur


def _shares(reference: ArrayLike, current: ArrayLike) -> tuple[np.ndarray, np.ndarray] | None:
    counts = _occupied(reference, current)
    if counts is None:
        return None
    ref, cur = counts
    return ref / ref.sum(), cur / cur.sum()


def fill_zeros(shares: np.ndarray) -> np.ndarray:
    """Evidently's zero-share smoothing for PSI (see the module docstring).

    >>> fill_zeros(np.array([0.5, 0.5, 0.0])).tolist()
    [0.5, 0.5, 0.0001]
    >>> fill_zeros(np.array([0.99999, 0.00001, 0.0])).tolist()
    [0.99999, 1e-05, 1.0000000000000001e-11]
    """
    out = shares.copy()
    nonzero = out[out != 0]
    if nonzero.size == 0:
        return out
    smallest = nonzero.min()
    out[out == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return out


def pooled_chisquare(reference: ArrayLike, current: ArrayLike, *, min_expected: float = MIN_EXPECTED
                     ) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of the two-sample Pearson chi-square test of
    homogeneity of two count vectors, after pooling sparse bins.

    Every bin whose expected current count (reference share × current total) is below
    ``min_expected`` is pooled into one bin, with the next smallest ones while the pool's
    expected count is still below ``min_expected``; a current value in a bin the
    reference never saw (expected 0) counts in the pool. Pooling
    keeps the chi-square approximation valid for rare categories and small windows.

    >>> s, df, p = pooled_chisquare([500, 300, 200], [50, 30, 20])
    >>> round(s, 12), df, round(p, 6)
    (0.0, 2, 1.0)
    >>> pooled_chisquare([9000, 500, 300, 200], [90, 4, 3, 3])[1]   # expected 2 and 3 pooled: 3 bins left
    2
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    n_ref, n_cur = float(ref.sum()), float(cur.sum())
    if n_ref <= 0 or n_cur <= 0:
        return math.nan, 0, math.nan
    expected = ref / n_ref * n_cur
    order = np.argsort(expected, kind="stable")
    if expected[order[0]] < min_expected:
        # pool every sparse bin, and more (smallest first) until the pool holds min_expected
        ranked = expected[order]
        cut = max(int(np.searchsorted(ranked, min_expected, side="left")),
                  int(np.searchsorted(np.cumsum(ranked), min_expected, side="left")) + 1)
        cut = min(cut, ref.size)
        pooled, kept = order[:cut], order[cut:]
        r = np.concatenate(([ref[pooled].sum()], ref[kept]))
        c = np.concatenate(([cur[pooled].sum()], cur[kept]))
    else:
        r, c = ref, cur
    keep = (r + c) > 0
    r, c = r[keep], c[keep]
    df = int(r.size) - 1
    if df < 1:
        return 0.0, 0, 1.0
    total = n_ref + n_cur
    pooled_share = (r + c) / total
    e_ref, e_cur = pooled_share * n_ref, pooled_share * n_cur
    statistic = float(np.sum((r - e_ref) ** 2 / e_ref) + np.sum((c - e_cur) ** 2 / e_cur))
    return statistic, df, float(stats.chi2.sf(statistic, df))


def _significant(value: float, threshold: float, reference: ArrayLike, current: ArrayLike,
                 alpha: float | None) -> tuple[bool, float | None]:
    """(drifted, p-value): the distance reaches its threshold and, when ``alpha`` is given, the
    pooled chi-square test rejects at ``alpha``. The test runs only for a distance at or over its
    threshold (else the p-value is ``None``): most windows pay for the distance alone."""
    if alpha is None or not value >= threshold:
        return bool(value >= threshold), None
    p_value = pooled_chisquare(reference, current)[2]
    return bool(value >= threshold and p_value <= alpha), p_value


def psi(reference: ArrayLike, current: ArrayLike, threshold: float = DISTANCE_THRESHOLD, *,
        alpha: float | None = None) -> TestResult:
    """Population stability index of two count vectors.

    ``sum((r - c) * ln(r / c))`` over Evidently-smoothed shares; with ``alpha``, drift also
    needs the pooled chi-square p-value at or below it (module docstring).

    >>> round(psi([10, 20, 70], [20, 20, 60]).value, 6)
    0.08473
    >>> r = psi([5000, 5000], [33, 17], alpha=1e-4)   # PSI 0.11 on 50 values: noise at this alpha
    >>> round(r.value, 3), r.drifted, round(r.p_value, 3)
    (0.106, False, 0.024)
    """
    shares = _shares(reference, current)
    if shares is None:
        return undefined("psi", threshold, p_value=alpha is not None)
    ref, cur = fill_zeros(shares[0]), fill_zeros(shares[1])
    value = float(np.sum((ref - cur) * np.log(ref / cur)))
    drifted, p_value = _significant(value, threshold, reference, current, alpha)
    return TestResult("psi", value, drifted, float(threshold), p_value, value)


def jensenshannon(reference: ArrayLike, current: ArrayLike, threshold: float = DISTANCE_THRESHOLD, *,
                  alpha: float | None = None) -> TestResult:
    """Jensen-Shannon *distance* (natural log) of two count vectors (``alpha`` as for :func:`psi`).

    >>> round(jensenshannon([10, 20, 70], [20, 20, 60]).value, 6)
    0.102078
    """
    shares = _shares(reference, current)
    if shares is None:
        return undefined("jensenshannon", threshold, p_value=alpha is not None)
    value = float(distance.jensenshannon(shares[0], shares[1]))
    drifted, p_value = _significant(value, threshold, reference, current, alpha)
    return TestResult("jensenshannon", value, drifted, float(threshold), p_value, value)


def chisquare(reference: ArrayLike, current: ArrayLike, threshold: float = PVALUE_THRESHOLD) -> TestResult:
    """Pearson chi-square goodness of fit of the current counts to the reference shares.

    A bin with reference count 0 and current count > 0 makes the statistic
    infinite (p-value 0): a category never seen in training is drift. With a
    single non-empty bin there is nothing to test: statistic 0, p-value 1.

    >>> r = chisquare([50, 50], [60, 40])
    >>> round(r.statistic, 6), round(r.value, 6), r.drifted
    (4.0, 0.0455, True)
    """
    counts = _occupied(reference, current)
    if counts is None:
        return undefined("chisquare", threshold, p_value=True)
    ref, cur = counts
    n_ref, n_cur = ref.sum(), cur.sum()
    if ref.size < 2:
        return TestResult("chisquare", 1.0, False, float(threshold), 1.0, 0.0)
    expected = ref * (n_cur / n_ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, (cur - expected) ** 2 / np.where(expected > 0, expected, 1.0), np.inf)
    statistic = float(terms.sum())
    p_value = float(stats.chi2.sf(statistic, ref.size - 1))
    return TestResult("chisquare", p_value, bool(p_value < threshold), float(threshold), p_value, statistic)


def ks(reference: ArrayLike, current: ArrayLike, threshold: float = PVALUE_THRESHOLD) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, ``method='auto'``).

    >>> rng = np.random.default_rng(0)
    >>> r = ks(rng.normal(size=500), rng.normal(0.5, 1, size=500))
    >>> r.drifted, r.value < 1e-6, round(r.statistic, 3)
    (True, True, 0.214)
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return undefined("ks", threshold, p_value=True)
    res = stats.ks_2samp(ref, cur, method="auto")
    p_value = float(res.pvalue)
    return TestResult("ks", p_value, bool(p_value <= threshold), float(threshold), p_value, float(res.statistic))


def wasserstein(
    reference: ArrayLike,
    current: ArrayLike,
    threshold: float = DISTANCE_THRESHOLD,
    *,
    norm: float | None = None,
    reference_sorted: bool = False,
) -> TestResult:
    """First Wasserstein distance divided by ``max(std(reference), 0.001)``.

    ``norm`` overrides the reference std (a profile keeps the std of the whole
    training column while the sample may be a subsample); ``reference_sorted``
    skips sorting a reference that is already sorted.

    >>> rng = np.random.default_rng(0)
    >>> round(wasserstein(rng.normal(size=2000), rng.normal(0.5, 1, size=2000)).value, 2)
    0.53
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return undefined("wasserstein", threshold)
    scale = max(float(np.std(ref)) if norm is None else float(norm), WASSERSTEIN_MIN_NORM)
    value = wasserstein_1d(ref if reference_sorted else np.sort(ref), np.sort(cur)) / scale
    return TestResult("wasserstein", value, bool(value >= threshold), float(threshold), None, value)


def wasserstein_1d(u_sorted: np.ndarray, v_sorted: np.ndarray) -> float:
    """Unweighted W1 distance of two sorted samples: the integral of ``|F_u - F_v|``.

    The quantity ``scipy.stats.wasserstein_distance`` computes, but from a
    stable argsort of the two (already sorted) samples and running counts
    instead of one binary search per point, which is ~2.5x faster. Inside a run
    of tied values the partial counts differ from ``searchsorted(side='right')``
    but the run's width is 0, so the integral is the same.

    >>> wasserstein_1d(np.array([0.0, 1.0]), np.array([0.5, 1.5]))
    0.5
    """
    joined = np.concatenate((u_sorted, v_sorted))
    order = np.argsort(joined, kind="stable")
    from_u = order < u_sorted.size
    u_cdf = np.cumsum(from_u)[:-1] / u_sorted.size
    v_cdf = np.cumsum(~from_u)[:-1] / v_sorted.size
    return float(np.sum(np.abs(u_cdf - v_cdf) * np.diff(joined[order])))


STATTESTS: dict[str, StatTest] = {
    "psi": StatTest("psi", "binned", ("numeric", "categorical"), DISTANCE_THRESHOLD, psi, takes_alpha=True),
    "jensenshannon": StatTest("jensenshannon", "binned", ("numeric", "categorical"), DISTANCE_THRESHOLD, jensenshannon,
                              takes_alpha=True),
    "chisquare": StatTest("chisquare", "binned", ("numeric", "categorical"), PVALUE_THRESHOLD, chisquare),
    "ks": StatTest("ks", "sample", ("numeric",), PVALUE_THRESHOLD, ks),
    "wasserstein": StatTest("wasserstein", "sample", ("numeric",), DISTANCE_THRESHOLD, wasserstein),
}
"""Method name -> test. ``chisquare`` on a numeric feature runs on its reference bins."""


WINDOWED_FALSE_ALARMS_PER_MILLION = 0.5
"""Default false-alarm budget of a model's windowed distance tests, per million events, for all of
them together (see :class:`detectors.drift.DriftSuite`)."""


def window_alpha(n_events: int, tests: int, false_alarms_per_million: float) -> float:
    """Significance level of each of ``tests`` tests on a window of ``n_events`` events so that they
    raise at most ``false_alarms_per_million`` false alarms per million events together (Bonferroni:
    a window of ``n`` events may spend ``n`` events' worth of the budget).

    >>> window_alpha(1000, 10, 0.5)
    5e-05
    """
    return min(false_alarms_per_million * 1e-6 * max(n_events, 1) / max(tests, 1), 0.05)


def get_stattest(method: str, feature_type: str) -> StatTest:
    """The test called ``method``, checked to apply to ``feature_type``."""
    test = STATTESTS.get(method)
    if test is None:
        raise DetectorError(f"unknown drift method {method!r}; known: {', '.join(sorted(STATTESTS))}")
    if feature_type not in test.feature_types:
        raise DetectorError(f"drift method {method!r} does not apply to {feature_type} features")
    return test


def auto_method(feature_type: str, reference_n: int, n_unique: int) -> str:
    """Evidently's default test for a feature (``registry._get_default_stattest``).

    Evidently: reference of at most 1,000 rows -> numeric with more than 5
    distinct values ``ks``, else ``chisquare`` (``z`` for 2 or fewer values);
    categorical ``chisquare`` (``z`` for 2 or fewer). Larger reference ->
    numeric with more than 5 distinct values ``wasserstein``, else
    ``jensenshannon``; categorical ``jensenshannon``.

    Differences: Evidently counts distinct values over reference and current
    together; a stream has no current data when the method is chosen, so
    ``n_unique`` is the reference's. driftwarden has no two-proportion z-test
    and uses ``chisquare`` where Evidently would use ``z`` (Evidently's z-test
    pools both samples' proportions; ``chisquare`` tests the current counts
    against the reference shares, which is close when the reference is large).

    >>> auto_method("numeric", 5000, 300), auto_method("categorical", 5000, 3)
    ('wasserstein', 'jensenshannon')
    >>> auto_method("numeric", 800, 300), auto_method("categorical", 800, 2)
    ('ks', 'chisquare')
    """
    if feature_type not in ("numeric", "categorical"):
        raise DetectorError(f"feature type must be 'numeric' or 'categorical', got {feature_type!r}")
    if reference_n <= 1000:
        if feature_type == "numeric" and n_unique > 5:
            return "ks"
        return "chisquare"
    if feature_type == "numeric" and n_unique > 5:
        return "wasserstein"
    return "jensenshannon"
