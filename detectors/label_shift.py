"""Label shift: has the distribution of classes moved away from training?

Two sources feed the same summary: the model's *predictions* (available at
once; :class:`detectors.drift.DriftSuite` runs it) and the observed *feedback*
labels (delayed; the worker runs it on joined feedback). Both compare class
shares with the training label distribution of the reference profile.

This module also holds :class:`CategoryCounts`, the mergeable counter of
string categories against a fixed reference vocabulary that categorical
drift reuses.

>>> shift = LabelShift({"0": 700, "1": 300})
>>> r = shift.update(["1"] * 600 + ["0"] * 400).result()
>>> r.method, round(r.value, 4), r.drifted, r.n
('jensenshannon', 0.2149, True, 1000)
>>> [(c.label, c.reference_share, c.current_share) for c in r.classes]
[('0', 0.7, 0.4), ('1', 0.3, 0.6)]
>>> [p.tags["class"] for p in label_shift_points(r, source="feedback", tags={"model_id": "m"}, time_ns=0)]
['0', '1', 'all']
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Self, Sequence

import numpy as np
import pandas as pd

from detectors.base import DetectorError, lookup_codes, vocabulary_codes
from detectors.points import Point
from detectors.profile import as_class_labels
from detectors.stattests import STATTESTS, WINDOWED_FALSE_ALARMS_PER_MILLION, TestResult, get_stattest, window_alpha

OVERFLOW = "__overflow__"
"""Key under which unseen categories beyond the tracking capacity are counted."""
MAX_KEY_LENGTH = 128
"""Longest unseen category kept by name; a longer one is kept as :func:`short_key` of it."""


def short_key(key: str, most: int = MAX_KEY_LENGTH) -> str:
    """``key``, or for a longer one its start, an ellipsis and 16 hex digits of its SHA-256: a
    name bounded in length that still tells distinct long values apart, and is the same in every
    worker (so merges stay exact). Unseen categories are names an input chose, and live in every
    window's state and point.

    >>> short_key("web"), short_key("x" * 500, 24)
    ('web', 'xxxxxxx…c38c2bf3055c516a')
    """
    if len(key) <= most:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{key[:max(most - 17, 0)]}…{digest}"


@functools.lru_cache(maxsize=4096)
def _vocabulary_index(categories: tuple[str, ...]) -> dict[Any, int]:
    """The lookup table of a vocabulary (:func:`~detectors.base.vocabulary_codes`), built once:
    every window's counter shares it (it is never changed)."""
    return vocabulary_codes(categories)


class CategoryCounts:
    """Mergeable counts of ``str`` categories against a fixed reference vocabulary.

    Reference categories are counted through a precomputed lookup table
    (one hash lookup per value in C, no Python loop). Categories not in the
    reference are *unseen*: each is counted under its own key (at most
    :data:`MAX_KEY_LENGTH` characters, see :func:`short_key`), up to
    ``max_unseen`` keys; the rule keeps the ``max_unseen`` lexicographically
    smallest unseen keys and counts the rest under :data:`OVERFLOW`, which makes
    the state independent of arrival order, so ``merge`` is exact. ``None``
    (or NaN) is missing.

    >>> c = CategoryCounts(["a", "b"], max_unseen=1).update(["a", "z", "y", None, "a"])
    >>> c.counts.tolist(), c.unseen, c.overflow, c.n_missing, c.n_unseen
    ([2, 0], {'y': 1}, 1, 1, 2)
    """

    def __init__(self, categories: Sequence[str], *, max_unseen: int = 64) -> None:
        if max_unseen < 0:
            raise DetectorError(f"max_unseen must be >= 0, got {max_unseen}")
        self.categories = tuple(str(c) for c in categories)
        self.max_unseen = int(max_unseen)
        self._index = _vocabulary_index(self.categories)
        self._reset()

    def _reset(self) -> None:
        self.counts = np.zeros(len(self.categories), dtype=np.int64)
        self.unseen: dict[str, int] = {}
        self.overflow = 0
        self.n_missing = 0

    @property
    def n(self) -> int:
        """Number of non-missing values counted."""
        return int(self.counts.sum()) + sum(self.unseen.values()) + self.overflow

    @property
    def n_unseen(self) -> int:
        """Number of values not in the reference vocabulary."""
        return sum(self.unseen.values()) + self.overflow

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference index of each value (``-1`` when not a reference category) and the missing mask."""
        codes = lookup_codes(self._index, values)
        missing = pd.isna(values)
        return codes, missing

    def update(self, values: Any) -> Self:
        """Count a batch of categories (object array of ``str``/``None``)."""
        arr = values if isinstance(values, np.ndarray) and values.dtype == object else _objects(values)
        codes, missing = self.encode(arr)
        return self.update_encoded(arr, codes, missing)

    def update_encoded(self, values: np.ndarray, codes: np.ndarray, missing: np.ndarray) -> Self:
        """Count a batch already encoded by :meth:`encode` (lets callers share the encoding)."""
        known = codes >= 0
        self.counts += np.bincount(codes[known], minlength=self.counts.size)
        n_missing = int(np.count_nonzero(missing))
        self.n_missing += n_missing
        n_other = codes.size - int(np.count_nonzero(known)) - n_missing
        if n_other:
            other = values[~known & ~missing]
            keys, counts = np.unique(other.astype(str), return_counts=True)
            named: dict[str, int] = {}
            for key, count in zip(keys.tolist(), counts.tolist()):
                key = short_key(key)
                named[key] = named.get(key, 0) + count
            self._add_unseen(named, 0)
        return self

    def _add_unseen(self, unseen: Mapping[str, int], overflow: int) -> None:
        merged = dict(self.unseen)
        for key, count in unseen.items():
            merged[key] = merged.get(key, 0) + int(count)
        self.overflow += int(overflow)
        if len(merged) > self.max_unseen:
            keys = sorted(merged)
            for key in keys[self.max_unseen :]:
                self.overflow += merged.pop(key)
        self.unseen = dict(sorted(merged.items()))

    def merge(self, other: CategoryCounts) -> Self:
        """Fold in another counter over the same vocabulary (exact)."""
        if other.categories != self.categories or other.max_unseen != self.max_unseen:
            raise DetectorError("cannot merge category counts over different vocabularies or capacities")
        self.counts += other.counts
        self.n_missing += other.n_missing
        self._add_unseen(other.unseen, other.overflow)
        return self

    def vectors(self, reference_counts: Sequence[int]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Aligned keys, reference counts and current counts: reference categories,
        then tracked unseen keys, then :data:`OVERFLOW` when it is non-zero."""
        keys = list(self.categories) + list(self.unseen)
        ref = list(reference_counts) + [0] * len(self.unseen)
        cur = self.counts.tolist() + list(self.unseen.values())
        if self.overflow:
            keys.append(OVERFLOW)
            ref.append(0)
            cur.append(self.overflow)
        return keys, np.asarray(ref, dtype=np.int64), np.asarray(cur, dtype=np.int64)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state."""
        return {
            "categories": list(self.categories),
            "max_unseen": self.max_unseen,
            "counts": self.counts.tolist(),
            "unseen": dict(self.unseen),
            "overflow": self.overflow,
            "n_missing": self.n_missing,
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`snapshot`."""
        out = cls(state["categories"], max_unseen=int(state["max_unseen"]))
        out.counts = np.asarray(state["counts"], dtype=np.int64)
        out.unseen = {str(k): int(v) for k, v in state["unseen"].items()}
        out.overflow = int(state["overflow"])
        out.n_missing = int(state["n_missing"])
        return out


def _objects(values: Any) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


@dataclass(frozen=True, slots=True)
class ClassShare:
    """One class: its share of the reference labels and of the current window."""

    label: str
    reference_share: float
    current_share: float


@dataclass(frozen=True, slots=True)
class LabelShiftResult:
    """Label shift over a window.

    ``value``/``drifted``/``threshold``/``p_value``/``statistic`` come from the
    test (see :class:`detectors.stattests.TestResult`); ``n`` counts the
    non-missing labels; ``classes`` lists reference classes, then unseen classes
    (reference share 0), then ``__overflow__`` if any. Shares are ``NaN`` when
    ``n`` is 0.
    """

    method: str
    value: float
    drifted: bool
    threshold: float
    p_value: float | None
    statistic: float
    n: int
    n_missing: int
    classes: tuple[ClassShare, ...]


class LabelShift:
    """Label shift against the training label distribution (classes as ``str``).

    ``method`` is ``'jensenshannon'`` (default threshold 0.1) or ``'chisquare'``
    (default significance 0.05), or any binned method in
    :data:`detectors.stattests.STATTESTS`. Labels are converted with
    :func:`detectors.profile.as_class_labels`, so ``1``, ``1.0`` and ``"1"`` are
    the same class.
    """

    def __init__(
        self,
        reference_counts: Mapping[str, int],
        *,
        method: str = "jensenshannon",
        threshold: float | None = None,
        max_unseen: int = 64,
    ) -> None:
        test = get_stattest(method, "categorical")
        if test.kind != "binned":
            raise DetectorError(f"label shift needs a binned method, got {method!r}")
        self.reference_counts = {str(k): int(v) for k, v in reference_counts.items()}
        self.method = method
        self.threshold = test.default_threshold if threshold is None else float(threshold)
        self.max_unseen = max_unseen
        self._reset()

    def _reset(self) -> None:
        self._counts = CategoryCounts(list(self.reference_counts), max_unseen=self.max_unseen)

    def reset(self) -> Self:
        """Forget the current window."""
        self._reset()
        return self

    def update(self, labels: Any) -> Self:
        """Count a batch of labels (any array-like of class labels; ``None``/NaN missing)."""
        self._counts.update(as_class_labels(_objects(labels) if not isinstance(labels, np.ndarray) else labels))
        return self

    def update_labels(self, labels: np.ndarray) -> Self:
        """Count labels already converted by :func:`detectors.profile.as_class_labels`."""
        self._counts.update(labels)
        return self

    def merge(self, other: LabelShift) -> Self:
        """Fold in another window part (exact)."""
        if other.reference_counts != self.reference_counts or other.method != self.method:
            raise DetectorError("cannot merge label shift summaries with different references or methods")
        self._counts.merge(other._counts)
        return self

    def result(self, *, alpha: float | None = None) -> LabelShiftResult:
        """Test and class shares for the window so far; ``alpha``: the significance a distance test
        also requires (:func:`detectors.stattests.psi`); by default, this one test's share of the
        windowed budget (:func:`detectors.stattests.window_alpha`) on the window's values."""
        keys, ref, cur = self._counts.vectors(list(self.reference_counts.values()))
        if alpha is None:
            alpha = window_alpha(int(cur.sum()), 1, WINDOWED_FALSE_ALARMS_PER_MILLION)
        test: TestResult = STATTESTS[self.method](ref, cur, self.threshold, alpha=alpha)
        n_ref, n_cur = int(ref.sum()), int(cur.sum())
        classes = tuple(
            ClassShare(
                key,
                float(r / n_ref) if n_ref else math.nan,
                float(c / n_cur) if n_cur else math.nan,
            )
            for key, r, c in zip(keys, ref.tolist(), cur.tolist())
        )
        return LabelShiftResult(
            method=test.method,
            value=test.value,
            drifted=test.drifted,
            threshold=test.threshold,
            p_value=test.p_value,
            statistic=test.statistic,
            n=n_cur,
            n_missing=self._counts.n_missing,
            classes=classes,
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state (configuration and counts)."""
        return {
            "reference_counts": dict(self.reference_counts),
            "method": self.method,
            "threshold": self.threshold,
            "max_unseen": self.max_unseen,
            "counts": self._counts.snapshot(),
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`snapshot`."""
        out = cls(
            state["reference_counts"],
            method=state["method"],
            threshold=float(state["threshold"]),
            max_unseen=int(state["max_unseen"]),
        )
        out._counts = CategoryCounts.restore(state["counts"])
        return out


def label_shift_points(
    result: LabelShiftResult, *, source: str, tags: Mapping[str, str], time_ns: int
) -> list[Point]:
    """``label_shift`` points: one per class (``reference_share``, ``current_share``)
    plus one with ``class='all'`` carrying ``value``, ``drift``, ``threshold``, ``n``."""
    if source not in ("prediction", "feedback"):
        raise DetectorError(f"label shift source must be 'prediction' or 'feedback', got {source!r}")
    base = {**tags, "source": source}
    points = [
        Point(
            "label_shift",
            {**base, "class": c.label},
            {"reference_share": float(c.reference_share), "current_share": float(c.current_share)},
            time_ns,
        )
        for c in result.classes
    ]
    points.append(
        Point(
            "label_shift",
            {**base, "class": "all"},
            {
                "value": float(result.value),
                "drift": bool(result.drifted),
                "threshold": float(result.threshold),
                "n": int(result.n),
            },
            time_ns,
        )
    )
    return points
