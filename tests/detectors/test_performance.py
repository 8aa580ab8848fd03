"""Performance summaries against scikit-learn as the oracle, including merge and snapshot laws."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from detectors.base import DetectorError, Summary
from detectors.performance import (
    OTHER_LABEL,
    ClassificationPerformance,
    PerformanceResult,
    RegressionPerformance,
    performance_points,
)

TOL = 1e-9


def binary_pairs(seed: int, n: int, *, missing_scores: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels "0"/"1" drawn from calibrated scores; a noisy prediction; some scores absent."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2.0, 3.0, n)
    y = np.where(rng.random(n) < p, "1", "0").astype(object)
    pred = np.where(p + rng.normal(0, 0.15, n) >= 0.5, "1", "0").astype(object)
    scores = p.copy()
    scores[rng.random(n) < missing_scores] = np.nan
    return y, pred, scores


def multiclass_pairs(seed: int, n: int, classes: tuple[str, ...] = ("a", "b", "c")) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.ones(len(classes)), n)
    cum = scores.cumsum(axis=1)
    idx = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), len(classes) - 1)
    y = np.array(classes, dtype=object)[idx]
    noisy = scores + rng.normal(0, 0.1, scores.shape)
    pred = np.array(classes, dtype=object)[noisy.argmax(axis=1)]
    return y, pred, scores


def sklearn_binary(y: np.ndarray, pred: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    y_s, pred_s = y.astype(str), pred.astype(str)
    scored = ~np.isnan(scores)
    y01 = (y_s[scored] == "1").astype(int)
    p = scores[scored]
    zd = np.nan
    return {
        "accuracy": skm.accuracy_score(y_s, pred_s),
        "precision": skm.precision_score(y_s, pred_s, pos_label="1", zero_division=zd),
        "recall": skm.recall_score(y_s, pred_s, pos_label="1", zero_division=zd),
        "f1": skm.f1_score(y_s, pred_s, pos_label="1", zero_division=zd),
        "precision_macro": skm.precision_score(y_s, pred_s, average="macro", zero_division=zd),
        "recall_macro": skm.recall_score(y_s, pred_s, average="macro", zero_division=zd),
        "f1_macro": skm.f1_score(y_s, pred_s, average="macro", zero_division=zd),
        "roc_auc": skm.roc_auc_score(y01, p),
        "log_loss": skm.log_loss(y01, p, labels=[0, 1]),
        "brier": skm.brier_score_loss(y01, p, labels=[0, 1]),
        "ece": hand_ece(p, y01.astype(float), bins=10),
    }


def hand_ece(confidence: np.ndarray, hits: np.ndarray, *, bins: int) -> float:
    """ECE written out the textbook way: Σ_b (|b|/n) · |accuracy(b) − confidence(b)|."""
    total = 0.0
    n = len(confidence)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        in_bin = (confidence >= lo) & ((confidence < hi) if b < bins - 1 else (confidence <= hi))
        if in_bin.any():
            total += in_bin.sum() / n * abs(hits[in_bin].mean() - confidence[in_bin].mean())
    return total


def assert_metrics(got: PerformanceResult, want: dict[str, float], *, tol: float = TOL) -> None:
    for name, value in want.items():
        assert got.metrics[name] == pytest.approx(value, abs=tol, rel=tol), name


def test_binary_metrics_equal_sklearn() -> None:
    y, pred, scores = binary_pairs(1, 5000)
    perf = ClassificationPerformance(positive_label="1").update(y, pred, scores)
    result = perf.result()
    assert result.n == 5000
    assert result.n_for("roc_auc") == int((~np.isnan(scores)).sum())
    assert perf.auc_exact
    assert_metrics(result, sklearn_binary(y, pred, scores))


def test_multiclass_metrics_equal_sklearn() -> None:
    classes = ("a", "b", "c")
    y, pred, scores = multiclass_pairs(2, 3000, classes)
    result = ClassificationPerformance(classes=classes).update(y, pred, scores).result()
    y_s, pred_s = y.astype(str), pred.astype(str)
    top = scores.argmax(axis=1)
    want = {
        "accuracy": skm.accuracy_score(y_s, pred_s),
        "precision_macro": skm.precision_score(y_s, pred_s, average="macro", zero_division=np.nan),
        "recall_macro": skm.recall_score(y_s, pred_s, average="macro", zero_division=np.nan),
        "f1_macro": skm.f1_score(y_s, pred_s, average="macro", zero_division=np.nan),
        "roc_auc": skm.roc_auc_score(y_s, scores, multi_class="ovr", average="macro", labels=list(classes)),
        "log_loss": skm.log_loss(y_s, scores, labels=list(classes)),
        "brier": skm.brier_score_loss(y_s, scores, labels=list(classes)),
        "ece": hand_ece(scores[np.arange(len(y)), top], (np.array(classes)[top] == y_s).astype(float), bins=10),
    }
    assert_metrics(result, want)
    assert "precision" not in result.metrics


def test_multiclass_label_metrics_with_discovered_classes_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    labels = np.array(["x", "y", "z", "w"], dtype=object)
    y = labels[rng.integers(0, 4, 800)]
    pred = np.where(rng.random(800) < 0.6, y, labels[rng.integers(0, 3, 800)])  # "w" rarely predicted
    pred[:5] = "never-true"  # a class that is only predicted: precision 0, recall undefined
    result = ClassificationPerformance().update(y, pred).result()
    y_s, pred_s = y.astype(str), pred.astype(str)
    assert_metrics(
        result,
        {
            "accuracy": skm.accuracy_score(y_s, pred_s),
            "precision_macro": skm.precision_score(y_s, pred_s, average="macro", zero_division=np.nan),
            "recall_macro": skm.recall_score(y_s, pred_s, average="macro", zero_division=np.nan),
            "f1_macro": skm.f1_score(y_s, pred_s, average="macro", zero_division=np.nan),
        },
    )
    assert "roc_auc" not in result.metrics


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(40, 600),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=5),
    restore_at=st.integers(0, 6),
)
def test_binary_split_merge_and_restore_equal_sklearn(seed: int, n: int, cuts: list[float], restore_at: int) -> None:
    y, pred, scores = binary_pairs(seed, n)
    bounds = [0, *sorted(int(c * n) for c in cuts), n]
    parts = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = ClassificationPerformance(positive_label="1").update(y[lo:hi], pred[lo:hi], scores[lo:hi])
        if i == restore_at:
            part = ClassificationPerformance.restore(json.loads(json.dumps(part.snapshot())))
        parts.append(part)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(parts))
    merged = parts[order[0]]
    for j in order[1:]:
        merged.merge(parts[j])
    merged = ClassificationPerformance.restore(json.loads(json.dumps(merged.snapshot(), allow_nan=False)))
    want = sklearn_binary(y, pred, scores)
    got = merged.result()
    for name, value in want.items():
        if math.isnan(value):
            assert math.isnan(got.metrics[name]), name
        else:
            assert got.metrics[name] == pytest.approx(value, abs=TOL, rel=TOL), name


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(30, 400), cut=st.floats(0.0, 1.0))
def test_multiclass_merge_with_differently_discovered_classes(seed: int, n: int, cut: float) -> None:
    """Partitions that discover classes in different orders still merge exactly."""
    classes = ("a", "b", "c")
    y, pred, scores = multiclass_pairs(seed, n, classes)
    k = int(cut * n)
    left = ClassificationPerformance(classes=classes).update(y[k:], pred[k:], scores[k:])
    right = ClassificationPerformance(classes=classes).update(y[:k], pred[:k], scores[:k])
    whole = ClassificationPerformance(classes=classes).update(y, pred, scores).result()
    merged = left.merge(ClassificationPerformance.restore(right.snapshot())).result()
    assert merged.n == whole.n
    for name, value in whole.metrics.items():
        if math.isnan(value):
            assert math.isnan(merged.metrics[name])
        else:
            assert merged.metrics[name] == pytest.approx(value, abs=TOL, rel=TOL), name


def test_auc_falls_back_to_histogram_beyond_the_sample() -> None:
    y, pred, scores = binary_pairs(4, 20_000, missing_scores=0.0)
    perf = ClassificationPerformance(positive_label="1", auc_sample=1000)
    for lo in range(0, 20_000, 1000):
        perf.update(y[lo : lo + 1000], pred[lo : lo + 1000], scores[lo : lo + 1000])
    assert not perf.auc_exact
    exact = skm.roc_auc_score((y == "1").astype(int), scores)
    assert perf.result().metrics["roc_auc"] == pytest.approx(exact, abs=2e-4)
    assert perf.result().metrics["roc_auc"] != pytest.approx(exact, abs=1e-12)  # it is an approximation
    # the rest stays exact
    assert perf.result().metrics["log_loss"] == pytest.approx(skm.log_loss((y == "1").astype(int), scores), rel=TOL)
    # and the sample does not come back by merging
    small = ClassificationPerformance(positive_label="1", auc_sample=1000).update(y[:10], pred[:10], scores[:10])
    assert not small.merge(perf).auc_exact


def test_merge_overflows_exactly_when_the_union_would() -> None:
    y, pred, scores = binary_pairs(5, 1000, missing_scores=0.0)
    a = ClassificationPerformance(positive_label="1", auc_sample=1000).update(y[:600], pred[:600], scores[:600])
    b = ClassificationPerformance(positive_label="1", auc_sample=1000).update(y[600:], pred[600:], scores[600:])
    assert a.merge(b).auc_exact
    c = ClassificationPerformance(positive_label="1", auc_sample=999).update(y[:600], pred[:600], scores[:600])
    d = ClassificationPerformance(positive_label="1", auc_sample=999).update(y[600:], pred[600:], scores[600:])
    assert not c.merge(d).auc_exact


def test_undefined_metrics_are_nan_and_left_out_of_points() -> None:
    y = np.array(["0", "0", "0"], dtype=object)
    pred = np.array(["0", "0", "0"], dtype=object)
    result = ClassificationPerformance(positive_label="1").update(y, pred, np.array([0.1, 0.2, 0.3])).result()
    assert math.isnan(result.metrics["roc_auc"])
    assert math.isnan(result.metrics["precision"])
    assert math.isnan(result.metrics["recall"])
    assert result.metrics["accuracy"] == 1.0
    points = performance_points(result, tags={"model_id": "m", "model_version": "1"}, time_ns=5)
    names = {p.tags["metric"] for p in points}
    assert "roc_auc" not in names and "precision" not in names and "accuracy" in names
    for p in points:
        assert p.measurement == "performance"
        assert set(p.fields) == {"value", "n"} and isinstance(p.fields["n"], int)
        assert p.tags["model_id"] == "m" and p.time_ns == 5
    assert {p.tags["metric"]: p.fields["n"] for p in points}["log_loss"] == 3


def test_missing_labels_and_scores_are_skipped() -> None:
    y = np.array(["1", None, "0", "1"], dtype=object)
    pred = np.array(["1", "1", None, "0"], dtype=object)
    scores = np.array([0.9, 0.8, np.nan, 0.4])
    result = ClassificationPerformance(positive_label="1").update(y, pred, scores).result()
    assert result.n == 2
    assert result.n_for("brier") == 2  # row 1 lacks a label, row 2 a score
    assert result.metrics["brier"] == pytest.approx((0.1**2 + 0.6**2) / 2)


def test_vocabulary_is_bounded() -> None:
    y = np.array([f"c{i}" for i in range(100)], dtype=object)
    perf = ClassificationPerformance(max_classes=8).update(y, y)
    assert perf.result().n == 100
    snap = perf.snapshot()
    assert len(snap["labels"]) == 8 and snap["labels"][-1] == OTHER_LABEL


def test_invalid_input_raises() -> None:
    y = np.array(["1", "0"], dtype=object)
    with pytest.raises(DetectorError):
        ClassificationPerformance(positive_label="1").update(y, y[:1])
    with pytest.raises(DetectorError):
        ClassificationPerformance(positive_label="1").update(y, y, np.array([0.5, 1.5]))
    with pytest.raises(DetectorError):
        ClassificationPerformance().update(y, y, np.array([0.5, 0.5]))  # 1-D scores need a positive label
    with pytest.raises(DetectorError):
        ClassificationPerformance(positive_label="1").merge(ClassificationPerformance(positive_label="0"))


def test_snapshot_is_strict_json_and_summary_protocol() -> None:
    y, pred, scores = binary_pairs(6, 300)
    perf = ClassificationPerformance(positive_label="1").update(y, pred, scores)
    text = json.dumps(perf.snapshot(), allow_nan=False)
    restored = ClassificationPerformance.restore(json.loads(text))
    assert restored.result() == perf.result()
    assert isinstance(perf, Summary) and isinstance(RegressionPerformance(), Summary)
    empty = ClassificationPerformance(positive_label="1")
    json.dumps(empty.snapshot(), allow_nan=False)
    assert empty.result().n == 0 and math.isnan(empty.result().metrics["accuracy"])


# -------------------------------------------------------------------- regression
def regression_pairs(seed: int, n: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = offset + rng.normal(10.0, 3.0, n)
    return y, y + rng.normal(0.0, 1.0, n)


def sklearn_regression(y: np.ndarray, yhat: np.ndarray) -> dict[str, float]:
    return {
        "mae": skm.mean_absolute_error(y, yhat),
        "rmse": skm.root_mean_squared_error(y, yhat),
        "mape": skm.mean_absolute_percentage_error(y, yhat),
        "r2": skm.r2_score(y, yhat),
    }


def test_regression_metrics_equal_sklearn() -> None:
    y, yhat = regression_pairs(7, 4000)
    y[3] = 0.0  # MAPE's epsilon guard
    assert_metrics(RegressionPerformance().update(y, yhat).result(), sklearn_regression(y, yhat))


def test_regression_r2_is_accurate_far_from_zero() -> None:
    y, yhat = regression_pairs(8, 5000, offset=1e7)
    perf = RegressionPerformance()
    for lo in range(0, 5000, 700):
        perf.update(y[lo : lo + 700], yhat[lo : lo + 700])
    assert_metrics(perf.result(), sklearn_regression(y, yhat))


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 500),
    cuts=st.lists(st.floats(0.0, 1.0), max_size=5),
    restore_at=st.integers(0, 6),
)
def test_regression_split_merge_and_restore_equal_sklearn(seed: int, n: int, cuts: list[float], restore_at: int) -> None:
    y, yhat = regression_pairs(seed, n)
    bounds = [0, *sorted(int(c * n) for c in cuts), n]
    merged = RegressionPerformance()
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = RegressionPerformance().update(y[lo:hi], yhat[lo:hi])
        if i == restore_at:
            part = RegressionPerformance.restore(json.loads(json.dumps(part.snapshot(), allow_nan=False)))
        merged.merge(part)
    assert merged.result().n == n
    assert_metrics(merged.result(), sklearn_regression(y, yhat))


def test_regression_skips_nan_and_constant_target_r2_is_nan() -> None:
    result = RegressionPerformance().update(np.array([1.0, 1.0, np.nan]), np.array([1.0, 2.0, 3.0])).result()
    assert result.n == 2 and result.metrics["mae"] == 0.5
    assert math.isnan(result.metrics["r2"])
    names = [p.tags["metric"] for p in performance_points(result, tags={}, time_ns=0)]
    assert names == ["mae", "rmse", "mape"]


def test_tied_scores_count_one_half_on_both_auc_paths() -> None:
    """Scores on a grid of eighths: many ties. The exact sample and an 8-bin histogram
    (one score level per bin, so no extra ties) must both equal roc_auc_score."""
    rng = np.random.default_rng(12)
    level = rng.integers(0, 8, 3000)
    scores = level / 8.0
    y = np.where(rng.random(3000) < (level + 1) / 10.0, "1", "0").astype(object)
    pred = np.where(scores >= 0.5, "1", "0").astype(object)
    want = skm.roc_auc_score((y == "1").astype(int), scores)
    exact = ClassificationPerformance(positive_label="1").update(y, pred, scores)
    binned = ClassificationPerformance(positive_label="1", auc_bins=8, auc_sample=100).update(y, pred, scores)
    assert exact.auc_exact and not binned.auc_exact
    assert exact.result().metrics["roc_auc"] == pytest.approx(want, abs=TOL)
    assert binned.result().metrics["roc_auc"] == pytest.approx(want, abs=TOL)
