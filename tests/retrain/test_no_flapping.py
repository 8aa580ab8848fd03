"""One incident, one alert: a persisting change fires a rule once and keeps it firing; undoing the
change resolves it once (issue 13, "no flapping").

Pure: the CUSUM streams (:mod:`detectors.cusum`) and the policy engine (:mod:`retrain.policy`) fed
by hand the way stage 1 and stage 2 feed them — a detection's point at once
(:meth:`PolicyEngine.evaluate_instant`), every window's points at its close
(:meth:`PolicyEngine.evaluate`). The change is a weak rise of the error rate of labelled pairs,
between the CUSUM's two smallest tuned sizes: before the stream held its changed state it restarted
after each detection, detected the same change again only every few windows, and the rule resolved
and fired again in between (the demo's `concept-drift` on v2).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detectors.cusum import ReferenceCUSUM, cusum_detection_points, cusum_points
from detectors.profile import ReferenceProfile
from retrain.policy import PolicyEngine, Rule, default_rules

ERROR = 0.15
WINDOW = 200  # labelled pairs per window
BATCH = 100  # pairs per micro-batch
SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    n = 20_000
    prediction = (rng.random(n) < 0.6).astype(int)
    label = np.where(rng.random(n) < ERROR, 1 - prediction, prediction)
    frame = pd.DataFrame({"x": rng.normal(0.0, 1.0, n), "prediction": prediction, "label": label})
    return ReferenceProfile.from_frame(frame, model_id="m", target="label", prediction="prediction",
                                       features={"x": "numeric"})


def concept_rule() -> Rule:
    return next(rule for rule in default_rules() if rule.name == "concept-drift")


def run(profile: ReferenceProfile, phases: list[tuple[int, float]], seed: int) -> list[tuple[str, int]]:
    """(alert state, window index) of every alert over ``phases`` of (windows, error rate)."""
    cusum = ReferenceCUSUM.from_profile(profile, positive_label="1")
    engine = PolicyEngine([concept_rule()])
    rng = np.random.default_rng(seed)
    tags = {"model_id": "m", "model_version": "1"}
    out: list[tuple[str, int]] = []
    window = 0
    for windows, error in phases:
        for _ in range(windows):
            start = window * SECOND
            for k in range(WINDOW // BATCH):
                cusum.update_errors((rng.random(BATCH) < error).astype(float))
                for detection in cusum.new:
                    time_ns = start + (k * BATCH + detection.row + 1) * SECOND // WINDOW
                    point = cusum_detection_points(detection, tags=tags, time_ns=time_ns)
                    decision = engine.evaluate_instant(model_id="m", model_version="1", time_ns=time_ns,
                                                       points=[point])
                    out.extend((a.state, window) for a in decision.alerts)
            end = start + SECOND
            decision = engine.evaluate(model_id="m", model_version="1", window_start_ns=start, window_end_ns=end,
                                       points=cusum_points(cusum.result(), tags=tags, time_ns=end))
            out.extend((a.state, window) for a in decision.alerts)
            cusum.start_window()
            window += 1
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_weak_persisting_rise_of_the_error_rate_fires_once_and_resolves_once_when_undone(
        profile: ReferenceProfile, seed: int) -> None:
    # reference error rate 0.15 (sd 0.357): +0.25 sd is 0.239, +0.5 sd 0.329; the live rate rises to
    # 0.21 for 60 windows of 200 pairs, then goes back
    before, during, after = 10, 60, 20
    alerts = run(profile, [(before, ERROR), (during, 0.21), (after, ERROR)], seed)
    assert [state for state, _ in alerts] == ["firing", "resolved"], alerts
    fired, resolved = alerts[0][1], alerts[1][1]
    assert before <= fired < before + 20, alerts  # detected within 4,000 pairs of the rise
    # resolved after the undo: the way back is shown (h / KL(reference ‖ +0.125 sd): about 2,000
    # pairs at this error rate), then clear_after windows
    assert before + during <= resolved <= before + during + 20 + concept_rule().clear_after, alerts


def test_stationary_traffic_raises_nothing(profile: ReferenceProfile) -> None:
    assert run(profile, [(100, ERROR)], seed=4) == []
