"""Trainers: what the retrain worker fits on labelled pairs.

A :class:`Trainer` turns a feature frame and its labels into a
:class:`TrainedModel`; the worker never looks inside either. The default,
``sklearn-logistic`` (:class:`SklearnLogisticTrainer`), is a scikit-learn
pipeline: median-imputed, standardised numeric features and one-hot encoded
categorical features (unknown categories ignored at prediction time) into a
logistic regression (``binary``/``multiclass``) or a ridge regression
(``regression``). It is deterministic: the same data gives the same model.

Choosing a trainer (``retrain.trainer`` in the config) — either a name from
:data:`TRAINERS`, or your own class by dotted path ``"package.module:ClassName"``.
The class is imported and called without arguments; a module attribute that
is already a trainer object (has ``fit``) is used as it is. Your trainer only
has to follow the :class:`Trainer` protocol, and the model it returns the
:class:`TrainedModel` protocol; both are pickled into the model file the worker
writes, so they must be importable (module-level classes) where the file is
loaded.

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(0, 1, 400)
>>> frame = pd.DataFrame({"x": x, "colour": np.where(x > 0, "red", "blue")})
>>> labels = pd.Series(np.where(x > 0, "1", "0"))
>>> model = load_trainer("sklearn-logistic").fit(frame, labels, task="binary", numeric=["x"],
...                                               categorical=["colour"], positive_label="1")
>>> model.predict(frame.head(3)).tolist(), model.predict(frame.head(3)).tolist() == labels.head(3).tolist()
(['1', '0', '1'], True)
>>> bool((model.predict_proba_positive(frame) > 0.5).mean() == (labels == "1").mean())
True
>>> model.describe()["estimator"]
'LogisticRegression'
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

from detectors.profile import as_class_labels, category_text

TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")
MISSING_CATEGORY = "__missing__"
"""What a missing categorical value becomes before one-hot encoding."""

ERR_UNKNOWN = "unknown trainer {name!r}: use one of {choices} or a dotted path 'package.module:ClassName'"
ERR_IMPORT = "trainer {spec!r}: cannot import module {module!r}: {error}"
ERR_ATTRIBUTE = "trainer {spec!r}: module {module!r} has no attribute {name!r}"
ERR_NOT_TRAINER = "trainer {spec!r}: {value!r} has no fit() method (see retrain.trainers.Trainer)"
ERR_BUILD = "trainer {spec!r}: calling {value!r} without arguments failed: {error}"
ERR_TASK = "task must be one of {choices}, got {value!r}"
ERR_COLUMNS = "columns not in the feature frame: {columns}"
ERR_EMPTY = "no features: give at least one numeric or categorical column"
ERR_LENGTH = "features ({n} rows) and labels ({m} rows) differ in length"
ERR_SKLEARN = "the sklearn-logistic trainer needs scikit-learn: pip install scikit-learn"


class TrainerError(ValueError):
    """A trainer cannot be found, built, or cannot train on the data given; the message says why."""


@runtime_checkable
class TrainedModel(Protocol):
    """A fitted model, as the worker uses it (and as it is pickled into the model file)."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predictions for the rows of ``frame``: class labels as ``str`` (classification) or floats."""
        ...

    def predict_proba_positive(self, frame: pd.DataFrame) -> np.ndarray | None:
        """P(positive class) per row for a binary model; ``None`` when the model has no such score."""
        ...

    def describe(self) -> dict[str, Any]:
        """A small JSON-able description (estimator, parameters, classes) for the model-update event."""
        ...


@runtime_checkable
class Trainer(Protocol):
    """Fits a :class:`TrainedModel` on a feature frame and its labels.

    ``labels`` are ``str`` class labels for ``binary``/``multiclass`` (as the
    monitor sees them: ``1`` arrives as ``"1"``) and floats for ``regression``.
    ``numeric``/``categorical`` name the feature columns of ``features`` (numeric
    columns are float with ``NaN`` where missing; categorical ones ``str`` or
    ``None``). ``positive_label`` is the model's positive class (binary): the
    class whose probability :meth:`TrainedModel.predict_proba_positive` returns.
    Raise :class:`TrainerError` (or any exception) when the data cannot be
    trained on; the worker reports it as a failed retrain.
    """

    def fit(
        self,
        features: pd.DataFrame,
        labels: pd.Series,
        *,
        task: str,
        numeric: Sequence[str],
        categorical: Sequence[str],
        positive_label: str | None = None,
    ) -> TrainedModel: ...


# -- the default trainer ---------------------------------------------------------------


def prepare_frame(frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]) -> pd.DataFrame:
    """The feature columns in a fixed order, numeric as float64 (``NaN`` when missing or not a
    number), categorical as ``str`` with missing values as :data:`MISSING_CATEGORY`.

    >>> prepare_frame(pd.DataFrame({"a": ["1", None], "c": [None, 2]}), ["a"], ["c"]).values.tolist()
    [[1.0, '__missing__'], [nan, '2']]
    """
    missing = [c for c in [*numeric, *categorical] if c not in frame.columns]
    if missing:
        raise TrainerError(ERR_COLUMNS.format(columns=", ".join(map(str, missing))))
    out = {}
    for name in numeric:
        out[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64).to_numpy()
    for name in categorical:
        values = frame[name].astype(object)
        text = [MISSING_CATEGORY if (t := category_text(v)) is None else t for v in values.tolist()]
        out[name] = np.asarray(text, dtype=object)
    return pd.DataFrame(out, index=frame.index, columns=[*numeric, *categorical])




class SklearnModel:
    """A fitted scikit-learn pipeline behind the :class:`TrainedModel` protocol."""

    def __init__(
        self,
        pipeline: Any,
        *,
        task: str,
        numeric: Sequence[str],
        categorical: Sequence[str],
        positive_label: str | None,
        params: Mapping[str, Any],
    ) -> None:
        self.pipeline = pipeline
        self.task = task
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.positive_label = positive_label
        self.params = dict(params)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class labels in the estimator's order (empty for regression)."""
        if self.task == "regression":
            return ()
        return tuple(str(c) for c in self.pipeline.classes_)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        x = prepare_frame(frame, self.numeric, self.categorical)
        out = self.pipeline.predict(x)
        if self.task == "regression":
            return np.asarray(out, dtype=np.float64)
        return np.asarray([str(v) for v in out], dtype=object)

    def predict_proba_positive(self, frame: pd.DataFrame) -> np.ndarray | None:
        if self.task != "binary" or self.positive_label is None or self.positive_label not in self.classes:
            return None
        x = prepare_frame(frame, self.numeric, self.categorical)
        column = self.classes.index(self.positive_label)
        return np.asarray(self.pipeline.predict_proba(x)[:, column], dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        estimator = self.pipeline.steps[-1][1]
        return {
            "estimator": type(estimator).__name__,
            "params": dict(self.params),
            "task": self.task,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "classes": list(self.classes),
            "positive_label": self.positive_label,
        }


class SklearnLogisticTrainer:
    """Logistic regression (classification) or ridge regression (regression) on
    imputed, standardised numeric and one-hot categorical features.

    ``C`` is the inverse regularisation strength of the logistic regression,
    ``alpha`` the ridge penalty; ``random_state`` fixes every random choice.
    """

    name = "sklearn-logistic"

    def __init__(self, *, C: float = 1.0, alpha: float = 1.0, max_iter: int = 1000, random_state: int = 0) -> None:
        self.C = C
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(
        self,
        features: pd.DataFrame,
        labels: pd.Series,
        *,
        task: str,
        numeric: Sequence[str],
        categorical: Sequence[str],
        positive_label: str | None = None,
    ) -> SklearnModel:
        if task not in TASKS:
            raise TrainerError(ERR_TASK.format(choices=TASKS, value=task))
        numeric, categorical = list(numeric), list(categorical)
        if not numeric and not categorical:
            raise TrainerError(ERR_EMPTY)
        if len(features) != len(labels):
            raise TrainerError(ERR_LENGTH.format(n=len(features), m=len(labels)))
        try:
            from sklearn.compose import ColumnTransformer
            from sklearn.impute import SimpleImputer
            from sklearn.linear_model import LogisticRegression, Ridge
            from sklearn.pipeline import Pipeline, make_pipeline
            from sklearn.preprocessing import OneHotEncoder, StandardScaler
        except ImportError:
            raise TrainerError(ERR_SKLEARN) from None

        x = prepare_frame(features, numeric, categorical)
        parts = []
        if numeric:
            # keep_empty_features: a column with no value at all stays (as 0) so the shape is stable.
            parts.append(("numeric", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                                                   StandardScaler()), numeric))
        if categorical:
            parts.append(("categorical", OneHotEncoder(handle_unknown="ignore"), categorical))
        columns = ColumnTransformer(parts)
        if task == "regression":
            y = pd.to_numeric(pd.Series(labels), errors="coerce").to_numpy(dtype=np.float64)
            if not np.isfinite(y).all():
                raise TrainerError("regression labels must be finite numbers")
            estimator: Any = Ridge(alpha=self.alpha, random_state=self.random_state)
            params = {"alpha": self.alpha}
        else:
            y = as_class_labels(pd.Series(labels).to_numpy(dtype=object))
            if any(v is None for v in y):
                raise TrainerError("classification labels must not be missing")
            found = sorted(set(y.tolist()))
            if len(found) < 2:
                raise TrainerError(f"classification needs at least two classes in the labels, found {found}")
            estimator = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
            params = {"C": self.C, "max_iter": self.max_iter}
        pipeline = Pipeline([("columns", columns), ("estimator", estimator)])
        pipeline.fit(x, y)
        return SklearnModel(pipeline, task=task, numeric=numeric, categorical=categorical,
                            positive_label=None if positive_label is None else str(positive_label),
                            params={**params, "random_state": self.random_state})


TRAINERS: Mapping[str, Callable[[], Trainer]] = {
    "sklearn-logistic": SklearnLogisticTrainer,
}
"""Trainer name -> class (called without arguments). One explicit dict; nothing registers itself."""


def load_trainer(spec: str | Trainer) -> Trainer:
    """The trainer for a config value: a name from :data:`TRAINERS`, a dotted path
    ``"package.module:ClassName"`` (or ``"package.module:object"``), or a trainer object.

    >>> type(load_trainer("sklearn-logistic")).__name__
    'SklearnLogisticTrainer'
    >>> load_trainer("no-such-trainer")
    Traceback (most recent call last):
    ...
    retrain.trainers.TrainerError: unknown trainer 'no-such-trainer': use one of ['sklearn-logistic'] or a dotted path 'package.module:ClassName'
    """
    if not isinstance(spec, str):
        if not callable(getattr(spec, "fit", None)):
            raise TrainerError(ERR_NOT_TRAINER.format(spec=spec, value=spec))
        return spec
    if spec in TRAINERS:
        return TRAINERS[spec]()
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise TrainerError(ERR_UNKNOWN.format(name=spec, choices=sorted(TRAINERS)))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainerError(ERR_IMPORT.format(spec=spec, module=module_name, error=exc)) from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise TrainerError(ERR_ATTRIBUTE.format(spec=spec, module=module_name, name=attribute))
        value = getattr(value, part)
    if isinstance(value, type):
        try:
            value = value()
        except Exception as exc:  # the user's constructor: report, whatever it raised
            raise TrainerError(ERR_BUILD.format(spec=spec, value=value, error=exc)) from None
    if not callable(getattr(value, "fit", None)):
        raise TrainerError(ERR_NOT_TRAINER.format(spec=spec, value=value))
    return value


__all__ = [
    "MISSING_CATEGORY",
    "SklearnLogisticTrainer",
    "SklearnModel",
    "TRAINERS",
    "TrainedModel",
    "Trainer",
    "TrainerError",
    "load_trainer",
    "prepare_frame",
]
