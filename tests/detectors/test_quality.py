"""Data quality counts against a direct numpy/pandas computation on the same data."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from detectors.base import DetectorError, FeatureFrame
from detectors.quality import DataQualitySummary, quality_points
from detectors.profile import ReferenceProfile


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    return ReferenceProfile.from_frame(
        pd.DataFrame({"x": rng.uniform(0, 10, 1000), "c": rng.choice(["a", "b", "c"], 1000)}), model_id="m"
    )


def messy_frame(rng: np.random.Generator, n: int) -> tuple[FeatureFrame, np.ndarray, np.ndarray, np.ndarray]:
    x = rng.uniform(-2, 12, n)
    x[rng.random(n) < 0.1] = np.nan
    x[rng.random(n) < 0.05] = np.inf
    x[rng.random(n) < 0.05] = -np.inf
    x_err = rng.random(n) < 0.05
    x[x_err] = np.nan
    c = rng.choice(["a", "b", "c", "d", "e"], n).astype(object)
    c[rng.random(n) < 0.1] = None
    c_err = rng.random(n) < 0.05
    c[c_err] = None
    frame = FeatureFrame(numeric={"x": x}, categorical={"c": c}, type_errors={"x": x_err, "c": c_err})
    return frame, x, c, np.stack([x_err, c_err])


def test_counts_equal_direct_computation(profile):
    rng = np.random.default_rng(1)
    q = DataQualitySummary(profile)
    xs, cs, errs = [], [], []
    for n in (0, 17, 500, 1):
        frame, x, c, err = messy_frame(rng, n)
        q.update(frame)
        xs.append(x), cs.append(c), errs.append(err)
    x, c, err = np.concatenate(xs), np.concatenate(cs), np.concatenate(errs, axis=1)
    n = x.size
    lo, hi = profile.numeric["x"].min, profile.numeric["x"].max
    expected = {
        ("x", "missing"): int((np.isnan(x) & ~err[0]).sum()),
        ("x", "out_of_range"): int(((x < lo) | (x > hi)).sum()),
        ("x", "type_error"): int(err[0].sum()),
        ("c", "missing"): int((pd.isna(c) & ~err[1]).sum()),
        ("c", "unseen_category"): int(pd.Series(c).isin(["d", "e"]).sum()),
        ("c", "type_error"): int(err[1].sum()),
    }
    r = q.result()
    assert r.n == n
    assert {(k.feature, k.check): k.count for k in r.checks} == expected
    for k in r.checks:
        assert k.rate == pytest.approx(k.count / n)
    assert expected[("x", "out_of_range")] >= int(np.isinf(x).sum()) > 0


def test_missing_column_and_empty_window(profile):
    q = DataQualitySummary(profile)
    r = q.result()
    assert r.n == 0 and all(math.isnan(k.rate) and k.count == 0 for k in r.checks)
    q.update(FeatureFrame.build(numeric={"x": [1.0, 2.0]}))
    assert q.result().get("c", "missing").count == 2
    with pytest.raises(KeyError):
        q.result().get("x", "unseen_category")


def test_reference_without_values_marks_everything_out_of_range():
    prof = ReferenceProfile.from_frame(pd.DataFrame({"x": [np.nan, np.nan]}), model_id="m")
    r = DataQualitySummary(prof).update(FeatureFrame.build(numeric={"x": [1.0, np.nan]})).result()
    assert r.get("x", "out_of_range").count == 1 and r.get("x", "missing").count == 1


def test_merge_snapshot_and_points(profile):
    rng = np.random.default_rng(2)
    frames = [messy_frame(rng, 100)[0] for _ in range(3)]
    whole = DataQualitySummary(profile)
    for f in frames:
        whole.update(f)
    a = DataQualitySummary(profile).update(frames[0])
    b = DataQualitySummary(profile).update(frames[1]).update(frames[2])
    assert a.merge(b).result() == whole.result()
    back = DataQualitySummary.restore(json.loads(json.dumps(whole.snapshot())))
    assert back.result() == whole.result()
    lean = whole.snapshot(reference=False)
    assert DataQualitySummary.restore(lean, profile=profile).result() == whole.result()
    with pytest.raises(DetectorError):
        DataQualitySummary.restore(lean)
    points = quality_points(whole.result(), tags={"model_id": "m"}, time_ns=5)
    assert len(points) == 6
    assert all(p.measurement == "data_quality" and set(p.fields) == {"rate", "count"} for p in points)
    assert {p.tags["check"] for p in points} == {"missing", "out_of_range", "unseen_category", "type_error"}
