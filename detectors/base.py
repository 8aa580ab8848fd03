"""The contracts every detector in driftwarden follows.

A *summary* is a small mergeable state over a window of events. The shape is
River's, extended for micro-batches and for partitioned streams:

- ``update(batch) -> Self`` folds a numpy micro-batch into the state;
- ``merge(other) -> Self`` folds another summary of the same kind (built from
  another partition or another part of the stream) into this one, exactly:
  ``a.update(x).merge(b.update(y))`` equals ``c.update(x ∪ y)``;
- ``result() -> R`` returns a frozen dataclass and never mutates state;
- ``snapshot() -> dict`` returns JSON-serialisable state and
  ``restore(state)`` rebuilds an equal summary, so a worker that restarts from
  its changelog resumes where it stopped.

Memory is bounded by features × bins (or a fixed sample capacity), never by
the number of events seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Mapping, Protocol, Self, Sequence, TypeVar, runtime_checkable

import numpy as np

R_co = TypeVar("R_co", covariant=True)
"""The frozen result type a summary produces."""


@runtime_checkable
class Summary(Protocol[R_co]):
    """A mergeable, snapshot-able window summary."""

    def update(self, *args: Any, **kwargs: Any) -> Self: ...

    def merge(self, other: Self) -> Self: ...

    def result(self) -> R_co: ...

    def snapshot(self) -> dict[str, Any]: ...

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> Self: ...


class DetectorError(ValueError):
    """A detector was configured or fed inconsistently (a programming or config error)."""


@dataclass(frozen=True, slots=True)
class FeatureFrame:
    """A column-oriented micro-batch of model inputs, aligned by row.

    ``numeric`` maps a numeric feature to a float64 array in which ``NaN`` marks a
    missing value; ``categorical`` maps a categorical feature to an object array
    of ``str`` in which ``None`` marks a missing value. ``type_errors`` maps a
    feature to a boolean mask of values that had the wrong JSON type (they are
    ``NaN``/``None`` in the value arrays, but counted as type errors, not as missing).

    >>> frame = FeatureFrame.build(
    ...     numeric={"age": [41.0, float("nan")]}, categorical={"channel": ["web", None]})
    >>> len(frame), frame.numeric["age"].dtype.name, list(frame.categorical["channel"])
    (2, 'float64', ['web', None])
    """

    numeric: Mapping[str, np.ndarray]
    categorical: Mapping[str, np.ndarray]
    type_errors: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        for column in self.numeric.values():
            return int(column.shape[0])
        for column in self.categorical.values():
            return int(column.shape[0])
        return 0

    @classmethod
    def build(
        cls,
        *,
        numeric: Mapping[str, Any] | None = None,
        categorical: Mapping[str, Any] | None = None,
        type_errors: Mapping[str, Any] | None = None,
    ) -> FeatureFrame:
        """Build a frame from plain sequences, converting to the canonical dtypes."""
        num = {k: np.asarray(v, dtype=np.float64) for k, v in (numeric or {}).items()}
        cat = {k: _object_array(v) for k, v in (categorical or {}).items()}
        err = {k: np.asarray(v, dtype=bool) for k, v in (type_errors or {}).items()}
        return cls(numeric=num, categorical=cat, type_errors=err)

    def type_error_mask(self, feature: str) -> np.ndarray:
        """Boolean mask of type errors for ``feature`` (all false when none were recorded)."""
        mask = self.type_errors.get(feature)
        if mask is None:
            return np.zeros(len(self), dtype=bool)
        return mask


def vocabulary_codes(categories: Sequence[Any]) -> dict[Any, int]:
    """The lookup table of a vocabulary for :func:`lookup_codes`: each category's position.
    Raises :class:`DetectorError` when a category is given twice."""
    table = {category: i for i, category in enumerate(categories)}
    if len(table) != len(categories):
        raise DetectorError("reference categories must be unique")
    return table


def lookup_codes(table: Mapping[Any, int], values: Any) -> np.ndarray:
    """Each value's position in a vocabulary (``-1``: not in it, or missing), as
    ``pandas.Index.get_indexer`` gives it for a vocabulary of text: one dict lookup per value in C.
    ``get_indexer`` first builds an ``Index`` of the values (type inference, a hash table), which
    costs ~0.1 ms a call — more than the lookups of a micro-batch of a thousand values.

    >>> lookup_codes(vocabulary_codes(["a", "b"]), np.array(["b", None, "z", "a"], dtype=object)).tolist()
    [1, -1, -1, 0]
    """
    return np.fromiter(map(table.get, values, repeat(-1)), dtype=np.int64, count=len(values))


def _object_array(values: Any) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out
