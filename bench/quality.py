"""Detection quality: false alarms on stationary traffic and detection delay after a change.

driftwarden runs **in-process through** :class:`streams.pipeline.Pipeline` — the
object the worker and ``replay`` run: the same parser, join, windows of 1,000
events, every detector, and the shipped example policies, fed micro-batches of
2,000 messages (the worker's ``kafka.batch_size``). Every prediction event is
followed by its feedback for ~50 % of predictions (no delay, so label-driven
detectors are not held back by label latency). A *detection* is the first
``firing`` alert of a rule that speaks to the scenario; a *false alarm* is any
``firing`` alert on stationary traffic. Delay = prediction events from the
change to the event the alert is stamped with: the detecting event for a rule
that fired on a CUSUM detection between window closes (the alert leaves the
worker when the micro-batch holding that event has been processed), the end of
the window whose close fired it otherwise. The change starts at prediction
30,500, mid-window, as real changes do. Delays are also measured on
:data:`DELAY_SEEDS` seeds (driftwarden and ADWIN only) and their medians reported.

Comparators on the very same rows:

- River ``ADWIN`` alone (defaults: ``delta=0.002``, ``clock=32``), per event on
  the affected stream: the shifted feature's values; the squared z-score of the
  variance feature (ADWIN watches a mean, so the variance change is given to it
  as a mean change); the 0/1 indicator of the grown category; the predicted
  class (0/1); the 0/1 error of each labelled pair (concept); the predicted
  class of ``sex=F`` predictions only (fairness).
- River ``KSWIN`` (defaults, ``seed=0``) on the raw numeric streams (mean
  shift, variance) and on the score (label shift), fed the last 5,000
  pre-change events (its window is 100) and at most 10,000 after.
- the Evidently-per-window monitor: ``Report([DataDriftPreset()])`` on windows of
  1,000 predictions against a 5,000-row reference; a detection is the affected
  column's drift flag (``prediction`` for label shift and fairness); a false
  alarm is a stationary window with any column flagged. Its runs are capped
  (windows counted in the output).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bench.world import (MODEL_ID, SCENARIOS, SHARE_FEATURE, SHIFT_FEATURE, VARIANCE_FEATURE, VARIANCE_MEAN,
                         VARIANCE_STD, BenchWorld, encode, prediction_event, rows_of, write_workspace)

CHANGE_AT = 30_500
DELAY_SEEDS = 5
"""Seeds per scenario for driftwarden's and ADWIN's delays (the first one's figures are also reported alone)."""
POST_MAX = 30_000
BATCH = 2000
START = 1_700_000_000.0
RATE = 1000.0  # event-time predictions per second: index = (t - START) * RATE
WINDOW = 1000

EXPECTED_RULES: dict[str, tuple[str, ...]] = {
    "mean_shift": ("feature-drift", "retrain-on-drift"),
    "variance": ("feature-drift", "retrain-on-drift"),
    "category_share": ("feature-drift", "retrain-on-drift"),
    "label_shift": ("label-shift", "prediction-drift"),
    "concept": ("concept-drift", "accuracy-drop"),
    "fairness": ("fairness-demographic-parity", "fairness-equalized-odds", "fairness-selection-rate-cusum"),
}
EVIDENTLY_COLUMN = {"mean_shift": SHIFT_FEATURE, "variance": VARIANCE_FEATURE, "category_share": SHARE_FEATURE,
                    "label_shift": "prediction", "concept": None, "fairness": "prediction"}
LABELS = {
    "mean_shift": f"0.5σ mean shift ({SHIFT_FEATURE})",
    "variance": f"variance ×4 (std ×2, {VARIANCE_FEATURE})",
    "category_share": f"category share +10 pts ({SHARE_FEATURE})",
    "label_shift": "predicted classes 40/60 → 20/80",
    "concept": "concept flip (label flipped for 50 % of rows)",
    "fairness": "selection rate of sex=F halves",
}


def scenario_columns(change: str | None, n_pre: int, n_post: int, seed: int) -> dict[str, np.ndarray]:
    world = BenchWorld(seed)
    parts = [world.draw(n_pre)] + ([world.draw(n_post, change)] if n_post else [])
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    cols["feedback"] = np.random.default_rng(seed + 7).random(len(cols["score"])) < 0.5
    return cols


# -- driftwarden --------------------------------------------------------------------------------

@dataclass
class PipelineRun:
    alerts: list[tuple[int, str]] = field(default_factory=list)
    """(window end index + 1, rule) of every firing alert."""
    predictions: int = 0
    seconds: float = 0.0


def _pipeline(config: Path) -> Any:
    from streams.config import Config
    from streams.join_store import ColumnarStore
    from streams.runtime import pipeline_factory

    cfg = Config.load(str(config))
    return pipeline_factory(cfg)(ColumnarStore())


def run_pipeline(config: Path, cols: Mapping[str, np.ndarray], *, stop_rules: tuple[str, ...] = (),
                 stop_after: int | None = None, chunk: int = 5000) -> PipelineRun:
    """Feed ``cols`` (predictions, each followed by its feedback when ``cols['feedback']``) through a
    fresh Pipeline; stop at the first firing of ``stop_rules`` past ``stop_after``."""
    from streams.pipeline import FEEDBACK, PREDICTION, RawMessage

    pipeline = _pipeline(config)
    out = PipelineRun()
    n = len(cols["score"])
    batch: list[Any] = []
    offset = 0
    started = time.perf_counter()

    def process(messages: list[Any]) -> bool:
        outcome = pipeline.process(messages)
        for alert in outcome.alerts:
            if alert.state != "firing":
                continue
            end = int(round((alert.window_end_ns / 1e9 - START) * RATE)) + 1
            out.alerts.append((end, alert.rule))
            if alert.rule in stop_rules and stop_after is not None and end > stop_after:
                return True
        return False

    for first in range(0, n, chunk):
        part = {k: v[first:first + chunk] for k, v in cols.items()}
        rows = rows_of(part)
        for i, row in enumerate(rows):
            index = first + i
            t = START + index / RATE
            event = prediction_event(f"q{index}", t, row)
            batch.append(RawMessage(PREDICTION, encode(event), None, "predictions", 0, offset))
            offset += 1
            if part["feedback"][i]:
                fb = {"prediction_id": event["prediction_id"], "model_id": MODEL_ID, "timestamp": event["timestamp"],
                      "label": int(part["label"][i])}
                batch.append(RawMessage(FEEDBACK, encode(fb), None, "feedback", 0, offset))
                offset += 1
            if len(batch) >= BATCH:
                stop = process(batch)
                batch = []
                if stop:
                    out.predictions = index + 1
                    out.seconds = time.perf_counter() - started
                    return out
    if batch:
        process(batch)
    out.predictions = n
    out.seconds = time.perf_counter() - started
    return out


# -- River --------------------------------------------------------------------------------------

def affected_stream(scenario: str, cols: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(values, prediction index of each value) of the stream the scenario changes, for ADWIN."""
    n = len(cols["score"])
    index = np.arange(n)
    if scenario == "mean_shift":
        return cols[SHIFT_FEATURE].astype(float), index
    if scenario == "variance":
        return ((cols[VARIANCE_FEATURE] - VARIANCE_MEAN) / VARIANCE_STD) ** 2, index
    if scenario == "category_share":
        return (cols[SHARE_FEATURE] == BenchWorld().cat_values[3][0]).astype(float), index
    if scenario == "label_shift":
        return cols["prediction"].astype(float), index
    if scenario == "concept":
        keep = cols["feedback"]
        return (cols["label"][keep] != cols["prediction"][keep]).astype(float), index[keep]
    if scenario == "fairness":
        keep = cols["sex"] == "F"
        return cols["prediction"][keep].astype(float), index[keep]
    raise ValueError(scenario)


def kswin_stream(scenario: str, cols: Mapping[str, np.ndarray]) -> np.ndarray | None:
    if scenario == "mean_shift":
        return cols[SHIFT_FEATURE].astype(float)
    if scenario == "variance":
        return cols[VARIANCE_FEATURE].astype(float)
    if scenario == "label_shift":
        return cols["score"].astype(float)
    return None


def river_detections(detector: Any, values: np.ndarray) -> list[int]:
    """Positions (into ``values``) where the detector fired."""
    out = []
    for i, v in enumerate(values.tolist()):
        detector.update(v)
        if detector.drift_detected:
            out.append(i)
    return out


def first_after(positions: list[int], index: np.ndarray, change_at: int) -> int | None:
    """Delay (prediction events) of the first detection at or after the change."""
    for p in positions:
        if index[p] >= change_at:
            return int(index[p] - change_at + 1)
    return None


# -- the sections ---------------------------------------------------------------------------------

def _median(delays: list[int | None]) -> float | None:
    """Median delay; a change not detected counts as infinitely late."""
    if not delays:
        return None
    value = float(np.median([math.inf if d is None else d for d in delays]))
    return None if math.isinf(value) else value


def run(*, stationary: int, evidently_windows: int, kswin_events: int, seed: int = 11,
        scenarios: tuple[str, ...] = SCENARIOS, workdir: Path | None = None, delay_seeds: int = DELAY_SEEDS
        ) -> dict[str, Any]:
    from river import drift

    from bench.alternatives import EvidentlyWindows

    tmp = tempfile.TemporaryDirectory(prefix="bench-quality-") if workdir is None else None
    root = Path(tmp.name) if tmp else workdir
    assert root is not None
    config = write_workspace(root / "ws", bootstrap="127.0.0.1:9", influx_url=None)
    from streams.config import Config
    from streams.runtime import policy_rules

    fire_after = {rule.name: rule.fire_after for rule in policy_rules(Config.load(str(config)), MODEL_ID)}
    out: dict[str, Any] = {"stationary_events": stationary, "change_at": CHANGE_AT, "post_max": POST_MAX}
    try:
        # stationary traffic: false alarms
        print(f"  stationary: {stationary:,} predictions through the Pipeline", flush=True)
        cols = scenario_columns(None, stationary, 0, seed)
        dw = run_pipeline(config, cols)
        out["driftwarden_fa"] = {"alarms": len(dw.alerts), "rules": sorted({r for _, r in dw.alerts}),
                                 "events": stationary, "per_million": len(dw.alerts) / stationary * 1e6,
                                 "pipeline_rate": stationary / dw.seconds}
        adwin_fa: dict[str, Any] = {}
        for scenario in scenarios:
            values, index = affected_stream(scenario, cols)
            hits = river_detections(drift.ADWIN(), values)
            adwin_fa[scenario] = {"alarms": len(hits), "events": int(values.size),
                                  "per_million": len(hits) / max(values.size, 1) * 1e6}
        out["adwin_fa"] = adwin_fa
        kswin_fa: dict[str, Any] = {}
        for scenario in scenarios:
            values = kswin_stream(scenario, {k: v[:kswin_events] for k, v in cols.items()})
            if values is None:
                continue
            hits = river_detections(drift.KSWIN(seed=0), values)
            kswin_fa[scenario] = {"alarms": len(hits), "events": int(values.size),
                                  "per_million": len(hits) / max(values.size, 1) * 1e6}
        out["kswin_fa"] = kswin_fa
        print(f"  Evidently: {evidently_windows} stationary windows", flush=True)
        ev = EvidentlyWindows()
        import pandas as pd

        columns = ev.columns
        frame = pd.DataFrame({c: cols[c] for c in columns})
        flagged = []
        for k in range(min(evidently_windows, stationary // WINDOW)):
            flagged.append(ev.run_window(frame.iloc[k * WINDOW:(k + 1) * WINDOW]))
        any_flag = sum(1 for f in flagged if f)
        out["evidently_fa"] = {"windows": len(flagged), "flagged_windows": any_flag,
                               "per_million": any_flag / max(len(flagged) * WINDOW, 1) * 1e6,
                               "column_flags": sum(len(f) for f in flagged),
                               "report_s": ev.windows.seconds / max(len(flagged), 1)}

        # scenarios: delays
        results = {}
        for scenario in scenarios:
            print(f"  scenario {scenario}", flush=True)
            cols = scenario_columns(scenario, CHANGE_AT, POST_MAX, seed + SCENARIOS.index(scenario) + 1)
            expected = EXPECTED_RULES[scenario]
            dw = run_pipeline(config, cols, stop_rules=expected, stop_after=CHANGE_AT)
            after = [(end, rule) for end, rule in dw.alerts if end > CHANGE_AT]
            before = [(end, rule) for end, rule in dw.alerts if end <= CHANGE_AT]
            hit = next(((end, rule) for end, rule in after if rule in expected), None)
            first_any = after[0] if after else None
            values, index = affected_stream(scenario, cols)
            adwin = first_after(river_detections(drift.ADWIN(), values), index, CHANGE_AT)
            kswin = None
            ks_values = kswin_stream(scenario, cols)
            if ks_values is not None:
                lo = max(CHANGE_AT - 5000, 0)
                hi = min(CHANGE_AT + 10_000, ks_values.size)
                hits = river_detections(drift.KSWIN(seed=0), ks_values[lo:hi])
                kswin = first_after(hits, np.arange(lo, hi), CHANGE_AT)
            ev_delay, ev_windows = None, 0
            column = EVIDENTLY_COLUMN[scenario]
            if column is not None:
                frame = pd.DataFrame({c: cols[c] for c in columns})
                k = CHANGE_AT // WINDOW  # the window the change falls in
                while ev_windows < evidently_windows_per_scenario(evidently_windows) and (k + 1) * WINDOW <= len(frame):
                    flags = ev.run_window(frame.iloc[k * WINDOW:(k + 1) * WINDOW])
                    ev_windows += 1
                    if column in flags:
                        ev_delay = (k + 1) * WINDOW - CHANGE_AT
                        break
                    k += 1
            dw_delay = hit[0] - CHANGE_AT if hit else None
            # more seeds, driftwarden and ADWIN only: one seed's delays are noisy
            dw_seeds, adwin_seeds = [dw_delay], [adwin]
            for extra in range(1, delay_seeds):
                more = scenario_columns(scenario, CHANGE_AT, POST_MAX, seed + SCENARIOS.index(scenario) + 1 + 100 * extra)
                got = run_pipeline(config, more, stop_rules=expected, stop_after=CHANGE_AT)
                first = next((end for end, rule in got.alerts if end > CHANGE_AT and rule in expected), None)
                dw_seeds.append(first - CHANGE_AT if first is not None else None)
                values, index = affected_stream(scenario, more)
                adwin_seeds.append(first_after(river_detections(drift.ADWIN(), values), index, CHANGE_AT))
            results[scenario] = {
                "label": LABELS[scenario], "expected_rules": expected,
                "driftwarden_delay": dw_delay, "driftwarden_rule": hit[1] if hit else None,
                "driftwarden_delays": dw_seeds, "adwin_delays": adwin_seeds,
                "driftwarden_median": _median(dw_seeds), "adwin_median": _median(adwin_seeds),
                "fire_after": fire_after.get(hit[1]) if hit else None,
                "first_alert": (first_any[0] - CHANGE_AT, first_any[1]) if first_any else None,
                "alerts_before_change": len(before),
                "adwin_delay": adwin, "kswin_delay": kswin,
                "evidently_delay": ev_delay, "evidently_windows": ev_windows, "evidently_column": column,
            }
        out["scenarios"] = results
        print("  concept drift on River's SEA (detector level)", flush=True)
        out["sea"] = sea_concept(stationary)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return out


def evidently_windows_per_scenario(evidently_windows: int) -> int:
    """Windows the Evidently monitor gets after each change (a fifth of the stationary cap, 3 to 10)."""
    return max(3, min(10, evidently_windows // 5))


# -- concept drift at the detector level: River's SEA ---------------------------------------------

SEA_CHANGE_AT = 50_500
SEA_POST = 20_000


def sea_errors(n_pre: int, n_post: int, seed: int) -> np.ndarray:
    """0/1 errors of a fixed classifier (SEA variant 0's rule, ``x0 + x1 > 8``) on River's SEA stream,
    10 % label noise, whose concept switches to variant 3 (``x0 + x1 > 9.5``) after ``n_pre`` rows."""
    from itertools import islice

    from river.datasets import synth

    rows = list(islice(synth.SEA(variant=0, seed=seed, noise=0.1), n_pre))
    if n_post:
        rows += list(islice(synth.SEA(variant=3, seed=seed + 1, noise=0.1), n_post))
    return np.array([float((x[0] + x[1] > 8) != y) for x, y in rows])


def sea_concept(stationary: int, seed: int = 21, window: int = WINDOW) -> dict[str, Any]:
    """driftwarden's :class:`detectors.concept.ConceptDrift` fed windows of ``window`` errors (what the
    worker's windows do; the shipped ``concept-drift`` policy reads its ``adwin`` detector) against River's
    ADWIN alone, per error."""
    from river import drift

    from detectors.concept import ConceptDrift

    def windows_with_drift(errors: np.ndarray) -> tuple[list[int], dict[str, int | None]]:
        monitor = ConceptDrift()
        flagged = []
        for k in range(0, errors.size, window):
            monitor.update(errors[k:k + window])
            result = monitor.result()
            if result.detectors["adwin"].drift:
                flagged.append(min(k + window, errors.size))
            monitor.start_window()
        last = {name: s.last_detection for name, s in monitor.result().detectors.items()}
        return flagged, last

    stationary_errors = sea_errors(stationary, 0, seed)
    flagged, _ = windows_with_drift(stationary_errors)
    adwin_hits = river_detections(drift.ADWIN(), stationary_errors)
    errors = sea_errors(SEA_CHANGE_AT, SEA_POST, seed + 100)
    flagged_change, _ = windows_with_drift(errors)
    dw = next((end - SEA_CHANGE_AT for end in flagged_change if end > SEA_CHANGE_AT), None)
    # each detector's first detection after the change (raw positions, before window granularity)
    firsts: dict[str, int | None] = {}
    for name in ("ddm", "eddm", "adwin"):
        detector = ConceptDrift(detectors=(name,))
        hits = []
        for k in range(0, errors.size, 50):  # small batches: the last detection of each is its only one
            before = detector.result().detectors[name].detections
            detector.update(errors[k:k + 50])
            status = detector.result().detectors[name]
            if status.detections > before and status.last_detection is not None:
                hits.append(status.last_detection)
        firsts[name] = next((h - SEA_CHANGE_AT + 1 for h in hits if h >= SEA_CHANGE_AT), None)
    adwin = first_after(river_detections(drift.ADWIN(), errors), np.arange(errors.size), SEA_CHANGE_AT)
    return {
        "stationary": stationary, "change_at": SEA_CHANGE_AT,
        "error_before": float(errors[:SEA_CHANGE_AT].mean()), "error_after": float(errors[SEA_CHANGE_AT:].mean()),
        "driftwarden_fa": len(flagged), "driftwarden_fa_per_million": len(flagged) / stationary * 1e6,
        "adwin_fa": len(adwin_hits), "adwin_fa_per_million": len(adwin_hits) / stationary * 1e6,
        "driftwarden_delay": dw, "adwin_delay": adwin, "detector_delays": firsts,
    }
