"""CUSUM streams against the reference: oracles (a per-event loop of Page's recursion), batch-split
and snapshot/restore invariance, the LLR increments by hand, false-alarm rate and detection delay."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.base import DetectorError, FeatureFrame
from detectors.cusum import DELTAS, PageCUSUM, ReferenceCUSUM, cusum_points, threshold_for
from detectors.profile import ReferenceProfile
from tests.conftest import REPO


# -- oracle: Page's recursion, one event at a time ------------------------------------------------

def loop_cusum(x: np.ndarray, h: np.ndarray, groups: np.ndarray, s0: np.ndarray | None = None,
               returns: np.ndarray | None = None, watch: np.ndarray | None = None
               ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """S_j = max(0, S_j + x_j) per row; a stream (group) whose column reaches h is recorded
    (row, group) and all its columns restart from 0. With ``returns``, a stream that detected on
    column j stops testing and runs R = max(0, R - x_k), k = returns[j]; when R reaches h_k it is
    recorded (row, -1 - group) and tests again from 0 at the next row. Columns not in ``watch``
    never detect (return columns)."""
    s = np.zeros(x.shape[1]) if s0 is None else s0.copy()
    watch = np.ones(x.shape[1], dtype=bool) if watch is None else watch
    changed: dict[int, list[float]] = {}  # group -> [column k, R]
    found = []
    for t in range(x.shape[0]):
        back = []
        for g, state in sorted(changed.items()):
            state[1] = max(0.0, state[1] - x[t, int(state[0])])
            if state[1] >= h[int(state[0])]:
                back.append(g)
        for j in range(x.shape[1]):
            if int(groups[j]) not in changed and watch[j]:
                s[j] = max(0.0, s[j] + x[t, j])
        hit = sorted({int(groups[j]) for j in range(x.shape[1]) if int(groups[j]) not in changed and s[j] >= h[j]})
        for g in back:
            found.append((t, -1 - g))
            del changed[g]
        for g in hit:
            found.append((t, g))
            members = np.flatnonzero((groups == g) & watch)
            best = int(members[int(np.argmax(s[members] / h[members]))])
            s[groups == g] = 0.0
            if returns is not None:
                changed[g] = [float(returns[best]), 0.0]
    return s, found


def feed(bank: PageCUSUM, x: np.ndarray, cuts: list[int]) -> list[tuple[int, int]]:
    found = []
    edges = [0, *sorted(set(c for c in cuts if 0 < c < x.shape[0])), x.shape[0]]
    for lo, hi in zip(edges[:-1], edges[1:]):
        bank.update(x[lo:hi])
        events = [(lo + d.row, d.group) for d in bank.detections] + [(lo + r.row, -1 - r.group) for r in bank.returned]
        found.extend(sorted(events, key=lambda e: (e[0], e[1] >= 0, abs(e[1] + (e[1] < 0)))))
    return found


dyadic = st.integers(min_value=-24, max_value=16).map(lambda k: k / 8.0)  # exact in float64


@settings(max_examples=150, deadline=None)
@given(data=st.data(), m=st.integers(1, 5), n=st.integers(0, 60))
def test_bank_equals_the_per_event_recursion_exactly_across_batch_splits_and_restores(data, m, n) -> None:
    x = np.array(data.draw(st.lists(st.lists(dyadic, min_size=m, max_size=m), min_size=n, max_size=n)),
                 dtype=np.float64).reshape(n, m)
    h = np.array(data.draw(st.lists(st.integers(1, 24).map(lambda k: k / 4.0), min_size=m, max_size=m)))
    groups = np.array(data.draw(st.lists(st.integers(0, 2), min_size=m, max_size=m)))
    cuts = data.draw(st.lists(st.integers(0, n), max_size=4))
    returns = watch = None
    if data.draw(st.booleans()):  # a detection holds until the way back is tested (per column: one of its stream)
        returns = np.array([data.draw(st.sampled_from(np.flatnonzero(groups == g).tolist())) for g in groups])
        watch = np.array(data.draw(st.lists(st.booleans(), min_size=m, max_size=m)))
    want_s, want = loop_cusum(x, h, groups, returns=returns, watch=watch)

    bank = PageCUSUM(h, groups=groups, returns=returns, watch=watch)
    got = feed(bank, x, cuts)
    assert got == want
    assert bank.statistic.tolist() == want_s.tolist()  # dyadic increments: sums are exact

    # snapshot/restore (through JSON) in the middle gives the same continuation
    k = data.draw(st.integers(0, n))
    first = PageCUSUM(h, groups=groups, returns=returns, watch=watch)
    head = feed(first, x[:k], [])
    second = PageCUSUM.restore(json.loads(json.dumps(first.snapshot())))
    tail = [(k + r, g) for r, g in feed(second, x[k:], cuts)]
    assert head + tail == want
    assert second.statistic.tolist() == want_s.tolist()


def test_bank_matches_the_recursion_on_random_floats_to_1e_12() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(-0.2, 1.0, (3000, 7))
    h = rng.uniform(4.0, 9.0, 7)
    groups = np.array([0, 0, 1, 2, 2, 2, 3])
    for returns in (None, np.array([1, 0, 2, 4, 4, 3, 6])):
        want_s, want = loop_cusum(x, h, groups, returns=returns)
        assert len(want) > 10  # the thresholds are crossed and streams restart (or return)
        assert (returns is None) == all(g >= 0 for _, g in want)
        for cuts in ([], [1, 2, 500, 1777], list(range(0, 3000, 333))):
            bank = PageCUSUM(h, groups=groups, returns=returns)
            assert feed(bank, x, cuts) == want
            np.testing.assert_allclose(bank.statistic, want_s, rtol=0, atol=1e-12)


def test_bank_rejects_bad_shapes_and_cannot_merge() -> None:
    with pytest.raises(DetectorError):
        PageCUSUM([1.0, -1.0])
    bank = PageCUSUM([1.0, 2.0])
    with pytest.raises(DetectorError):
        bank.update(np.zeros((3, 1)))
    with pytest.raises(DetectorError):
        bank.merge(PageCUSUM([1.0, 2.0]))
    linear = dict(source_weight=np.ones(2), observed_column=np.zeros(2, dtype=np.int64), observed_weight=np.ones(2))
    with pytest.raises(DetectorError, match="does not have"):  # a source the batch lacks is not read from memory
        bank.update_linear(np.zeros((3, 2)), np.zeros((3, 1)), source_column=np.array([0, 2]), **linear)
    with pytest.raises(DetectorError, match="same rows"):
        bank.update_linear(np.zeros((3, 2)), np.zeros((4, 1)), source_column=np.array([0, 1]), **linear)
    with pytest.raises(DetectorError, match="2 columns"):
        bank.update_linear(np.zeros((3, 2)), np.zeros((3, 1)), source_column=np.array([0]), **linear)
    assert bank.statistic.tolist() == [0.0, 0.0] and bank.n == 0  # refused batches leave the bank as it was
    # a batch without source columns still reads its observations (and the reverse)
    one = PageCUSUM([1.0])
    weights = dict(source_column=np.array([0]), observed_column=np.array([0]))
    one.update_linear(np.zeros((3, 0)), np.ones((3, 1)), source_weight=np.array([5.0]),
                      observed_weight=np.array([0.6]), **weights)
    assert [d.row for d in one.detections] == [1]
    one = PageCUSUM([1.0])
    one.update_linear(np.ones((3, 1)), np.zeros((3, 0)), source_weight=np.array([0.6]),
                      observed_weight=np.array([5.0]), **weights)
    assert [d.row for d in one.detections] == [1]


def test_the_row_loop_runs_where_its_compiled_code_cannot_be_cached() -> None:
    """A read-only install with no writable cache directory: numba finds no cache locator (forced
    here with ``NUMBA_CACHE_LOCATOR_CLASSES``), and ``cache=True`` would fail the import; the loop
    is compiled in the process instead and gives the same detections."""
    code = ("import numpy as np; from detectors.cusum import PageCUSUM, _page_rows; "
            "bank = PageCUSUM([2.0]).update(np.ones((5, 1))); "
            "print(type(_page_rows.compile()._cache).__name__, [d.row for d in bank.detections])")
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "numba.core.caching.ZipCacheLocator"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NullCache", "[1,", "3]"]


def test_linear_increments_are_read_as_if_materialised() -> None:
    """``update_linear`` reads each column's increment from its source and observation as the rows
    are read; the oracle is the bank fed the ``(rows, columns)`` matrix of those increments, built
    with numpy: the same detections, returns and statistics, to the bit."""
    rng = np.random.default_rng(8)
    n, sources, observations = 4000, 5, 3
    src = rng.normal(0.0, 1.0, (n, sources))
    src[1000:2000] += 1.5  # changes that come and go
    src[3000:3400] += 1.5
    obs = (rng.random((n, observations)) < 0.9).astype(np.float64)
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3])
    m = groups.size
    s_col, o_col = rng.integers(0, sources, m), rng.integers(0, observations, m)
    s_w, o_w = rng.normal(0.3, 0.2, m), rng.uniform(-0.4, -0.1, m)
    returns = np.array([1, 0, 1, 4, 3, 6, 5, 5, 8])
    watch = np.array([True, True, False, True, True, True, True, False, True])
    h = rng.uniform(3.0, 6.0, m)
    linear = PageCUSUM(h, groups=groups, returns=returns, watch=watch)
    matrix = PageCUSUM(h, groups=groups, returns=returns, watch=watch)
    events = returned = 0
    for lo in range(0, n, 700):
        rows = slice(lo, lo + 700)
        linear.update_linear(src[rows], obs[rows], source_column=s_col, source_weight=s_w,
                             observed_column=o_col, observed_weight=o_w)
        matrix.update(src[rows][:, s_col] * s_w + obs[rows][:, o_col] * o_w)
        assert linear.detections == matrix.detections and linear.returned == matrix.returned
        assert linear.statistic.tolist() == matrix.statistic.tolist()
        assert linear.changed.tolist() == matrix.changed.tolist() and linear.back.tolist() == matrix.back.tolist()
        events += len(linear.detections)
        returned += len(linear.returned)
    assert events > 20 and returned > 20  # the thresholds are crossed, streams change and come back


def test_threshold_solves_walds_arl() -> None:
    for arl, kl in ((1e3, 0.5), (3e8, 0.03125), (1e9, 0.8)):
        h = threshold_for(arl, kl)
        assert (math.exp(h) - h - 1) / kl == pytest.approx(arl, rel=1e-9)
    with pytest.raises(DetectorError):
        threshold_for(0.0, 1.0)


# -- the streams of a model -------------------------------------------------------------------

CATS = np.array(["a", "b", "c"], dtype=object)
CAT_P = np.array([0.5, 0.3, 0.2])


def draw(rng: np.random.Generator, n: int, *, shift: float = 0.0, scale: float = 1.0, cat_p: np.ndarray = CAT_P,
         positive: float = 0.6, positive_f: float | None = None, error: float = 0.15) -> dict[str, np.ndarray]:
    sex = np.where(rng.random(n) < 0.5, "F", "M").astype(object)
    p = np.where(sex == "F", positive if positive_f is None else positive_f, positive)
    pred = (rng.random(n) < p).astype(int)
    wrong = rng.random(n) < error
    return {
        "x": rng.normal(10.0 + shift * 3.0, 3.0 * scale, n),
        "skewed": rng.lognormal(0.0, 1.0, n),
        "counts": rng.poisson(3.0, n).astype(float),
        "cat": CATS[rng.choice(3, n, p=cat_p)],
        "sex": sex,
        "prediction": pred,
        "label": np.where(wrong, 1 - pred, pred),
    }


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    cols = draw(np.random.default_rng(0), 20_000)
    return ReferenceProfile.from_frame(pd.DataFrame(cols), model_id="m", target="label", prediction="prediction",
                                       attributes=["sex"], features={"x": "numeric", "skewed": "numeric",
                                                                     "counts": "numeric", "cat": "categorical"})


def monitor(profile: ReferenceProfile, **options) -> ReferenceCUSUM:
    return ReferenceCUSUM.from_profile(profile, positive_label="1", attributes=["sex"], **options)


def frame(cols: dict[str, np.ndarray]) -> FeatureFrame:
    return FeatureFrame.build(numeric={f: cols[f] for f in ("x", "skewed", "counts")}, categorical={"cat": cols["cat"]})


def run(cusum: ReferenceCUSUM, cols: dict[str, np.ndarray], batch: int = 1000) -> list[tuple[int, str]]:
    """(row, stream) of every stream's first detection per batch (start_window after each batch)."""
    found = []
    n = len(cols["x"])
    for lo in range(0, n, batch):
        part = {k: v[lo:lo + batch] for k, v in cols.items()}
        cusum.update(frame(part), part["prediction"].astype(str).astype(object), {"sex": part["sex"]})
        found.extend((lo + d.row, d.stream.name) for d in cusum.new)
        errors = (part["label"] != part["prediction"]).astype(float)
        cusum.update_errors(errors)
        found.extend((lo + d.row, d.stream.name) for d in cusum.new)
        cusum.start_window()
    return found


def test_streams_and_thresholds_follow_the_reference(profile: ReferenceProfile) -> None:
    cusum = monitor(profile)
    names = [(s.kind, s.name) for s in cusum.streams]
    assert names == [("feature", "x"), ("feature", "skewed"), ("feature", "counts"), ("feature", "cat"),
                     ("prediction", "prediction"), ("fairness", "sex=F"), ("fairness", "sex=M"), ("concept", "error")]
    # every column's threshold gives it an in-control ARL of columns / rate (Bonferroni)
    # (Siegmund's overshoot correction b = h + 1.166 δ on the Gaussian mean columns, none elsewhere)
    arl = cusum.columns / 1e-6
    kls = cusum._pspec.kl + cusum._espec.kl
    overshoot = cusum._pspec.overshoot + cusum._espec.overshoot
    watch = cusum._pspec.watch + cusum._espec.watch
    assert sorted({o for o, w in zip(overshoot, watch) if w}) == [0.0, 1.166 * 0.25, 1.166 * 0.5, 1.166]
    # the return columns (half the smallest change, one per stream, source and direction) count in no
    # Bonferroni divisor, and their thresholds are set at the same ARL
    assert cusum.columns == sum(watch) < len(watch)
    # (the variance-down family tests one change, sd ÷2: its return column is at half of it)
    assert {abs(d) for d, w in zip(cusum._pspec.delta + cusum._espec.delta, watch) if not w} == {
        DELTAS[0] / 2, DELTAS[-1] / 2}
    for h, kl, o in zip(cusum.thresholds, kls, overshoot):
        b = h + o
        assert (math.exp(b) - b - 1) / kl == pytest.approx(arl, rel=1e-9)
    # a tenfold stricter target raises every threshold by about ln 10
    strict = monitor(profile, false_alarms_per_million=0.1)
    assert np.all(np.abs(strict.thresholds - cusum.thresholds - math.log(10)) < 0.01)


def test_increments_are_the_log_likelihood_ratios_by_hand(profile: ReferenceProfile) -> None:
    cusum = monitor(profile, margin=0.0)
    cols = draw(np.random.default_rng(5), 50)
    cols["x"][3] = np.nan  # a missing value observes nothing
    cols["cat"][4] = None
    cols["cat"][5] = "never-seen"
    x = cusum.increments(frame(cols), cols["prediction"].astype(str).astype(object), {"sex": cols["sex"]})
    sample = sorted(profile.numeric["x"].sample)
    n = len(sample)

    def raw_score(v: float) -> float:
        below = sum(1 for s in sample if s < v)
        equal = sum(1 for s in sample if s == v)
        u = min(max((2 * below + equal) / (2 * n), 0.5 / n), 1 - 0.5 / n)
        return NormalDist().inv_cdf(u)

    ref = [raw_score(v) for v in sample]
    mean, sd = float(np.mean(ref)), float(np.std(ref))
    counts = profile.categorical["cat"].counts
    p_a = counts["a"] / sum(counts.values())
    p_pos = profile.predictions["1"] / sum(profile.predictions.values())
    for row in range(50):
        expected = []
        y = (raw_score(cols["x"][row]) - mean) / sd if not np.isnan(cols["x"][row]) else None
        for direction in (1, -1):
            for d in DELTAS:
                expected.append(0.0 if y is None else direction * d * y - d * d / 2)
            for d in (DELTAS if direction > 0 else DELTAS[-1:]):
                var = (1 + d) ** 2 if direction > 0 else 1 / (1 + d) ** 2
                expected.append(0.0 if y is None else 0.5 * y * y * (1 - 1 / var) - 0.5 * math.log(var))
        got = x[row, : len(expected)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        # the first category's "up" columns: Bernoulli LLR of its indicator
        cat_stream = next(g for g, s in enumerate(cusum.streams) if s.name == "cat")
        first_cat = cusum._pspec.group.index(cat_stream)  # after x's, skewed's and counts' columns
        # (alternatives that would leave (0, 1) are left out: a share of 0.5 cannot rise by 1 sd)
        value = cols["cat"][row]
        alternatives = [p1 for d in DELTAS if 0 < (p1 := p_a + d * math.sqrt(p_a * (1 - p_a))) < 1]
        assert len(alternatives) == 2
        for k, p1 in enumerate(alternatives):
            want = 0.0 if value is None else (math.log(p1 / p_a) if value == "a" else math.log((1 - p1) / (1 - p_a)))
            assert x[row, first_cat + k] == pytest.approx(want, abs=1e-12)
        # the predicted-class stream (positive class "1"), up then down
        pred_cols = [j for j, g in enumerate(cusum._pspec.group)
                     if cusum.streams[g].kind == "prediction" and cusum._pspec.watch[j]]
        is_pos = cols["prediction"][row] == 1
        alternatives = [p1 for direction in (1, -1) for d in DELTAS
                        if 0 < (p1 := p_pos + direction * d * math.sqrt(p_pos * (1 - p_pos))) < 1]
        assert len(pred_cols) == len(alternatives) == 5
        for k, p1 in enumerate(alternatives):
            want = math.log(p1 / p_pos) if is_pos else math.log((1 - p1) / (1 - p_pos))
            assert x[row, pred_cols[k]] == pytest.approx(want, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 2999), max_size=5), at=st.integers(0, 3000))
def test_detections_do_not_depend_on_batching_or_restarts(profile: ReferenceProfile, cuts, at) -> None:
    rng = np.random.default_rng(11)
    cols = {k: np.concatenate([a, b]) for (k, a), b in
            zip(draw(rng, 1500).items(), draw(rng, 1500, shift=0.6, positive=0.75).values())}
    whole = monitor(profile)
    x = whole.increments(frame(cols), cols["prediction"].astype(str).astype(object), {"sex": cols["sex"]})
    bank = whole._pbank
    want_s, want = loop_cusum(x, bank.thresholds, bank.groups, returns=bank.returns, watch=bank.watch)
    assert want  # the change is detected

    cusum = monitor(profile)
    edges = [0, *sorted(set(cuts)), 3000]
    got = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= at < hi:  # restart from a JSON snapshot somewhere in the stream, with or without its reference
            if at % 2:
                cusum = ReferenceCUSUM.restore(json.loads(json.dumps(cusum.snapshot())))
            else:
                state = json.loads(json.dumps(cusum.snapshot(reference=False)))
                cusum = ReferenceCUSUM.restore(state, template=monitor(profile))
        part = {k: v[lo:hi] for k, v in cols.items()}
        cusum.update(frame(part), part["prediction"].astype(str).astype(object), {"sex": part["sex"]})
        bank = cusum._pbank
        events = [(lo + d.row, d.group) for d in bank.detections] + [(lo + r.row, -1 - r.group) for r in bank.returned]
        got.extend(sorted(events, key=lambda e: (e[0], e[1] >= 0, abs(e[1] + (e[1] < 0)))))
    assert got == want
    np.testing.assert_allclose(cusum._pbank.statistic, want_s, rtol=0, atol=1e-9)


def test_normal_scores_make_skewed_and_continuous_features_standard(profile: ReferenceProfile) -> None:
    cusum = monitor(profile)
    cols = draw(np.random.default_rng(9), 200_000)
    for feature in ("x", "skewed"):
        y, seen = cusum._ptables[feature].scores(cols[feature])
        assert seen.all()
        # (to within the reference sample's own error: 5,000 values)
        assert abs(y.mean()) < 0.03 and abs(y.var() - 1.0) < 0.08, feature
        # the tails are those of N(0, 1) or lighter (clipped at the sample's range)
        assert (np.abs(y) > 3.0).mean() < 2 * 0.0027, feature


def test_point_masses_are_shares_and_normal_scores_take_the_rest() -> None:
    rng = np.random.default_rng(4)
    n = 20_000
    cols = {"money": np.where(rng.random(n) < 0.9, 0.0, rng.lognormal(7.0, 1.5, n)),  # 90 % zeros
            "counts": rng.poisson(3.0, n).astype(float), "constant": np.full(n, 7.0)}
    prof = ReferenceProfile.from_frame(pd.DataFrame(cols), model_id="m", features={k: "numeric" for k in cols})
    cusum = ReferenceCUSUM.from_profile(prof)
    assert [s.name for s in cusum.streams] == ["money", "counts", "constant"]
    sample = np.asarray(prof.numeric["money"].sample)
    assert cusum.atoms["money"].tolist() == [0.0]
    # the normal scores are those of the non-zero values, against the non-zero reference values
    np.testing.assert_array_equal(cusum._ptables["money"].sample, np.sort(sample[sample != 0]))
    fresh = np.where(rng.random(n) < 0.9, 0.0, rng.lognormal(7.0, 1.5, n))
    y, seen = cusum._ptables["money"].scores(np.where(fresh == 0, np.nan, fresh))
    assert abs(y[seen].mean()) < 0.05 and abs(y[seen].var() - 1.0) < 0.1
    # counts (at most 20 distinct values): every value is a point mass, no normal scores
    assert cusum.atoms["counts"].tolist() == np.unique(np.asarray(prof.numeric["counts"].sample)).tolist()
    assert "counts" not in cusum._ptables
    # a constant column watches for any other value: the rest's share, half a value in the reference
    assert cusum.atoms["constant"].tolist() == [7.0] and "constant" not in cusum._ptables
    assert {c for c, g, w in zip(cusum._pspec.change, cusum._pspec.group, cusum._pspec.watch) if g == 2 and w} == {
        f"share of rest +{d:g} sd" for d in DELTAS}
    # the zero share's column: Bernoulli LLR of "is zero" (0.9 -> 0.9 + 0.25 sd), by hand
    p0 = float((sample == 0).mean())
    q0 = p0 + math.sqrt(p0 * (1 - p0) / sample.size)
    p1 = p0 + 0.25 * math.sqrt(p0 * (1 - p0))
    x = cusum.increments(FeatureFrame.build(numeric={"money": np.array([0.0, 12.5, np.nan]),
                                                     "counts": np.array([1.0, 2.0, 3.0])}))
    assert (x[:, [j for j, g in enumerate(cusum._pspec.group) if g == 2]] == 0).all()  # no constant values given
    assert cusum._pspec.change[0] == "share of 0 +0.25 sd"
    assert x[:, 0].tolist() == pytest.approx([math.log(p1 / q0), math.log((1 - p1) / (1 - q0)), 0.0], abs=1e-12)
    # a missing value, a zero and a non-zero each count once in the stream's n
    cusum.update(FeatureFrame.build(numeric={"money": np.array([0.0, 12.5, np.nan]),
                                             "counts": np.array([1.0, 2.0, 3.0])}))
    assert [s.n for s in cusum.result().streams] == [2, 3, 0]


def test_false_alarm_rate_on_stationary_traffic_is_within_the_target(profile: ReferenceProfile) -> None:
    # a loose target so that alarms are frequent enough to count: 2,000 per million events
    cusum = monitor(profile, false_alarms_per_million=2000.0)
    n = 300_000
    found = run(cusum, draw(np.random.default_rng(21), n), batch=5000)
    rate = len(found) / n * 1e6
    # Bonferroni and Wald's ARL without overshoot are conservative, not vacuous
    assert 2000.0 / 30 < rate <= 2000.0, (rate, found[:10])


def test_no_false_alarm_at_the_default_target(profile: ReferenceProfile) -> None:
    assert run(monitor(profile), draw(np.random.default_rng(22), 200_000), batch=2000) == []


@pytest.mark.parametrize(("change", "stream", "within"), [
    ({"shift": 0.5}, "x", 400),                 # 0.5 sd mean shift
    ({"scale": 2.0}, "x", 100),                 # variance x4
    ({"cat_p": np.array([0.6, 0.24, 0.16])}, "cat", 800),  # a share +10 points
    ({"positive": 0.8}, "prediction", 600),     # predicted classes 40/60 -> 20/80
    ({"positive_f": 0.3}, "sex=F", 700),        # selection rate of one group halves
    ({"error": 0.5}, "error", 400),             # the error rate goes from 0.15 to 0.5
])
def test_a_change_is_detected_soon_after_it_starts(profile: ReferenceProfile, change, stream, within) -> None:
    delays = []
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        before, after = draw(rng, 5000), draw(rng, 3000, **change)
        cols = {k: np.concatenate([before[k], after[k]]) for k in before}
        found = run(monitor(profile), cols, batch=1000)
        assert [f for f in found if f[0] < 5000] == []
        hits = [row - 5000 + 1 for row, name in found if name == stream]
        assert hits, (change, found)
        delays.append(hits[0])
    assert float(np.median(delays)) <= within, (change, delays)


def test_window_points_and_reset(profile: ReferenceProfile) -> None:
    cusum = monitor(profile)
    rng = np.random.default_rng(4)
    run(cusum, draw(rng, 2000), batch=2000)
    # a window in which no stream observed anything has no evidence either way: no points
    assert cusum_points(cusum.result(), tags={"model_id": "m"}, time_ns=1) == []
    cols = draw(rng, 2000)
    cusum.update(frame(cols), cols["prediction"].astype(str).astype(object), {"sex": cols["sex"]})
    quiet = cusum_points(cusum.result(), tags={"model_id": "m"}, time_ns=1)
    # the error stream saw no labelled pair in this window: no concept point
    assert {p.measurement for p in quiet} == {"feature_drift", "prediction_drift", "fairness"}
    cusum.update_errors((cols["label"] != cols["prediction"]).astype(float))
    quiet = cusum_points(cusum.result(), tags={"model_id": "m"}, time_ns=1)
    assert {p.measurement for p in quiet} == {"feature_drift", "prediction_drift", "fairness", "concept_drift"}
    assert not any(p.fields.get("drift") for p in quiet) and all(p.fields.get("value", 0.0) < 1 for p in quiet)
    cols = draw(rng, 3000, shift=1.0)
    part = frame(cols)
    cusum.update(part, cols["prediction"].astype(str).astype(object), {"sex": cols["sex"]})
    # a persistent change is detected once: the stream then holds its changed state
    assert [d.stream.name for d in cusum.new] == ["x"]
    assert cusum.new[0].ratio >= 1.0 and cusum.new[0].change.startswith("mean +")  # what it detected
    assert len([d for d in cusum._pbank.detections if cusum.streams[d.group].name == "x"]) == 1

    def feature_points(time_ns: int) -> dict[str | None, object]:
        return {p.tags.get("feature"): p for p in cusum_points(cusum.result(), tags={}, time_ns=time_ns)
                if p.measurement == "feature_drift"}

    points = feature_points(2)
    assert points["x"].fields["drift"] is True and points["x"].fields["value"] >= 1.0
    assert points["x"].fields["threshold"] == 1.0 and points["x"].fields["delta"] > 0
    assert points["cat"].fields["drift"] is False
    held = points["x"].fields
    cusum.start_window()
    assert not any(s.detections for s in cusum.result().streams)
    # the next windows of the same change: no new detection, the window still says drift (the
    # detection's figures), until the change is undone
    for _ in range(3):
        cols = draw(rng, 1000, shift=1.0)
        cusum.update(frame(cols), cols["prediction"].astype(str).astype(object), {"sex": cols["sex"]})
        assert cusum.new == () and cusum.returned == ()
        assert feature_points(3)["x"].fields == {**held, "n": 1000}
        cusum.start_window()
    cols = draw(rng, 4000)  # back to the reference: one return, then quiet windows
    cusum.update(frame(cols), cols["prediction"].astype(str).astype(object), {"sex": cols["sex"]})
    assert [s.name for s in cusum.returned] == ["x"] and cusum.new == ()
    way_back = next(r for r in cusum._pbank.returned)
    # the return statistic drifts up by KL(reference ‖ +0.125 sd) = 0.125²/2 per observation (plus the
    # margin): it reaches its threshold after about h / KL observations
    h = cusum._pbank.thresholds[way_back.column]
    low = DELTAS[0] / 2  # the return column: half the smallest change (hysteresis)
    assert cusum._pspec.delta[way_back.column] == low and not cusum._pspec.watch[way_back.column]
    assert 0.5 * h / (low ** 2 / 2) < way_back.row < 2 * h / (low ** 2 / 2), (way_back, h)
    assert feature_points(4)["x"].fields["drift"] is False and feature_points(4)["x"].fields["value"] < 1
    cusum.start_window()
    assert not any(s.drift for s in cusum.result().streams)
    with pytest.raises(DetectorError):
        cusum.merge(monitor(profile))


def test_a_snapshot_without_its_reference_is_small_and_checks_its_template(profile: ReferenceProfile) -> None:
    cusum = monitor(profile)
    small, full = cusum.snapshot(reference=False), cusum.snapshot()
    assert len(json.dumps(small)) * 10 < len(json.dumps(full))
    with pytest.raises(DetectorError):
        ReferenceCUSUM.restore(small)
    with pytest.raises(DetectorError):
        ReferenceCUSUM.restore(small, template=monitor(profile, false_alarms_per_million=5.0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.sampled_from([-1.0, -0.5, -0.25, 0.25, 0.5, 1.0]),
                          st.booleans()), min_size=1, max_size=40))
def test_each_columns_return_column_is_the_same_streams_smallest_change(columns) -> None:
    """``_Spec.returns`` (one pass) against its definition, column by column: among the columns of
    the same stream, source and direction, the unwatched one first, then the smallest change, then
    the first."""
    from detectors.cusum import _Spec

    spec = _Spec(*([] for _ in range(11)))
    for group, src, delta, watch in columns:
        spec.add(src, 0, 1.0, 0.0, 0.1, group, delta=delta, watch=watch)
    expected = []
    for j, (g, s, d, _) in enumerate(columns):
        same = [k for k, (h, t, e, _) in enumerate(columns) if h == g and t == s and (e > 0) == (d > 0)]
        expected.append(min(same, key=lambda k: (columns[k][3], abs(columns[k][2]), k)))
    assert spec.returns() == expected
