"""Synthetic production traffic: predictions, delayed feedback, and injected changes.

The simulated model is a credit-risk classifier over numeric and categorical
features with two sensitive attributes. Its scores are calibrated on the
training distribution (the label is drawn from the score), training labels are
40/60 (class 0 / class 1). After ``change_after`` events the simulator can inject
(all at once, or one after another every ``stagger`` events):

- ``drift``: ``age`` shifts by +1 σ and the ``channel`` mix moves 20 points to ``app``;
- ``label-shift``: the positive class rises so live predictions run about 20/80
  (the model predicts positive more often than training labels were positive: 68 %
  before the change);
- ``fairness``: for ``sex=F`` half of the positive predictions become negative
  (selection rate and TPR of that group fall);
- ``concept``: the relation between features and label flips for half of the
  population (accuracy falls, inputs do not move);
- ``quality``: 20 % of ``income`` values go missing.

Feedback arrives after an exponential delay (event time) and is lost with
probability ``feedback_loss``; 1 % of it is sent twice.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import orjson
import pandas as pd

log = logging.getLogger(__name__)

NUMERIC_FEATURES = ("age", "income", "debt_ratio", "tenure_months", "num_accounts")
CATEGORICAL_FEATURES = ("channel", "region", "employment")
FEATURES = {**{f: "numeric" for f in NUMERIC_FEATURES}, **{f: "categorical" for f in CATEGORICAL_FEATURES}}
ATTRIBUTES = ("sex", "race")
CHANGES = ("drift", "label-shift", "fairness", "concept", "quality")

_CHANNELS = np.array(["web", "app", "branch"], dtype=object)
_REGIONS = np.array(["north", "south", "east", "west", "central"], dtype=object)
_EMPLOYMENT = np.array(["salaried", "self-employed", "unemployed", "retired"], dtype=object)
_SEX = np.array(["F", "M"], dtype=object)
_RACE = np.array(["Asian", "Black", "Hispanic", "White"], dtype=object)


@dataclass
class CreditRiskWorld:
    """Draws feature rows, scores and labels of the simulated model under a set of active changes."""

    seed: int = 7
    intercept: float = 0.65
    label_shift_offset: float = 0.3
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def draw(self, n: int, active: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
        rng = self.rng
        age = rng.normal(42.0, 11.0, n)
        if "drift" in active:
            age = age + 11.0
        channel_p = [0.5, 0.35, 0.15] if "drift" not in active else [0.3, 0.55, 0.15]
        cols: dict[str, np.ndarray] = {
            "age": np.round(np.clip(age, 18, 95), 0),
            "income": np.round(rng.lognormal(10.8, 0.45, n), 2),
            "debt_ratio": np.round(rng.beta(2.0, 5.0, n), 4),
            "tenure_months": rng.poisson(36, n).astype(np.float64),
            "num_accounts": rng.integers(1, 8, n).astype(np.float64),
            "channel": rng.choice(_CHANNELS, n, p=channel_p),
            "region": rng.choice(_REGIONS, n),
            "employment": rng.choice(_EMPLOYMENT, n, p=[0.6, 0.2, 0.1, 0.1]),
            "sex": rng.choice(_SEX, n),
            "race": rng.choice(_RACE, n, p=[0.15, 0.2, 0.2, 0.45]),
        }
        z = (
            self.intercept
            + 0.9 * (cols["income"] - 55_000.0) / 25_000.0
            - 2.2 * (cols["debt_ratio"] - 0.29)
            + 0.015 * (cols["tenure_months"] - 36.0)
            - 1.2 * (cols["employment"] == "unemployed")
        )
        if "label-shift" in active:
            z = z + self.label_shift_offset
        score = 1.0 / (1.0 + np.exp(-z))
        label = (rng.random(n) < score).astype(np.int64)
        if "concept" in active:
            flip = rng.random(n) < 0.5
            label = np.where(flip, 1 - label, label)
        prediction = (score >= 0.5).astype(np.int64)
        if "fairness" in active:
            hit = (cols["sex"] == "F") & (prediction == 1) & (rng.random(n) < 0.5)
            prediction = np.where(hit, 0, prediction)
            score = np.where(hit, score * 0.45, score)
        if "quality" in active:
            cols["income"] = np.where(rng.random(n) < 0.2, np.nan, cols["income"])
        cols["score"] = np.round(score, 6)
        cols["prediction"] = prediction
        cols["label"] = label
        return cols

    def training_frame(self, n: int = 20_000) -> pd.DataFrame:
        """Training data (features, attributes, label, and the model's own prediction and score)."""
        return pd.DataFrame(self.draw(n))


@dataclass
class SimulatedStream:
    """Predictions and feedback of one model, in event-time order, as JSON-ready dicts."""

    model_id: str = "credit-risk"
    model_version: str = "1"
    seed: int = 7
    start: float = field(default_factory=lambda: time.time() - 3600.0)
    rate: float = 100.0
    """Event-time rate: predictions per second of event time."""
    change_after: int | None = None
    changes: Sequence[str] = ("drift", "label-shift", "fairness")
    stagger: int = 0
    """Events between one change and the next (0: all at ``change_after``)."""
    feedback_delay: float = 30.0
    feedback_loss: float = 0.1
    duplicate_feedback: float = 0.01

    def events(self, total: int | None, chunk: int = 1000) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``("prediction"|"feedback", event)`` in event-time order; ``total=None`` runs forever."""
        unknown = set(self.changes) - set(CHANGES)
        if unknown:
            raise ValueError(f"unknown change(s) {sorted(unknown)}; choose from {', '.join(CHANGES)}")
        world = CreditRiskWorld(self.seed)
        starts = sorted((self.change_after + i * self.stagger, name) for i, name in enumerate(self.changes)) \
            if self.change_after is not None else []
        rng = np.random.default_rng(self.seed + 1)
        pending: list[tuple[float, int, dict[str, Any]]] = []
        emitted = 0
        sequence = 0
        while total is None or emitted < total:
            n = chunk if total is None else min(chunk, total - emitted)
            # split the chunk where the set of active changes grows
            cuts = sorted({0, n, *(s - emitted for s, _ in starts if emitted < s < emitted + n)})
            parts = []
            for a, b in zip(cuts, cuts[1:]):
                active = frozenset(name for s, name in starts if s <= emitted + a)
                parts.append(world.draw(b - a, active))
            cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            ts = self.start + (emitted + np.arange(n)) / self.rate
            delays = rng.exponential(self.feedback_delay, n)
            lost = rng.random(n) < self.feedback_loss
            twice = rng.random(n) < self.duplicate_feedback
            for i in range(n):
                pid = f"{self.model_id}-{self.seed}-{emitted + i}"
                t = float(ts[i])
                while pending and pending[0][0] <= t:
                    yield "feedback", heapq.heappop(pending)[2]
                yield "prediction", {
                    "prediction_id": pid,
                    "model_id": self.model_id,
                    "model_version": self.model_version,
                    "timestamp": round(t, 3),
                    "features": {f: _json_value(cols[f][i]) for f in FEATURES},
                    "prediction": int(cols["prediction"][i]),
                    "score": float(cols["score"][i]),
                    "attributes": {a: str(cols[a][i]) for a in ATTRIBUTES},
                }
                if not lost[i]:
                    fb = {"prediction_id": pid, "model_id": self.model_id,
                          "timestamp": round(t + float(delays[i]), 3), "label": int(cols["label"][i])}
                    copies = 2 if twice[i] else 1
                    for _ in range(copies):
                        sequence += 1
                        heapq.heappush(pending, (fb["timestamp"], sequence, fb))
            emitted += n
        while pending:
            yield "feedback", heapq.heappop(pending)[2]


def _json_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) else value
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def publish(
    stream: SimulatedStream,
    bootstrap: str,
    *,
    total: int | None,
    wall_rate: float = 0.0,
    array_size: int = 1,
    predictions_topic: str = "predictions",
    feedback_topic: str = "feedback",
    progress_every: float = 10.0,
    **client_options: Any,
) -> dict[str, int]:
    """Publish a simulated stream to Kafka; returns counts of what was sent. ``client_options``
    (security: :func:`streams.kafka.client_options`) go to the producer."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024,
                             compression_type=None, acks=1, **client_options)
    sent = {"predictions": 0, "feedback": 0, "messages": 0}
    buffers: dict[str, list[dict[str, Any]]] = {"prediction": [], "feedback": []}
    topics = {"prediction": predictions_topic, "feedback": feedback_topic}
    started = time.monotonic()
    last_report = started

    def send(kind: str, batch: list[dict[str, Any]]) -> None:
        value = orjson.dumps(batch[0] if len(batch) == 1 and array_size == 1 else batch)
        producer.send(topics[kind], key=batch[0]["prediction_id"].encode(), value=value)
        sent["messages"] += 1

    try:
        for kind, event in stream.events(total):
            sent["predictions" if kind == "prediction" else "feedback"] += 1
            buffers[kind].append(event)
            if len(buffers[kind]) >= array_size:
                send(kind, buffers[kind])
                buffers[kind] = []
            if wall_rate > 0 and kind == "prediction":
                ahead = sent["predictions"] / wall_rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            now = time.monotonic()
            if progress_every and now - last_report >= progress_every:
                last_report = now
                log.info("simulator: %d predictions, %d feedback sent (%.0f predictions/s)", sent["predictions"],
                         sent["feedback"], sent["predictions"] / (now - started))
        for kind, batch in buffers.items():
            if batch:
                send(kind, batch)
    finally:
        producer.flush()
        producer.close()
    return sent


def run_simulate(args: Any) -> int:
    from streams.config import Config
    from streams.kafka import check_broker, client_options

    bootstrap = args.bootstrap
    topics = None
    security: dict[str, Any] = {}
    if args.config:
        cfg = Config.load(args.config)
        bootstrap = bootstrap or cfg.kafka.bootstrap
        topics = cfg.kafka.topics
        security = client_options(cfg)
    bootstrap = bootstrap or "127.0.0.1:9092"
    check_broker(bootstrap, **security)  # a refusal (TLS, SASL) says why, at once
    changes = [c for c in args.changes.split(",") if c]
    total = args.events or None
    results = []
    for i, model_id in enumerate(m for m in args.models.split(",") if m):
        stream = SimulatedStream(model_id=model_id, seed=args.seed + i, change_after=args.change_after,
                                 changes=changes, stagger=args.stagger, feedback_delay=args.feedback_delay,
                                 feedback_loss=args.feedback_loss, rate=max(args.rate, 100.0))
        log.info("simulating %s: %s events to %s", model_id, total or "unlimited", bootstrap)
        results.append(publish(stream, bootstrap, total=total, wall_rate=args.rate, array_size=args.array_size,
                               predictions_topic=topics.predictions if topics else "predictions",
                               feedback_topic=topics.feedback if topics else "feedback", **security))
    for model_id, sent in zip(args.models.split(","), results):
        print(f"{model_id}: {sent['predictions']} predictions, {sent['feedback']} feedback in {sent['messages']} messages")
    return 0
