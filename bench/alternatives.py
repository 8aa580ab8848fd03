"""What else one could run on the same messages, on the same machine, in the same run.

Every alternative reads the pre-published topics of :mod:`bench.throughput`
with one aiokafka consumer (no consumer group, from the earliest offset) and
decodes every message with orjson; the rate counts events (predictions +
feedback) between 10 % and 90 % of the topics, like the worker's.

- ``bare``: only reads and decodes — the physical limit of one Python consumer;
- ``river``: plus one ``river.drift.ADWIN`` per numeric feature (12), updated
  per prediction event;
- ``evidently``: the DIY monitor — gathers windows of 1,000 predictions into a
  pandas frame and runs an Evidently ``Report([DataDriftPreset()])`` on each
  against a 5,000-row reference sample; capped by time. Its rate is windows
  of predictions done per second (first to last window), converted to events
  at the topics' mix of predictions and feedback (its consumer runs ahead on
  the cheap feedback topic);
- ``whylogs``: whylogs profiling the same decoded rows in the same windows of
  1,000 predictions (``why.log(frame).view()`` per window), measured like the
  Evidently monitor. whylogs runs in its own interpreter (a separate venv: it
  pins old dependencies and breaks on numpy 2) as a subprocess,
  :mod:`bench.whylogs_profile`, reading the topics with the same consumer loop
  (:mod:`bench.consumer`); without one the result says ``not installed`` and how
  to install it (:data:`WHYLOGS_INSTALL`).

Every alternative also reports events per CPU second of its consumer's process
(``time.process_time`` over the same span as the wall-clock rate), which the
load of a shared machine disturbs less than the wall clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from typing import Any

from bench.consumer import Handler, Windows, read_topics, windowed_rates
from bench.harness import REPO, Published, sustained_rate
from bench.world import CATEGORICAL, FEATURES, NUMERIC, reference_frame

def consume(bootstrap: str, published: Published, handler: Handler | None = None, *, cap_s: float | None = None,
            timeout: float = 900.0) -> dict[str, Any]:
    """:func:`bench.consumer.read_topics` on ``published``'s topics; events/s between 10 % and 90 % of
    them (a capped run: first records to the last), and events per CPU second of the consumer's process."""
    kinds = {topic: kind for kind, topic in published.topics.items()}
    run = read_topics(bootstrap, kinds, published.events, handler, cap_s=cap_s, timeout=timeout)
    return measured(run, published.events)


def measured(run: dict[str, Any], total: int) -> dict[str, Any]:
    """The rates of one :func:`bench.consumer.read_topics` run over topics holding ``total`` events.

    Events per CPU second: :func:`sustained_rate` of the same samples on the process' CPU clock (a
    capped run: every event over the CPU seconds from the first records to the last).
    """
    samples, first, done, cpu = run["samples"], run["first"], run["events"], run["cpu_s"]
    end = samples[-1][0] if samples else time.monotonic()
    if run["complete"]:
        rate, cpu_rate = sustained_rate(samples, total), sustained_rate(run["cpu_samples"], total)
    else:
        rate = done / (end - first) if first else 0.0
        cpu_rate = done / cpu if cpu > 0 else float("nan")
    return {"events": done, "complete": run["complete"], "rate": rate, "busy_s": end - (first or end),
            "cpu_s": cpu, "cpu_rate": cpu_rate}


def bare(bootstrap: str, published: Published) -> dict[str, Any]:
    return consume(bootstrap, published)


def river_adwin(bootstrap: str, published: Published) -> dict[str, Any]:
    from river import drift

    detectors = {f: drift.ADWIN() for f in NUMERIC}
    detections = {"n": 0}

    def handle(kind: str, event: Any) -> None:
        if kind != "prediction":
            return
        features = event["features"]
        for name, detector in detectors.items():
            value = features.get(name)
            if value is not None:
                detector.update(value)
                if detector.drift_detected:
                    detections["n"] += 1

    out = consume(bootstrap, published, handle)
    out["detections"] = detections["n"]
    return out


class EvidentlyWindows:
    """Windows of ``size`` predictions → ``Report([DataDriftPreset()])`` against a reference sample.

    ``flags`` holds, per window, the set of columns Evidently flagged as drifted.
    """

    def __init__(self, size: int = 1000, reference_rows: int = 5000) -> None:
        import pandas as pd
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        self.pd = pd
        self.Dataset, self.Report, self.Preset = Dataset, Report, DataDriftPreset
        self.columns = [*FEATURES, "prediction"]
        self.definition = DataDefinition(numerical_columns=list(NUMERIC),
                                         categorical_columns=[*CATEGORICAL, "prediction"])
        reference = reference_frame(reference_rows)[self.columns]
        self.reference = Dataset.from_pandas(reference, data_definition=self.definition)
        self.size = size
        self.rows: list[dict[str, Any]] = []
        self.flags: list[set[str]] = []
        self.windows = Windows(size)

    def add(self, features: dict[str, Any], prediction: Any) -> None:
        self.rows.append({**features, "prediction": prediction})
        if len(self.rows) >= self.size:
            self.run_window(self.pd.DataFrame(self.rows, columns=self.columns))
            self.rows = []

    def run_window(self, frame: Any) -> set[str]:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            snapshot = self.Report([self.Preset()]).run(
                self.Dataset.from_pandas(frame.reset_index(drop=True), data_definition=self.definition),
                self.reference)
        flagged = drifted_columns(snapshot.dict())
        self.windows.record(time.perf_counter() - started)
        self.flags.append(flagged)
        return flagged


def drifted_columns(report: dict[str, Any]) -> set[str]:
    """Columns whose ``ValueDrift`` crossed its threshold (distances: ``>=``; p-values: ``<``)."""
    out = set()
    for metric in report["metrics"]:
        config = metric.get("config", {})
        if config.get("type") != "evidently:metric_v2:ValueDrift":
            continue
        value, threshold, method = float(metric["value"]), float(config["threshold"]), str(config["method"])
        drifted = value < threshold if "p_value" in method else value >= threshold
        if drifted:
            out.add(str(config["column"]))
    return out


def evidently_monitor(bootstrap: str, published: Published, cap_s: float = 60.0) -> dict[str, Any]:
    monitor = EvidentlyWindows()

    def handle(kind: str, event: Any) -> None:
        if kind == "prediction":
            monitor.add(event["features"], event["prediction"])

    out = consume(bootstrap, published, handle, cap_s=cap_s)
    out.update(windowed_rates(monitor.windows, published.events, published.predictions))
    out["cap_s"] = cap_s
    return out


WHYLOGS_PYTHON_ENV = "DRIFTWARDEN_BENCH_WHYLOGS_PYTHON"
WHYLOGS_INSTALL = ("python3 -m venv /path/whylogs-venv && /path/whylogs-venv/bin/pip install whylogs==1.6.4 "
                   "'numpy<2' 'pandas>=2.1,<3' orjson aiokafka; then --whylogs-python /path/whylogs-venv/bin/python "
                   f"(or {WHYLOGS_PYTHON_ENV})")
"""How to give the benchmark a whylogs: its own venv (whylogs pins old dependencies and breaks on numpy 2)."""


def whylogs_python(given: str | None) -> str | None:
    """The interpreter with whylogs: ``--whylogs-python``, else ``$DRIFTWARDEN_BENCH_WHYLOGS_PYTHON``, else none."""
    return given or os.environ.get(WHYLOGS_PYTHON_ENV) or None


def _child_env() -> dict[str, str]:
    """The environment of a whylogs child: the repository's ``bench`` importable, nothing of this venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)
    env["WHYLOGS_NO_ANALYTICS"] = "True"
    return env


def whylogs_version(python: str | None) -> tuple[str | None, str]:
    """``(version, "")`` when whylogs imports in ``python``, else ``(None, "not installed: <why; how>")``."""
    if not python:
        return None, f"not installed: {WHYLOGS_INSTALL}"
    try:
        probe = subprocess.run([python, "-m", "bench.whylogs_profile", "--check"], cwd=str(REPO), env=_child_env(),
                               capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"not installed: {python} does not run ({exc}); {WHYLOGS_INSTALL}"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"not installed: the whylogs runner does not start in {python} ({last}); {WHYLOGS_INSTALL}"
    return probe.stdout.strip(), ""


def whylogs_monitor(bootstrap: str, published: Published, python: str | None, *, window: int = 1000,
                    cap_s: float | None = None) -> dict[str, Any]:
    """whylogs profiling windows of ``window`` predictions (:mod:`bench.whylogs_profile`) in ``python``.

    Measured like the Evidently monitor (windows done per second, converted to events; CPU seconds of
    the child between its first and last window); ``{"skipped": "not installed: ..."}`` when
    ``python`` has no working whylogs.
    """
    version, why_not = whylogs_version(python)
    if version is None:
        return {"skipped": why_not}
    assert python is not None
    job = {"bootstrap": bootstrap, "topics": published.topics, "events": published.events,
           "predictions": published.predictions, "columns": [*FEATURES, "prediction"], "window": window,
           "cap_s": cap_s, "timeout": max(900.0, published.events / 500.0)}
    child = subprocess.run([python, "-m", "bench.whylogs_profile"], cwd=str(REPO), env=_child_env(),
                           input=json.dumps(job), capture_output=True, text=True,
                           timeout=float(job["timeout"]) + 120.0)
    if child.returncode != 0:
        raise RuntimeError(f"whylogs run failed ({child.returncode}): {child.stderr[-3000:]}")
    out: dict[str, Any] = {"rate": float("nan"), "cpu_rate": float("nan"), "busy_s": 0.0}
    out.update(json.loads(child.stdout))  # the rates are there once it profiled two windows
    out.pop("samples", None)
    out.pop("cpu_samples", None)
    out["python"] = python
    out["cap_s"] = cap_s
    return out
