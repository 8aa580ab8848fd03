"""CUSUM detections through the pipeline: the alert fires in the micro-batch holding the detecting
event, stamped with its time, and a run cut by snapshot → restore raises the same alerts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.quality import scenario_columns
from bench.world import MODEL_ID, encode, prediction_event, rows_of, write_workspace
from streams.config import Config
from streams.join import DictStore
from streams.pipeline import FEEDBACK, PREDICTION, Pipeline, RawMessage
from streams.runtime import pipeline_factory

CHANGE_AT = 6_500
START = 1_700_000_000.0
BATCH = 2000


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_workspace(tmp_path_factory.mktemp("cusum") / "ws", bootstrap="127.0.0.1:9", influx_url=None)


def batches(cols: dict[str, np.ndarray]) -> list[list[RawMessage]]:
    out: list[list[RawMessage]] = [[]]
    offset = 0
    for index, row in enumerate(rows_of(cols)):
        event = prediction_event(f"q{index}", START + index / 1000.0, row)
        out[-1].append(RawMessage(PREDICTION, encode(event), None, "predictions", 0, offset))
        offset += 1
        if cols["feedback"][index]:
            fb = {"prediction_id": event["prediction_id"], "model_id": MODEL_ID, "timestamp": event["timestamp"],
                  "label": int(cols["label"][index])}
            out[-1].append(RawMessage(FEEDBACK, encode(fb), None, "feedback", 0, offset))
            offset += 1
        if len(out[-1]) >= BATCH:
            out.append([])
    return [b for b in out if b]


def fresh(config: Path) -> Pipeline:
    return pipeline_factory(Config.load(str(config)))(DictStore())


def index_of(time_ns: int) -> int:
    return int(round((time_ns / 1e9 - START) * 1000))


def test_a_mean_shift_alerts_in_the_batch_of_the_detecting_event(config: Path) -> None:
    cols = scenario_columns("mean_shift", CHANGE_AT, 3000, seed=5)
    pipeline = fresh(config)
    found: list[tuple[int, Any, Any]] = []
    for k, batch in enumerate(batches(cols)):
        outcome = pipeline.process(batch)
        found.extend((k, alert, outcome) for alert in outcome.alerts if alert.state == "firing")
    # one change, one alert: the CUSUM fires the rule; the window's PSI of the same change adds nothing
    assert [a.rule for _, a, _ in found] == ["feature-drift"]
    k, alert, outcome = found[0]
    at = index_of(alert.window_end_ns)
    assert alert.window_start_ns == alert.window_end_ns
    assert CHANGE_AT <= at < CHANGE_AT + 500  # within the window the change falls in: it closes at 7,000
    # the batch that raised it holds the detecting prediction
    pids = {json.loads(m.value)["prediction_id"] for m in batches(cols)[k] if m.kind == PREDICTION}
    assert f"q{at}" in pids
    point = [p for p in outcome.points if p.time_ns == alert.window_end_ns]
    assert [(p.measurement, p.tags["feature"], p.tags["method"], p.fields["drift"]) for p in point] == \
        [("feature_drift", "num7", "cusum", True)]
    assert alert.value == point[0].fields["value"] >= 1.0 and alert.threshold == 1.0
    assert alert.detail["stream"] == "num7" and alert.detail["change"].startswith("+")  # a mean (not sd) rise
    # the windowed PSI sees the same change at the window's end: drift, and no second alert
    pipeline = fresh(config)
    psi = [p for batch in batches(cols) for p in pipeline.process(batch).points
           if p.measurement == "feature_drift" and p.tags.get("method") == "psi" and p.tags["feature"] == "num7"
           and p.fields["drift"]]
    assert psi and index_of(psi[0].time_ns) + 1 > at


def test_restart_from_a_snapshot_raises_the_same_alerts(config: Path) -> None:
    cols = scenario_columns("label_shift", CHANGE_AT, 3000, seed=6)
    messages = batches(cols)

    def alerts(pipeline: Pipeline, part: list[list[RawMessage]]) -> list[tuple[str, str, int, str]]:
        out = []
        for batch in part:
            out.extend((a.rule, a.state, a.window_end_ns, a.alert_id) for a in pipeline.process(batch).alerts)
        return out

    whole = alerts(fresh(config), messages)
    assert ("prediction-drift", "firing") in [(r, s) for r, s, _, _ in whole]
    for cut in (3, len(messages) // 2 + 1):
        first = fresh(config)
        head = alerts(first, messages[:cut])
        state = json.loads(json.dumps(first.snapshot()))
        second = fresh(config)
        second.restore(state)
        assert head + alerts(second, messages[cut:]) == whole
