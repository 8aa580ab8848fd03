"""The stationarity corpus: the default configuration's false-alarm rate on real and pathological data.

Real tabular datasets that ship inside installed packages (scikit-learn's bundled datasets;
statsmodels' when it is installed), each split at random into a reference and a stream many
times, plus synthetic pathological columns (zero-inflated money amounts, integer counts, bimodal,
Cauchy, constant, 500 Zipf-distributed levels). On every split nothing changed, so every alarm is
a false one.

- Detector level, at a loose target so that alarms are frequent enough to count (2,000 per
  million events, as ``tests/detectors/test_cusum.py`` does): the CUSUM streams and the windowed
  tests each stay within the target, the count is not vacuous, and it falls with the target.
- What users run: :class:`streams.pipeline.Pipeline` with the default rules (no ``policies``
  section) at the default budgets raises no alert on the whole corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson
import pandas as pd
import pytest
import yaml

from detectors.base import FeatureFrame
from detectors.cusum import ReferenceCUSUM
from detectors.drift import DriftSuite, window_alpha
from detectors.profile import ReferenceProfile


@dataclass(frozen=True)
class Dataset:
    name: str
    frame: pd.DataFrame
    """Feature columns and ``label`` (a class label, or a binned target)."""
    features: dict[str, str]


def _zipf(rng: np.random.Generator, n: int, levels: int = 500, a: float = 1.1) -> np.ndarray:
    p = 1.0 / np.arange(1, levels + 1) ** a
    return np.array([f"L{i}" for i in range(levels)], dtype=object)[rng.choice(levels, n, p=p / p.sum())]


def pathological(n: int, seed: int) -> pd.DataFrame:
    """Columns that break naive calibration (README: "False alarms")."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "zero_inflated": np.where(rng.random(n) < 0.9, 0.0, np.round(rng.lognormal(7.0, 1.5, n), 2)),
        "counts": rng.poisson(3.0, n).astype(float),
        "bimodal": np.where(rng.random(n) < 0.3, rng.normal(-3.0, 0.5, n), rng.normal(2.0, 1.0, n)),
        "cauchy": rng.standard_cauchy(n),
        "constant": np.full(n, 7.0),
        "zipf": _zipf(rng, n),
        "rare": np.where(rng.random(n) < 0.002, "rare", np.where(rng.random(n) < 0.5, "a", "b")).astype(object),
        "label": (rng.random(n) < 0.3).astype(int),
    })


def _kinds(frame: pd.DataFrame) -> dict[str, str]:
    return {c: ("numeric" if pd.api.types.is_numeric_dtype(frame[c]) else "categorical")
            for c in frame.columns if c != "label"}


def corpus() -> list[Dataset]:
    from sklearn import datasets

    out = []
    for loader in ("load_diabetes", "load_breast_cancer", "load_wine", "load_iris", "load_digits"):
        frame = getattr(datasets, loader)(as_frame=True).frame.rename(columns={"target": "label"})
        if loader == "load_diabetes":  # a regression target: its tertile is the class
            frame["label"] = pd.qcut(frame["label"], 3, labels=False)
        frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
        out.append(Dataset(loader.removeprefix("load_"), frame, _kinds(frame)))
    try:
        import statsmodels.api as sm
    except ImportError:  # optional: the corpus is scikit-learn's alone
        sm = None
    if sm is not None:
        for name, label in (("fair", "affairs"), ("randhie", "mdvis"), ("anes96", "vote")):
            frame = getattr(sm.datasets, name).load_pandas().data.astype(float)
            frame["label"] = (frame[label] > frame[label].median()).astype(int)
            out.append(Dataset(f"statsmodels-{name}", frame, _kinds(frame)))
    frame = pathological(6000, seed=0)
    out.append(Dataset("pathological", frame, _kinds(frame)))
    return out


CORPUS = corpus()


def splits(data: Dataset, count: int, seed: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """``count`` random splits into a reference (60 %) and a stream (the rest, shuffled)."""
    rng = np.random.default_rng(seed)
    n = len(data.frame)
    for _ in range(count):
        order = rng.permutation(n)
        cut = int(0.6 * n)
        yield data.frame.iloc[order[:cut]], data.frame.iloc[order[cut:]]


def profile_of(data: Dataset, reference: pd.DataFrame) -> ReferenceProfile:
    frame = reference.assign(prediction=reference["label"].astype(str))
    return ReferenceProfile.from_frame(frame, model_id=data.name, features=data.features, prediction="prediction",
                                       task="multiclass")


def feature_frame(data: Dataset, rows: pd.DataFrame) -> FeatureFrame:
    return FeatureFrame.build(
        numeric={f: rows[f].to_numpy(np.float64) for f, k in data.features.items() if k == "numeric"},
        categorical={f: rows[f].to_numpy(object) for f, k in data.features.items() if k == "categorical"})


# -- detector level, at a loose target -------------------------------------------------------------

LOOSE = 2000.0
"""False alarms per million events: loose enough to count them on ~10^5 events."""


@dataclass
class Alarms:
    events: int = 0
    cusum: int = 0
    windows: int = 0
    cusum_strict: int = 0
    windows_strict: int = 0


def detector_alarms(target: float, *, count: int = 8, window: int = 200) -> Alarms:
    """Alarms over the corpus at ``target`` per million and at a tenth of it, ``count`` splits per
    dataset, windows of ``window`` events (a split's stream is short)."""
    out = Alarms()
    strict = target / 10
    for k, data in enumerate(CORPUS):
        for reference, stream in splits(data, count, seed=k):
            profile = profile_of(data, reference)
            cusum = ReferenceCUSUM.from_profile(profile, false_alarms_per_million=target)
            tight = ReferenceCUSUM.from_profile(profile, false_alarms_per_million=strict)
            predictions = stream["label"].astype(str).to_numpy(object)
            for lo in range(0, len(stream), window):
                rows = stream.iloc[lo:lo + window]
                frame = feature_frame(data, rows)
                out.cusum += len(cusum.update(frame, predictions[lo:lo + window])._pbank.detections)
                out.cusum_strict += len(tight.update(frame, predictions[lo:lo + window])._pbank.detections)
                suite = DriftSuite(profile, false_alarms_per_million=target).update(frame, predictions[lo:lo + window])
                report = suite.result()
                tested = [r for r in (*report.features.values(), report.prediction, report.label_shift) if r is not None]
                out.windows += any(r.drifted for r in tested)
                # the same window at the stricter budget: the distance still over its threshold and the
                # pooled chi-square p-value under the stricter significance (window_alpha scales with it)
                alpha = window_alpha(len(rows), len(tested), strict)
                out.windows_strict += any(r.drifted and r.p_value is not None and r.p_value <= alpha for r in tested)
            out.events += len(stream)
    return out


@pytest.fixture(scope="module")
def loose() -> Alarms:
    return detector_alarms(LOOSE)


def test_the_corpus_holds_what_it_claims() -> None:
    names = {d.name for d in CORPUS}
    assert {"diabetes", "breast_cancer", "wine", "iris", "digits", "pathological"} <= names
    path = next(d for d in CORPUS if d.name == "pathological").frame
    assert (path["zero_inflated"] == 0).mean() > 0.85 and path["constant"].nunique() == 1
    assert path["zipf"].nunique() > 300 and (path["rare"] == "rare").sum() > 0
    digits = next(d for d in CORPUS if d.name == "digits").frame
    assert (digits.drop(columns="label").nunique() == 1).any()  # constant pixels
    assert all((d.frame["label"].nunique() >= 2) for d in CORPUS)


def test_cusum_streams_keep_their_rate_on_the_corpus(loose: Alarms) -> None:
    rate = loose.cusum / loose.events * 1e6
    # within the target, and not vacuously so (Bonferroni and Wald's ARL are conservative)
    assert loose.events > 100_000
    assert LOOSE / 40 < rate <= LOOSE, loose


def test_windowed_tests_keep_their_rate_on_the_corpus(loose: Alarms) -> None:
    assert 0 < loose.windows / loose.events * 1e6 <= LOOSE, loose


def test_the_alarm_rate_falls_with_the_target(loose: Alarms) -> None:
    # a tenth of the target: within it too (the estimation error of a small reference does not
    # put a floor under the rate)
    assert loose.cusum_strict / loose.events * 1e6 <= LOOSE / 10, loose
    assert loose.windows_strict / loose.events * 1e6 <= LOOSE / 10, loose
    assert loose.cusum_strict < loose.cusum and loose.windows_strict < loose.windows, loose


# -- what users run: the pipeline with the default rules ------------------------------------------


def workspace(tmp: Path, data: Dataset, reference: pd.DataFrame) -> Path:
    """A config without a policies section (the default rules) and the reference profile."""
    from streams.commands import example_config, write_profile

    raw = example_config(bootstrap="127.0.0.1:9")
    raw.pop("policies", None)
    raw["models"] = [{"id": data.name, "task": "multiclass", "reference": "profile.json",
                      "features": dict(data.features), "window": {"events": 1000}}]
    write_profile(profile_of(data, reference), tmp / "profile.json")
    path = tmp / "driftwarden.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def messages(data: Dataset, stream: pd.DataFrame, start: float) -> list[Any]:
    from streams.pipeline import PREDICTION, RawMessage

    out = []
    records = stream.to_dict(orient="records")
    for i, row in enumerate(records):
        features = {f: (None if isinstance(row[f], float) and np.isnan(row[f]) else row[f]) for f in data.features}
        event = {"prediction_id": f"{data.name}-{start}-{i}", "model_id": data.name, "model_version": "1",
                 "timestamp": start + i / 100.0, "features": features, "prediction": str(row["label"])}
        out.append(RawMessage(PREDICTION, orjson.dumps(event), None, "predictions", 0, i))
    return out


def test_the_default_configuration_raises_no_alert_on_the_corpus(tmp_path: Path) -> None:
    from streams.config import Config
    from streams.join import DictStore
    from streams.runtime import pipeline_factory

    events = 0
    alerts: list[tuple[str, str, str]] = []
    for k, data in enumerate(CORPUS):
        # the small datasets get more splits, so that every model sees thousands of events
        count = max(2, min(10, 4000 // len(data.frame)))
        for j, (reference, stream) in enumerate(splits(data, count, seed=100 + k)):
            where = tmp_path / f"{data.name}-{j}"
            where.mkdir()
            pipeline = pipeline_factory(Config.load(str(workspace(where, data, reference))))(DictStore())
            batch = messages(data, stream, start=1_700_000_000.0 + 10_000 * j)
            for lo in range(0, len(batch), 2000):
                alerts.extend((data.name, a.rule, a.message) for a in pipeline.process(batch[lo:lo + 2000]).alerts)
            alerts.extend((data.name, a.rule, a.message) for a in pipeline.flush().alerts)
            events += len(stream)
    assert events > 30_000
    assert alerts == []
