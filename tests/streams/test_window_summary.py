"""The demo's one-line window summary names the model's own attributes (regression: it read the
demo's ``sex`` attribute by name, so any other model showed ``parity ratio (sex) -``)."""

from __future__ import annotations

from types import SimpleNamespace

from detectors.points import Point
from streams.actions import window_summary


def _ratio(attribute: str, value: float) -> Point:
    return Point("fairness", {"model_id": "m", "model_version": "1", "attribute": attribute, "group": "all",
                              "metric": "demographic_parity_ratio"}, {"value": value, "n": 100}, 0)


def test_the_lowest_parity_ratio_is_shown_with_its_attribute() -> None:
    window = SimpleNamespace(model_id="m", model_version="1", end_ns=0, n=10,
                             points=[_ratio("region", 0.91), _ratio("age_band", 0.72), _ratio("region*age_band", 0.8)])
    line = window_summary(window)
    assert "parity ratio (age_band) 0.720" in line and "sex" not in line
    assert "parity ratio -" in window_summary(SimpleNamespace(model_id="m", model_version="1", end_ns=0, n=0,
                                                              points=[]))
