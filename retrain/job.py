"""The retrain job itself, without Kafka: choose the training span, train, evaluate, write artefacts.

The retrain service (``streams.retrain_service``, ``driftwarden retrain-worker``)
reads a job's labelled pairs from Kafka into a frame (one row per pair, see
:func:`special_columns`) and hands it here:

1. :func:`training_span` keeps the rows of the job's span: prediction time in
   ``[from, to]`` (only ``>= from`` once the job was deferred), the latest
   ``data.pairs`` of them;
2. :func:`retrain` refuses fewer than ``min_pairs`` rows (:class:`TooFewPairs`:
   the service defers the job and tries again as labels arrive), holds out the
   latest ``holdout`` share (by prediction time) and trains on the rest with the
   configured :mod:`trainer <retrain.trainers>`;
3. measures the new model on the holdout with the monitor's own performance
   summaries (``accuracy``... for classification, ``rmse``... for regression), and,
   for comparison, the serving model on the same rows (its predictions are in the
   pairs);
4. builds a new reference profile from every row with the *new* model's
   predictions and scores (so the monitor compares the new version's live traffic
   with it) and writes, in ``profiles_dir``::

       <model_id>-v<version>.json          the reference profile (ReferenceProfile.to_dict)
       <model_id>-v<version>.pkl           the model: pickle of {"model": TrainedModel, ...}
       <model_id>-v<version>.update.json   the model-update event, as published

   every file atomically (temporary file, then rename);
5. returns the model-update event; the service publishes it.

The new version is the previous one plus one when it is an integer (``"3"`` ->
``"4"``), else the previous one with ``".1"`` appended (``"1.2"`` -> ``"1.2.1"``).
If another job already produced that version of the model (its
``.update.json`` names another job), the next free one is taken (``"5"``,
``"1.2.2"``), so artefacts are never overwritten by a different job.

Events on ``model-updates`` (JSON, key model id)::

    {"update_id": "...", "job_id": "...", "model_id": "credit-risk", "status": "succeeded",
     "previous_version": "3", "model_version": "4",
     "profile_path": "/data/profiles/credit-risk-v4.json", "model_path": "/data/profiles/credit-risk-v4.pkl",
     "trained_on": 800, "holdout": {"accuracy": 0.83, ...}, "holdout_n": 200,
     "previous_holdout": {"accuracy": 0.71, ...}, "pairs": 1000, "serving_versions": {"3": 1000},
     "data": {"from": "...", "to": "...", "pairs": 1000}, "trained_span": {"from": "...", "to": "..."},
     "task": "binary", "trainer": {...}, "timestamp": "..."}

    {"update_id": "...", "job_id": "...", "model_id": "credit-risk", "status": "deferred",
     "previous_version": "3", "reason": "only 93 labelled pairs ...", "pairs": 93, "data": {...}, ...}

    {"update_id": "...", "job_id": "...", "model_id": "credit-risk", "status": "failed",
     "previous_version": "3", "reason": "...", "pairs": 12, "data": {...}, "timestamp": "..."}

``update_id`` is a uuid5 of the job id and the status, so the same job always
yields the same id (consumers deduplicate on it). ``data`` is the span the job
named; ``trained_span`` the prediction times of the rows actually used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from detectors.performance import ClassificationPerformance, RegressionPerformance
from detectors.profile import ReferenceProfile
from retrain.events import ID_NAMESPACE, RetrainJob, format_time
from retrain.trainers import Trainer, TrainerError

log = logging.getLogger(__name__)

DEFAULT_MIN_PAIRS = 200
DEFAULT_HOLDOUT = 0.2
MODEL_FILE_FORMAT = 1
STATUS_SUCCEEDED = "succeeded"
STATUS_DEFERRED = "deferred"
STATUS_FAILED = "failed"

ERR_TOO_FEW = "only {n} labelled pairs for model {model!r} between {start} and {end} (min_pairs={min_pairs})"
ERR_UNKNOWN_MODEL = "model {model!r} is not in the configuration (known: {known})"
ERR_TRAINER = "trainer {trainer!r} failed: {error}"
ERR_ONE_CLASS = "the training pairs hold a single class ({label!r}); a classifier needs at least two"
ERR_HOLDOUT = "holdout must be a share in [0, 1), got {value!r}"
ERR_MIN_PAIRS = "min_pairs must be an integer >= 2, got {value!r}"

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class RetrainFailed(Exception):
    """This job cannot produce a model (one class only, the trainer failed); reported, not retried."""

    def __init__(self, reason: str, *, pairs: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.pairs = pairs


class TooFewPairs(RetrainFailed):
    """The span holds fewer than ``min_pairs`` pairs: the service defers the job (labels may still come)."""


# -- models, ids, versions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """What the worker needs to know of a configured model (a view of ``streams.config.ModelConfig``)."""

    id: str
    task: str = "binary"
    features: Mapping[str, str]
    attributes: tuple[str, ...] = ()
    positive_label: str = "1"

    @property
    def numeric(self) -> list[str]:
        return [name for name, kind in self.features.items() if kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [name for name, kind in self.features.items() if kind == "categorical"]

    @classmethod
    def from_config(cls, model: Any) -> ModelSpec:
        """From any object with ``id``, ``task``, ``features``, ``attributes``, ``positive_label``."""
        return cls(id=str(model.id), task=str(model.task), features=dict(model.features),
                   attributes=tuple(model.attributes), positive_label=str(model.positive_label))


def update_id(job_id: str, status: str = STATUS_SUCCEEDED) -> str:
    """The deterministic id of the model-update event for a job (and outcome).

    >>> update_id("j-1") == update_id("j-1") != update_id("j-1", "failed")
    True
    """
    payload = json.dumps(["model-update", job_id, status], separators=(",", ":"), ensure_ascii=False)
    return str(uuid.uuid5(ID_NAMESPACE, payload))


def next_version(previous: str, attempt: int = 1) -> str:
    """The ``attempt``-th candidate for the version after ``previous``.

    >>> next_version("3"), next_version("3", 2), next_version("1.2"), next_version("1.2", 2), next_version("v7")
    ('4', '5', '1.2.1', '1.2.2', 'v7.1')
    """
    text = str(previous).strip()
    if text.isdigit():
        return str(int(text) + attempt)
    return f"{text}.{attempt}"


def artefact_stem(model_id: str, version: str) -> str:
    """File name stem of a model version's artefacts (unsafe characters become ``_``).

    >>> artefact_stem("credit-risk", "4"), artefact_stem("team/model a", "1.2.1")
    ('credit-risk-v4', 'team_model_a-v1.2.1')
    """
    return f"{_NAME_UNSAFE.sub('_', model_id)}-v{_NAME_UNSAFE.sub('_', version)}"


def choose_version(profiles_dir: Path, model_id: str, previous: str, job_id: str) -> str:
    """The first candidate after ``previous`` whose artefacts are free or were written by this job."""
    for attempt in range(1, 10_000):
        version = next_version(previous, attempt)
        record = Path(profiles_dir) / f"{artefact_stem(model_id, version)}.update.json"
        if not record.exists():
            return version
        try:
            owner = json.loads(record.read_text(encoding="utf-8")).get("job_id")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner == job_id:
            return version
    raise RetrainFailed(f"no free version after {previous!r} for model {model_id!r} in {profiles_dir}")


def special_columns(model: ModelSpec) -> dict[str, str]:
    """Names of the non-feature columns, made unique against the model's features and attributes.

    >>> special_columns(ModelSpec(id="m", features={"label": "numeric"}))["label"]
    '_label'
    """
    taken = set(model.features) | set(model.attributes)
    out = {}
    for name in ("label", "prediction", "score", "model_version", "prediction_id", "time_ns"):
        column = name
        while column in taken:
            column = "_" + column
        taken.add(column)
        out[name] = column
    return out


def training_span(frame: pd.DataFrame, job: RetrainJob, model: ModelSpec, *, open_end: bool = False) -> pd.DataFrame:
    """The rows of ``frame`` (sorted by time, see :func:`special_columns`) that the job trains on:
    prediction time in ``[data_from, data_to]`` (with ``open_end``, a deferred job: ``>= data_from``),
    the latest ``job.data_pairs`` of them.

    >>> spec = ModelSpec(id="m", features={"x": "numeric"})
    >>> frame = pd.DataFrame({"x": [0.0] * 5, "time_ns": [1, 2, 3, 4, 5]})
    >>> job = RetrainJob(job_id="j", model_id="m", model_version="1", reason="", rules=(), metrics={},
    ...                  window_start_ns=3, window_end_ns=4, data_from_ns=2, data_to_ns=4, data_pairs=2)
    >>> list(training_span(frame, job, spec)["time_ns"]), list(training_span(frame, job, spec, open_end=True)["time_ns"])
    ([3, 4], [4, 5])
    """
    times = frame[special_columns(model)["time_ns"]].to_numpy(dtype=np.int64)
    keep = times >= job.data_from_ns
    if not open_end:
        keep &= times <= job.data_to_ns
    span = frame[keep]
    if job.data_pairs is not None and len(span) > job.data_pairs:
        span = span.iloc[len(span) - job.data_pairs:]
    return span.reset_index(drop=True)


# -- evaluation and the retrain itself -----------------------------------------------------------------


def holdout_metrics(
    *, task: str, positive_label: str | None, y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None
) -> dict[str, float]:
    """The monitor's performance metrics (same definitions) on a holdout; undefined ones left out.

    >>> y = np.array(["1", "0", "1", "1"], dtype=object)
    >>> holdout_metrics(task="binary", positive_label="1", y_true=y, y_pred=y, scores=None)["accuracy"]
    1.0
    >>> holdout_metrics(task="regression", positive_label=None, y_true=np.array([1.0, 2.0]),
    ...                 y_pred=np.array([1.0, 4.0]), scores=None)["rmse"]
    1.4142135623730951
    """
    if len(y_true) == 0:
        return {}
    if task == "regression":
        result = RegressionPerformance().update(np.asarray(y_true, dtype=np.float64),
                                                np.asarray(y_pred, dtype=np.float64)).result()
    else:
        binary = task == "binary"
        perf = ClassificationPerformance(positive_label=positive_label if binary else None)
        use_scores = None
        if binary and scores is not None:
            use_scores = np.asarray(scores, dtype=np.float64)
            if not np.isfinite(use_scores).any():
                use_scores = None
        y_pred = np.asarray([None if v is None else str(v) for v in y_pred], dtype=object)
        result = perf.update(np.asarray(y_true, dtype=object), y_pred, use_scores).result()
    return {name: float(value) for name, value in result.metrics.items() if math.isfinite(value)}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def retrain(
    job: RetrainJob,
    frame: pd.DataFrame,
    *,
    model: ModelSpec,
    trainer: Trainer,
    trainer_name: str,
    profiles_dir: Path,
    min_pairs: int = DEFAULT_MIN_PAIRS,
    holdout: float = DEFAULT_HOLDOUT,
    now_ns: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate and write the artefacts of one job from its pairs (:func:`pairs_frame`);
    return the success event. Raises :class:`RetrainFailed` when the data or the trainer fail."""
    cols = special_columns(model)
    n = len(frame)
    previous = job.replaces_version or job.model_version
    span = job.span()
    if n < min_pairs:
        raise TooFewPairs(ERR_TOO_FEW.format(n=n, model=model.id, start=span["from"], end=span["to"],
                                             min_pairs=min_pairs), pairs=n)
    n_hold = int(round(n * holdout)) if holdout > 0 else 0
    n_hold = min(max(n_hold, 1 if holdout > 0 else 0), n - 1)
    train, hold = frame.iloc[: n - n_hold], frame.iloc[n - n_hold:]
    features = list(model.features)
    classification = model.task != "regression"
    if classification:
        classes = sorted(set(train[cols["label"]].tolist()))
        if len(classes) < 2:
            raise RetrainFailed(ERR_ONE_CLASS.format(label=classes[0] if classes else None), pairs=n)
    positive = model.positive_label if model.task == "binary" else None

    started = time.monotonic()
    try:
        trained = trainer.fit(train[features].reset_index(drop=True), train[cols["label"]].reset_index(drop=True),
                              task=model.task, numeric=model.numeric, categorical=model.categorical,
                              positive_label=positive)
        predictions = np.asarray(trained.predict(frame[features]))
        scores = trained.predict_proba_positive(frame[features]) if model.task == "binary" else None
        description = json.loads(json.dumps(dict(trained.describe()), default=str))
    except Exception as exc:  # the trainer is user code: whatever it raises fails this job
        message = str(exc) if isinstance(exc, TrainerError) else f"{type(exc).__name__}: {exc}"
        raise RetrainFailed(ERR_TRAINER.format(trainer=trainer_name, error=message), pairs=n) from exc
    if len(predictions) != n or (scores is not None and len(scores) != n):
        raise RetrainFailed(ERR_TRAINER.format(trainer=trainer_name, error="predictions do not match the rows"),
                            pairs=n)
    log.info("job %s: trained %s on %d pairs in %.1fs", job.job_id, model.id, len(train), time.monotonic() - started)

    hold_true = hold[cols["label"]].to_numpy()
    new_scores = None if scores is None else np.asarray(scores, dtype=np.float64)
    metrics = holdout_metrics(task=model.task, positive_label=positive, y_true=hold_true,
                              y_pred=predictions[n - n_hold:],
                              scores=None if new_scores is None else new_scores[n - n_hold:])
    previous_metrics = holdout_metrics(task=model.task, positive_label=positive, y_true=hold_true,
                                       y_pred=hold[cols["prediction"]].to_numpy(),
                                       scores=hold[cols["score"]].to_numpy(dtype=np.float64))

    profile_frame = frame[features + [a for a in model.attributes if a not in model.features]].copy()
    profile_frame[cols["label"]] = frame[cols["label"]].to_numpy()
    profile_frame[cols["prediction"]] = predictions if classification else predictions.astype(np.float64)
    if new_scores is not None:
        profile_frame[cols["score"]] = new_scores
    profile = ReferenceProfile.from_frame(
        profile_frame, model_id=model.id, features=dict(model.features), target=cols["label"],
        prediction=cols["prediction"], score=cols["score"] if new_scores is not None else None,
        attributes=tuple(a for a in model.attributes if a not in model.features), task=model.task)

    version = choose_version(profiles_dir, model.id, previous, job.job_id)
    stem = artefact_stem(model.id, version)
    profiles_dir = Path(profiles_dir).resolve()
    profile_path = profiles_dir / f"{stem}.json"
    model_path = profiles_dir / f"{stem}.pkl"
    versions = frame[cols["model_version"]].fillna("").value_counts()
    event = {
        "update_id": update_id(job.job_id),
        "job_id": job.job_id,
        "model_id": model.id,
        "status": STATUS_SUCCEEDED,
        "previous_version": previous,
        "model_version": version,
        "profile_path": str(profile_path),
        "model_path": str(model_path),
        "trained_on": int(len(train)),
        "holdout": metrics,
        "holdout_n": int(n_hold),
        "previous_holdout": previous_metrics,
        "pairs": int(n),
        "serving_versions": {str(k): int(v) for k, v in sorted(versions.items())},
        "data": span,
        "trained_span": {"from": format_time(int(frame[cols["time_ns"]].iloc[0])),
                         "to": format_time(int(frame[cols["time_ns"]].iloc[-1]))},
        "task": model.task,
        "trainer": {"name": trainer_name, **description},
        "timestamp": format_time(time.time_ns() if now_ns is None else now_ns),
    }
    bundle = {
        "format": MODEL_FILE_FORMAT,
        "model": trained,
        "model_id": model.id,
        "model_version": version,
        "previous_version": previous,
        "job_id": job.job_id,
        "task": model.task,
        "features": dict(model.features),
        "positive_label": positive,
        "trainer": event["trainer"],
        "profile_path": str(profile_path),
    }
    _write_atomic(model_path, pickle.dumps(bundle, protocol=5))
    _write_atomic(profile_path, json.dumps(profile.to_dict(), indent=1, allow_nan=False).encode())
    _write_atomic(profiles_dir / f"{stem}.update.json", json.dumps(event, indent=1, allow_nan=False).encode())
    return event


def failure_event(job: RetrainJob, reason: str, *, pairs: int | None = None, now_ns: int | None = None,
                  status: str = STATUS_FAILED) -> dict[str, Any]:
    """The model-update event of a job that produced no model (``status``: failed, or deferred)."""
    event: dict[str, Any] = {
        "update_id": update_id(job.job_id, status),
        "job_id": job.job_id,
        "model_id": job.model_id,
        "status": status,
        "previous_version": job.replaces_version or job.model_version,
        "reason": reason,
        "data": job.span(),
        "timestamp": format_time(time.time_ns() if now_ns is None else now_ns),
    }
    if pairs is not None:
        event["pairs"] = int(pairs)
    return event


__all__: Sequence[str] = (
    "DEFAULT_HOLDOUT", "DEFAULT_MIN_PAIRS", "ERR_UNKNOWN_MODEL", "ModelSpec", "RetrainFailed", "STATUS_DEFERRED",
    "STATUS_FAILED", "STATUS_SUCCEEDED", "TooFewPairs", "artefact_stem", "choose_version", "failure_event",
    "holdout_metrics", "next_version", "retrain", "special_columns", "training_span", "update_id",
)
