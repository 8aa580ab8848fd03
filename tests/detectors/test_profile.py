"""Reference profile: statistics against numpy/pandas, exact JSON round trip, feature checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from detectors.profile import (
    PROFILE_VERSION,
    CategoricalProfile,
    NumericProfile,
    ProfileMismatch,
    ReferenceProfile,
    as_class_labels,
)


@pytest.fixture()
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 3000
    income = rng.lognormal(10, 0.5, n)
    income[rng.random(n) < 0.05] = np.nan
    channel = rng.choice(["web", "app", "branch"], n, p=[0.5, 0.3, 0.2]).astype(object)
    channel[rng.random(n) < 0.02] = None
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, n),
            "income": income,
            "channel": channel,
            "vip": rng.random(n) < 0.1,
            "kids": rng.integers(0, 4, n).astype(float),
            "label": rng.integers(0, 2, n),
            "pred": rng.integers(0, 2, n),
            "score": rng.random(n),
            "sex": rng.choice(["F", "M"], n),
        }
    )


def build(frame: pd.DataFrame, **kwargs) -> ReferenceProfile:
    return ReferenceProfile.from_frame(
        frame, model_id="credit", target="label", prediction="pred", score="score", attributes=["sex"], **kwargs
    )


def test_feature_inference_excludes_special_columns(frame):
    p = build(frame)
    assert p.feature_types == {
        "age": "numeric",
        "income": "numeric",
        "channel": "categorical",
        "vip": "categorical",
        "kids": "numeric",
    }
    assert p.version == PROFILE_VERSION == 1
    assert p.model_id == "credit" and p.n == len(frame)


def test_numeric_statistics_equal_numpy(frame):
    p = build(frame, bins=10)
    income = frame["income"].to_numpy()
    finite = income[np.isfinite(income)]
    prof = p.numeric["income"]
    assert prof.n == len(income)
    assert prof.missing_rate == pytest.approx(np.isnan(income).mean(), abs=1e-12)
    assert prof.min == finite.min() and prof.max == finite.max()
    assert prof.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert prof.std == pytest.approx(finite.std(ddof=0), rel=1e-12)
    assert prof.n_unique == np.unique(finite).size
    # counts are a histogram over the profile's edges (np.histogram's [a, b) bins, outer edges ±inf)
    oracle, _ = np.histogram(finite, bins=prof.bin_edges)
    assert list(prof.counts) == oracle.tolist()
    assert prof.bin_edges[0] == -np.inf and prof.bin_edges[-1] == np.inf
    # quantile bins: each holds roughly a tenth of the values
    assert len(prof.counts) == 10
    assert max(prof.counts) - min(prof.counts) <= 0.02 * finite.size
    assert len(prof.sample) == min(5000, finite.size) and set(prof.sample) <= set(finite.tolist())


def test_discrete_numeric_gets_one_bin_per_value(frame):
    prof = build(frame).numeric["kids"]
    values = frame["kids"].to_numpy()
    # below | 0 | 1 | 2 | 3 | above
    assert len(prof.counts) == 6
    assert list(prof.counts) == [0] + [int((values == v).sum()) for v in range(4)] + [0]


def test_sample_is_bounded_and_seeded(frame):
    p = build(frame, sample_size=100, seed=7)
    q = build(frame, sample_size=100, seed=7)
    assert len(p.numeric["age"].sample) == 100
    assert {len(v) for v in p.sample.values()} == {100}
    assert set(p.sample) == {"age", "income", "channel", "vip", "kids", "label", "pred", "score", "sex"}
    assert p == q
    assert build(frame, sample_size=100, seed=8).sample != p.sample


def test_categorical_and_label_distributions(frame):
    p = build(frame)
    counts = frame["channel"].value_counts()
    assert dict(p.categorical["channel"].counts) == {k: int(v) for k, v in counts.items()}
    assert p.categorical["channel"].missing_rate == pytest.approx(frame["channel"].isna().mean())
    assert dict(p.categorical["vip"].counts) == {
        "true": int(frame["vip"].sum()),  # as a live JSON true is spelled (detectors.profile.category_text)
        "false": int((~frame["vip"]).sum()),
    }
    assert dict(p.labels) == {str(k): int(v) for k, v in frame["label"].value_counts().items()}
    assert dict(p.predictions) == {str(k): int(v) for k, v in frame["pred"].value_counts().items()}
    assert p.score_profile.mean == pytest.approx(frame["score"].mean())
    assert p.target_profile is None and p.prediction_profile is None


def test_regression_profiles_target_as_numeric(frame):
    p = ReferenceProfile.from_frame(frame, model_id="m", target="income", task="regression", features={"age": "numeric"})
    assert p.labels is None and p.target_profile is not None
    assert p.target_profile.mean == pytest.approx(np.nanmean(frame["income"]))


def test_json_round_trip_is_exact(frame):
    p = build(frame)
    text = json.dumps(p.to_dict(), allow_nan=False)
    back = ReferenceProfile.from_dict(json.loads(text))
    assert back == p
    assert back.to_dict() == p.to_dict()
    assert ReferenceProfile.from_json(p.to_json()) == p
    # missing values became None, not NaN
    assert None in p.sample["income"] and None in p.sample["channel"]


def test_nan_only_and_constant_columns_serialise():
    df = pd.DataFrame({"empty": [np.nan] * 5, "const": [3.0] * 5, "inf": [1.0, np.inf, -np.inf, 2.0, np.nan]})
    p = ReferenceProfile.from_frame(df, model_id="m")
    empty = p.numeric["empty"]
    assert empty.min is None and empty.mean is None and empty.missing_rate == 1.0 and empty.n_valid == 0
    const = p.numeric["const"]
    assert const.std == 0.0 and const.n_unique == 1 and list(const.counts) == [0, 5, 0]
    assert p.numeric["inf"].missing_rate == pytest.approx(0.6)  # ±inf is not a valid reference value
    assert ReferenceProfile.from_dict(json.loads(json.dumps(p.to_dict(), allow_nan=False))) == p


def test_check_features_names_every_problem(frame):
    p = build(frame)
    p.check_features({"age": "numeric", "channel": "categorical"})
    with pytest.raises(ProfileMismatch) as err:
        p.check_features({"age": "categorical", "height": "numeric", "zip": "categorical", "channel": "numeric"})
    message = str(err.value)
    for word in ("height", "zip", "age (configured categorical, profile numeric)", "channel (configured numeric"):
        assert word in message


def test_bad_inputs_raise_clearly(frame):
    with pytest.raises(ProfileMismatch, match="nope"):
        ReferenceProfile.from_frame(frame, model_id="m", target="nope")
    with pytest.raises(ValueError, match="task"):
        ReferenceProfile.from_frame(frame, model_id="m", task="ranking")
    bad = build(frame).to_dict() | {"version": 2}
    with pytest.raises(ProfileMismatch, match="version"):
        ReferenceProfile.from_dict(bad)


def test_class_labels_are_strings():
    assert list(as_class_labels(np.array([1, 0, 2]))) == ["1", "0", "2"]
    assert list(as_class_labels(np.array([1.0, np.nan]))) == ["1", None]
    assert list(as_class_labels(np.array([0.5, 1.0]))) == ["0.5", "1"]  # per value, as the parser does
    assert list(as_class_labels(np.array(["a", None, 3], dtype=object))) == ["a", None, "3"]
    assert list(as_class_labels(np.array([True, False]))) == ["true", "false"]


def test_sub_profiles_round_trip():
    n = NumericProfile.from_values([1.0, 2.0, None, 4.0])
    assert NumericProfile.from_dict(json.loads(json.dumps(n.to_dict()))) == n
    assert n.missing_rate == 0.25 and math.isclose(n.mean, 7 / 3)
    c = CategoricalProfile.from_values(["a", "b", None, "a"])
    assert CategoricalProfile.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert dict(c.counts) == {"a": 2, "b": 1} and c.missing_rate == 0.25
