"""Label shift against scipy and pandas on the same labels; points; bad labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from detectors.base import DetectorError
from detectors.label_shift import LabelShift, label_shift_points

REF = {"0": 6000, "1": 3000, "2": 1000}


def test_shares_and_jensenshannon_equal_oracles():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 2], 2000, p=[0.4, 0.4, 0.2])
    shift = LabelShift(REF)
    for part in np.array_split(labels, 5):
        shift.update(part)
    r = shift.result()
    ref = np.array([6000, 3000, 1000]) / 10_000
    cur = pd.Series(labels).value_counts(normalize=True).reindex([0, 1, 2]).to_numpy()
    assert [c.label for c in r.classes] == ["0", "1", "2"]
    assert [c.reference_share for c in r.classes] == pytest.approx(ref.tolist(), abs=1e-12)
    assert [c.current_share for c in r.classes] == pytest.approx(cur.tolist(), abs=1e-12)
    assert r.value == pytest.approx(distance.jensenshannon(ref, cur), abs=1e-9)
    assert r.drifted and r.n == 2000 and r.threshold == 0.1


def test_chisquare_equals_scipy():
    rng = np.random.default_rng(1)
    labels = rng.choice(["0", "1", "2"], 700, p=[0.58, 0.31, 0.11])
    r = LabelShift(REF, method="chisquare").update(labels).result()
    obs = pd.Series(labels).value_counts().reindex(["0", "1", "2"]).to_numpy()
    oracle = stats.chisquare(obs, np.array([0.6, 0.3, 0.1]) * obs.sum())
    assert r.statistic == pytest.approx(oracle.statistic, rel=1e-9)
    assert r.p_value == pytest.approx(oracle.pvalue, abs=1e-9)
    assert r.threshold == 0.05 and r.drifted == (oracle.pvalue < 0.05)


def test_unseen_missing_and_mixed_label_types():
    r = LabelShift({"1": 5, "0": 5}).update([1, 1.0, "1", None, float("nan"), "cat"]).result()
    assert r.n == 4 and r.n_missing == 2
    shares = {c.label: (c.reference_share, c.current_share) for c in r.classes}
    assert shares["1"] == (0.5, 0.75) and shares["cat"] == (0.0, 0.25) and shares["0"] == (0.5, 0.0)


def test_empty_window_and_points():
    r = LabelShift(REF).result()
    assert r.n == 0 and math.isnan(r.value) and not r.drifted
    assert all(math.isnan(c.current_share) for c in r.classes)
    points = label_shift_points(r, source="feedback", tags={"model_id": "m", "model_version": "1"}, time_ns=9)
    assert [p.tags["class"] for p in points] == ["0", "1", "2", "all"]
    assert all(p.tags["source"] == "feedback" and p.measurement == "label_shift" for p in points)
    assert set(points[0].fields) == {"reference_share", "current_share"}
    assert set(points[-1].fields) == {"value", "drift", "threshold", "n"}
    assert points[-1].fields["n"] == 0 and points[-1].fields["drift"] is False
    with pytest.raises(DetectorError):
        label_shift_points(r, source="oracle", tags={}, time_ns=0)


def test_merge_and_snapshot():
    rng = np.random.default_rng(2)
    a_labels, b_labels = rng.choice(["0", "1", "x"], 300), rng.choice(["0", "2", "y"], 200)
    whole = LabelShift(REF).update(np.concatenate([a_labels, b_labels]))
    merged = LabelShift(REF).update(a_labels).merge(LabelShift(REF).update(b_labels))
    assert merged.snapshot() == whole.snapshot() and merged.result() == whole.result()
    back = LabelShift.restore(json.loads(json.dumps(whole.snapshot())))
    assert back.result() == whole.result()
    with pytest.raises(DetectorError):
        LabelShift(REF).merge(LabelShift({"0": 1}))
    with pytest.raises(DetectorError):
        LabelShift(REF, method="ks")


def test_long_unseen_categories_are_kept_bounded_and_apart() -> None:
    # Two 50 KB values that share their first 10 KB, and a short one: counted apart, each
    # name at most MAX_KEY_LENGTH characters, the long ones named by the start and a hash.
    import hashlib

    from detectors.label_shift import MAX_KEY_LENGTH, CategoryCounts

    a, b = "q" * 10_000 + "a" * 40_000, "q" * 10_000 + "b" * 40_000
    counts = CategoryCounts(["web"]).update([a, b, a, "fax", "web"])
    assert all(len(key) <= MAX_KEY_LENGTH for key in counts.unseen)
    expected = {"q" * (MAX_KEY_LENGTH - 17) + "…" + hashlib.sha256(v.encode()).hexdigest()[:16]: n
                for v, n in ((a, 2), (b, 1))}
    assert counts.unseen == {**expected, "fax": 1}
    assert counts.n == 5 and counts.n_unseen == 4
    halves = CategoryCounts(["web"]).update([a, b]).merge(CategoryCounts(["web"]).update([a, "fax", "web"]))
    assert halves.snapshot() == counts.snapshot()
