"""Cohort performance (by prediction time): the oracle is a pandas groupby of the same labelled
pairs by prediction window, with scikit-learn's metrics and the hand formulas of the group rates.

Predictions and their late labels (0-45 s late, windows of 10 s) go through the worker's
:class:`~streams.pipeline.Pipeline` (both stages, the internal codec between them) in event-time
order, a micro-batch at a time. After *every* batch the latest figures written per series and
timestamp (InfluxDB keeps the last write) must equal the oracle on the pairs joined so far; at
the end, on all of them. The stage-2 snapshot taken mid-stream resumes the cohorts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from detectors.cohort import COHORT_FAIRNESS_METRICS as DETECTOR_COHORT_FAIRNESS
from detectors.points import Point
from detectors.profile import ReferenceProfile
from retrain.metrics import COHORT_FAIRNESS_METRICS, METRICS
from retrain.policy import rules_from_config
from streams.config import Config
from streams.evaluation import Evaluation
from streams.join import DictStore
from streams.pipeline import FEEDBACK, PREDICTION, RawMessage
from streams.runtime import pipeline_factory

WINDOW = 10.0
T0 = 1_700_000_000.0
NS = 1_000_000_000


def config(ttl: float = 3600.0, policies: list[dict[str, Any]] | None = None) -> Config:
    return Config.from_mapping({"join": {"ttl_seconds": ttl}, "models": [{
        "id": "m", "task": "binary", "features": {"x": "numeric"}, "attributes": ["sex"],
        "window": {"seconds": WINDOW}, "policies": policies or []}]}, environ={})


def traffic(seed: int, n: int = 1500, rate: float = 20.0) -> tuple[pd.DataFrame, list[tuple[float, int, bytes]]]:
    """Predictions over ``n / rate`` seconds; 80 % labelled 0-45 s later. Returns the pairs
    (prediction id, time, prediction, label, sex, label time) and the messages (time, kind, bytes)."""
    rng = np.random.default_rng(seed)
    times = T0 + np.arange(n) / rate
    prediction = (rng.random(n) < 0.55).astype(int)
    label = np.where(rng.random(n) < 0.3, 1 - prediction, prediction)
    sex = np.where(rng.random(n) < 0.4, "F", "M")
    labelled = rng.random(n) < 0.8
    score = np.where(prediction == 1, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.5, n))
    delay = rng.uniform(0.0, 45.0, n)
    messages: list[tuple[float, int, bytes]] = []
    for i in range(n):
        messages.append((times[i], 0, orjson.dumps({
            "prediction_id": f"p{i}", "model_id": "m", "model_version": "1", "timestamp": float(times[i]),
            "features": {"x": float(rng.normal())}, "prediction": int(prediction[i]), "score": float(score[i]),
            "attributes": {"sex": str(sex[i])}})))
        if labelled[i]:
            messages.append((times[i] + delay[i], 1, orjson.dumps({
                "prediction_id": f"p{i}", "model_id": "m", "timestamp": float(times[i] + delay[i]),
                "label": int(label[i])})))
    messages.sort(key=lambda m: (m[0], m[1]))
    pairs = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "time": times, "prediction": prediction,
                          "label": label, "sex": sex, "labelled": labelled, "label_time": times + delay})
    return pairs, messages


def raw(messages: list[tuple[float, int, bytes]]) -> list[RawMessage]:
    return [RawMessage(FEEDBACK if kind else PREDICTION, body, topic="feedback" if kind else "predictions",
                       offset=i) for i, (_, kind, body) in enumerate(messages)]


def latest(points: list[Point], store: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    """InfluxDB's rule: one value per series and timestamp, the last write wins."""
    for p in points:
        if p.measurement in ("cohort_performance", "cohort_fairness"):
            store[(p.measurement, tuple(sorted(p.tags.items())), p.time_ns)] = dict(p.fields)


def oracle(pairs: pd.DataFrame, joined: set[str], predictions: pd.Series) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Expected cohort figures per (measurement, tags, window end) from the pairs joined so far."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    done = pairs[pairs["id"].isin(joined)].assign(window=lambda f: np.floor((f["time"] - 0) / WINDOW).astype(int))
    tags = {"model_id": "m", "model_version": "1"}
    for window, rows in done.groupby("window"):
        end = int(round((window + 1) * WINDOW * NS))
        coverage = min(len(rows) / predictions[window], 1.0)
        y, p = rows["label"].astype(str), rows["prediction"].astype(str)
        for metric, value in (("accuracy", accuracy_score(y, p)),
                              ("precision", precision_score(y, p, pos_label="1", zero_division=np.nan)),
                              ("recall", recall_score(y, p, pos_label="1", zero_division=np.nan)),
                              ("f1", f1_score(y, p, pos_label="1", zero_division=np.nan))):
            if np.isfinite(value):
                out[("cohort_performance", tuple(sorted({**tags, "metric": metric}.items())), end)] = {
                    "value": value, "n": len(rows), "label_coverage": coverage,
                    "predictions": int(predictions[window])}
        for group, g in rows.groupby("sex"):
            tp = int(((g["label"] == 1) & (g["prediction"] == 1)).sum())
            fn = int(((g["label"] == 1) & (g["prediction"] == 0)).sum())
            fp = int(((g["label"] == 0) & (g["prediction"] == 1)).sum())
            tn = int(((g["label"] == 0) & (g["prediction"] == 0)).sum())
            rates = {"tpr": (tp, tp + fn), "fnr": (fn, tp + fn), "fpr": (fp, fp + tn), "precision": (tp, tp + fp),
                     "accuracy": (tp + tn, len(g))}
            for metric, (num, den) in rates.items():
                if den:
                    key = tuple(sorted({**tags, "attribute": "sex", "group": str(group), "metric": metric}.items()))
                    out[("cohort_fairness", key, end)] = {"value": num / den, "n": den, "label_coverage": coverage,
                                                          "predictions": int(predictions[window])}
    return out


def check(written: dict[tuple[Any, ...], dict[str, Any]], want: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    # every figure the oracle has, and no window or group it has not (the score-free pairs give
    # no roc_auc; the macro averages are the same confusion matrix's, checked elsewhere)
    checked = {"accuracy", "precision", "recall", "f1", "tpr", "fnr", "fpr"}
    assert {k for k in written if dict(k[1])["metric"] in checked} == set(want)
    assert {(k[0], dict(k[1]).get("group"), k[2]) for k in written} == {(k[0], dict(k[1]).get("group"), k[2])
                                                                        for k in want}
    for key, fields in want.items():
        assert key in written, key
        got = written[key]
        assert got["value"] == pytest.approx(fields["value"], abs=1e-12), key
        assert got["label_coverage"] == pytest.approx(fields["label_coverage"], abs=1e-12), key
        assert got["predictions"] == fields["predictions"], key
        if key[0] == "cohort_performance":
            assert got["n"] == fields["n"], key
        else:
            assert got["n"] == fields["n"] or got["n"] >= fields["n"], key  # group n: the pairs behind the rate


def reference(seed: int = 9, n: int = 3000) -> ReferenceProfile:
    """A reference with scores and labels, so the windows carry a label-free estimate (CBPE)."""
    rng = np.random.default_rng(seed)
    prediction = (rng.random(n) < 0.55).astype(int)
    frame = pd.DataFrame({"x": rng.normal(size=n), "sex": np.where(rng.random(n) < 0.4, "F", "M"),
                          "prediction": prediction,
                          "score": np.where(prediction == 1, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.5, n)),
                          "label": np.where(rng.random(n) < 0.3, 1 - prediction, prediction)})
    return ReferenceProfile.from_frame(frame, model_id="m", features={"x": "numeric"}, target="label",
                                       prediction="prediction", score="score", attributes=["sex"])


def test_cohort_figures_equal_a_groupby_by_prediction_window_after_every_late_label_update() -> None:
    pairs, messages = traffic(seed=1, n=1000)
    predictions = pairs.assign(window=np.floor(pairs["time"] / WINDOW).astype(int)).groupby("window").size()
    cfg = config()
    pipeline = pipeline_factory(cfg, {"m": Evaluation(cfg.models["m"], reference())})(DictStore())
    estimated = 0
    written: dict[tuple[Any, ...], dict[str, Any]] = {}
    joined: set[str] = set()
    closed_ends: set[int] = set()
    updates = 0
    batch = raw(messages)
    for lo in range(0, len(batch), 60):
        chunk = batch[lo:lo + 60]
        outcome = pipeline.process(chunk)
        before = dict(written)
        latest(outcome.points, written)
        updates += sum(1 for k in written if k in before and written[k] != before[k])
        joined |= {p.prediction.prediction_id for p in outcome.pairs}
        closed_ends |= {w.end_ns for w in outcome.windows}
        # at its close a cohort below 0.8 coverage carries the window's label-free estimate beside it
        for window in outcome.windows:
            guess = {p.tags["metric"]: p.fields["value"] for p in window.points
                     if p.measurement == "performance_estimate"}
            for p in window.points:
                if p.measurement == "cohort_performance":
                    want_estimate = guess.get(p.tags["metric"]) if p.fields["label_coverage"] < 0.8 else None
                    assert p.fields.get("estimate") == want_estimate, p
                    estimated += "estimate" in p.fields
        # every closed window's cohort equals the oracle on the pairs joined so far
        want = {k: v for k, v in oracle(pairs, joined, predictions).items() if k[2] in closed_ends}
        check({k: v for k, v in written.items() if k[2] in closed_ends}, want)
    assert updates > 50  # late labels did rewrite closed windows
    assert estimated > 10
    latest(pipeline.flush().points, written)
    want = oracle(pairs, set(pairs.loc[pairs["labelled"], "id"]), predictions)
    check(written, want)
    # the arrival-time performance of the same windows is another figure (mixed cohorts)
    assert len({k[2] for k in want}) == len(predictions)


def test_the_stage_2_snapshot_resumes_the_cohorts_and_they_expire_after_the_ttl() -> None:
    pairs, messages = traffic(seed=2, n=800)
    cfg = config(ttl=30.0)
    make = pipeline_factory(cfg, {"m": Evaluation(cfg.models["m"], None)})
    whole, resumed = make(DictStore()), None
    batch = raw(messages)
    a: dict[tuple[Any, ...], dict[str, Any]] = {}
    b: dict[tuple[Any, ...], dict[str, Any]] = {}
    cut = len(batch) // 2
    store = DictStore()
    first = make(store)
    for lo in range(0, len(batch), 50):
        chunk = batch[lo:lo + 50]
        latest(whole.process(chunk).points, a)
        if lo < cut:
            latest(first.process(chunk).points, b)
            if lo + 50 >= cut:
                state = orjson.loads(orjson.dumps(first.snapshot()))
                resumed = make(store)
                resumed.restore(state)
        else:
            assert resumed is not None
            latest(resumed.process(chunk).points, b)
    latest(whole.flush().points, a)
    latest(resumed.flush().points, b)  # type: ignore[union-attr]
    assert a == b and a
    # memory: a cohort is kept until its window's end + the TTL, by event time
    cohorts = whole.windows["m"].versions["1"].cohorts
    end = max(pairs["time"].max(), pairs.loc[pairs["labelled"], "label_time"].max())
    assert cohorts == {} or min(cohorts) * WINDOW + WINDOW + 30.0 >= end - WINDOW
    mid = orjson.loads(orjson.dumps(first.snapshot()))["windows"]["m"]["versions"]["1"]["cohorts"]
    assert mid and all(int(k) * WINDOW + WINDOW + 30.0 >= T0 for k in mid)
    # labels later than the TTL after their window do not rewrite it: the cohorts bounded by it
    assert len(mid) <= (30.0 + 45.0) / WINDOW + 3


def test_a_cohort_rule_waits_for_its_coverage() -> None:
    policies = [{"name": "cohort-accuracy", "measurement": "cohort_performance", "tags": {"metric": "accuracy"},
                 "op": "<", "threshold": 0.9, "min_coverage": 0.75, "fire_after": 2}]
    pairs, messages = traffic(seed=3, n=1200)
    cfg = config(policies=policies)
    pipeline = pipeline_factory(cfg, {"m": Evaluation(cfg.models["m"], None)})(DictStore())
    alerts = []
    written: dict[tuple[Any, ...], dict[str, Any]] = {}
    for lo in range(0, len(messages), 60):
        outcome = pipeline.process(raw(messages)[lo:lo + 60])
        latest(outcome.points, written)
        for alert in outcome.alerts:
            # fired on windows whose labels had reached the coverage (accuracy ~0.7 < 0.9)
            coverage = written[("cohort_performance", (("metric", "accuracy"), ("model_id", "m"),
                                                       ("model_version", "1")), alert.window_end_ns)]
            alerts.append((alert.state, coverage["label_coverage"]))
    assert [state for state, _ in alerts] == ["firing"]
    assert all(c >= 0.75 for _, c in alerts)
    # the policy validator knows the cohort measurements and refuses min_coverage elsewhere
    with pytest.raises(ValueError, match="min_coverage applies to the cohort measurements"):
        rules_from_config([{**policies[0], "measurement": "performance"}])
    with pytest.raises(ValueError, match="cannot be combined"):
        rules_from_config([{"name": "mixed", "conditions": [
            {"measurement": "performance", "op": "<", "threshold": 0.5},
            {"measurement": "cohort_performance", "op": "<", "threshold": 0.5}]}])
    assert DETECTOR_COHORT_FAIRNESS == COHORT_FAIRNESS_METRICS
    assert "label_coverage" in METRICS["cohort_performance"][1] and "estimate" in METRICS["cohort_performance"][1]


def test_replay_writes_the_final_cohort_figures(tmp_path: Path) -> None:
    from streams.replay import run_replay

    pairs, messages = traffic(seed=4, n=600)
    cfg_path = tmp_path / "driftwarden.yaml"
    import yaml
    cfg_path.write_text(yaml.safe_dump({"kafka": {"bootstrap": "127.0.0.1:9"}, "models": [{
        "id": "m", "task": "binary", "features": {"x": "numeric"}, "attributes": ["sex"],
        "window": {"seconds": WINDOW}, "policies": []}]}), encoding="utf-8")
    preds = tmp_path / "predictions.jsonl"
    feedback = tmp_path / "feedback.jsonl"
    preds.write_bytes(b"".join(body + b"\n" for _, kind, body in messages if kind == 0))
    feedback.write_bytes(b"".join(body + b"\n" for _, kind, body in messages if kind == 1))
    assert run_replay(str(cfg_path), str(preds), str(feedback), str(tmp_path / "out")) == 0
    written: dict[tuple[Any, ...], dict[str, Any]] = {}
    for line in (tmp_path / "out" / "metrics.lp").read_text().splitlines():
        point = _parse(line)
        if point is not None:
            latest([point], written)
    predictions = pairs.assign(window=np.floor(pairs["time"] / WINDOW).astype(int)).groupby("window").size()
    check(written, oracle(pairs, set(pairs.loc[pairs["labelled"], "id"]), predictions))


def _parse(line: str) -> Point | None:
    """A line-protocol line of a cohort point (no escaped characters in these tags)."""
    head, fields, time_ns = line.rsplit(" ", 2) if line.count(" ") >= 2 else (line, "", "0")
    measurement, *tags = head.split(",")
    if measurement not in ("cohort_performance", "cohort_fairness"):
        return None
    parsed: dict[str, Any] = {}
    for item in fields.split(","):
        key, value = item.split("=", 1)
        parsed[key] = int(value[:-1]) if value.endswith("i") else float(value)
    return Point(measurement, dict(t.split("=", 1) for t in tags), parsed, int(time_ns))
