"""Sequential River detectors on standardised batch means: pinned detections, no false alarms,
snapshot/restore, points, and the input River actually receives."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from river import drift as river_drift

from detectors.base import DetectorError, FeatureFrame
from detectors.profile import ReferenceProfile
from detectors.sequential import SCORE_STREAM, SequentialDrift, sequential_points

FEATURES = {"x": (10.0, 2.0), "y": (0.0, 1.0)}


def batches(seed: int, count: int, *, change_at: int | None = None, shift: float = 0.5, size: int = 1000):
    rng = np.random.default_rng(seed)
    for i in range(count):
        s = shift if change_at is not None and i >= change_at else 0.0
        yield FeatureFrame.build(
            numeric={"x": rng.normal(10.0 + s * 2.0, 2.0, size), "y": rng.normal(0.0, 1.0, size)}
        ), rng.beta(2, 5, size)


@pytest.mark.parametrize(
    "detector, params, expected",
    [("adwin", {}, [38]), ("page_hinkley", {}, [33]), ("kswin", {"window_size": 50, "stat_size": 10}, [53])],
)
def test_detections_pinned_on_seeded_stream(detector, params, expected):
    seq = SequentialDrift(FEATURES, detector=detector, **params)
    for frame, _ in batches(0, 60, change_at=30):
        seq.update(frame)
    streams = {s.stream: s for s in seq.result().streams}
    assert list(streams["x"].detections)[:1] == expected
    assert all(d >= 30 for d in streams["x"].detections)
    assert streams["y"].detections == ()
    assert streams["x"].n == 60_000 and streams["x"].n_batches == 60


def test_input_is_the_standardised_batch_mean():
    # Oracle: River's own ADWIN fed by hand with (mean - mu) / (sd / sqrt(n)).
    seq = SequentialDrift({"x": (10.0, 2.0)}, detector="adwin")
    oracle = river_drift.ADWIN(clock=1)
    for frame, _ in batches(1, 50, change_at=25):
        seq.update(frame)
        x = frame.numeric["x"]
        oracle.update((x.mean() - 10.0) / (2.0 / math.sqrt(x.size)))
    s = seq.result().streams[0]
    assert s.estimate == pytest.approx(oracle.estimation, abs=1e-12)
    assert s.n_batches == 50


def test_a_stream_shifted_from_the_start_is_not_a_change():
    # River's detectors look for a change *within* the stream; a stream that is off from the
    # first batch has no change to find (the windowed tests against the reference catch it).
    seq = SequentialDrift({"x": (10.0, 2.0)})
    for frame, _ in batches(6, 40, change_at=0):
        seq.update(frame)
    s = seq.result().streams[0]
    assert s.detections == () and s.estimate > 10


def test_stationary_stream_raises_nothing():
    seq = SequentialDrift(FEATURES, detector="adwin")
    for frame, _ in batches(2, 400):
        seq.update(frame)
    assert all(s.detections == () for s in seq.result().streams)


def test_from_profile_includes_score_stream_and_points():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"x": rng.normal(10, 2, 2000), "c": rng.choice(["a", "b"], 2000), "s": rng.beta(2, 5, 2000)})
    seq = SequentialDrift.from_profile(ReferenceProfile.from_frame(df, model_id="m", score="s"))
    assert set(seq.features) == {"x", SCORE_STREAM}
    for i, (frame, scores) in enumerate(batches(4, 50, change_at=10)):
        seq.update(frame, scores + (0.1 if i >= 10 else 0.0))
    r = seq.result()
    by = {s.stream: s for s in r.streams}
    assert by[SCORE_STREAM].detections and by["x"].detections
    points = sequential_points(r, tags={"model_id": "m", "model_version": "1"}, time_ns=7)
    fd = [p for p in points if p.measurement == "feature_drift"]
    pdp = [p for p in points if p.measurement == "prediction_drift"]
    assert len(fd) == 1 and fd[0].tags["feature"] == "x" and fd[0].tags["method"] == "adwin"
    assert set(fd[0].fields) == {"value", "drift", "threshold", "n"} and fd[0].fields["threshold"] == 0.002
    assert len(pdp) == 1 and pdp[0].tags["target"] == "score" and set(pdp[0].fields) == {"value", "drift", "n"}


def test_missing_and_nan_batches_are_skipped():
    seq = SequentialDrift(FEATURES)
    seq.update(FeatureFrame.build(numeric={"x": [np.nan, np.inf]}))
    seq.update(FeatureFrame.build())
    r = seq.result()
    assert r.batches == 2 and all(s.n_batches == 0 and math.isnan(s.estimate) for s in r.streams)
    constant = SequentialDrift({"k": (3.0, 0.0)})  # constant reference feature: std floored
    constant.update(FeatureFrame.build(numeric={"k": [3.0, 3.0]}))
    assert constant.result().streams[0].n == 2


def test_snapshot_restore_continues_identically_and_merge_refuses():
    seq = SequentialDrift(FEATURES, detector="page_hinkley")
    stream = list(batches(5, 50, change_at=20))
    for frame, _ in stream[:25]:
        seq.update(frame)
    back = SequentialDrift.restore(json.loads(json.dumps(seq.snapshot())))
    for frame, _ in stream[25:]:
        seq.update(frame)
        back.update(frame)
    assert back.result() == seq.result()
    with pytest.raises(DetectorError, match="order-dependent"):
        seq.merge(back)
    with pytest.raises(DetectorError):
        SequentialDrift(FEATURES, detector="cusum")
