"""The alternatives' bookkeeping (bench/alternatives.py, bench/consumer.py): rates from known progress,
the whylogs column without whylogs, and the report's rows for it. No broker: the consumer loop
itself runs in `python -m bench alternatives`."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from bench import report
from bench.alternatives import WHYLOGS_INSTALL, WHYLOGS_PYTHON_ENV, measured, whylogs_python, whylogs_version
from bench.consumer import Windows, windowed_rates


def test_windowed_rates_from_the_first_window_end_to_the_last() -> None:
    windows = Windows(size=1000, done_at=[10.0, 12.0, 14.0, 16.0], cpu_done_at=[1.0, 2.0, 3.0, 4.0], seconds=0.8)
    out = windowed_rates(windows, events=1500, predictions=1000)
    # 3 windows of 1,000 predictions after the first one, in 6 wall s / 3 CPU s, at 1.5 events per prediction
    assert out["rate"] == pytest.approx(3000 / 6.0 * 1.5)
    assert out["cpu_rate"] == pytest.approx(3000 / 3.0 * 1.5)
    assert (out["windows"], out["busy_s"], out["cpu_s"]) == (4, 6.0, 3.0)
    assert out["report_s"] == pytest.approx(0.2)


def test_windowed_rates_need_two_windows() -> None:
    out = windowed_rates(Windows(size=1000, done_at=[5.0], cpu_done_at=[1.0]), events=1500, predictions=1000)
    assert "rate" not in out and out["windows"] == 1


def test_measured_takes_the_same_slope_on_both_clocks() -> None:
    # 1,000 events in steps of 100; wall clock 1 s per step, CPU clock 0.25 s per step
    samples = [(float(i), 100 * i) for i in range(11)]
    cpu = [(0.25 * i, 100 * i) for i in range(11)]
    out = measured({"samples": samples, "cpu_samples": cpu, "first": 1.0, "events": 1000, "complete": True,
                    "cpu_s": 2.5}, total=1000)
    assert out["rate"] == pytest.approx(100.0)
    assert out["cpu_rate"] == pytest.approx(400.0)


def test_measured_capped_run_counts_every_event() -> None:
    out = measured({"samples": [(0.0, 0), (2.0, 300), (4.0, 600)], "cpu_samples": [(0.0, 0), (1.5, 600)],
                    "first": 2.0, "events": 600, "complete": False, "cpu_s": 1.5}, total=1000)
    assert out["rate"] == pytest.approx(600 / 2.0)
    assert out["cpu_rate"] == pytest.approx(600 / 1.5)


def test_whylogs_interpreter_from_the_option_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WHYLOGS_PYTHON_ENV, "/from/env/python")
    assert whylogs_python("/given/python") == "/given/python"
    assert whylogs_python(None) == "/from/env/python"
    monkeypatch.delenv(WHYLOGS_PYTHON_ENV)
    assert whylogs_python(None) is None


@pytest.mark.parametrize("python", [None, "/nonexistent/bin/python"])
def test_without_whylogs_the_column_says_how_to_install_it(python: str | None) -> None:
    version, why_not = whylogs_version(python)
    assert version is None
    assert why_not.startswith("not installed") and WHYLOGS_INSTALL in why_not


def test_an_interpreter_without_whylogs_is_not_installed() -> None:
    try:
        import whylogs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("whylogs imports in the test interpreter")
    version, why_not = whylogs_version(sys.executable)
    assert version is None and "whylogs" in why_not and WHYLOGS_INSTALL in why_not


@pytest.mark.skipif(not os.environ.get(WHYLOGS_PYTHON_ENV), reason=f"${WHYLOGS_PYTHON_ENV} not set")
def test_the_given_whylogs_interpreter_runs() -> None:
    version, why_not = whylogs_version(os.environ[WHYLOGS_PYTHON_ENV])
    assert version and not why_not


def _rendered(whylogs: dict[str, Any]) -> str:
    """The alternatives section and the targets of a run where driftwarden did 3,000 events/s."""
    r = {"throughput": {"runs": {1: {"rate": 3000.0}}},
         "alternatives": {"bare-1": {"rate": 40000.0, "cpu_rate": 50000.0}, "whylogs-1": whylogs}}
    targets = report._table(["target", "measured", "verdict"], report._targets(r, ("alternatives",)))
    return "\n".join(report._alternatives(r) + targets)


def test_report_row_for_whylogs() -> None:
    text = _rendered({"rate": 1500.0, "cpu_rate": 7000.0, "windows": 12, "busy_s": 8.0,
                                   "cap_s": 120.0, "report_s": 0.12, "whylogs": "1.6.4",
                                   "profiled_columns": 21})
    row = next(line for line in text.splitlines() if line.startswith("| whylogs"))
    assert "**1,500**" in row and "7,000" in row and "| 2.00 |" in row and "21 columns" in row
    assert "driftwarden ÷ whylogs profiling per window (one event per message) | 2.00×" in text


def test_report_row_for_whylogs_not_installed() -> None:
    text = _rendered({"skipped": "not installed: pip install whylogs"})
    row = next(line for line in text.splitlines() if line.startswith("| whylogs"))
    assert "not installed: pip install whylogs" in row
    assert "driftwarden ÷ whylogs" not in text
