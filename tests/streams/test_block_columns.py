"""A block's columns are cached per evaluation, by the evaluation object itself, not by ``id()``."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import streams.evaluation
from streams.config import Config
from streams.evaluation import Evaluation, PredictionBlock
from streams.events import Prediction


def two_evaluations() -> tuple[Evaluation, Evaluation]:
    """Two models reading different features of the same events."""
    cfg = Config.from_mapping({"models": [
        {"id": "a", "task": "binary", "positive_label": 1, "features": {"x": "numeric"}},
        {"id": "b", "task": "binary", "positive_label": 1, "features": {"c": "categorical"}}]}, environ={})
    return Evaluation(cfg.models["a"], None), Evaluation(cfg.models["b"], None)


def block() -> PredictionBlock:
    return PredictionBlock([Prediction(prediction_id=f"p{i}", model_id="a", model_version="1", timestamp=float(i),
                                       features={"x": float(i), "c": "u" if i % 2 else None}, prediction=1)
                            for i in range(4)])


def test_an_evaluation_with_a_reused_id_reads_its_own_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPython hands a collected object's id to the next object allocated there: every evaluation
    # getting the same id is the case of one built after another died (a model updated, a config reloaded)
    monkeypatch.setattr(streams.evaluation, "id", lambda _obj: 1, raising=False)
    a, b = two_evaluations()
    rows = block()
    assert set(a.columns(rows).frame.numeric) == {"x"}
    cols = b.columns(rows).frame
    assert (set(cols.numeric), set(cols.categorical)) == (set(), {"c"})
    assert cols.categorical["c"].tolist() == [None, "u", None, "u"]
    np.testing.assert_array_equal(a.columns(rows, np.array([1, 3])).frame.numeric["x"], [1.0, 3.0])


def test_a_collected_evaluation_leaves_no_columns_behind() -> None:
    # a long-lived block (stage 1's empty block lives as long as the process) does not keep the
    # columns of every evaluation that ever read it
    a, b = two_evaluations()
    rows = block()
    a.columns(rows)
    b.columns(rows)
    assert len(rows._columns) == 2
    del a
    gc.collect()
    assert len(rows._columns) == 1
    assert set(b.columns(rows).frame.categorical) == {"c"}
