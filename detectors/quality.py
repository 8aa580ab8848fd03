"""Data quality: missing values, out-of-range numbers, unseen categories, type errors.

Per window and per feature of the reference profile, :class:`DataQualitySummary`
counts four checks:

- ``missing``: ``NaN`` (numeric) or ``None`` (categorical) that was not a type
  error, or the whole column when a batch lacks the feature;
- ``out_of_range``: a numeric value outside the reference ``[min, max]``;
  ``±inf`` is always out of range (so is any value when the reference column
  had no finite value);
- ``unseen_category``: a categorical value not among the reference categories;
- ``type_error``: the value had the wrong JSON type (``FeatureFrame.type_errors``).

``rate = count / n`` where ``n`` is the number of rows (``NaN`` when ``n`` is 0).
Numeric features report ``missing``, ``out_of_range``, ``type_error``;
categorical features ``missing``, ``unseen_category``, ``type_error``.

>>> import pandas as pd
>>> from detectors.base import FeatureFrame
>>> from detectors.profile import ReferenceProfile
>>> ref = pd.DataFrame({"age": [20.0, 30.0, 40.0], "channel": ["web", "app", "web"]})
>>> profile = ReferenceProfile.from_frame(ref, model_id="m")
>>> frame = FeatureFrame.build(numeric={"age": [25.0, 99.0, float("nan"), float("inf")]},
...                            categorical={"channel": ["web", "fax", None, None]},
...                            type_errors={"channel": [False, False, False, True]})
>>> q = DataQualitySummary(profile).update(frame).result()
>>> q.get("age", "out_of_range").count, q.get("age", "missing").rate
(2, 0.25)
>>> q.get("channel", "unseen_category").count, q.get("channel", "missing").count, q.get("channel", "type_error").count
(1, 1, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Self

import numpy as np
import pandas as pd

from detectors.base import DetectorError, FeatureFrame, lookup_codes, vocabulary_codes
from detectors.points import Point
from detectors.profile import ReferenceProfile

CHECKS = ("missing", "out_of_range", "unseen_category", "type_error")
"""Check names, as written in the ``check`` tag of ``data_quality`` points."""
NUMERIC_CHECKS = ("missing", "out_of_range", "type_error")
CATEGORICAL_CHECKS = ("missing", "unseen_category", "type_error")

_MISSING, _RANGE, _UNSEEN, _TYPE = range(4)


@dataclass(frozen=True, slots=True)
class QualityCheck:
    """One check on one feature over a window."""

    feature: str
    check: str
    count: int
    rate: float


@dataclass(frozen=True, slots=True)
class QualityResult:
    """All checks of a window: ``n`` rows, one :class:`QualityCheck` per feature and applicable check."""

    n: int
    checks: tuple[QualityCheck, ...]

    def get(self, feature: str, check: str) -> QualityCheck:
        """The check ``check`` of ``feature`` (``KeyError`` when not computed)."""
        for item in self.checks:
            if item.feature == feature and item.check == check:
                return item
        raise KeyError((feature, check))


class DataQualitySummary:
    """Mergeable per-window data quality counts for the features of a profile."""

    def __init__(self, profile: ReferenceProfile) -> None:
        self.profile = profile
        self.numeric = tuple(profile.numeric)
        self.categorical = tuple(profile.categorical)
        self._low = np.array(
            [-np.inf if p.min is None else p.min for p in profile.numeric.values()], dtype=np.float64
        )
        self._high = np.array([np.inf if p.max is None else p.max for p in profile.numeric.values()], dtype=np.float64)
        self._empty = np.array([p.min is None for p in profile.numeric.values()], dtype=bool)
        self._index = {name: vocabulary_codes(list(p.counts)) for name, p in profile.categorical.items()}
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.counts = np.zeros((len(self.numeric) + len(self.categorical), len(CHECKS)), dtype=np.int64)

    def reset(self) -> Self:
        """Forget the current window."""
        self._reset()
        return self

    def update(
        self, frame: FeatureFrame, *, category_codes: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
    ) -> Self:
        """Count a micro-batch.

        ``category_codes`` optionally gives, per categorical feature, the
        ``(codes, missing)`` pair already computed by
        :meth:`detectors.label_shift.CategoryCounts.encode` so the batch is not
        hashed twice.
        """
        n = len(frame)
        self.n += n
        if n == 0:
            return self
        counts = self.counts
        for i, name in enumerate(self.numeric):
            errors = frame.type_error_mask(name)
            values = frame.numeric.get(name)
            n_err = int(np.count_nonzero(errors))
            counts[i, _TYPE] += n_err
            if values is None:
                counts[i, _MISSING] += n - n_err
                continue
            nan = np.isnan(values)
            n_missing = int(np.count_nonzero(nan))
            if n_err:
                n_missing -= int(np.count_nonzero(nan & errors))
            counts[i, _MISSING] += n_missing
            if self._empty[i]:
                counts[i, _RANGE] += int(np.count_nonzero(~nan))
            else:
                # NaN compares false both ways; ±inf is outside any finite range.
                counts[i, _RANGE] += int(np.count_nonzero((values < self._low[i]) | (values > self._high[i])))
        offset = len(self.numeric)
        for j, name in enumerate(self.categorical):
            row = offset + j
            errors = frame.type_error_mask(name)
            n_err = int(np.count_nonzero(errors))
            counts[row, _TYPE] += n_err
            values = frame.categorical.get(name)
            if values is None:
                counts[row, _MISSING] += n - n_err
                continue
            if category_codes is not None and name in category_codes:
                codes, missing = category_codes[name]
            else:
                codes = lookup_codes(self._index[name], values)
                missing = pd.isna(values)
            n_missing = int(np.count_nonzero(missing))
            if n_err:
                n_missing -= int(np.count_nonzero(missing & errors))
            counts[row, _MISSING] += n_missing
            counts[row, _UNSEEN] += int(np.count_nonzero((codes < 0) & ~missing))
        return self

    def merge(self, other: DataQualitySummary) -> Self:
        """Fold in another part of the window (exact)."""
        if other.numeric != self.numeric or other.categorical != self.categorical:
            raise DetectorError("cannot merge data quality summaries over different features")
        self.n += other.n
        self.counts += other.counts
        return self

    def result(self) -> QualityResult:
        """Counts and rates per feature and check."""
        checks: list[QualityCheck] = []
        for i, name in enumerate(self.numeric + self.categorical):
            names = NUMERIC_CHECKS if i < len(self.numeric) else CATEGORICAL_CHECKS
            for check in names:
                count = int(self.counts[i, CHECKS.index(check)])
                checks.append(QualityCheck(name, check, count, count / self.n if self.n else math.nan))
        return QualityResult(n=self.n, checks=tuple(checks))

    def snapshot(self, *, reference: bool = True) -> dict[str, Any]:
        """JSON-able state; ``reference=False`` leaves the profile out (pass it to :meth:`restore`)."""
        state: dict[str, Any] = {
            "features": list(self.numeric + self.categorical),
            "n": self.n,
            "counts": self.counts.tolist(),
        }
        if reference:
            state["profile"] = self.profile.to_dict()
        return state

    @classmethod
    def restore(cls, state: Mapping[str, Any], *, profile: ReferenceProfile | None = None) -> Self:
        """Rebuild from :meth:`snapshot` (with ``profile`` when the snapshot lacks it)."""
        if profile is None:
            if "profile" not in state:
                raise DetectorError("snapshot has no profile: pass profile=")
            profile = ReferenceProfile.from_dict(state["profile"])
        out = cls(profile)
        if list(state["features"]) != list(out.numeric + out.categorical):
            raise DetectorError("snapshot features do not match the profile")
        out.n = int(state["n"])
        out.counts = np.asarray(state["counts"], dtype=np.int64).reshape(out.counts.shape)
        return out


def quality_points(result: QualityResult, *, tags: Mapping[str, str], time_ns: int) -> list[Point]:
    """``data_quality`` points (tags ``feature``, ``check``; fields ``rate``, ``count``)."""
    return [
        Point(
            "data_quality",
            {**tags, "feature": c.feature, "check": c.check},
            {"rate": float(c.rate), "count": int(c.count)},
            time_ns,
        )
        for c in result.checks
    ]
