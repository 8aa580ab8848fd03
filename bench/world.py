"""The benchmark's model: 20 features (12 numeric, 8 categorical), two sensitive attributes.

:class:`BenchWorld` draws rows of a binary classifier's traffic — features,
attributes, score, prediction and a label drawn from the score — vectorised
with numpy, optionally under one injected change (:data:`SCENARIOS`).
Training labels and live predictions are both about 40/60 (class 0 / class 1);
the model's accuracy is about 0.85. The changes touch features the score does
not use, so each scenario moves exactly one thing:

- ``mean_shift``: ``num7`` (normal, σ = 2) shifts by +0.5σ;
- ``variance``: ``num10`` (normal, σ = 15) doubles its standard deviation;
- ``category_share``: ``cat3``'s first category gains 10 points of share;
- ``label_shift``: predicted class shares move from 40/60 to 20/80;
- ``concept``: the label flips for a random half of the rows (inputs and
  predictions unchanged; the error rate rises from ~0.15 to ~0.5);
- ``fairness``: for ``sex=F`` half of the positive predictions become negative
  (that group's selection rate halves).

:func:`write_workspace` writes a config (the shipped example with its example
policies, adapted) and the reference profile for this model, like
:func:`streams.commands.prepare_workspace` does for the simulated one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import orjson
import pandas as pd
import yaml

MODEL_ID = "bench-20"
NUMERIC = tuple(f"num{i}" for i in range(12))
CATEGORICAL = tuple(f"cat{i}" for i in range(8))
FEATURES = {**{f: "numeric" for f in NUMERIC}, **{f: "categorical" for f in CATEGORICAL}}
ATTRIBUTES = ("sex", "group")
LEVELS = (3, 4, 5, 6, 8, 10, 3, 12)
SCENARIOS = ("mean_shift", "variance", "category_share", "label_shift", "concept", "fairness")

SHIFT_FEATURE = "num7"
SHIFT_MEAN, SHIFT_STD = -3.0, 2.0
VARIANCE_FEATURE = "num10"
VARIANCE_MEAN, VARIANCE_STD = 100.0, 15.0
SHARE_FEATURE = "cat3"
SCALE = 3.0
"""Spread of the logit: confident scores, so labels drawn from them agree with predictions ~85% of the time."""


@dataclass
class BenchWorld:
    """Seeded draws of the benchmark model's rows (see the module docstring)."""

    seed: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        fixed = np.random.default_rng(12345)  # the world's constants do not depend on the seed
        self.cat_values = [np.array([f"c{i}v{j}" for j in range(k)], dtype=object) for i, k in enumerate(LEVELS)]
        self.cat_p = [fixed.dirichlet(np.full(k, 3.0)) for k in LEVELS]
        self.cat_effect = fixed.normal(0.0, 0.5, LEVELS[0])
        self.rng = np.random.default_rng(self.seed)
        u = self._latent(self._numeric(np.random.default_rng(99), 200_000),
                         np.random.default_rng(98).choice(LEVELS[0], 200_000, p=self.cat_p[0]))
        self.offset = {"base": -SCALE * float(np.quantile(u, 0.4)), "label_shift": -SCALE * float(np.quantile(u, 0.2))}

    @staticmethod
    def _numeric(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {
            "num0": rng.normal(0.0, 1.0, n),
            "num1": rng.normal(50.0, 10.0, n),
            "num2": rng.lognormal(10.0, 0.5, n),
            "num3": rng.random(n),
            "num4": rng.poisson(5.0, n).astype(np.float64),
            "num5": rng.beta(2.0, 5.0, n),
            "num6": rng.exponential(2.0, n),
            "num7": rng.normal(SHIFT_MEAN, SHIFT_STD, n),
            "num8": rng.integers(0, 100, n).astype(np.float64),
            "num9": rng.gamma(2.0, 2.0, n),
            "num10": rng.normal(VARIANCE_MEAN, VARIANCE_STD, n),
            "num11": rng.lognormal(0.0, 1.0, n),
        }

    def _latent(self, num: Mapping[str, np.ndarray], cat0_codes: np.ndarray) -> np.ndarray:
        return (0.6 * num["num0"] + 0.5 * (num["num1"] - 50.0) / 10.0 - 0.4 * (num["num5"] - 2 / 7) / 0.16
                + self.cat_effect[cat0_codes])

    def draw(self, n: int, change: str | None = None) -> dict[str, np.ndarray]:
        """``n`` rows with ``change`` (one of :data:`SCENARIOS`, or ``None``) in force."""
        rng = self.rng
        cols: dict[str, np.ndarray] = self._numeric(rng, n)
        if change == "mean_shift":
            cols[SHIFT_FEATURE] = cols[SHIFT_FEATURE] + 0.5 * SHIFT_STD
        elif change == "variance":
            cols[VARIANCE_FEATURE] = VARIANCE_MEAN + 2.0 * (cols[VARIANCE_FEATURE] - VARIANCE_MEAN)
        codes = []
        for i, k in enumerate(LEVELS):
            p = self.cat_p[i]
            if change == "category_share" and f"cat{i}" == SHARE_FEATURE:
                p = share_shifted(p)
            c = rng.choice(k, n, p=p)
            codes.append(c)
            cols[f"cat{i}"] = self.cat_values[i][c]
        cols["sex"] = np.where(rng.random(n) < 0.5, "F", "M").astype(object)
        cols["group"] = np.array(["A", "B", "C", "D"], dtype=object)[rng.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])]
        z = SCALE * self._latent(cols, codes[0]) + self.offset["label_shift" if change == "label_shift" else "base"]
        score = 1.0 / (1.0 + np.exp(-z))
        label = (rng.random(n) < score).astype(np.int64)
        if change == "concept":
            label = np.where(rng.random(n) < 0.5, 1 - label, label)
        prediction = (z > 0).astype(np.int64)
        if change == "fairness":
            hit = (cols["sex"] == "F") & (prediction == 1) & (rng.random(n) < 0.5)
            prediction = np.where(hit, 0, prediction)
            score = np.where(hit, score * 0.45, score)
        cols["score"] = np.round(score, 6)
        cols["prediction"] = prediction
        cols["label"] = label
        return cols

    def training_frame(self, n: int = 20_000) -> pd.DataFrame:
        return pd.DataFrame(self.draw(n))


def share_shifted(p: np.ndarray) -> np.ndarray:
    """``p`` with its first category 10 points higher, the others scaled down to match."""
    out = p.copy()
    out[0] = p[0] + 0.10
    out[1:] = p[1:] * (1.0 - out[0]) / p[1:].sum()
    return out


@dataclass
class EventStream:
    """Prediction and feedback events of :class:`BenchWorld`, as JSON-ready dicts in event-time order.

    Feedback arrives for ``feedback_share`` of the predictions, ``feedback_delay``
    seconds of event time later (exponential; ``0``: right after its prediction).
    ``change`` starts at prediction ``change_at``.
    """

    seed: int = 0
    start: float = 1_700_000_000.0
    rate: float = 1000.0
    feedback_share: float = 0.5
    feedback_delay: float = 30.0
    change: str | None = None
    change_at: int | None = None
    prefix: str = "p"

    def __post_init__(self) -> None:
        self.world = BenchWorld(self.seed)

    def chunks(self, total: int, chunk: int = 5000) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(first index, columns)`` per chunk of predictions; the change starts exactly at ``change_at``."""
        emitted = 0
        while emitted < total:
            n = min(chunk, total - emitted)
            if self.change is not None and self.change_at is not None and emitted < self.change_at < emitted + n:
                n = self.change_at - emitted
            active = self.change if self.change_at is not None and emitted >= self.change_at else None
            yield emitted, self.world.draw(n, active)
            emitted += n

    def events(self, total: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """``("prediction"|"feedback", event)`` in event-time order."""
        rng = np.random.default_rng(self.seed + 1)
        pending: list[tuple[float, int, dict[str, Any]]] = []

        for first, cols in self.chunks(total):
            n = len(cols["score"])
            ts = self.start + (first + np.arange(n)) / self.rate
            gets = rng.random(n) < self.feedback_share
            delays = rng.exponential(self.feedback_delay, n) if self.feedback_delay > 0 else np.zeros(n)
            rows = rows_of(cols)
            for i in range(n):
                t = float(ts[i])
                while pending and pending[0][0] <= t:
                    yield "feedback", heapq.heappop(pending)[2]
                index = first + i
                pid = f"{self.prefix}{index}"
                event = prediction_event(pid, t, rows[i])
                yield "prediction", event
                if gets[i]:
                    fb = {"prediction_id": pid, "model_id": MODEL_ID, "timestamp": round(t + float(delays[i]), 3),
                          "label": int(cols["label"][i])}
                    if self.feedback_delay > 0:
                        heapq.heappush(pending, (fb["timestamp"], index, fb))
                    else:
                        yield "feedback", fb
        while pending:
            yield "feedback", heapq.heappop(pending)[2]


def rows_of(cols: Mapping[str, np.ndarray]) -> list[tuple[dict[str, Any], int, float, dict[str, str]]]:
    """Per row: (features, prediction, score, attributes) as plain Python values."""
    n = len(cols["score"])
    numeric = {f: np.round(cols[f], 4).tolist() for f in NUMERIC}
    categorical = {f: cols[f].tolist() for f in CATEGORICAL}
    names = list(FEATURES)
    values = [numeric[f] if f in numeric else categorical[f] for f in names]
    preds = cols["prediction"].tolist()
    scores = cols["score"].tolist()
    sex, group = cols["sex"].tolist(), cols["group"].tolist()
    return [(dict(zip(names, (v[i] for v in values))), preds[i], scores[i], {"sex": sex[i], "group": group[i]})
            for i in range(n)]


def prediction_event(pid: str, timestamp: float, row: tuple[dict[str, Any], int, float, dict[str, str]]) -> dict[str, Any]:
    features, prediction, score, attributes = row
    return {"prediction_id": pid, "model_id": MODEL_ID, "model_version": "1", "timestamp": round(timestamp, 3),
            "features": features, "prediction": prediction, "score": score, "attributes": attributes}


def encode(event: Any) -> bytes:
    return orjson.dumps(event)


def write_workspace(workdir: Path, *, bootstrap: str = "127.0.0.1:9092", influx_url: str | None = None,
                    overrides: Mapping[str, Any] | None = None, seed: int = 0) -> Path:
    """Config (the shipped example and its policies, adapted to this model) and reference profile."""
    from streams.commands import _set_path, build_profile, example_config, write_profile

    workdir.mkdir(parents=True, exist_ok=True)
    raw = example_config(bootstrap=bootstrap, influx_url=influx_url)
    model = dict(raw["models"][0])
    model.update({"id": MODEL_ID, "reference": f"profiles/{MODEL_ID}.json", "features": dict(FEATURES),
                  "attributes": list(ATTRIBUTES), "intersections": [list(ATTRIBUTES)], "window": {"events": 1000}})
    raw["models"] = [model]
    frame = BenchWorld(seed + 1000).training_frame(20_000)
    profile = build_profile(frame, model_id=MODEL_ID, features=FEATURES, target="label", prediction="prediction",
                            score="score", attributes=ATTRIBUTES)
    write_profile(profile, workdir / "profiles" / f"{MODEL_ID}.json")
    frame.to_csv(workdir / f"{MODEL_ID}-train.csv", index=False)
    for key, value in (overrides or {}).items():
        _set_path(raw, key, value)
    path = workdir / "driftwarden.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def reference_frame(n: int = 5000, seed: int = 1000) -> pd.DataFrame:
    """Training rows for monitors that compare against a reference sample (Evidently)."""
    return BenchWorld(seed).training_frame(n)


def check(n: int = 100_000) -> dict[str, float]:
    """Sanity figures of the stationary world (shares, accuracy)."""
    cols = BenchWorld(3).draw(n)
    return {"predicted_positive": float(cols["prediction"].mean()), "label_positive": float(cols["label"].mean()),
            "accuracy": float((cols["prediction"] == cols["label"]).mean()),
            "selection_F": float(cols["prediction"][cols["sex"] == "F"].mean()),
            "score_mean": float(np.nanmean(cols["score"]))}
