"""``driftwarden baseline`` (CSV and Parquet) and the start-up check of a profile against the config.

Oracles: pandas on the same file (value_counts, min, max, row count, dtypes);
the CLI's exit code and message for bad input.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from detectors.profile import ReferenceProfile
from streams.cli import main
from streams.commands import prepare_workspace
from streams.config import Config, ConfigError
from streams.runtime import load_profile
from streams.simulate import ATTRIBUTES, FEATURES, CreditRiskWorld

SPECIAL = ["--target", "label", "--prediction", "prediction", "--score", "score", "--attributes", "sex,race"]


@pytest.fixture(scope="module")
def training() -> pd.DataFrame:
    frame = CreditRiskWorld(seed=21).training_frame(3000)
    frame.loc[frame.index[::97], "income"] = np.nan  # some missing values
    return frame


@pytest.fixture(params=["csv", "parquet"])
def data_file(request: pytest.FixtureRequest, training: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / f"train.{request.param}"
    if request.param == "csv":
        training.to_csv(path, index=False)
    else:
        training.to_parquet(path, index=False)
    return path


def read_back(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)


def baseline(data: Path, out: Path, *extra: str, model: str = "credit-risk") -> int:
    return main(["baseline", "--data", str(data), "--model", model, *extra, "-o", str(out)])


def load(path: Path) -> ReferenceProfile:
    return ReferenceProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))


def counts(series: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in series.value_counts(dropna=True).items()}


def test_baseline_profiles_every_column_like_pandas(data_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profiles" / "credit-risk.json"
    assert baseline(data_file, out, *SPECIAL) == 0
    frame = read_back(data_file)
    profile = load(out)

    assert profile.model_id == "credit-risk" and profile.task == "binary"
    assert profile.n == len(frame) == 3000
    assert profile.feature_types == FEATURES  # every other column; numeric by dtype
    assert (profile.target, profile.prediction, profile.score) == ("label", "prediction", "score")
    assert profile.attributes == ATTRIBUTES
    assert dict(profile.labels) == counts(frame["label"])
    assert dict(profile.predictions) == counts(frame["prediction"])
    for name, kind in FEATURES.items():
        if kind == "numeric":
            numeric = profile.numeric[name]
            assert numeric.min == frame[name].min() and numeric.max == frame[name].max(), name
            assert numeric.n == len(frame)
            assert numeric.missing_rate == pytest.approx(frame[name].isna().mean())
            assert numeric.mean == pytest.approx(frame[name].mean(), rel=1e-12)
            assert sum(numeric.counts) == frame[name].notna().sum()
        else:
            assert dict(profile.categorical[name].counts) == counts(frame[name]), name
    assert profile.numeric["income"].missing_rate > 0
    assert profile.score_profile is not None
    assert profile.score_profile.min == frame["score"].min() and profile.score_profile.max == frame["score"].max()

    # the command prints the features block to paste into the config
    printed = capsys.readouterr().out
    match = re.search(r"features: (\{.*\})", printed)
    assert match, printed
    assert yaml.safe_load(match.group(1)) == FEATURES


def test_baseline_features_selection(data_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "selected.json"
    assert baseline(data_file, out, "--target", "label",
                    "--features", "age,income,channel,num_accounts:categorical,region:categorical") == 0
    frame = read_back(data_file)
    profile = load(out)
    assert profile.feature_types == {"age": "numeric", "income": "numeric", "channel": "categorical",
                                     "num_accounts": "categorical", "region": "categorical"}
    assert set(profile.numeric) == {"age", "income"}
    # a numeric column profiled as categorical: its values as class names ("3", not "3.0")
    assert dict(profile.categorical["num_accounts"].counts) == {
        str(int(k)): int(v) for k, v in frame["num_accounts"].value_counts().items()}
    assert dict(profile.labels) == counts(frame["label"])
    assert profile.prediction is None and profile.predictions is None


@pytest.mark.parametrize("args, named", [
    (["--target", "nope"], "nope"),
    (["--attributes", "sex,missing_attr"], "missing_attr"),
    (["--score", "p_default"], "p_default"),
    (["--features", "age,ghost:numeric"], "ghost"),
])
def test_baseline_missing_column_exits_2_naming_it(data_file: Path, tmp_path: Path, args: list[str], named: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never.json"
    assert baseline(data_file, out, *args) == 2
    err = capsys.readouterr().err
    flag = args[0]
    assert "data error" in err and flag in err and repr(named) in err, err
    assert "its columns: age, income" in err, err  # the columns it has, to choose from
    assert "Traceback" not in err
    assert not out.exists()


def test_baseline_missing_untyped_feature_exits_2(data_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert baseline(data_file, tmp_path / "never.json", "--features", "age,ghost") == 2
    assert "ghost" in capsys.readouterr().err


def test_baseline_rejects_missing_or_unknown_data_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert baseline(tmp_path / "absent.csv", tmp_path / "p.json") == 2
    assert "file not found" in capsys.readouterr().err
    other = tmp_path / "train.json"
    other.write_text("{}")
    assert baseline(other, tmp_path / "p.json") == 2
    assert ".csv or .parquet" in capsys.readouterr().err


# -- the profile must match the config ------------------------------------------------------------


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return prepare_workspace(tmp_path / "ws", bootstrap="127.0.0.1:1",
                             overrides={"models.*.window": {"events": 500}})


def replay_args(cfg: Path, tmp_path: Path) -> list[str]:
    preds, fb = tmp_path / "p.jsonl", tmp_path / "f.jsonl"
    preds.write_text("")
    fb.write_text("")
    return ["replay", "-c", str(cfg), "--predictions", str(preds), "--feedback", str(fb), "-o", str(tmp_path / "out")]


def test_a_baseline_profile_of_the_configured_features_is_accepted(ws: Path, tmp_path: Path) -> None:
    train = ws.parent / "credit-risk-train.csv"  # written by prepare_workspace
    profile_path = ws.parent / "profiles" / "credit-risk.json"
    assert baseline(train, profile_path, *SPECIAL) == 0
    profile = load_profile(Config.load(ws).models["credit-risk"])
    assert profile is not None and profile.feature_types == FEATURES
    # the profile is accepted: replay runs, and exits 4 because its input files are empty
    assert main(replay_args(ws, tmp_path)) == 4


def test_replay_exits_2_when_the_profile_lacks_a_configured_feature(ws: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    train = ws.parent / "credit-risk-train.csv"
    profile_path = ws.parent / "profiles" / "credit-risk.json"
    without_region = ",".join(f for f in FEATURES if f != "region")
    assert baseline(train, profile_path, "--target", "label", "--features", without_region) == 0
    capsys.readouterr()

    with pytest.raises(ConfigError, match=r"models\[credit-risk\]\.reference: .*missing from profile: region"):
        load_profile(Config.load(ws).models["credit-risk"])
    assert main(replay_args(ws, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "does not match the config" in err and "missing from profile: region" in err, err
    assert not (tmp_path / "out").exists()  # nothing started


def test_replay_exits_2_when_a_feature_type_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    features: dict[str, Any] = {**FEATURES, "num_accounts": "categorical"}
    cfg = prepare_workspace(tmp_path / "ws", bootstrap="127.0.0.1:1", overrides={"models.*.features": features})
    with pytest.raises(ConfigError, match=r"num_accounts \(configured categorical, profile numeric\)"):
        load_profile(Config.load(cfg).models["credit-risk"])
    assert main(replay_args(cfg, tmp_path)) == 2
    assert "num_accounts (configured categorical, profile numeric)" in capsys.readouterr().err


def test_replay_exits_2_when_the_profile_is_missing_or_not_a_profile(ws: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    profile_path = ws.parent / "profiles" / "credit-risk.json"
    profile_path.write_text(json.dumps({"hello": "world"}))
    assert main(replay_args(ws, tmp_path)) == 2
    assert "is not a driftwarden profile" in capsys.readouterr().err
    profile_path.unlink()
    assert main(replay_args(ws, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "profile not found" in err and "driftwarden baseline" in err
