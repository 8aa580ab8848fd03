"""Throughput of the windowed drift statistics: ``python -m bench.detectors``.

Feeds micro-batches of 1,000 events x 20 features (12 numeric, 8 categorical,
with a few missing values) to one :class:`detectors.drift.DriftSuite` on one
core and prints feature values consumed per second, for ``update`` alone and
for ``update`` plus a ``result()`` every window of 1,000 events (the worst
case: every micro-batch closes a window). Batches are built before timing;
the figure covers the statistics only, not parsing. Then the same batches through
:class:`detectors.cusum.ReferenceCUSUM` (every feature's CUSUM streams, on every batch),
in events per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from detectors.base import FeatureFrame
from detectors.cusum import ReferenceCUSUM
from detectors.drift import DriftSuite
from detectors.profile import ReferenceProfile

N_NUMERIC = 12
N_CATEGORICAL = 8
CATEGORIES = [f"cat{i}" for i in range(12)]


def make_profile(rows: int = 20_000, seed: int = 0) -> ReferenceProfile:
    """A reference profile over the benchmark's 20 features."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {f"num{i}": rng.normal(i, 1 + i / 10, rows) for i in range(N_NUMERIC)}
    data.update({f"cat{i}": rng.choice(CATEGORIES[: 4 + i], rows) for i in range(N_CATEGORICAL)})
    data["label"] = rng.integers(0, 2, rows)
    data["score"] = rng.random(rows)
    return ReferenceProfile.from_frame(pd.DataFrame(data), model_id="bench", target="label", score="score")


def make_batches(count: int, size: int, seed: int = 1) -> list[tuple[FeatureFrame, np.ndarray, np.ndarray]]:
    """Micro-batches with ~1% missing numbers and a few unseen categories."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        numeric = {}
        for i in range(N_NUMERIC):
            col = rng.normal(i, 1 + i / 10, size)
            col[rng.random(size) < 0.01] = np.nan
            numeric[f"num{i}"] = col
        categorical = {}
        for i in range(N_CATEGORICAL):
            col = rng.choice(CATEGORIES[: 5 + i], size).astype(object)
            col[rng.random(size) < 0.01] = None
            categorical[f"cat{i}"] = col
        frame = FeatureFrame(numeric=numeric, categorical=categorical)
        batches.append((frame, rng.integers(0, 2, size), rng.random(size)))
    return batches


def run(batches: list[tuple[FeatureFrame, np.ndarray, np.ndarray]], suite: DriftSuite, *, window: bool) -> float:
    """Seconds to feed every batch (and close a window after each when ``window``)."""
    start = time.perf_counter()
    for frame, predictions, scores in batches:
        suite.update(frame, predictions, scores)
        if window:
            suite.result()
            suite.reset()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args(argv)
    profile = make_profile()
    batches = make_batches(args.batches, args.batch_size)
    values = args.batches * args.batch_size * (N_NUMERIC + N_CATEGORICAL)
    run(batches[:10], DriftSuite(profile), window=True)  # warm-up
    print(f"DriftSuite, {N_NUMERIC} numeric + {N_CATEGORICAL} categorical features, "
          f"batches of {args.batch_size} events, single core")
    for label, kwargs in [("default (psi)", {}), ("evidently auto", {"default_method": ("auto", None)})]:
        methods = sorted({m for m, _ in DriftSuite(profile, **kwargs).feature_methods.values()})
        best_update = min(run(batches, DriftSuite(profile, **kwargs), window=False) for _ in range(3))
        best_window = min(run(batches, DriftSuite(profile, **kwargs), window=True) for _ in range(3))
        print(f"{label:15s} {methods}")
        print(f"  update only:            {values / best_update / 1e6:6.2f} M feature values/s")
        print(f"  update + result/batch:  {values / best_window / 1e6:6.2f} M feature values/s "
              f"(a window closed after every batch)")
    events = args.batches * args.batch_size

    def cusum_seconds() -> float:
        cusum = ReferenceCUSUM.from_profile(profile)
        start = time.perf_counter()
        for frame, _, _ in batches:
            cusum.update(frame)
        return time.perf_counter() - start

    columns = ReferenceCUSUM.from_profile(profile).columns
    best = min(cusum_seconds() for _ in range(3))
    print(f"ReferenceCUSUM, the same features ({columns} CUSUM columns), every batch")
    print(f"  update:                 {events / best / 1e3:6.1f} k events/s ({best / events * 1e6:.1f} µs per event)")

if __name__ == "__main__":
    main()
