"""``driftwarden retrain-worker``: consume retrain jobs, retrain on labelled pairs, publish model updates.

For every job on ``retrain-jobs`` the :class:`RetrainWorker`

1. reads the ``labelled`` topic (the joined prediction/feedback pairs the
   monitor publishes, keyed by model id) from the beginning to its end and
   keeps the pairs of the job's model whose *prediction* event time lies in the
   job's ``data`` range ``[from, to]`` (both ends included; a pair seen twice
   counts once, the later copy wins);
2. fails the job unless there are at least ``min_pairs`` (default 200);
3. holds out the latest ``holdout`` share (default 20 %, by prediction time) and
   trains on the rest with the configured :mod:`trainer <retrain.trainers>`;
4. measures the new model on the holdout with the monitor's own performance
   summaries (``accuracy``... for classification, ``rmse``... for regression),
   and, for comparison, the serving model on the same rows (its predictions are
   in the pairs);
5. builds a new reference profile from every collected pair with the *new*
   model's predictions and scores (so the monitor can compare the new
   version's live traffic with it) and writes, in ``profiles_dir``::

       <model_id>-v<version>.json          the reference profile (ReferenceProfile.to_dict)
       <model_id>-v<version>.pkl           the model: pickle of {"model": TrainedModel, ...}
       <model_id>-v<version>.update.json   the model-update event, as published

   ``profiles_dir`` defaults to ``profiles/`` beside ``retrain.reports_dir`` (the
   directory the baseline profiles of the example workspace live in); every file
   is written atomically (temporary file, then rename);
6. publishes a model-update event to ``model-updates`` (key: model id) and only
   then commits the job's offset.

The new version is the previous one plus one when it is an integer (``"3"`` ->
``"4"``), else the previous one with ``".1"`` appended (``"1.2"`` -> ``"1.2.1"``).
If another job already produced that version of the model (its
``.update.json`` names another job), the next free one is taken (``"5"``,
``"1.2.2"``), so artefacts are never overwritten by a different job.

Events on ``model-updates`` (JSON, key model id)::

    {"update_id": "...", "job_id": "...", "model_id": "credit-risk", "status": "succeeded",
     "previous_version": "3", "model_version": "4",
     "profile_path": "/data/profiles/credit-risk-v4.json", "model_path": "/data/profiles/credit-risk-v4.pkl",
     "trained_on": 4000, "holdout": {"accuracy": 0.83, ...}, "holdout_n": 1000,
     "previous_holdout": {"accuracy": 0.71, ...}, "pairs": 5000, "serving_versions": {"3": 5000},
     "data": {"from": "...", "to": "..."}, "task": "binary", "trainer": {...}, "timestamp": "..."}

    {"update_id": "...", "job_id": "...", "model_id": "credit-risk", "status": "failed",
     "previous_version": "3", "reason": "only 12 labelled pairs ...", "pairs": 12,
     "data": {"from": "...", "to": "..."}, "timestamp": "..."}

A failed retrain (too few pairs, one class only, the trainer raised, unknown
model) is reported once and its job offset committed: it is not retried. An
infrastructure error (the labelled topic cannot be read, a file cannot be
written) is retried ``max_attempts`` times in this run, then reported as failed.
A job that is not a valid retrain-job event goes to ``dead-letters``.

Idempotency: ``update_id`` is a uuid5 of the job id and the status, so the same
job always yields the same id. Handled job ids are remembered in memory: a
duplicate delivery in the same run is skipped (and committed). After a crash
between publishing and committing, the job is delivered again and retrained;
its version and files are the same (the ``.update.json`` names the same job)
and its event carries the same ``update_id``, so consumers deduplicate on it.

The job consumer is in the group ``<kafka.group_id>-retrain`` with manual
commits. Training runs in a background thread while the consumer keeps
polling (its partitions paused), so a long training never costs the group
membership. On SIGTERM/SIGINT the worker stops; a job in progress gets
``stop_grace`` seconds to finish, else it is abandoned uncommitted and
delivered again to the next worker.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import pickle
import re
import signal
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import orjson
import pandas as pd

from detectors.performance import ClassificationPerformance, RegressionPerformance
from detectors.profile import ReferenceProfile
from retrain.events import ID_NAMESPACE, EventError, RetrainJob, format_time, parse_time
from retrain.trainers import Trainer, TrainerError, load_trainer

log = logging.getLogger(__name__)

DEFAULT_MIN_PAIRS = 200
DEFAULT_HOLDOUT = 0.2
MODEL_FILE_FORMAT = 1
CONSUMER_OPTIONS: Mapping[str, Any] = {
    # The rebalance timeout is max_poll_interval_ms; the embedded broker completes a join only
    # when it expires, so keep it short. The worker polls every poll_interval, also while training.
    "max_poll_interval_ms": 5000,
    "session_timeout_ms": 10000,
    "heartbeat_interval_ms": 1000,
}
STATUS_SUCCEEDED = "succeeded"
STATUS_FAILED = "failed"

ERR_TOO_FEW = "only {n} labelled pairs for model {model!r} between {start} and {end} (min_pairs={min_pairs})"
ERR_UNKNOWN_MODEL = "model {model!r} is not in the configuration (known: {known})"
ERR_TRAINER = "trainer {trainer!r} failed: {error}"
ERR_ONE_CLASS = "the training pairs hold a single class ({label!r}); a classifier needs at least two"
ERR_HOLDOUT = "holdout must be a share in [0, 1), got {value!r}"
ERR_MIN_PAIRS = "min_pairs must be an integer >= 2, got {value!r}"

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class RetrainFailed(Exception):
    """This job cannot produce a model (too little data, the trainer failed); reported, not retried."""

    def __init__(self, reason: str, *, pairs: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.pairs = pairs


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


# -- labelled pairs ------------------------------------------------------------------------------


def _category_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value) if isinstance(value, str) else math.nan
        except ValueError:
            return math.nan
    return float(value)


def _time_ns(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return int(round(float(value) * 1e9))
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError:
            return None
    return None


@dataclass
class PairCollector:
    """Keeps the labelled pairs of one model whose prediction time is in ``[from_ns, to_ns]``.

    Feed it raw ``labelled`` records (:meth:`add`): a pair, or a JSON array of pairs;
    records of other models are skipped by key before they are parsed. The same
    ``prediction_id`` twice keeps the later copy.

    >>> c = PairCollector("m", from_ns=0, to_ns=10_000_000_000)
    >>> c.add(b"m", b'{"prediction_id":"a","model_id":"m","timestamp":5.0,"label":"1","features":{}}')
    >>> c.add(b"m", b'{"prediction_id":"b","model_id":"m","timestamp":50.0,"label":"1","features":{}}')
    >>> c.add(b"other", b'{"prediction_id":"c"}')
    >>> c.add(b"m", b"not json")
    >>> c.add(b"m", b'[{"prediction_id":"d","model_id":"m","timestamp":6.0,"label":"0","features":{}}]')
    >>> len(c.pairs), c.out_of_range, c.other_models, c.rejected
    (2, 1, 1, 1)
    """

    model_id: str
    from_ns: int
    to_ns: int
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: int = 0
    other_models: int = 0
    out_of_range: int = 0
    rejected: int = 0

    def add(self, key: bytes | None, value: bytes | None) -> None:
        self.records += 1
        if key is not None and key != self._key:
            self.other_models += 1
            return
        try:
            doc = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            self.rejected += 1
            return
        for item in doc if isinstance(doc, list) else [doc]:
            self._add_pair(item)

    def _add_pair(self, doc: Any) -> None:
        """One pair (a record holds one, or a JSON array of them as the worker writes)."""
        if not isinstance(doc, dict):
            self.rejected += 1
            return
        if doc.get("model_id") != self.model_id:
            self.other_models += 1
            return
        pid, ts = doc.get("prediction_id"), _time_ns(doc.get("timestamp"))
        if not isinstance(pid, str) or ts is None or doc.get("label") is None:
            self.rejected += 1
            return
        if not self.from_ns <= ts <= self.to_ns:
            self.out_of_range += 1
            return
        doc["_time_ns"] = ts
        self.pairs.pop(pid, None)  # the later copy wins and takes the later place
        self.pairs[pid] = doc

    @property
    def _key(self) -> bytes:
        return self.model_id.encode()


def pairs_frame(pairs: Iterable[Mapping[str, Any]], model: ModelSpec) -> pd.DataFrame:
    """One row per pair: the model's features (numeric float, categorical ``str``/``None``), its
    attributes, ``label`` (``str`` class or float), the serving model's ``prediction`` and
    ``score``, ``model_version``, ``prediction_id`` and ``time_ns``; sorted by time, then id.

    Column names are those of :func:`special_columns` for label/prediction/score.
    """
    cols = special_columns(model)
    regression = model.task == "regression"
    data: dict[str, list[Any]] = {name: [] for name in model.features}
    data.update({name: [] for name in model.attributes if name not in data})
    extra = ["label", "prediction", "score", "model_version", "prediction_id", "time_ns"]
    data.update({cols[name]: [] for name in extra})
    for pair in pairs:
        features = pair.get("features") or {}
        attributes = pair.get("attributes") or {}
        for name, kind in model.features.items():
            value = features.get(name) if isinstance(features, Mapping) else None
            data[name].append(_number(value) if kind == "numeric" else _category_text(value))
        for name in model.attributes:
            if name not in model.features:
                data[name].append(_category_text(attributes.get(name)) if isinstance(attributes, Mapping) else None)
        label, prediction = pair.get("label"), pair.get("prediction")
        data[cols["label"]].append(_number(label) if regression else _category_text(label))
        data[cols["prediction"]].append(_number(prediction) if regression else _category_text(prediction))
        score = pair.get("score")
        data[cols["score"]].append(_number(score) if score is not None else math.nan)
        data[cols["model_version"]].append(_category_text(pair.get("model_version")))
        data[cols["prediction_id"]].append(str(pair.get("prediction_id")))
        data[cols["time_ns"]].append(int(pair.get("_time_ns") or _time_ns(pair.get("timestamp")) or 0))
    frame = pd.DataFrame(data)
    for name in model.numeric:
        frame[name] = frame[name].astype(np.float64)
    frame[cols["score"]] = frame[cols["score"]].astype(np.float64)
    frame = frame[frame[cols["label"]].notna()]
    if regression:
        frame = frame[np.isfinite(frame[cols["label"]].to_numpy(dtype=np.float64))]
    frame = frame.sort_values([cols["time_ns"], cols["prediction_id"]], kind="stable")
    return frame.reset_index(drop=True)


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
    span = {"from": format_time(job.data_from_ns), "to": format_time(job.data_to_ns)}
    if n < min_pairs:
        raise RetrainFailed(ERR_TOO_FEW.format(n=n, model=model.id, start=span["from"], end=span["to"],
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


def failure_event(job: RetrainJob, reason: str, *, pairs: int | None = None, now_ns: int | None = None) -> dict[str, Any]:
    """The model-update event of a job that produced no model."""
    event: dict[str, Any] = {
        "update_id": update_id(job.job_id, STATUS_FAILED),
        "job_id": job.job_id,
        "model_id": job.model_id,
        "status": STATUS_FAILED,
        "previous_version": job.replaces_version or job.model_version,
        "reason": reason,
        "data": {"from": format_time(job.data_from_ns), "to": format_time(job.data_to_ns)},
        "timestamp": format_time(time.time_ns() if now_ns is None else now_ns),
    }
    if pairs is not None:
        event["pairs"] = int(pairs)
    return event


# -- the worker -------------------------------------------------------------------------------


class RetrainWorker:
    """Consumes retrain jobs, retrains, publishes model updates (see the module docstring).

    Keyword-only; :meth:`from_config` builds one from a loaded ``streams.config.Config``.
    ``client_options`` go to every Kafka client (SASL settings), ``consumer_options`` to the
    jobs consumer only (over :data:`CONSUMER_OPTIONS`). ``read_idle`` is how long
    a partition of the labelled topic must stay silent to count as read to its end when
    the broker gives no better sign; ``read_timeout`` bounds the whole read (a warning,
    then training on what was read).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        models: Mapping[str, ModelSpec],
        profiles_dir: str | os.PathLike[str],
        jobs_topic: str = "retrain-jobs",
        labelled_topic: str = "labelled",
        updates_topic: str = "model-updates",
        dead_letters_topic: str = "dead-letters",
        group_id: str = "driftwarden-retrain",
        trainer: str | Trainer = "sklearn-logistic",
        min_pairs: int = DEFAULT_MIN_PAIRS,
        holdout: float = DEFAULT_HOLDOUT,
        client_options: Mapping[str, Any] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        poll_interval: float = 0.5,
        read_idle: float = 1.0,
        read_timeout: float = 600.0,
        stop_grace: float = 10.0,
        max_attempts: int = 3,
        remember: int = 10_000,
    ) -> None:
        if not isinstance(min_pairs, int) or isinstance(min_pairs, bool) or min_pairs < 2:
            raise ValueError(ERR_MIN_PAIRS.format(value=min_pairs))
        if not isinstance(holdout, (int, float)) or not 0.0 <= float(holdout) < 1.0:
            raise ValueError(ERR_HOLDOUT.format(value=holdout))
        self.bootstrap = bootstrap
        self.models = dict(models)
        self.profiles_dir = Path(profiles_dir)
        self.jobs_topic = jobs_topic
        self.labelled_topic = labelled_topic
        self.updates_topic = updates_topic
        self.dead_letters_topic = dead_letters_topic
        self.group_id = group_id
        self.trainer_name = trainer if isinstance(trainer, str) else type(trainer).__name__
        self.trainer = load_trainer(trainer)
        self.min_pairs = min_pairs
        self.holdout = float(holdout)
        self.client_options = dict(client_options or {})
        self.consumer_options = {**CONSUMER_OPTIONS, **(consumer_options or {})}
        self.poll_interval = poll_interval
        self.read_idle = read_idle
        self.read_timeout = read_timeout
        self.stop_grace = stop_grace
        self.max_attempts = max_attempts
        self.remember = remember
        self.published: list[dict[str, Any]] = []
        """Every event published by this worker object, in order."""
        self.stats = {"jobs": 0, "succeeded": 0, "failed": 0, "duplicates": 0, "dead_letters": 0, "retries": 0}
        self._done: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._unpublished: dict[str, dict[str, Any]] = {}
        self._attempts: dict[str, int] = {}
        self._stop = threading.Event()

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> RetrainWorker:
        """From a ``streams.config.Config``. ``profiles_dir``/``min_pairs``/``holdout`` are read from
        ``cfg.retrain`` when that section has them, else default; ``overrides`` win over both."""
        retrain_cfg = cfg.retrain
        topics = cfg.kafka.topics
        options: dict[str, Any] = {
            "bootstrap": cfg.kafka.bootstrap,
            "models": {model_id: ModelSpec.from_config(model) for model_id, model in cfg.models.items()},
            "profiles_dir": getattr(retrain_cfg, "profiles_dir", None) or Path(retrain_cfg.reports_dir).parent / "profiles",
            "jobs_topic": topics.retrain_jobs,
            "labelled_topic": topics.labelled,
            "updates_topic": topics.model_updates,
            "dead_letters_topic": topics.dead_letters,
            "group_id": f"{cfg.kafka.group_id}-retrain",
            "trainer": retrain_cfg.trainer,
            "min_pairs": getattr(retrain_cfg, "min_pairs", DEFAULT_MIN_PAIRS),
            "holdout": getattr(retrain_cfg, "holdout", DEFAULT_HOLDOUT),
            "client_options": client_options(cfg),
        }
        options.update(overrides)
        return cls(**options)

    # -- control -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler or another thread)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- one job, without the jobs topic ---------------------------------------------------

    def read_pairs(self, job: RetrainJob) -> PairCollector:
        """Read the labelled topic from the beginning to its end; keep the job's pairs."""
        from kafka import KafkaConsumer, TopicPartition

        collector = PairCollector(job.model_id, job.data_from_ns, job.data_to_ns)
        started, started_ms = time.monotonic(), time.time() * 1000.0
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                 client_id="driftwarden-retrain-read", fetch_max_bytes=64 * 1024 * 1024,
                                 max_partition_fetch_bytes=32 * 1024 * 1024, **self.client_options)
        try:
            partitions = [TopicPartition(self.labelled_topic, p)
                          for p in sorted(consumer.partitions_for_topic(self.labelled_topic) or ())]
            if not partitions:
                log.warning("job %s: topic %s has no partitions (does it exist?)", job.job_id, self.labelled_topic)
                return collector
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            # Tansu under-reports end offsets (ListOffsets) after batched writes, so they are a lower bound
            # only. A partition is read when its position passed them and either the fetch high watermark
            # is reached, a record written after the read started was seen, or it stayed silent read_idle s.
            ends = consumer.end_offsets(partitions)
            last_data = {tp: time.monotonic() for tp in partitions}
            reached_now: set[Any] = set()
            next_report = started + 5.0
            while True:
                batch = consumer.poll(timeout_ms=int(self.read_idle * 1000), max_records=50_000)
                now = time.monotonic()
                for tp, messages in batch.items():
                    for message in messages:
                        collector.add(message.key, message.value)
                    if messages:
                        last_data[tp] = now
                        if messages[-1].timestamp is not None and messages[-1].timestamp >= started_ms:
                            reached_now.add(tp)

                def read(tp: Any) -> bool:
                    position = consumer.position(tp)
                    if position < ends[tp]:
                        return False
                    highwater = consumer.highwater(tp)
                    return (tp in reached_now or (highwater is not None and position >= highwater)
                            or now - last_data[tp] >= self.read_idle)

                if all(read(tp) for tp in partitions):
                    break
                if now - started > self.read_timeout:
                    log.warning("job %s: stopped reading %s after %.0fs (read_timeout); training on what was read",
                                job.job_id, self.labelled_topic, now - started)
                    break
                if self.stopping and now - started > self.stop_grace:
                    raise InterruptedError("stopping")
                if now >= next_report:
                    log.info("job %s: read %d labelled records so far (%d pairs kept)", job.job_id,
                             collector.records, len(collector.pairs))
                    next_report = now + 5.0
        finally:
            consumer.close()
        log.info("job %s: read %d labelled records in %.1fs: %d pairs of %s in range, %d out of range, "
                 "%d of other models, %d unreadable", job.job_id, collector.records, time.monotonic() - started,
                 len(collector.pairs), job.model_id, collector.out_of_range, collector.other_models,
                 collector.rejected)
        return collector

    def process(self, job: RetrainJob) -> dict[str, Any]:
        """Handle one job end to end except publishing: the success or failure event.

        Raises only for infrastructure errors (Kafka, files), which the run loop retries."""
        model = self.models.get(job.model_id)
        if model is None:
            return failure_event(job, ERR_UNKNOWN_MODEL.format(model=job.model_id, known=sorted(self.models)))
        collector = self.read_pairs(job)
        frame = pairs_frame(collector.pairs.values(), model)
        try:
            return retrain(job, frame, model=model, trainer=self.trainer, trainer_name=self.trainer_name,
                           profiles_dir=self.profiles_dir, min_pairs=self.min_pairs, holdout=self.holdout)
        except RetrainFailed as failed:
            return failure_event(job, failed.reason, pairs=failed.pairs)

    # -- the loop -------------------------------------------------------------------------------

    def run(self, *, max_jobs: int | None = None, timeout: float | None = None) -> int:
        """Consume jobs until :meth:`stop`, ``max_jobs`` job messages were dealt with (published,
        skipped as duplicate or dead-lettered) or ``timeout`` seconds passed; return that count."""
        from kafka import KafkaConsumer, KafkaProducer

        deadline = None if timeout is None else time.monotonic() + timeout
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id,
                                 client_id="driftwarden-retrain", enable_auto_commit=False,
                                 auto_offset_reset="earliest", max_poll_records=1,
                                 **self.consumer_options, **self.client_options)
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, client_id="driftwarden-retrain", acks="all",
                                 **self.client_options)
        consumer.subscribe([self.jobs_topic], listener=_assignment_logger())
        log.info("retrain worker: waiting for jobs on %s (group %s); labelled pairs from %s; updates to %s; "
                 "artefacts in %s", self.jobs_topic, self.group_id, self.labelled_topic, self.updates_topic,
                 self.profiles_dir)
        dealt = 0
        try:
            while not self.stopping:
                if max_jobs is not None and dealt >= max_jobs:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    log.info("retrain worker: timeout after %.0fs", timeout)
                    break
                records = consumer.poll(timeout_ms=int(self.poll_interval * 1000))
                for tp, messages in records.items():
                    for message in messages:
                        if self._handle(consumer, producer, tp, message):
                            dealt += 1
        finally:
            consumer.close()
            producer.close()
            log.info("retrain worker stopped: %s", ", ".join(f"{k} {v}" for k, v in self.stats.items()))
        return dealt

    def _handle(self, consumer: Any, producer: Any, tp: Any, message: Any) -> bool:
        """Deal with one job message; True when its offset was committed."""
        try:
            job = RetrainJob.from_json(message.value)
        except EventError as exc:
            log.warning("retrain job at %s[%d]@%d is malformed: %s", tp.topic, tp.partition, message.offset, exc)
            doc = {"topic": tp.topic, "partition": tp.partition, "offset": message.offset, "reason": str(exc),
                   "payload_b64": base64.b64encode(message.value or b"").decode()}
            if not self._send(producer, self.dead_letters_topic, message.key, doc, consumer, tp, message):
                return False
            self.stats["dead_letters"] += 1
            self._commit(consumer, tp, message.offset)
            return True
        if job.job_id in self._done:
            log.info("job %s (model %s): already handled in this run; skipped", job.job_id, job.model_id)
            self.stats["duplicates"] += 1
            self._commit(consumer, tp, message.offset)
            return True
        event = self._unpublished.get(job.job_id)
        if event is None:
            log.info("job %s: retrain %s v%s on data %s .. %s (rules: %s)", job.job_id, job.model_id,
                     job.model_version, format_time(job.data_from_ns), format_time(job.data_to_ns),
                     ", ".join(job.rules) or "-")
            self.stats["jobs"] += 1
            try:
                event = self._in_background(consumer, lambda: self.process(job))
            except InterruptedError:
                log.warning("job %s: abandoned on stop; it will be delivered again", job.job_id)
                return False
            except Exception as exc:  # infrastructure: retry a few times, then report
                attempts = self._attempts[job.job_id] = self._attempts.get(job.job_id, 0) + 1
                if attempts < self.max_attempts:
                    log.exception("job %s: attempt %d/%d failed; retrying", job.job_id, attempts, self.max_attempts)
                    self.stats["retries"] += 1
                    self._retry_later(consumer, tp, message)
                    return False
                log.exception("job %s: giving up after %d attempts", job.job_id, attempts)
                event = failure_event(job, f"{type(exc).__name__}: {exc} (after {attempts} attempts)")
            if event is None:
                return False
        if not self._send(producer, self.updates_topic, job.model_id.encode(), event, consumer, tp, message):
            self._unpublished[job.job_id] = event
            return False
        self._unpublished.pop(job.job_id, None)
        self._attempts.pop(job.job_id, None)
        self.published.append(event)
        self._done[job.job_id] = event
        while len(self._done) > self.remember:
            self._done.popitem(last=False)
        if event["status"] == STATUS_SUCCEEDED:
            self.stats["succeeded"] += 1
            log.info("job %s: published %s v%s (was v%s), holdout %s (serving model: %s), profile %s",
                     job.job_id, job.model_id, event["model_version"], event["previous_version"],
                     _show_metrics(event["holdout"]), _show_metrics(event["previous_holdout"]), event["profile_path"])
        else:
            self.stats["failed"] += 1
            log.warning("job %s: retrain of %s failed: %s", job.job_id, job.model_id, event["reason"])
        self._commit(consumer, tp, message.offset)
        return True

    def _in_background(self, consumer: Any, work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run ``work`` in a thread; meanwhile keep polling (partitions paused) to stay in the group."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = work()
            except BaseException as exc:  # handed to the calling thread
                outcome["error"] = exc

        thread = threading.Thread(target=target, name="driftwarden-retrain-job", daemon=True)
        consumer.pause(*consumer.assignment())
        thread.start()
        stop_deadline: float | None = None
        try:
            while thread.is_alive():
                thread.join(timeout=self.poll_interval)
                # Partitions assigned by a rebalance meanwhile are not paused: put their records back.
                for tp, messages in consumer.poll(timeout_ms=0).items():
                    if messages:
                        consumer.seek(tp, messages[0].offset)
                consumer.pause(*consumer.assignment())
                if self.stopping and thread.is_alive():
                    if stop_deadline is None:
                        log.info("stopping: waiting up to %.0fs for the job in progress", self.stop_grace)
                        stop_deadline = time.monotonic() + self.stop_grace
                    elif time.monotonic() > stop_deadline:
                        raise InterruptedError("stopping")
        finally:
            consumer.resume(*(tp for tp in consumer.paused() if tp in consumer.assignment()))
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def _send(self, producer: Any, topic: str, key: bytes | None, doc: Mapping[str, Any], consumer: Any,
              tp: Any, message: Any) -> bool:
        from kafka.errors import KafkaError

        try:
            producer.send(topic, key=key, value=json.dumps(doc, allow_nan=False).encode()).get(timeout=30)
            return True
        except KafkaError as exc:
            log.error("cannot publish to %s: %s; the job will be tried again", topic, exc)
            self._retry_later(consumer, tp, message)
            return False

    def _retry_later(self, consumer: Any, tp: Any, message: Any) -> None:
        consumer.seek(tp, message.offset)
        self._stop.wait(min(5.0, 1.0 + self.poll_interval))

    def _commit(self, consumer: Any, tp: Any, offset: int) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        try:
            consumer.commit({tp: OffsetAndMetadata(offset + 1, "", -1)})
        except KafkaError as exc:  # e.g. the partition moved in a rebalance: the job comes again
            log.warning("cannot commit %s[%d]@%d: %s", tp.topic, tp.partition, offset + 1, exc)


def _assignment_logger() -> Any:
    """A rebalance listener that logs the job partitions this worker gets and loses."""
    from kafka import ConsumerRebalanceListener

    class LogAssignments(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            if revoked:
                log.info("retrain worker: released %s", _show_partitions(revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            log.info("retrain worker: assigned %s", _show_partitions(assigned) or "no partitions")

    return LogAssignments()


def _show_partitions(partitions: Iterable[Any]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))


_HEADLINE_METRICS = ("accuracy", "f1", "roc_auc", "rmse", "mae", "r2")


def _show_metrics(metrics: Mapping[str, float]) -> str:
    """The headline metrics for a log line (the event carries them all)."""
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in _HEADLINE_METRICS if k in metrics) or "-"


def client_options(cfg: Any) -> dict[str, Any]:
    """kafka-python options for the config's Kafka security: :func:`streams.kafka.client_options`."""
    from streams.kafka import client_options as options

    return options(cfg)


def run_retrain_worker(config_path: str) -> int:
    """``driftwarden retrain-worker -c CONFIG``: run until SIGTERM/SIGINT."""
    from streams.broker import create_topics
    from streams.config import Config, ConfigError, redacted

    cfg = Config.load(config_path)
    log.info("driftwarden retrain worker starting: %s", redacted(cfg))
    try:
        worker = RetrainWorker.from_config(cfg)
    except TrainerError as exc:
        raise ConfigError(f"retrain.trainer: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"retrain: {exc}") from None
    topics = cfg.kafka.topics
    create_topics(cfg.kafka.bootstrap, [topics.retrain_jobs, topics.labelled, topics.model_updates,
                                        topics.dead_letters], cfg.kafka.partitions, **client_options(cfg))

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        worker.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


__all__: Sequence[str] = (
    "DEFAULT_HOLDOUT", "DEFAULT_MIN_PAIRS", "ModelSpec", "PairCollector", "RetrainFailed", "RetrainWorker",
    "artefact_stem", "choose_version", "client_options", "failure_event", "holdout_metrics", "next_version",
    "pairs_frame", "retrain", "run_retrain_worker", "update_id",
)
