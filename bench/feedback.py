"""Throughput of the labelled-pair summaries: ``python -m bench.feedback``.

Feeds seeded micro-batches of 1,000 labelled binary pairs (label, prediction,
score, two sensitive attributes) through the four summaries the worker runs on
feedback — :class:`~detectors.performance.ClassificationPerformance`,
:class:`~detectors.fairness.FairnessSummary` (two attributes and their
intersection), :class:`~detectors.estimate.ConfidenceBasedEstimate` and
:class:`~detectors.concept.ConceptDrift` (DDM, EDDM, ADWIN) — on one core, and
prints labelled pairs per second. Batches are generated before the clock starts.

Two figures: ``update`` (folding batches in), and ``update+close`` where every
batch is also a closed window: results, metric points and a JSON snapshot of
each summary, as a worker closing a 1,000-event window would do.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np

from detectors.concept import ConceptDrift, concept_points
from detectors.estimate import ESTIMATE_MEASUREMENT, ConfidenceBasedEstimate
from detectors.fairness import FairnessSummary, fairness_points
from detectors.performance import ClassificationPerformance, performance_points


@dataclass(frozen=True, slots=True)
class Batch:
    y_true: np.ndarray
    y_pred: np.ndarray
    scores: np.ndarray
    attributes: dict[str, np.ndarray]
    errors: np.ndarray


def make_batches(count: int, size: int, seed: int = 0) -> list[Batch]:
    """Seeded labelled pairs shaped like the worker's: object arrays of str labels."""
    rng = np.random.default_rng(seed)
    labels = np.array(["0", "1"], dtype=object)
    sexes = np.array(["F", "M"], dtype=object)
    races = np.array(["Asian", "Black", "White", "Other"], dtype=object)
    batches = []
    for _ in range(count):
        p = rng.beta(2.0, 2.0, size)
        y = labels[(rng.random(size) < p).astype(np.int64)]
        pred = labels[(p >= 0.5).astype(np.int64)]
        scores = p.copy()
        scores[rng.random(size) < 0.02] = np.nan
        attrs = {"sex": sexes[rng.integers(0, 2, size)], "race": races[rng.integers(0, 4, size)]}
        batches.append(Batch(y, pred, scores, attrs, (y != pred).astype(np.int64)))
    return batches


def run(batches: list[Batch], *, close_windows: bool) -> float:
    """Seconds to push every batch through the four summaries."""
    ref_p = np.random.default_rng(1).beta(2.0, 2.0, 20_000)
    ref_y = np.where(np.random.default_rng(2).random(20_000) < ref_p, "1", "0").astype(object)
    estimate_base = ConfidenceBasedEstimate.fit(ref_p, ref_y, positive_label="1")
    concept = ConceptDrift()
    tags = {"model_id": "bench", "model_version": "1"}

    def fresh() -> tuple[ClassificationPerformance, FairnessSummary, ConfidenceBasedEstimate]:
        return (
            ClassificationPerformance(positive_label="1"),
            FairnessSummary(attributes=["sex", "race"], intersections=[("sex", "race")], positive_label="1"),
            estimate_base.fresh(),
        )

    perf, fair, est = fresh()
    start = time.perf_counter()
    for i, b in enumerate(batches):
        perf.update(b.y_true, b.y_pred, b.scores)
        fair.update(b.y_true, b.y_pred, b.attributes)
        est.update(b.scores, b.y_pred)
        concept.update(b.errors)
        if close_windows:
            points = performance_points(perf.result(), tags=tags, time_ns=i)
            points += fairness_points(fair.result(), tags=tags, time_ns=i)
            points += performance_points(est.result(), tags=tags, time_ns=i, measurement=ESTIMATE_MEASUREMENT)
            points += concept_points(concept.result(), tags=tags, time_ns=i)
            for summary in (perf, fair, est, concept):
                json.dumps(summary.snapshot())
            concept.start_window()
            perf, fair, est = fresh()
    return time.perf_counter() - start


def breakdown(batches: list[Batch]) -> dict[str, float]:
    """Microseconds per batch spent in each summary's ``update`` alone."""
    ref_p = np.random.default_rng(1).beta(2.0, 2.0, 20_000)
    ref_y = np.where(np.random.default_rng(2).random(20_000) < ref_p, "1", "0").astype(object)
    perf = ClassificationPerformance(positive_label="1")
    fair = FairnessSummary(attributes=["sex", "race"], intersections=[("sex", "race")], positive_label="1")
    est = ConfidenceBasedEstimate.fit(ref_p, ref_y, positive_label="1")
    concept = ConceptDrift()
    steps = {
        "performance": lambda b: perf.update(b.y_true, b.y_pred, b.scores),
        "fairness": lambda b: fair.update(b.y_true, b.y_pred, b.attributes),
        "estimate": lambda b: est.update(b.scores, b.y_pred),
        "concept (River, per value)": lambda b: concept.update(b.errors),
    }
    out = {}
    for name, step in steps.items():
        start = time.perf_counter()
        for b in batches:
            step(b)
        out[name] = (time.perf_counter() - start) / len(batches) * 1e6
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args(argv)
    batches = make_batches(args.batches, args.batch_size)
    pairs = args.batches * args.batch_size
    run(batches[:5], close_windows=True)  # warm-up (imports, caches)
    for close in (False, True):
        best = min(run(batches, close_windows=close) for _ in range(args.repeat))
        label = "update+close" if close else "update"
        print(f"{label:>13}: {pairs / best:12,.0f} labelled pairs/s "
              f"({best / args.batches * 1e3:.2f} ms per batch of {args.batch_size})")
    for name, micros in breakdown(batches).items():
        print(f"  {name:>26}: {micros:8.0f} µs per batch")


if __name__ == "__main__":
    main()
