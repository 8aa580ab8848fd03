"""Label-free (CBPE) estimates against the realised performance of seeded streams.

Bound used throughout: for a window of n predictions with realised accuracy a,
the estimate must lie within 3 binomial standard errors, 3·sqrt(a(1−a)/n)
(≈0.044 for n = 1,000 at a ≈ 0.7). The realised accuracy is a sum of
independent Bernoulli(q_i) outcomes whose variance Σq_i(1−q_i)/n² is at most
that binomial variance, so a correct estimator stays inside the bound with
probability above 99.7 % per window.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.base import DetectorError, Summary
from detectors.estimate import ESTIMATE_MEASUREMENT, ConfidenceBasedEstimate, ScoreCalibration
from detectors.performance import ClassificationPerformance, performance_points

WINDOW = 1000


def calibrated_stream(seed: int, n: int, a: float = 2.0, b: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Scores that are true probabilities: y ~ Bernoulli(p)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(a, b, n)
    return p, np.where(rng.random(n) < p, "1", "0").astype(object)


def decide(p: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return np.where(p >= threshold, "1", "0").astype(object)


def three_se(accuracy: float, n: int) -> float:
    return 3.0 * math.sqrt(accuracy * (1.0 - accuracy) / n)


@pytest.fixture(scope="module")
def binary_cbpe() -> ConfidenceBasedEstimate:
    p, y = calibrated_stream(0, 20_000)
    return ConfidenceBasedEstimate.fit(p, y, positive_label="1")


def test_one_window_within_three_standard_errors(binary_cbpe: ConfidenceBasedEstimate) -> None:
    p, y = calibrated_stream(1, WINDOW)
    pred = decide(p)
    estimate = binary_cbpe.fresh().update(p, pred).result()
    realised = float((pred == y).mean())
    assert estimate.n == WINDOW
    assert abs(estimate.metrics["accuracy"] - realised) <= three_se(realised, WINDOW)


def test_many_windows_unbiased(binary_cbpe: ConfidenceBasedEstimate) -> None:
    p, y = calibrated_stream(2, 300 * WINDOW)
    pred = decide(p)
    errors, inside = [], 0
    for lo in range(0, len(p), WINDOW):
        sl = slice(lo, lo + WINDOW)
        est = binary_cbpe.fresh().update(p[sl], pred[sl]).result().metrics["accuracy"]
        real = float((pred[sl] == y[sl]).mean())
        errors.append(est - real)
        inside += abs(est - real) <= three_se(real, WINDOW)
    # the mean of 300 errors has SE ≈ 0.0008; the 20k-event reference adds a fixed calibration
    # error of the same order, so "near 0" here means within 0.004 (observed: -0.0015)
    assert abs(float(np.mean(errors))) < 0.004
    assert inside >= 297


def test_calibration_corrects_overconfident_scores() -> None:
    """Raw scores sigmoid(3·logit p) are overconfident; CBPE calibrates them on reference data."""

    def overconfident(p: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + (1.0 / p - 1.0) ** 3)

    p_ref, y_ref = calibrated_stream(3, 20_000)
    cbpe = ConfidenceBasedEstimate.fit(overconfident(p_ref), y_ref, positive_label="1")
    naive = ConfidenceBasedEstimate(calibrations=[ScoreCalibration(x=(0.0, 1.0), y=(0.0, 1.0))],
                                    classes=("0", "1"), positive_label="1")
    p, y = calibrated_stream(4, 5 * WINDOW)
    raw = overconfident(p)
    pred = decide(raw)
    real = float((pred == y).mean())
    calibrated = cbpe.update(raw, pred).result().metrics["accuracy"]
    uncalibrated = naive.update(raw, pred).result().metrics["accuracy"]
    assert abs(calibrated - real) <= three_se(real, 5 * WINDOW)
    assert uncalibrated - real > 0.1  # taken at face value, overconfident scores promise far too much
    # the decision path by threshold gives the same expectation as explicit predictions
    by_threshold = cbpe.fresh().update(raw).result()
    assert by_threshold.metrics == pytest.approx(cbpe.result().metrics, rel=1e-12)


def test_tracks_a_drop_under_covariate_shift(binary_cbpe: ConfidenceBasedEstimate) -> None:
    """Scores drift towards 0.5 (less certain inputs): realised accuracy drops, the estimate follows."""
    p, y = calibrated_stream(5, WINDOW, a=6.0, b=6.0)
    pred = decide(p)
    real = float((pred == y).mean())
    est = binary_cbpe.fresh().update(p, pred).result().metrics["accuracy"]
    assert real < 0.65
    assert abs(est - real) <= three_se(real, WINDOW)


def test_precision_recall_f1_track_labelled_metrics(binary_cbpe: ConfidenceBasedEstimate) -> None:
    p, y = calibrated_stream(6, 20_000)
    pred = decide(p)
    est = binary_cbpe.fresh().update(p, pred).result().metrics
    real = ClassificationPerformance(positive_label="1").update(y, pred).result().metrics
    for name in ("accuracy", "precision", "recall", "f1"):
        assert est[name] == pytest.approx(real[name], abs=0.015), name


def test_multiclass_expected_accuracy_from_calibrated_probabilities() -> None:
    classes = ["a", "b", "c"]
    rng = np.random.default_rng(7)

    def stream(n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = rng.dirichlet([1.0, 1.0, 1.0], n)
        idx = np.minimum((rng.random(n)[:, None] > scores.cumsum(axis=1)).sum(axis=1), 2)
        return scores, np.array(classes, dtype=object)[idx]

    ref_scores, ref_y = stream(30_000)
    cbpe = ConfidenceBasedEstimate.fit(ref_scores, ref_y, classes=classes)
    errors = []
    for _ in range(40):
        scores, y = stream(WINDOW)
        pred = np.array(classes, dtype=object)[scores.argmax(axis=1)]
        result = cbpe.fresh().update(scores, pred).result()
        real = float((pred == y).mean())
        assert abs(result.metrics["accuracy"] - real) <= three_se(real, WINDOW)
        assert set(result.metrics) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
        errors.append(result.metrics["accuracy"] - real)
    assert abs(float(np.mean(errors))) < 0.01
    # default decision is the arg-max
    assert cbpe.fresh().update(scores).result().metrics == pytest.approx(result.metrics, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 800), cuts=st.lists(st.floats(0, 1), max_size=4))
def test_split_merge_restore_equals_whole(seed: int, n: int, cuts: list[float]) -> None:
    p_ref, y_ref = calibrated_stream(99, 2000)
    base = ConfidenceBasedEstimate.fit(p_ref, y_ref, positive_label="1", bins=10)
    p, _ = calibrated_stream(seed, n)
    p[::7] = np.nan  # unscored rows are skipped
    pred = decide(np.nan_to_num(p))
    whole = base.fresh().update(p, pred).result()
    bounds = [0, *sorted(int(c * n) for c in cuts), n]
    merged = base.fresh()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = base.fresh().update(p[lo:hi], pred[lo:hi])
        merged.merge(ConfidenceBasedEstimate.restore(json.loads(json.dumps(part.snapshot(), allow_nan=False))))
    got = merged.result()
    assert got.n == whole.n == int(np.isfinite(p).sum())
    for name, value in whole.metrics.items():
        assert got.metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), name


def test_points_and_contract(binary_cbpe: ConfidenceBasedEstimate) -> None:
    p, _ = calibrated_stream(8, 100)
    estimate = binary_cbpe.fresh().update(p, decide(p))
    assert isinstance(estimate, Summary)
    points = performance_points(estimate.result(), tags={"model_id": "m"}, time_ns=1, measurement=ESTIMATE_MEASUREMENT)
    assert {pt.measurement for pt in points} == {"performance_estimate"}
    assert {pt.tags["metric"] for pt in points} == {"accuracy", "precision", "recall", "f1"}
    assert all(pt.fields["n"] == 100 for pt in points)
    other = ConfidenceBasedEstimate.fit(*calibrated_stream(9, 1000), positive_label="1")
    with pytest.raises(DetectorError):
        estimate.merge(other)
    with pytest.raises(DetectorError):
        estimate.update(np.ones((3, 2)))
    empty = binary_cbpe.fresh().result()
    assert empty.n == 0 and all(math.isnan(v) for v in empty.metrics.values())


def test_calibration_is_monotone() -> None:
    rng = np.random.default_rng(10)
    scores = rng.random(5000)
    truth = lambda s: 0.1 + 0.8 * s**2  # noqa: E731
    outcomes = rng.random(5000) < truth(scores)
    cal = ScoreCalibration.fit(scores, outcomes, bins=25)
    assert all(b >= a for a, b in zip(cal.y, cal.y[1:]))
    grid = np.linspace(0, 1, 11)
    assert cal(grid) == pytest.approx(truth(grid), abs=0.06)  # noisiest at the extended ends
    assert ((cal(np.array([-5.0, 5.0])) >= 0) & (cal(np.array([-5.0, 5.0])) <= 1)).all()  # clipped
