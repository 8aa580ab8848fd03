"""One metric table: every ``monitor`` stat the worker writes is in :mod:`retrain.metrics`, and a
policy may name any of them (regression: ``evicted`` and ``internal_errors`` were written but not
in the table, so a policy on ``monitor{stat=evicted}`` was refused)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from retrain.metrics import MONITOR_STATS
from retrain.policy import rules_from_config
from streams.config import Config
from streams.evaluation import Evaluation
from streams.join import DictStore
from streams.pipeline import FEEDBACK, PREDICTION, RawMessage
from streams.runtime import pipeline_factory
from tests.conftest import REPO


@pytest.mark.parametrize("stat", sorted(MONITOR_STATS))
def test_a_policy_may_name_every_monitor_stat(stat: str) -> None:
    (rule,) = rules_from_config([{"name": f"on-{stat}", "measurement": "monitor", "tags": {"stat": stat},
                                  "field": "value", "op": ">", "threshold": 0}])
    assert rule.name == f"on-{stat}"


@pytest.mark.expects_internal_errors  # a detector made to fail once
def test_the_stats_a_pipeline_writes_are_all_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that evicts, rejects input of no model and hits a detector failure writes only
    stats of the table (and writes those counters: the test would not see a missing one)."""
    cfg = Config.from_mapping({"join": {"max_entries": 3}, "models": [{
        "id": "m", "task": "binary", "features": {"x": "numeric"}, "window": {"events": 5}}]}, environ={})
    pipeline = pipeline_factory(cfg, {"m": Evaluation(cfg.models["m"], None)})(DictStore())
    points: list[Any] = []
    for i in range(12):
        event = (b'{"prediction_id": "p%d", "model_id": "m", "model_version": "1", "timestamp": %d, '
                 b'"features": {"x": 1.0}, "prediction": 1}' % (i, i))
        points += pipeline.process([RawMessage(PREDICTION, event, topic="predictions", offset=i),
                                    RawMessage(FEEDBACK, b"not json", topic="feedback", offset=i)]).points
    monitor = pipeline.monitors["m"]
    real = monitor.add_batch
    calls = []

    def fails_once(*args: Any, **kwargs: Any) -> Any:  # a detector bug in one batch
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(monitor, "add_batch", fails_once)
    points += pipeline.process([RawMessage(PREDICTION, b'{"prediction_id": "q", "model_id": "m", "model_version": '
                                           b'"1", "timestamp": 20, "features": {"x": 1.0}, "prediction": 1}',
                                           topic="predictions", offset=99)]).points
    monkeypatch.undo()
    for i in range(12):
        event = (b'{"prediction_id": "r%d", "model_id": "m", "model_version": "1", "timestamp": %d, '
                 b'"features": {"x": 1.0}, "prediction": 1}' % (i, 30 + i))
        points += pipeline.process([RawMessage(PREDICTION, event, topic="predictions", offset=100 + i)]).points
    written = {p.tags["stat"] for p in points if p.measurement == "monitor"}
    assert {"evicted", "internal_errors", "dead_letters_unattributed"} <= written
    assert written <= MONITOR_STATS, written - MONITOR_STATS


def test_a_counter_outside_the_table_is_refused() -> None:
    cfg = Config.from_mapping({"models": [{"id": "m", "features": {"x": "numeric"}}]}, environ={})
    pipeline = pipeline_factory(cfg, {"m": Evaluation(cfg.models["m"], None)})(DictStore())
    pipeline.process([RawMessage(PREDICTION, b'{"prediction_id": "p", "model_id": "m", "model_version": "1", '
                                 b'"timestamp": 1, "features": {"x": 1.0}, "prediction": 1}', topic="predictions")])
    from retrain.metrics import monitor_counter
    from streams.monitor import Arrival

    with pytest.raises(ValueError, match="not in retrain.metrics.MONITOR_COUNTERS"):
        monitor_counter("evictions")
    with pytest.raises(ValueError, match="not in retrain.metrics.MONITOR_COUNTERS"):  # a mark of stage 1
        pipeline.monitors["m"].add_batch([Arrival(mark="evictions")], source=0, seq=1)


def test_the_readme_lists_the_monitor_counters() -> None:
    readme = (Path(REPO) / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `monitor` |"))
    listed = set(re.findall(r"`([a-z_]+)`", row)) - {"monitor", "stat", "value"}
    assert listed == MONITOR_STATS


def test_every_validation_limit_has_its_counter_in_the_table() -> None:
    """Each limit the parser and the time check reject by is counted as ``rejected_<key>``: the
    metric table must list every one, or the monitor refuses the counter (and the event is lost)."""
    from dataclasses import fields

    from retrain.metrics import MONITOR_COUNTERS
    from streams.events import Limits

    keys = {f.name for f in fields(Limits)} | {"max_future_seconds", "max_past_seconds"}
    assert {f"rejected_{key}" for key in keys} <= MONITOR_COUNTERS
