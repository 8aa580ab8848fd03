"""Trainers: the default sklearn trainer on synthetic problems, and finding trainers by name or dotted path."""

from __future__ import annotations

import pickle
import textwrap
import uuid

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, r2_score

from retrain.trainers import (
    MISSING_CATEGORY,
    TRAINERS,
    SklearnLogisticTrainer,
    TrainedModel,
    Trainer,
    TrainerError,
    load_trainer,
    prepare_frame,
)

NUMERIC = ["x1", "x2"]
CATEGORICAL = ["colour"]


def synthetic(n: int, seed: int, *, task: str = "binary") -> tuple[pd.DataFrame, pd.Series]:
    """Two numeric features and a categorical one; the target is a (nearly) deterministic function of them."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(0, 1, n), rng.normal(0, 1, n)
    colour = rng.choice(["red", "green", "blue"], n)
    shift = np.select([colour == "red", colour == "green"], [1.5, -1.5], 0.0)
    z = 2.0 * x1 - 1.0 * x2 + shift
    frame = pd.DataFrame({"x1": x1, "x2": x2, "colour": colour})
    if task == "binary":
        return frame, pd.Series(np.where(z > 0, "1", "0"))
    if task == "multiclass":
        return frame, pd.Series(np.select([z < -1.0, z > 1.0], ["low", "high"], "mid"))
    return frame, pd.Series(3.0 * z + 10.0 + rng.normal(0, 0.3, n))


def fit(task: str, seed: int = 0, n: int = 2000):
    frame, labels = synthetic(n, seed, task=task)
    model = SklearnLogisticTrainer().fit(frame, labels, task=task, numeric=NUMERIC, categorical=CATEGORICAL,
                                         positive_label="1" if task == "binary" else None)
    return model


def test_binary_separable_problem_is_learned() -> None:
    model = fit("binary")
    test, truth = synthetic(1000, seed=1)
    predicted = model.predict(test)
    assert predicted.dtype == object and set(predicted) <= {"0", "1"}
    assert accuracy_score(truth, predicted) > 0.9
    proba = model.predict_proba_positive(test)
    assert proba is not None and proba.shape == (1000,) and ((proba >= 0) & (proba <= 1)).all()
    assert accuracy_score(truth, np.where(proba >= 0.5, "1", "0")) > 0.9
    assert isinstance(model, TrainedModel)


def test_multiclass_problem_is_learned_and_has_no_positive_score() -> None:
    model = fit("multiclass")
    test, truth = synthetic(1000, seed=1, task="multiclass")
    assert accuracy_score(truth, model.predict(test)) > 0.9
    assert model.predict_proba_positive(test) is None
    assert model.describe()["classes"] == ["high", "low", "mid"]


def test_regression_r2_above_0_9() -> None:
    model = fit("regression")
    test, truth = synthetic(1000, seed=1, task="regression")
    predicted = model.predict(test)
    assert predicted.dtype == np.float64
    assert r2_score(truth, predicted) > 0.9
    assert model.predict_proba_positive(test) is None
    assert model.describe()["estimator"] == "Ridge"


def test_deterministic() -> None:
    test, _ = synthetic(200, seed=3)
    a, b = fit("binary"), fit("binary")
    np.testing.assert_array_equal(a.predict_proba_positive(test), b.predict_proba_positive(test))


def test_missing_values_and_unknown_categories() -> None:
    frame, labels = synthetic(1000, seed=0)
    frame.loc[::7, "x1"] = np.nan
    frame["colour"] = frame["colour"].astype(object)
    frame.loc[::11, "colour"] = None
    model = SklearnLogisticTrainer().fit(frame, labels, task="binary", numeric=NUMERIC, categorical=CATEGORICAL,
                                         positive_label="1")
    unseen = pd.DataFrame({"x1": [np.nan, 1.0], "x2": [0.0, None], "colour": ["purple", None]})
    assert len(model.predict(unseen)) == 2
    assert np.isfinite(model.predict_proba_positive(unseen)).all()


def test_positive_label_selects_the_score_column() -> None:
    frame, labels = synthetic(1000, seed=0)
    kwargs = dict(task="binary", numeric=NUMERIC, categorical=CATEGORICAL)
    p1 = SklearnLogisticTrainer().fit(frame, labels, positive_label="1", **kwargs).predict_proba_positive(frame)
    p0 = SklearnLogisticTrainer().fit(frame, labels, positive_label="0", **kwargs).predict_proba_positive(frame)
    np.testing.assert_allclose(p0, 1.0 - p1)
    absent = SklearnLogisticTrainer().fit(frame, labels, positive_label="yes", **kwargs)
    assert absent.predict_proba_positive(frame) is None


def test_model_pickles() -> None:
    model = fit("binary")
    test, _ = synthetic(50, seed=2)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(test), model.predict(test))


def test_bad_input_is_a_trainer_error() -> None:
    frame, labels = synthetic(100, seed=0)
    trainer = SklearnLogisticTrainer()
    with pytest.raises(TrainerError, match="two classes"):
        trainer.fit(frame, pd.Series(["1"] * 100), task="binary", numeric=NUMERIC, categorical=CATEGORICAL)
    with pytest.raises(TrainerError, match="task must be one of"):
        trainer.fit(frame, labels, task="ranking", numeric=NUMERIC, categorical=CATEGORICAL)
    with pytest.raises(TrainerError, match="not in the feature frame: nope"):
        trainer.fit(frame, labels, task="binary", numeric=["nope"], categorical=[])
    with pytest.raises(TrainerError, match="differ in length"):
        trainer.fit(frame, labels[:10], task="binary", numeric=NUMERIC, categorical=CATEGORICAL)


def test_prepare_frame_types() -> None:
    out = prepare_frame(pd.DataFrame({"n": ["2.5", "x", None], "c": [1.0, None, "a"]}), ["n"], ["c"])
    assert out["n"].tolist()[0] == 2.5 and np.isnan(out["n"].tolist()[1:]).all()
    assert out["c"].tolist() == ["1", MISSING_CATEGORY, "a"]


# -- finding trainers ---------------------------------------------------------------------------

USER_MODULE = """
import numpy as np


class MajorityModel:
    def __init__(self, label):
        self.label = label

    def predict(self, frame):
        return np.array([self.label] * len(frame), dtype=object)

    def predict_proba_positive(self, frame):
        return None

    def describe(self):
        return {"estimator": "majority", "label": self.label}


class MajorityTrainer:
    def fit(self, features, labels, *, task, numeric, categorical, positive_label=None):
        return MajorityModel(labels.value_counts().idxmax())


ready = MajorityTrainer()
NOT_A_TRAINER = 42


class Broken:
    def __init__(self):
        raise RuntimeError("no GPU")
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    name = f"user_trainers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_registry_names() -> None:
    assert TRAINERS == {"sklearn-logistic": SklearnLogisticTrainer}
    assert isinstance(load_trainer("sklearn-logistic"), SklearnLogisticTrainer)
    assert isinstance(load_trainer("sklearn-logistic"), Trainer)


def test_user_trainer_by_dotted_path(user_module: str) -> None:
    trainer = load_trainer(f"{user_module}:MajorityTrainer")
    assert type(trainer).__name__ == "MajorityTrainer"
    frame, labels = synthetic(100, seed=0)
    model = trainer.fit(frame, labels, task="binary", numeric=NUMERIC, categorical=CATEGORICAL)
    assert set(model.predict(frame)) == {labels.value_counts().idxmax()}
    assert type(load_trainer(f"{user_module}:ready")).__name__ == "MajorityTrainer"
    instance = load_trainer(f"{user_module}:ready")
    assert load_trainer(instance) is instance


def test_unknown_trainer_name() -> None:
    with pytest.raises(TrainerError, match=r"unknown trainer 'xgboost': use one of \['sklearn-logistic'\]"):
        load_trainer("xgboost")


@pytest.mark.parametrize(
    ("attribute", "message"),
    [("Missing", "has no attribute 'Missing'"), ("NOT_A_TRAINER", "has no fit"), ("Broken", "no GPU")],
)
def test_bad_dotted_paths(user_module: str, attribute: str, message: str) -> None:
    with pytest.raises(TrainerError, match=message):
        load_trainer(f"{user_module}:{attribute}")


def test_missing_module() -> None:
    with pytest.raises(TrainerError, match="cannot import module 'no_such_module_xyz'"):
        load_trainer("no_such_module_xyz:Trainer")
