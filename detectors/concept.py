"""Concept drift on the error stream of labelled pairs, with River's sequential detectors.

When the relation between inputs and target changes, the model's errors
change while its inputs may not. The classic detectors watch the error
indicator in arrival order: DDM and EDDM (Gama et al.; Baena-García et al.)
watch the 0/1 error of a classifier, ADWIN (Bifet & Gavaldà) watches any
bounded stream's mean, Page–Hinkley watches a mean's cumulative deviation.
:class:`ConceptDrift` runs the chosen River detectors over the errors of each
micro-batch — a per-value loop, because sequence is the point — and records
where they fire.

- classification: ``errors`` are 0/1 (1 = wrong); detectors ``ddm``, ``eddm``, ``adwin``;
- regression: ``errors`` are absolute errors; detectors ``page_hinkley``, ``adwin``.

Unlike the window summaries, these detectors are long-lived: they carry state
across windows. :meth:`ConceptDrift.result` reports, per detector, whether it
fired in the *current window* (since the last :meth:`ConceptDrift.start_window`),
how often it fired in total and the 0-based stream index of its last detection.

Merging. A sequential test cannot be merged exactly from two partitions'
states (it would need the interleaved sequence). :meth:`ConceptDrift.merge`
therefore unions *findings* — counts add, drift flags OR — and keeps this
summary's detector state; run one instance per partition (the join is local
to a partition) and merge for reporting.

Snapshots are pickle-free JSON: DDM, EDDM and Page–Hinkley state is a handful
of floats and River ``stats`` objects; ADWIN's Rust core serialises itself to
bytes (base64 in the snapshot). A restored detector continues exactly where it
stopped (the tests check identical detection indices).

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> errors = np.concatenate([rng.random(2000) < 0.1, rng.random(2000) < 0.3]).astype(int)
>>> monitor = ConceptDrift(detectors=("ddm", "adwin"))
>>> for batch in np.split(errors, 4):
...     _ = monitor.update(batch)
>>> {name: s.last_detection for name, s in monitor.result().detectors.items()}
{'ddm': 2072, 'adwin': 2079}
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Self, Sequence

import numpy as np
from river import drift, stats

from detectors.base import DetectorError
from detectors.points import Point

__all__ = ["ConceptDrift", "ConceptDriftResult", "DetectorStatus", "concept_points", "DETECTORS"]

DETECTORS: dict[str, Callable[..., Any]] = {
    "ddm": drift.binary.DDM,
    "eddm": drift.binary.EDDM,
    "adwin": drift.ADWIN,
    "page_hinkley": drift.PageHinkley,
}
"""Detector name → River class (one explicit dict, no registration side effects)."""

TASK_DETECTORS = {
    "classification": ("ddm", "eddm", "adwin"),
    "regression": ("page_hinkley", "adwin"),
}
"""Detectors allowed per task; the tuple is also the default selection."""

ERR_TASK = "task must be one of {}; got {!r}"
ERR_DETECTOR = "detector {!r} does not apply to {} (choose from {})"
ERR_PARAMS = "parameters given for detectors that are not selected: {}"


@dataclass(frozen=True, slots=True)
class DetectorStatus:
    """One detector's findings.

    ``drift``: fired at least once in the current window; ``window_detections``:
    how often; ``detections``/``n_total``: since the detector was created;
    ``n``: values in the current window; ``last_detection``: 0-based index, in
    the whole stream of values fed to this instance, of the last detection
    (``None`` if never); ``warning``: DDM/EDDM warning zone after the last value.
    """

    detector: str
    drift: bool
    window_detections: int
    detections: int
    n: int
    n_total: int
    last_detection: int | None
    warning: bool


@dataclass(frozen=True, slots=True)
class ConceptDriftResult:
    """Findings of every detector for the current window."""

    task: str
    detectors: Mapping[str, DetectorStatus]

    @property
    def drift(self) -> bool:
        """Whether any detector fired in this window."""
        return any(s.drift for s in self.detectors.values())


class ConceptDrift:
    """River drift detectors over the error stream of a model.

    Parameters
    ----------
    detectors
        Names from :data:`DETECTORS`; ``None`` selects the task's defaults
        (:data:`TASK_DETECTORS`).
    task
        ``"classification"`` (0/1 errors) or ``"regression"`` (absolute errors).
    **params
        Per-detector hyperparameters, as River names them, keyed by detector:
        ``ConceptDrift(adwin={"delta": 0.01}, ddm={"warm_start": 100})``.
    """

    def __init__(
        self,
        *,
        detectors: Sequence[str] | None = None,
        task: str = "classification",
        **params: Mapping[str, Any],
    ) -> None:
        if task not in TASK_DETECTORS:
            raise DetectorError(ERR_TASK.format(sorted(TASK_DETECTORS), task))
        allowed = TASK_DETECTORS[task]
        names = tuple(detectors) if detectors is not None else allowed
        for name in names:
            if name not in allowed:
                raise DetectorError(ERR_DETECTOR.format(name, task, allowed))
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise DetectorError(ERR_PARAMS.format(unknown))
        self.task = task
        self.detector_names = names
        self.params = {name: dict(params.get(name, {})) for name in names}
        self._reset()

    def _reset(self) -> None:
        self._detectors = {name: DETECTORS[name](**self.params[name]) for name in self.detector_names}
        self._n_total = 0
        self._window_n = 0
        self._detections = {name: 0 for name in self.detector_names}
        self._window_detections = {name: 0 for name in self.detector_names}
        self._last = {name: None for name in self.detector_names}  # type: dict[str, int | None]

    def update(self, errors: np.ndarray) -> Self:
        """Feed a micro-batch of errors in arrival order (``NaN`` values are skipped)."""
        values = np.asarray(errors, dtype=np.float64)
        values = values[~np.isnan(values)]
        if self.task == "classification":
            if values.size and not np.isin(values, (0.0, 1.0)).all():
                raise DetectorError("classification errors must be 0 (right) or 1 (wrong)")
            seq: list[Any] = values.astype(np.int64).tolist()
        else:
            seq = values.tolist()
        start = self._n_total
        for name, detector in self._detectors.items():
            update = detector.update
            hits = []
            for i, x in enumerate(seq):
                update(x)
                if detector._drift_detected:  # the public property, without a call per value
                    hits.append(i)
            if hits:
                self._detections[name] += len(hits)
                self._window_detections[name] += len(hits)
                self._last[name] = start + hits[-1]
        self._n_total += len(seq)
        self._window_n += len(seq)
        return self

    def start_window(self) -> Self:
        """Begin a new reporting window: window counts restart, detectors keep their state."""
        self._window_n = 0
        self._window_detections = {name: 0 for name in self.detector_names}
        return self

    def merge(self, other: Self) -> Self:
        """Union ``other``'s findings into this one (not exact; see the module docstring)."""
        if (self.task, self.detector_names, self.params) != (other.task, other.detector_names, other.params):
            raise DetectorError("cannot merge concept drift monitors with different settings")
        for name in self.detector_names:
            self._detections[name] += other._detections[name]
            self._window_detections[name] += other._window_detections[name]
            if other._last[name] is not None:
                mine = self._last[name]
                self._last[name] = other._last[name] if mine is None else max(mine, other._last[name])
        self._n_total += other._n_total
        self._window_n += other._window_n
        return self

    def result(self) -> ConceptDriftResult:
        """Findings per detector for the current window."""
        return ConceptDriftResult(
            task=self.task,
            detectors={
                name: DetectorStatus(
                    detector=name,
                    drift=self._window_detections[name] > 0,
                    window_detections=self._window_detections[name],
                    detections=self._detections[name],
                    n=self._window_n,
                    n_total=self._n_total,
                    last_detection=self._last[name],
                    warning=bool(getattr(detector, "_warning_detected", False)),
                )
                for name, detector in self._detectors.items()
            },
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state, River detectors included (no pickle)."""
        return {
            "kind": "concept_drift",
            "version": 1,
            "task": self.task,
            "detectors": list(self.detector_names),
            "params": self.params,
            "n_total": self._n_total,
            "window_n": self._window_n,
            "detections": dict(self._detections),
            "window_detections": dict(self._window_detections),
            "last": dict(self._last),
            "state": {name: _detector_state(d) for name, d in self._detectors.items()},
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild a monitor that continues exactly where the snapshot stopped."""
        self = cls(detectors=state["detectors"], task=state["task"], **state["params"])
        self._n_total = int(state["n_total"])
        self._window_n = int(state["window_n"])
        self._detections = {k: int(v) for k, v in state["detections"].items()}
        self._window_detections = {k: int(v) for k, v in state["window_detections"].items()}
        self._last = {k: (None if v is None else int(v)) for k, v in state["last"].items()}
        for name, detector in self._detectors.items():
            _load_detector_state(detector, state["state"][name])
        return self


def concept_points(result: ConceptDriftResult, *, tags: Mapping[str, str], time_ns: int) -> list[Point]:
    """docs/design.md ``concept_drift`` points: tag ``detector``; fields ``drift`` (bool), ``n`` (int).

    >>> r = ConceptDrift(detectors=["adwin"]).update(np.zeros(10)).result()
    >>> [p.to_line_protocol() for p in concept_points(r, tags={"model_id": "m"}, time_ns=7)]
    ['concept_drift,detector=adwin,model_id=m drift=false,n=10i 7']
    """
    return [
        Point("concept_drift", {**tags, "detector": name}, {"drift": s.drift, "n": s.n}, time_ns=time_ns)
        for name, s in result.detectors.items()
    ]


# ---------------------------------------------------------------- River state as JSON
def _encode(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, stats.Var):
        return {"$var": {"ddof": value.ddof, "mean": _encode(value.mean), "S": _encode(value._S)}}
    if isinstance(value, stats.Mean):
        return {"$mean": {"n": _encode(value.n), "mean": _encode(value._mean)}}
    raise DetectorError(f"cannot snapshot River state of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "$float" in value:
            return float(value["$float"])
        if "$mean" in value:
            mean = stats.Mean()
            mean.n, mean._mean = _decode(value["$mean"]["n"]), _decode(value["$mean"]["mean"])
            return mean
        if "$var" in value:
            var = stats.Var(ddof=value["$var"]["ddof"])
            var.mean, var._S = _decode(value["$var"]["mean"]), _decode(value["$var"]["S"])
            return var
    return value


def _detector_state(detector: Any) -> dict[str, Any]:
    if isinstance(detector, drift.ADWIN):
        return {
            "_drift_detected": detector._drift_detected,
            "adwin": base64.b64encode(detector._helper.__getstate__()).decode("ascii"),
        }
    params = set(detector._get_params())
    return {
        key: _encode(value)
        for key, value in vars(detector).items()
        if key.startswith("_") and key not in params and not callable(value)
    }


def _load_detector_state(detector: Any, state: Mapping[str, Any]) -> None:
    if isinstance(detector, drift.ADWIN):
        detector._drift_detected = bool(state["_drift_detected"])
        detector._helper.__setstate__(base64.b64decode(state["adwin"]))
        return
    for key, value in state.items():
        setattr(detector, key, _decode(value))
