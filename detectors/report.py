"""The human report attached to every retrain job: Evidently 0.7 HTML.

:func:`evidently_report_html` compares one window of production data with the
model's reference data and returns a standalone HTML page: Evidently's
``DataDriftPreset`` over the features (and the prediction), and, when the window
carries ground-truth labels, ``ClassificationPreset`` or ``RegressionPreset`` on
the labelled rows.

The function is pure: data frames in, an HTML string out. Writing the file (and
deciding where) is the caller's business. An Evidently report costs about half
a second on a 1,000 x 10 window, so it is made once per retrain job, never per
window.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from detectors.base import DetectorError

Task = Literal["binary", "multiclass", "regression"]

TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")

ERR_TASK = "task must be one of {choices}, got {task!r}"
ERR_COLUMN = "column {column!r} ({role}) is missing from the {frame} frame"
ERR_NO_FEATURES = "a report needs at least one numeric or categorical feature"
ERR_EMPTY = "the {frame} frame has no rows"
ERR_OVERLAP = "column {column!r} is listed as both numeric and categorical"


def import_evidently() -> None:
    """Import the Evidently modules a report uses, and nothing else.

    Importing Evidently costs about 8-10 s of a loaded 2-core machine, about three times the rendering
    of a report: a first report made on demand (a retrain job) waited for it. A caller that will
    make reports can pay it ahead, in the background (the worker does, at start).
    """
    import evidently  # noqa: F401
    import evidently.core.metric_types  # noqa: F401
    import evidently.legacy.renderers.html_widgets  # noqa: F401
    import evidently.presets  # noqa: F401


def evidently_report_html(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    target: str | None,
    prediction: str | None,
    task: Task,
    positive_label: Any = 1,
) -> str:
    """Render an Evidently HTML report of ``current`` against ``reference``.

    - Data drift (``DataDriftPreset``) over ``numeric`` and ``categorical`` features
      and, when given, the ``prediction`` column (categorical for classification,
      numeric for regression).
    - Quality (``ClassificationPreset`` for ``binary``/``multiclass``,
      ``RegressionPreset`` for ``regression``) when ``target`` and ``prediction``
      are given and both frames have at least one row with a label; rows without
      a label are left out of the quality part only.

    Raises :class:`~detectors.base.DetectorError` on an unknown task, a missing
    column, an empty frame or no features.

    >>> rng = np.random.default_rng(7)
    >>> def window(n, shift):
    ...     return pd.DataFrame({"age": rng.normal(40 + shift, 5, n),
    ...                          "channel": rng.choice(["web", "app"], n),
    ...                          "label": rng.integers(0, 2, n),
    ...                          "prediction": rng.integers(0, 2, n)})
    >>> html = evidently_report_html(window(60, 0), window(40, 8), numeric=["age"],
    ...     categorical=["channel"], target="label", prediction="prediction", task="binary")
    >>> html.lstrip().lower().startswith("<html") or "<html" in html[:1000].lower()
    True
    >>> "age" in html and "channel" in html
    True
    """
    if task not in TASKS:
        raise DetectorError(ERR_TASK.format(choices=TASKS, task=task))
    numeric = list(numeric)
    categorical = list(categorical)
    if not numeric and not categorical:
        raise DetectorError(ERR_NO_FEATURES)
    for column in set(numeric) & set(categorical):
        raise DetectorError(ERR_OVERLAP.format(column=column))
    for name, frame in (("reference", reference), ("current", current)):
        if len(frame) == 0:
            raise DetectorError(ERR_EMPTY.format(frame=name))
        for role, columns in (("numeric", numeric), ("categorical", categorical)):
            for column in columns:
                if column not in frame.columns:
                    raise DetectorError(ERR_COLUMN.format(column=column, role=role, frame=name))
        if prediction is not None and prediction not in frame.columns:
            raise DetectorError(ERR_COLUMN.format(column=prediction, role="prediction", frame=name))

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    drift_numeric = list(numeric)
    drift_categorical = list(categorical)
    if prediction is not None:
        (drift_numeric if task == "regression" else drift_categorical).append(prediction)
    drift_columns = drift_numeric + drift_categorical
    definition = DataDefinition(numerical_columns=drift_numeric, categorical_columns=drift_categorical)
    snapshots = [
        Report([DataDriftPreset(columns=drift_columns)]).run(
            Dataset.from_pandas(_select(current, drift_columns), data_definition=definition),
            Dataset.from_pandas(_select(reference, drift_columns), data_definition=definition),
        )
    ]

    quality = _quality_snapshot(
        reference, current, target=target, prediction=prediction, task=task, positive_label=positive_label
    )
    if quality is not None:
        snapshots.append(quality)
    return _render(snapshots)


def _select(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame.loc[:, columns].reset_index(drop=True)


def _labelled(frame: pd.DataFrame, target: str, prediction: str) -> pd.DataFrame:
    if target not in frame.columns:
        return frame.iloc[0:0]
    out = frame.loc[frame[target].notna() & frame[prediction].notna(), [target, prediction]]
    return out.reset_index(drop=True)


def _as_labels(series: pd.Series) -> pd.Series:
    """Integral floats (labels that went through a NaN) back to ints; else unchanged."""
    if pd.api.types.is_float_dtype(series) and np.all(np.mod(series.to_numpy(), 1) == 0):
        return series.astype(np.int64)
    return series


def _quality_snapshot(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    target: str | None,
    prediction: str | None,
    task: Task,
    positive_label: Any,
) -> Any | None:
    if target is None or prediction is None:
        return None
    ref = _labelled(reference, target, prediction)
    cur = _labelled(current, target, prediction)
    if len(ref) == 0 or len(cur) == 0:
        return None

    from evidently import (
        BinaryClassification,
        DataDefinition,
        Dataset,
        MulticlassClassification,
        Regression,
        Report,
    )
    from evidently.presets import ClassificationPreset, RegressionPreset

    if task == "regression":
        definition = DataDefinition(
            numerical_columns=[target, prediction],
            regression=[Regression(target=target, prediction=prediction)],
        )
        preset = RegressionPreset()
    else:
        ref = ref.assign(**{target: _as_labels(ref[target]), prediction: _as_labels(ref[prediction])})
        cur = cur.assign(**{target: _as_labels(cur[target]), prediction: _as_labels(cur[prediction])})
        if task == "binary":
            classification: Any = BinaryClassification(
                target=target, prediction_labels=prediction, pos_label=positive_label
            )
        else:
            classification = MulticlassClassification(target=target, prediction_labels=prediction)
        definition = DataDefinition(categorical_columns=[target, prediction], classification=[classification])
        preset = ClassificationPreset()
    return Report([preset]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )


def _render(snapshots: list[Any]) -> str:
    """One standalone HTML page with the widgets of every snapshot, in order."""
    if len(snapshots) == 1:
        return snapshots[0].get_html_str(as_iframe=False)
    from evidently.core.metric_types import render_widgets
    from evidently.legacy.renderers.html_widgets import group_widget

    widgets = [w for snapshot in snapshots for w in snapshot._widgets]
    tests = [w for snapshot in snapshots for w in snapshot._tests_widgets]
    return render_widgets([group_widget(title="", widgets=widgets)] + tests, as_iframe=False)
