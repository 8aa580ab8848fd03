"""Alert and retrain-job events: wire format, round trips, deterministic ids."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors.points import Point
from retrain.events import (
    Alert,
    EventError,
    Observation,
    RetrainJob,
    RetrainTrigger,
    alert_id,
    format_time,
    job_id,
    parse_time,
)
from retrain.policy import Condition, PolicyEngine, Rule

T0 = 1_800_000_000_000_000_000
MINUTE = 60_000_000_000

ALERT_FIELDS = {"alert_id", "model_id", "model_version", "rule", "state", "severity", "metric", "value",
                "threshold", "window_start", "window_end"}
JOB_FIELDS = {"job_id", "model_id", "model_version", "reason", "rules", "metrics", "window_start",
              "window_end", "data", "report_path"}


def make_alert(**overrides) -> Alert:
    base = dict(
        alert_id=alert_id(model_id="credit-risk", model_version="3", rule="feature-drift", state="firing",
                          window_start_ns=T0, window_end_ns=T0 + MINUTE),
        model_id="credit-risk", model_version="3", rule="feature-drift", state="firing", severity="warning",
        metric="feature_drift", value=0.31, threshold=0.2, window_start_ns=T0, window_end_ns=T0 + MINUTE,
        since_ns=T0 - MINUTE, incident_id="x", retrain=False, message="drift on age",
        values=(Observation(measurement="feature_drift", field="drift", tags={"feature": "age", "method": "psi"},
                            value=True, op="==", threshold=True, score=0.31, point_threshold=0.2, n=1000),),
    )
    base.update(overrides)
    return Alert(**base)


def make_trigger(**overrides) -> RetrainTrigger:
    base = dict(model_id="credit-risk", model_version="3", rules=["multi-feature-drift"], reason="drift",
                metrics={"feature_drift.value{feature=age}": 0.31}, window_start_ns=T0, window_end_ns=T0 + MINUTE)
    base.update(overrides)
    return RetrainTrigger.create(**base)


# -- ids -----------------------------------------------------------------------------------------


def test_alert_id_is_deterministic_and_depends_on_every_part():
    args = dict(model_id="m", model_version="1", rule="r", state="firing", window_start_ns=T0,
                window_end_ns=T0 + MINUTE)
    assert alert_id(**args) == alert_id(**dict(args))
    for key, other in [("model_id", "m2"), ("model_version", "2"), ("rule", "r2"), ("state", "resolved"),
                       ("window_start_ns", T0 + 1), ("window_end_ns", T0 + 2 * MINUTE)]:
        assert alert_id(**{**args, key: other}) != alert_id(**args), key


def test_job_id_ignores_rule_order_and_depends_on_the_window():
    a = job_id(model_id="m", model_version="1", rules=["b", "a"], window_start_ns=T0, window_end_ns=T0 + MINUTE)
    b = job_id(model_id="m", model_version="1", rules=["a", "b"], window_start_ns=T0, window_end_ns=T0 + MINUTE)
    c = job_id(model_id="m", model_version="1", rules=["a", "b"], window_start_ns=T0 + MINUTE,
               window_end_ns=T0 + 2 * MINUTE)
    d = job_id(model_id="m", model_version="1", rules=["a"], window_start_ns=T0, window_end_ns=T0 + MINUTE)
    assert a == b
    assert len({a, c, d}) == 3


def test_ids_are_pinned():
    """Ids survive restarts and upgrades: the hash inputs and namespace never change."""
    assert job_id(model_id="credit-risk", model_version="3", rules=["multi-feature-drift"], window_start_ns=T0,
                  window_end_ns=T0 + MINUTE) == make_trigger().job_id
    assert make_trigger().job_id == "f683025e-5414-5766-836a-9c6909fab9d3"


def test_trigger_id_ignores_reason_and_metrics():
    assert make_trigger().job_id == make_trigger(reason="other", metrics={}).job_id
    assert make_trigger().job_id != make_trigger(window_end_ns=T0 + 2 * MINUTE).job_id


def test_engine_ids_match_the_public_id_functions():
    rule = Rule(name="acc", retrain=True,
                conditions=[Condition(measurement="performance", op="<", threshold=0.8)])
    point = Point("performance", {"model_id": "m", "model_version": "1", "metric": "accuracy"},
                  {"value": 0.5, "n": 100}, T0 + MINUTE)
    decision = PolicyEngine([rule]).evaluate(model_id="m", model_version="1", window_start_ns=T0,
                                             window_end_ns=T0 + MINUTE, points=[point])
    (alert,), (trigger,) = decision.alerts, decision.jobs
    assert alert.alert_id == alert_id(model_id="m", model_version="1", rule="acc", state="firing",
                                      window_start_ns=T0, window_end_ns=T0 + MINUTE)
    assert trigger.job_id == job_id(model_id="m", model_version="1", rules=["acc"], window_start_ns=T0,
                                    window_end_ns=T0 + MINUTE)


# -- times -------------------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=4_000_000_000 * 1_000_000_000))
def test_time_round_trips_to_the_nanosecond(ns):
    text = format_time(ns)
    assert text.endswith("Z")
    assert parse_time(text) == ns


@pytest.mark.parametrize(
    "text, ns",
    [
        ("2027-01-15T08:00:00Z", T0),
        ("2027-01-15T09:00:00+01:00", T0),
        ("2027-01-15T08:00:00.5Z", T0 + 500_000_000),
    ],
)
def test_parse_time_accepts_offsets_and_fractions(text, ns):
    assert format_time(T0) == "2027-01-15T08:00:00Z"
    assert parse_time(text) == ns


def test_parse_time_rejects_garbage():
    with pytest.raises(ValueError):
        parse_time("yesterday")


# -- alerts ------------------------------------------------------------------------------------------------


def test_alert_to_dict_has_the_design_fields():
    d = make_alert().to_dict()
    assert ALERT_FIELDS <= set(d)
    assert list(d)[: len(ALERT_FIELDS)] == ["alert_id", "model_id", "model_version", "rule", "state", "severity",
                                            "metric", "value", "threshold", "window_start", "window_end"]
    assert d["window_start"] == "2027-01-15T08:00:00Z"
    assert d["window_end"] == "2027-01-15T08:01:00Z"
    assert d["values"][0]["tags"] == {"feature": "age", "method": "psi"}
    assert (d["value"], d["threshold"], d["state"]) == (0.31, 0.2, "firing")


def test_alert_round_trips_through_json():
    alert = make_alert()
    text = alert.to_json()
    assert json.loads(text) == alert.to_dict()
    assert Alert.from_json(text) == alert
    assert Alert.from_dict(alert.to_dict()) == alert


def test_alert_with_non_finite_value_is_valid_json():
    d = json.loads(make_alert(value=float("nan"), values=()).to_json())
    assert d["value"] is None


def test_detail_names_a_fairness_stream_with_or_without_its_group():
    def fairness(**tags: str) -> Observation:
        return Observation(measurement="fairness", field="value", tags={"metric": "selection_rate", **tags},
                           value=0.4, op=">", threshold=0.3, n=200)

    with_group = fairness(attribute="sex", group="f").detail()
    assert (with_group["stream"], with_group["series"]) == (
        "sex=f", "fairness.value{attribute=sex,group=f,metric=selection_rate}")
    # a point with the attribute but no group tag (a rule's or a point's own tags): the attribute alone
    without = fairness(attribute="sex").detail()
    assert without == {"series": "fairness.value{attribute=sex,metric=selection_rate}", "stream": "sex",
                       "method": None, "value": 0.4, "threshold": 0.3, "condition": "value > 0.3", "n": 200}


def test_alert_rejects_bad_state_and_severity():
    with pytest.raises(EventError, match="state"):
        make_alert(state="pending")
    with pytest.raises(EventError, match="severity"):
        make_alert(severity="urgent")


def test_alert_from_dict_accepts_only_the_design_fields():
    minimal = {k: v for k, v in make_alert().to_dict().items() if k in ALERT_FIELDS}
    alert = Alert.from_dict(minimal)
    assert alert.since_ns == alert.window_start_ns
    assert alert.incident_id == alert.alert_id
    assert alert.values == ()


@pytest.mark.parametrize("key", sorted(ALERT_FIELDS - {"value", "threshold"}))
def test_alert_from_dict_names_a_missing_field(key):
    data = make_alert().to_dict()
    del data[key]
    with pytest.raises(EventError, match=repr(key)):
        Alert.from_dict(data)


def test_alert_from_dict_names_a_bad_time():
    data = make_alert().to_dict()
    data["window_end"] = "soon"
    with pytest.raises(EventError, match="window_end"):
        Alert.from_dict(data)


def test_alert_from_json_rejects_non_objects():
    with pytest.raises(EventError, match="not JSON"):
        Alert.from_json("{")
    with pytest.raises(EventError, match="object"):
        Alert.from_json("[]")


# -- jobs -----------------------------------------------------------------------------------------------------


def test_job_to_dict_has_the_design_fields():
    job = make_trigger().to_job(report_path="reports/credit-risk-3.html", data_from_ns=T0 - 60 * MINUTE,
                                offsets={1: (100, 900), 0: (5, 50)})
    d = job.to_dict()
    assert JOB_FIELDS <= set(d)
    assert d["data"] == {"from": "2027-01-15T07:00:00Z", "to": "2027-01-15T08:01:00Z"}
    assert d["offsets"] == {"0": [5, 50], "1": [100, 900]}
    assert d["rules"] == ["multi-feature-drift"]
    assert d["metrics"] == {"feature_drift.value{feature=age}": 0.31}
    assert d["report_path"] == "reports/credit-risk-3.html"
    assert d["replaces_version"] == "3"


def test_job_round_trips_through_json():
    job = make_trigger().to_job(report_path="r.html", offsets={0: (1, 2)}, replaces_version="3")
    assert RetrainJob.from_json(job.to_json()) == job
    bare = make_trigger().to_job()
    assert bare.to_dict()["offsets"] is None and bare.to_dict()["report_path"] is None
    assert RetrainJob.from_json(bare.to_json()) == bare


def test_job_drops_non_finite_metrics():
    job = make_trigger(metrics={"a": float("inf"), "b": 1.0}).to_job()
    assert json.loads(job.to_json())["metrics"] == {"b": 1.0}


@pytest.mark.parametrize("key", ["job_id", "model_id", "model_version", "rules", "metrics", "window_start",
                                 "window_end", "data"])
def test_job_from_dict_names_a_missing_field(key):
    data = make_trigger().to_job().to_dict()
    del data[key]
    with pytest.raises(EventError, match=repr(key)):
        RetrainJob.from_dict(data)


def test_job_from_dict_rejects_bad_offsets_and_data():
    data = make_trigger().to_job().to_dict()
    with pytest.raises(EventError, match="offsets"):
        RetrainJob.from_dict({**data, "offsets": {"0": "all"}})
    with pytest.raises(EventError, match="'from'"):
        RetrainJob.from_dict({**data, "data": {"to": data["window_end"]}})


def test_model_version_given_as_number_is_read_as_text():
    data = make_trigger().to_job().to_dict()
    assert RetrainJob.from_dict({**data, "model_version": 3}).model_version == "3"
