"""Sequential drift between windows: River detectors on per-batch feature means.

A windowed test speaks once per window; a sustained shift can be seen sooner
by watching a few scalar streams batch by batch. :class:`SequentialDrift` turns
each micro-batch into one number per numeric feature (and per score stream),
the standardised batch mean::

    t = (batch_mean - reference_mean) / (reference_std / sqrt(batch_count))

which is about N(0, 1) while nothing changes, whatever the batch size, and
feeds it to one River detector per stream (``ADWIN``, ``PageHinkley`` or
``KSWIN``). A 0.5σ shift in batches of 1,000 moves ``t`` by ~16, which ADWIN
flags within a handful of batches. The cost is one mean per feature per batch.

The detectors look for a *change within* each stream: a stream already off
the reference from its first batch holds no change for them to find (its
``estimate`` shows the offset; the windowed tests of :mod:`detectors.drift`
catch it). River detectors are order-dependent and are not mergeable: run one
:class:`SequentialDrift` per model on the merged (or single-partition) batch
stream; :meth:`SequentialDrift.update_means` accepts per-batch means computed
elsewhere. ``snapshot()`` stores each detector pickled (base64): restore only
snapshots your own worker wrote.

>>> import numpy as np
>>> from detectors.base import FeatureFrame
>>> rng = np.random.default_rng(0)
>>> seq = SequentialDrift({"x": (0.0, 1.0)}, detector="adwin")
>>> for i in range(40):
...     shift = 0.5 if i >= 20 else 0.0
...     _ = seq.update(FeatureFrame.build(numeric={"x": rng.normal(shift, 1, 1000)}))
>>> seq.result().streams[0].detections
(29,)
"""

from __future__ import annotations

import base64
import math
import pickle
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Self

import numpy as np
from river import drift as river_drift

from detectors.base import DetectorError, FeatureFrame
from detectors.points import Point
from detectors.profile import ReferenceProfile

DETECTORS: dict[str, type] = {
    "adwin": river_drift.ADWIN,
    "page_hinkley": river_drift.PageHinkley,
    "kswin": river_drift.KSWIN,
}
"""Detector name -> River class."""

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "adwin": {"clock": 1},
    "page_hinkley": {},
    "kswin": {"seed": 0},
}
"""Departures from River's defaults: ADWIN checks for a cut after every batch
(``clock=1``; River's 32 is meant for per-event streams) and KSWIN is seeded."""

THRESHOLD_PARAM = {"adwin": "delta", "page_hinkley": "threshold", "kswin": "alpha"}
"""The parameter reported as ``threshold`` in points."""

SCORE_STREAM = "__score__"
"""Stream name of the score stream."""

MAX_DETECTIONS = 100
"""Detections remembered per stream (the most recent ones)."""

MIN_STD = 0.001
"""Floor for the reference std (a constant reference feature)."""


@dataclass(frozen=True, slots=True)
class StreamDrift:
    """State of one stream: ``estimate`` is the detector's running estimate of the
    standardised batch mean (ADWIN's window mean; the mean since the last
    detection for the others), ``drifted`` whether the latest batch raised drift,
    ``detections`` the batch indices (0-based) of recent detections, ``n`` the
    events fed, ``n_batches`` the batches fed."""

    stream: str
    detector: str
    estimate: float
    drifted: bool
    threshold: float
    detections: tuple[int, ...]
    n_batches: int
    n: int


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """All streams after ``batches`` micro-batches."""

    detector: str
    batches: int
    streams: tuple[StreamDrift, ...]

    @property
    def drifted(self) -> tuple[str, ...]:
        """Streams whose detector fired on the latest batch."""
        return tuple(s.stream for s in self.streams if s.drifted)


class _Stream:
    __slots__ = ("detector", "total", "count", "n", "n_batches", "detections", "drifted")

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.total = 0.0
        self.count = 0
        self.n = 0
        self.n_batches = 0
        self.detections: list[int] = []
        self.drifted = False


class SequentialDrift:
    """River drift detectors on standardised per-batch means.

    ``features`` maps a stream (feature) to its reference ``(mean, std)``;
    :meth:`from_profile` builds it for every numeric feature and the score.
    ``detector`` is ``'adwin'``, ``'page_hinkley'`` or ``'kswin'``; ``params``
    go to the River class (see :data:`DEFAULT_PARAMS`).
    """

    def __init__(self, features: Mapping[str, tuple[float, float]], *, detector: str = "adwin", **params: Any) -> None:
        if detector not in DETECTORS:
            raise DetectorError(f"unknown sequential detector {detector!r}; known: {', '.join(DETECTORS)}")
        self.features = {str(k): (float(v[0]), max(float(v[1]), MIN_STD)) for k, v in features.items()}
        self.detector = detector
        self.params = {**DEFAULT_PARAMS[detector], **params}
        DETECTORS[detector](**self.params)  # fail early on bad parameters
        self._reset()

    @classmethod
    def from_profile(
        cls, profile: ReferenceProfile, *, detector: str = "adwin", score: bool = True, **params: Any
    ) -> SequentialDrift:
        """Streams for every numeric feature with a reference mean, plus the score stream."""
        features = {
            name: (p.mean, p.std or 0.0) for name, p in profile.numeric.items() if p.mean is not None
        }
        sp = profile.score_profile
        if score and sp is not None and sp.mean is not None:
            features[SCORE_STREAM] = (sp.mean, sp.std or 0.0)
        return cls(features, detector=detector, **params)

    def _reset(self) -> None:
        self.batches = 0
        self._streams = {name: _Stream(DETECTORS[self.detector](**self.params)) for name in self.features}

    @property
    def threshold(self) -> float:
        """The detector's sensitivity parameter (``delta``, ``threshold`` or ``alpha``)."""
        name = THRESHOLD_PARAM[self.detector]
        return float(self.params.get(name, getattr(DETECTORS[self.detector](), name)))

    def update(self, features: FeatureFrame, scores: np.ndarray | None = None) -> Self:
        """Feed one micro-batch: the mean of every stream's finite values (streams
        with no finite value in the batch are skipped; the batch index advances)."""
        return self.update_means(stream_means(features, scores, self.features))

    def update_means(self, means: Mapping[str, tuple[float, int]]) -> Self:
        """Feed one batch given as stream -> ``(batch mean, count)`` (unknown streams ignored)."""
        index = self.batches
        self.batches += 1
        for name, stream in self._streams.items():
            stream.drifted = False
            item = means.get(name)
            if item is None or item[1] <= 0 or not math.isfinite(item[0]):
                continue
            mean, count = item
            ref_mean, ref_std = self.features[name]
            t = (mean - ref_mean) / (ref_std / math.sqrt(count))
            stream.detector.update(t)
            stream.n += int(count)
            stream.n_batches += 1
            stream.total += t
            stream.count += 1
            if stream.detector.drift_detected:
                stream.drifted = True
                stream.detections = [*stream.detections, index][-MAX_DETECTIONS:]
                stream.total, stream.count = 0.0, 0
        return self

    def merge(self, other: SequentialDrift) -> Self:
        """Not defined: sequential detectors depend on the order of batches."""
        raise DetectorError(
            "sequential detectors are order-dependent and cannot be merged; feed one SequentialDrift "
            "with merged per-batch means (update_means)"
        )

    def result(self) -> SequentialResult:
        """Per-stream estimates and detections (no state change)."""
        threshold = self.threshold
        streams = []
        for name, s in self._streams.items():
            if self.detector == "adwin" and s.n_batches:
                estimate = float(s.detector.estimation)
            else:
                estimate = s.total / s.count if s.count else math.nan
            streams.append(
                StreamDrift(
                    stream=name,
                    detector=self.detector,
                    estimate=estimate,
                    drifted=s.drifted,
                    threshold=threshold,
                    detections=tuple(s.detections),
                    n_batches=s.n_batches,
                    n=s.n,
                )
            )
        return SequentialResult(detector=self.detector, batches=self.batches, streams=tuple(streams))

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state; each River detector is pickled and base64-encoded."""
        return {
            "detector": self.detector,
            "params": dict(self.params),
            "features": {k: list(v) for k, v in self.features.items()},
            "batches": self.batches,
            "streams": {
                name: {
                    "state": base64.b64encode(pickle.dumps(s.detector)).decode("ascii"),
                    "total": s.total,
                    "count": s.count,
                    "n": s.n,
                    "n_batches": s.n_batches,
                    "detections": list(s.detections),
                    "drifted": s.drifted,
                }
                for name, s in self._streams.items()
            },
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`snapshot` (trusted input only: it unpickles River detectors)."""
        out = cls(
            {k: (v[0], v[1]) for k, v in state["features"].items()}, detector=state["detector"], **state["params"]
        )
        out.batches = int(state["batches"])
        for name, data in state["streams"].items():
            stream = _Stream(pickle.loads(base64.b64decode(data["state"])))
            stream.total = float(data["total"])
            stream.count = int(data["count"])
            stream.n = int(data["n"])
            stream.n_batches = int(data["n_batches"])
            stream.detections = [int(i) for i in data["detections"]]
            stream.drifted = bool(data["drifted"])
            out._streams[name] = stream
        return out


def stream_means(features: FeatureFrame, scores: np.ndarray | None,
                 names: Iterable[str]) -> dict[str, tuple[float, int]]:
    """Stream -> ``(mean, count)`` of a batch's finite values for each of ``names`` (a numeric
    feature, or :data:`SCORE_STREAM`); a stream without a finite value is left out. What
    :meth:`SequentialDrift.update` feeds, computed where the batch is (stage 1) for a
    :meth:`SequentialDrift.update_means` elsewhere (stage 2)."""
    means: dict[str, tuple[float, int]] = {}
    for name in names:
        values = scores if name == SCORE_STREAM else features.numeric.get(name)
        if values is None:
            continue
        arr = np.asarray(values, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size:
            means[name] = (float(finite.mean()), int(finite.size))
    return means


def sequential_points(result: SequentialResult, *, tags: Mapping[str, str], time_ns: int) -> list[Point]:
    """``feature_drift`` points (``method`` = detector name; ``value`` = running estimate)
    for feature streams, and a ``prediction_drift`` point (``target='score'``) for the score stream."""
    points = []
    for s in result.streams:
        if s.stream == SCORE_STREAM:
            points.append(
                Point(
                    "prediction_drift",
                    {**tags, "method": s.detector, "target": "score"},
                    {"value": float(s.estimate), "drift": bool(s.drifted), "n": int(s.n)},
                    time_ns,
                )
            )
        else:
            points.append(
                Point(
                    "feature_drift",
                    {**tags, "feature": s.stream, "method": s.detector},
                    {
                        "value": float(s.estimate),
                        "drift": bool(s.drifted),
                        "threshold": float(s.threshold),
                        "n": int(s.n),
                    },
                    time_ns,
                )
            )
    return points
