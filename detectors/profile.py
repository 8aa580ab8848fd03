"""Reference profiles: what the model's training data looked like.

A :class:`ReferenceProfile` is built once from the training frame (``driftwarden
baseline``) and is the fixed side of every comparison the detectors make:

- per numeric feature a :class:`NumericProfile`: summary statistics, fixed bin
  edges (reference quantiles, or one bin per distinct value for low-cardinality
  features) with the reference counts in each bin, and a bounded sample of
  values for the sample-based tests (KS, Wasserstein);
- per categorical feature a :class:`CategoricalProfile`: category counts;
- the training label distribution, the prediction distribution and a score
  profile when those columns are given;
- a columnar sample of whole rows for Evidently reports and for calibrating
  label-free performance estimates.

The profile serialises to plain JSON (:meth:`ReferenceProfile.to_dict`) and
back exactly: no numpy types, no ``NaN`` (``None`` instead), no infinities (the
outer ``-inf``/``+inf`` bin edges are implied, not stored).

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> df = pd.DataFrame({"age": rng.normal(40, 10, 1000),
...                    "channel": rng.choice(["web", "app"], 1000),
...                    "label": rng.integers(0, 2, 1000)})
>>> profile = ReferenceProfile.from_frame(df, model_id="m", target="label")
>>> profile.feature_types
{'age': 'numeric', 'channel': 'categorical'}
>>> len(profile.numeric["age"].bin_edges), sorted(profile.labels)
(11, ['0', '1'])
>>> ReferenceProfile.from_dict(profile.to_dict()) == profile
True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

PROFILE_VERSION = 1
"""Format version written by :meth:`ReferenceProfile.to_dict`."""

DISCRETE_MAX_UNIQUE = 20
"""A numeric feature with at most this many distinct values gets one bin per value
(as Evidently's ``get_binned_data`` does for ``nunique() <= 20``)."""

FeatureType = Literal["numeric", "categorical"]
Task = Literal["binary", "multiclass", "regression"]
FEATURE_TYPES = ("numeric", "categorical")
TASKS = ("binary", "multiclass", "regression")


class ProfileMismatch(ValueError):
    """The profile does not describe the features a model is configured with."""


# --------------------------------------------------------------------------- helpers


def _float_or_none(value: Any) -> float | None:
    """A finite Python float, or ``None`` for NaN/None/±inf."""
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _is_na(value: Any) -> bool:
    """``pd.isna`` for one value of any type (``False`` where it does not apply, e.g. a list)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def category_text(value: Any) -> str | None:
    """The one rule that turns a value into class or category text (``None``: missing).

    Every path uses it: the event parser (live JSON), the reference profile (training
    frames), the trainer and the retrain worker, so a class or category is the same
    text wherever it came from. Booleans are spelled as JSON spells them (``true``,
    ``false``): a training column of Python/numpy booleans and a live JSON ``true``
    are the same category. Integral numbers are integers (``1.0 -> "1"``, as a label
    column that pandas read as float because of a missing value); NaN, ``None`` and
    ``pd.NA`` are missing; a string is kept as it is.

    >>> [category_text(v) for v in (True, np.bool_(False), 1, 1.0, np.float32(2.0), 2.5, "a", None, float("nan"))]
    ['true', 'false', '1', '1', '2', '2.5', 'a', None, None]
    """
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return str(int(value)) if math.isfinite(value) and float(value).is_integer() else str(float(value))
    return None if _is_na(value) else str(value)


def as_class_labels(values: Any) -> np.ndarray:
    """Class labels as an object array of ``str`` (``None`` where missing), by :func:`category_text`.

    >>> list(as_class_labels([1.0, 0.0, float("nan")]))
    ['1', '0', None]
    >>> list(as_class_labels(np.array(["a", None], dtype=object)))
    ['a', None]
    >>> list(as_class_labels(np.array([True, False])))
    ['true', 'false']
    """
    arr = np.asarray(values)
    out = np.empty(arr.shape[0], dtype=object)
    if arr.dtype.kind == "b":
        out[:] = np.where(arr, "true", "false")
        return out
    if arr.dtype.kind in "iu":
        out[:] = arr.astype(str)
        return out
    if arr.dtype.kind == "f":  # vectorised: integral values as integers, NaN missing
        finite = np.isfinite(arr)
        if finite.all() and np.all(arr == np.round(arr)):
            out[:] = arr.astype(np.int64).astype(str)
            return out
        out[:] = [category_text(v) for v in arr.tolist()]
        return out
    out[:] = [v if isinstance(v, str) else category_text(v) for v in arr.tolist()]
    return out


def _counts_dict(labels: np.ndarray) -> dict[str, int]:
    """Category -> count over non-missing labels, sorted by category name."""
    series = pd.Series(labels, dtype=object).dropna()
    counts = series.value_counts(sort=False)
    return {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}


def bin_edges_for(values: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges for finite ``values`` (the outer ``±inf`` edges are implied).

    Continuous features (more than :data:`DISCRETE_MAX_UNIQUE` distinct values)
    get the deduplicated reference quantiles at ``1/bins, ..., (bins-1)/bins``, except
    that a value holding at least ``1/bins`` of them (a point mass) gets a bin of its
    own and the other values ``max(bins − masses, 2)`` quantile bins.
    Discrete features get a bin for each distinct value plus an empty bin below
    the smallest and above the largest, so that any new value outside the
    reference range falls in a bin of its own.

    >>> bin_edges_for(np.array([0.0, 1.0, 1.0, 2.0]), 10).tolist()
    [0.0, 0.5, 1.5, 2.0000000000000004]
    >>> bin_edges_for(np.arange(100.0), 4).tolist()
    [24.0, 49.0, 74.0]
    >>> bin_edges_for(np.r_[np.zeros(90), np.arange(1.0, 31.0)], 4).tolist()   # 75 % zeros
    [0.0, 5e-324, 10.0, 20.0]
    """
    if values.size == 0:
        return np.empty(0, dtype=np.float64)
    unique = np.unique(values)
    if unique.size <= DISCRETE_MAX_UNIQUE:
        mids = (unique[:-1] + unique[1:]) / 2.0
        edges = np.concatenate(([unique[0]], mids, [np.nextafter(unique[-1], np.inf)]))
        return np.unique(edges)
    # a value holding a bin's share or more (the zeros of a zero-inflated amount) would collapse the
    # quantile edges around it and leave the rest of the distribution in one bin: it gets a bin of its
    # own, [value, next float), and the other values get quantile bins of their own
    values_u, counts = np.unique(values, return_counts=True)
    heavy = values_u[counts * bins >= values.size]
    if heavy.size:
        rest = values[~np.isin(values, heavy)]
        own = np.concatenate((heavy, np.nextafter(heavy, np.inf)))
        if rest.size == 0:
            return np.unique(own)
        k = max(bins - int(heavy.size), 2)
        qs = np.quantile(rest, np.linspace(0.0, 1.0, k + 1)[1:-1], method="inverted_cdf")
        return np.unique(np.concatenate((own, qs.astype(np.float64))))
    qs = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf")
    return np.unique(qs.astype(np.float64))


def bin_index(inner_edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin of each (non-NaN) value for bins ``[e_i, e_{i+1})`` with outer edges ``±inf``.

    There are ``len(inner_edges) + 1`` bins; ``-inf`` lands in the first and
    ``+inf`` in the last.
    """
    return np.searchsorted(inner_edges, values, side="right")


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True, slots=True)
class NumericProfile:
    """Reference summary of one numeric column.

    ``n`` counts rows, ``missing_rate`` the share of them that were missing
    (NaN, or ±inf, which is never a valid reference value). ``mean``/``std``
    (population std, ``ddof=0``, as Evidently's Wasserstein normaliser),
    ``min``/``max`` and ``n_unique`` are over the finite values and ``None``
    when there are none. ``inner_edges`` are the bin edges without the implied
    outer ``-inf``/``+inf``; ``counts`` has one more entry than ``inner_edges``.
    ``sample`` is a seeded random sample (without replacement) of at most
    ``sample_size`` finite values, the whole column when it fits.
    """

    dtype: str
    n: int
    missing_rate: float
    min: float | None
    max: float | None
    mean: float | None
    std: float | None
    n_unique: int
    inner_edges: tuple[float, ...]
    counts: tuple[int, ...]
    sample: tuple[float, ...]

    @property
    def n_valid(self) -> int:
        """Number of finite reference values (the sum of ``counts``)."""
        return int(sum(self.counts))

    @property
    def bin_edges(self) -> np.ndarray:
        """All bin edges, with the outer ``-inf`` and ``+inf``."""
        return np.concatenate(([-np.inf], np.asarray(self.inner_edges, dtype=np.float64), [np.inf]))

    @classmethod
    def from_values(
        cls, values: Any, *, bins: int = 10, sample_size: int = 5000, seed: int = 0
    ) -> NumericProfile:
        """Profile an array-like of numbers (``None``/NaN/±inf count as missing)."""
        series = pd.Series(values)
        dtype = str(series.dtype)
        arr = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        finite = arr[np.isfinite(arr)]
        n = int(arr.shape[0])
        inner = bin_edges_for(finite, bins)
        counts = np.bincount(bin_index(inner, finite), minlength=inner.size + 1) if finite.size else np.zeros(
            inner.size + 1, dtype=np.int64
        )
        if finite.size > sample_size:
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(finite.size, size=sample_size, replace=False))
            sample = finite[idx]
        else:
            sample = finite
        has = finite.size > 0
        return cls(
            dtype=dtype,
            n=n,
            missing_rate=float((n - finite.size) / n) if n else 0.0,
            min=float(finite.min()) if has else None,
            max=float(finite.max()) if has else None,
            mean=float(finite.mean()) if has else None,
            std=float(finite.std()) if has else None,
            n_unique=int(np.unique(finite).size),
            inner_edges=tuple(float(e) for e in inner),
            counts=tuple(int(c) for c in counts),
            sample=tuple(float(v) for v in sample),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``None`` for undefined statistics)."""
        return {
            "dtype": self.dtype,
            "n": self.n,
            "missing_rate": self.missing_rate,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "n_unique": self.n_unique,
            "inner_edges": list(self.inner_edges),
            "counts": list(self.counts),
            "sample": list(self.sample),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NumericProfile:
        """Inverse of :meth:`to_dict`."""
        return cls(
            dtype=str(data["dtype"]),
            n=int(data["n"]),
            missing_rate=float(data["missing_rate"]),
            min=_float_or_none(data["min"]),
            max=_float_or_none(data["max"]),
            mean=_float_or_none(data["mean"]),
            std=_float_or_none(data["std"]),
            n_unique=int(data["n_unique"]),
            inner_edges=tuple(float(e) for e in data["inner_edges"]),
            counts=tuple(int(c) for c in data["counts"]),
            sample=tuple(float(v) for v in data["sample"]),
        )


@dataclass(frozen=True, slots=True)
class CategoricalProfile:
    """Reference summary of one categorical column: category (as ``str``) -> count."""

    n: int
    missing_rate: float
    counts: Mapping[str, int]

    @property
    def n_unique(self) -> int:
        """Number of distinct reference categories."""
        return len(self.counts)

    @property
    def n_valid(self) -> int:
        """Number of non-missing reference values."""
        return int(sum(self.counts.values()))

    @classmethod
    def from_values(cls, values: Any) -> CategoricalProfile:
        """Profile an array-like of categories (``None``/NaN count as missing)."""
        labels = as_class_labels(np.asarray(pd.Series(values).to_numpy(dtype=object), dtype=object))
        n = int(labels.shape[0])
        counts = _counts_dict(labels)
        missing = n - sum(counts.values())
        return cls(n=n, missing_rate=float(missing / n) if n else 0.0, counts=counts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"n": self.n, "missing_rate": self.missing_rate, "counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoricalProfile:
        """Inverse of :meth:`to_dict`."""
        return cls(
            n=int(data["n"]),
            missing_rate=float(data["missing_rate"]),
            counts={str(k): int(v) for k, v in data["counts"].items()},
        )


@dataclass(frozen=True, slots=True)
class ReferenceProfile:
    """Everything the detectors need to know about the training data.

    ``labels``/``predictions`` are class -> count (classification tasks);
    ``target_profile``/``prediction_profile`` are numeric profiles (regression);
    ``score_profile`` profiles the score column. ``sample`` is columnar:
    column -> list of values (``float``/``str``/``int``/``None``), all lists of
    the same length (at most ``sample_size`` rows).
    """

    model_id: str
    task: str
    numeric: Mapping[str, NumericProfile]
    categorical: Mapping[str, CategoricalProfile]
    n: int
    target: str | None = None
    prediction: str | None = None
    score: str | None = None
    attributes: tuple[str, ...] = ()
    labels: Mapping[str, int] | None = None
    target_profile: NumericProfile | None = None
    predictions: Mapping[str, int] | None = None
    prediction_profile: NumericProfile | None = None
    score_profile: NumericProfile | None = None
    sample: Mapping[str, list[Any]] = field(default_factory=dict)
    version: int = PROFILE_VERSION

    @property
    def feature_types(self) -> dict[str, str]:
        """Feature name -> ``'numeric'`` or ``'categorical'``, in column order."""
        out = {name: "numeric" for name in self.numeric}
        out.update({name: "categorical" for name in self.categorical})
        order = [c for c in self.sample] or list(out)
        ranked = {name: i for i, name in enumerate(order)}
        return dict(sorted(out.items(), key=lambda kv: ranked.get(kv[0], len(ranked))))

    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        *,
        model_id: str,
        features: Mapping[str, str] | None = None,
        target: str | None = None,
        prediction: str | None = None,
        score: str | None = None,
        attributes: Sequence[str] = (),
        task: str = "binary",
        bins: int = 10,
        sample_size: int = 5000,
        seed: int = 0,
    ) -> ReferenceProfile:
        """Profile a training frame.

        ``features`` maps a column to ``'numeric'`` or ``'categorical'``; when
        ``None`` every column other than target/prediction/score/attributes is a
        feature, numeric when its dtype is numeric (not bool), else categorical.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if sample_size < 0:
            raise ValueError(f"sample_size must be >= 0, got {sample_size}")
        special = [c for c in (target, prediction, score) if c is not None] + list(attributes)
        missing_cols = [c for c in special if c not in df.columns]
        if features is None:
            features = {
                str(c): (
                    "numeric"
                    if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
                    else "categorical"
                )
                for c in df.columns
                if c not in special
            }
        missing_cols += [c for c in features if c not in df.columns]
        if missing_cols:
            raise ProfileMismatch(f"columns not in the data: {', '.join(map(str, missing_cols))}")
        bad = {k: v for k, v in features.items() if v not in FEATURE_TYPES}
        if bad:
            raise ValueError(f"feature types must be 'numeric' or 'categorical': {bad}")

        numeric = {
            name: NumericProfile.from_values(df[name], bins=bins, sample_size=sample_size, seed=seed)
            for name, kind in features.items()
            if kind == "numeric"
        }
        categorical = {
            name: CategoricalProfile.from_values(df[name]) for name, kind in features.items() if kind == "categorical"
        }
        regression = task == "regression"

        def num(col: str | None) -> NumericProfile | None:
            if col is None:
                return None
            return NumericProfile.from_values(df[col], bins=bins, sample_size=sample_size, seed=seed)

        def cls_counts(col: str | None) -> dict[str, int] | None:
            if col is None:
                return None
            return _counts_dict(as_class_labels(df[col].to_numpy()))

        columns = list(features) + [c for c in special if c not in features]
        return cls(
            model_id=model_id,
            task=task,
            numeric=numeric,
            categorical=categorical,
            n=int(len(df)),
            target=target,
            prediction=prediction,
            score=score,
            attributes=tuple(attributes),
            labels=None if regression else cls_counts(target),
            target_profile=num(target) if regression else None,
            predictions=None if regression else cls_counts(prediction),
            prediction_profile=num(prediction) if regression else None,
            score_profile=num(score),
            sample=_row_sample(df, columns, numeric=set(numeric), size=sample_size, seed=seed),
        )

    def check_features(self, features: Mapping[str, str]) -> None:
        """Raise :class:`ProfileMismatch` naming every configured feature the profile
        lacks and every feature whose configured type differs from the profile's."""
        types = self.feature_types
        missing = [name for name in features if name not in types]
        mismatched = [
            f"{name} (configured {kind}, profile {types[name]})"
            for name, kind in features.items()
            if name in types and types[name] != kind
        ]
        problems = []
        if missing:
            problems.append(f"missing from profile: {', '.join(missing)}")
        if mismatched:
            problems.append(f"type mismatch: {', '.join(mismatched)}")
        if problems:
            raise ProfileMismatch(f"reference profile for {self.model_id!r}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``json.dumps`` works on it and :meth:`from_dict` inverts it."""
        return {
            "version": self.version,
            "model_id": self.model_id,
            "task": self.task,
            "n": self.n,
            "target": self.target,
            "prediction": self.prediction,
            "score": self.score,
            "attributes": list(self.attributes),
            "numeric": {k: v.to_dict() for k, v in self.numeric.items()},
            "categorical": {k: v.to_dict() for k, v in self.categorical.items()},
            "labels": None if self.labels is None else dict(self.labels),
            "target_profile": None if self.target_profile is None else self.target_profile.to_dict(),
            "predictions": None if self.predictions is None else dict(self.predictions),
            "prediction_profile": None if self.prediction_profile is None else self.prediction_profile.to_dict(),
            "score_profile": None if self.score_profile is None else self.score_profile.to_dict(),
            "sample": {k: list(v) for k, v in self.sample.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """Inverse of :meth:`to_dict`; rejects unknown format versions."""
        version = int(data.get("version", -1))
        if version != PROFILE_VERSION:
            raise ProfileMismatch(f"unsupported profile version {version} (expected {PROFILE_VERSION})")

        def opt_num(key: str) -> NumericProfile | None:
            value = data.get(key)
            return None if value is None else NumericProfile.from_dict(value)

        def opt_counts(key: str) -> dict[str, int] | None:
            value = data.get(key)
            return None if value is None else {str(k): int(v) for k, v in value.items()}

        return cls(
            model_id=str(data["model_id"]),
            task=str(data["task"]),
            n=int(data["n"]),
            target=data.get("target"),
            prediction=data.get("prediction"),
            score=data.get("score"),
            attributes=tuple(data.get("attributes", ())),
            numeric={k: NumericProfile.from_dict(v) for k, v in data["numeric"].items()},
            categorical={k: CategoricalProfile.from_dict(v) for k, v in data["categorical"].items()},
            labels=opt_counts("labels"),
            target_profile=opt_num("target_profile"),
            predictions=opt_counts("predictions"),
            prediction_profile=opt_num("prediction_profile"),
            score_profile=opt_num("score_profile"),
            sample={k: list(v) for k, v in data.get("sample", {}).items()},
            version=version,
        )

    def to_json(self) -> str:
        """The profile as a JSON document (strict: no NaN/Infinity)."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def sample_frame(self) -> pd.DataFrame:
        """The row sample as a DataFrame (missing values as NaN/None)."""
        return pd.DataFrame({k: list(v) for k, v in self.sample.items()})


def _row_sample(
    df: pd.DataFrame, columns: Sequence[str], *, numeric: set[str], size: int, seed: int
) -> dict[str, list[Any]]:
    """A seeded sample of at most ``size`` whole rows, in the frame's order, as JSON-able lists."""
    if len(df) > size:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(df), size=size, replace=False))
        part = df.iloc[rows]
    else:
        part = df
    out: dict[str, list[Any]] = {}
    for col in columns:
        series = part[col]
        if col in numeric:
            arr = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            out[str(col)] = [float(v) if math.isfinite(v) else None for v in arr.tolist()]
        else:
            out[str(col)] = [_json_scalar(v) for v in series.tolist()]
    return out


def _json_scalar(value: Any) -> Any:
    """A JSON-safe Python scalar: numpy scalars unwrapped, NaN/inf/NA -> None."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None if _is_na(value) else str(value)
