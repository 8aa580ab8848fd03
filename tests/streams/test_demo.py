"""The demo's simulator says when it injects each change (``CHANGE`` lines), on the clock of the
``UPDATE`` lines, so the time from a change to a new version can be read off the output."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

import streams.demo as demo


class _Producer:
    """Counts the predictions sent; sets ``stop`` once ``enough`` were sent (no broker)."""

    def __init__(self, stop: threading.Event, enough: int) -> None:
        self.stop, self.enough, self.predictions = stop, enough, 0

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        if topic == "predictions":
            self.predictions += 1
            if self.predictions >= self.enough:
                self.stop.set()

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


def test_the_simulator_prints_one_change_line_per_change_at_its_first_prediction(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import kafka

    stop = threading.Event()
    producers: list[_Producer] = []

    def producer(**_: Any) -> _Producer:
        producers.append(_Producer(stop, enough=3 * 50 + 10))
        return producers[-1]

    monkeypatch.setattr(kafka, "KafkaProducer", producer)
    monkeypatch.setattr(demo, "client_options", lambda cfg: {})
    cfg = SimpleNamespace(kafka=SimpleNamespace(bootstrap="unused:9092",
                                                topics=SimpleNamespace(predictions="predictions", feedback="feedback")))
    demo._simulate(cfg, SimpleNamespace(rate=1e6, change_after=50), time.monotonic() - 7.0, stop)

    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("CHANGE")]
    assert [re.sub(r"\(\+\d+s\)$", "(+Ns)", line) for line in lines] == [
        "CHANGE  credit-risk: input drift from prediction 50 on (+Ns)",
        "CHANGE  credit-risk: label shift from prediction 100 on (+Ns)",
        "CHANGE  credit-risk: fairness regression from prediction 150 on (+Ns)",
    ]
    # "+Ns" counts from the demo's start (given as 7 s ago), as the UPDATE lines do
    assert all(int(re.search(r"\(\+(\d+)s\)$", line).group(1)) >= 7 for line in lines)
    assert producers[0].predictions == 160
