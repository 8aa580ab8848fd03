"""Memory over a long run: RSS of an in-process Pipeline as events go by, and its slope.

A child process (so that nothing else lives in its heap) builds the worker's
:class:`~streams.pipeline.Pipeline` from a config, feeds it the benchmark
model's traffic (predictions, ~50 % feedback ~30 s of event time later,
1,000 predictions per second of event time) in batches of 2,000 messages, and
records ``VmRSS`` every 1/40 of the run (at least 5,000 predictions). The slope of RSS over the second
half of the run, in bytes per prediction, projects RSS to 1M and 10M
predictions (a projection, not a measurement, unless the run was that long).

Four runs. The default TTL (7 days of event time) with the default bound
(``join.max_entries``, 1,000,000 entries): predictions that never get a label,
and the tombstones of those that did, stay in the join table until their TTL
ends, so the table — and RSS — grows by one entry per prediction until it
reaches the bound; the projection stops growing there. The default TTL with a
bound of a fifth of the run's predictions: the bound is reached at 20 % of the
run, so the second half shows what RSS does beyond it (measured, not
projected). A 60 s TTL (most labels, ~30 s late on average, still join),
where the TTL rather than the bound keeps the table small. And no labels at all, so that every
entry is a prediction waiting for its label: its slope is the RSS of one waiting prediction.

``python -m bench.memory --events 2000000 --max-entries 200000`` runs one
configuration (default TTL unless ``--ttl``) and prints its figures.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import REPO, proc_memory

def child(events: int, ttl: float | None, workdir: Path, max_entries: int | None = None,
          feedback_share: float | None = None) -> dict[str, Any]:
    import os

    from bench.world import EventStream, encode, write_workspace
    from streams.config import Config
    from streams.join_store import ColumnarStore
    from streams.pipeline import FEEDBACK, PREDICTION, RawMessage
    from streams.runtime import pipeline_factory, release_large_blocks

    overrides: dict[str, Any] = {"join.ttl_seconds": ttl} if ttl else {}
    if max_entries:
        overrides["join.max_entries"] = max_entries
    release_large_blocks()  # as the worker does at start
    config = write_workspace(workdir, overrides=overrides)
    cfg = Config.load(str(config))
    pipeline = pipeline_factory(cfg)(ColumnarStore())
    stream = EventStream(seed=3, rate=1000.0, feedback_delay=30.0)
    if feedback_share is not None:
        stream.feedback_share = feedback_share
    samples: list[tuple[int, int]] = []
    batch: list[RawMessage] = []
    predictions = 0
    offset = 0
    started = time.perf_counter()
    pid = os.getpid()
    every = max(5000, events // 40)
    for kind, event in stream.events(events):
        batch.append(RawMessage(PREDICTION if kind == "prediction" else FEEDBACK, encode(event), None, kind, 0, offset))
        offset += 1
        if kind == "prediction":
            predictions += 1
            if predictions % every == 0:
                pipeline.process(batch)
                batch = []
                samples.append((predictions, proc_memory(pid).get("VmRSS", 0)))
        if len(batch) >= 2000:
            pipeline.process(batch)
            batch = []
    if batch:
        pipeline.process(batch)
    samples.append((predictions, proc_memory(pid).get("VmRSS", 0)))
    counts = pipeline.join.counts
    return {"events": events, "ttl": ttl, "max_entries": cfg.join.max_entries, "samples": samples,
            "seconds": time.perf_counter() - started, "join_entries": len(pipeline.join.store),
            "evicted": counts.evicted_predictions + counts.evicted_feedback + counts.evicted_tombstones,
            "pairs": counts.pairs, "peak": proc_memory(pid).get("VmHWM", 0)}


def run_child(events: int, ttl: float | None, max_entries: int | None = None,
              feedback_share: float | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        cmd = [sys.executable, "-m", "bench.memory", "--child", "--events", str(events), "--workdir", tmp]
        if feedback_share is not None:
            cmd += ["--feedback-share", str(feedback_share)]
        if ttl:
            cmd += ["--ttl", str(ttl)]
        if max_entries:
            cmd += ["--max-entries", str(max_entries)]
        done = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"memory child failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    return analyse(result)


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Slope over the second half; RSS at 25/50/100 %; projections to 1M and 10M predictions.

    The join adds at most one entry per prediction and holds at most ``max_entries``, so a run
    that ends below the bound is projected to grow at its slope only up to the bound (the run
    with a small bound measures what happens past it: ``slope_after_bound``).
    """
    samples = np.array(result["samples"], dtype=np.float64)
    n, rss = samples[:, 0], samples[:, 1]
    half = n >= n[-1] / 2
    slope = float(np.polyfit(n[half], rss[half], 1)[0]) if half.sum() >= 2 else float("nan")
    last_n, last_rss = float(n[-1]), float(rss[-1])
    bound = float(result.get("max_entries") or math.inf)
    past = n >= bound
    after_bound = float(np.polyfit(n[past], rss[past], 1)[0]) if past.sum() >= 2 and result.get("evicted") else None

    def projected(at: float) -> float:
        if at <= last_n:
            return float(np.interp(at, n, rss))
        if result.get("join_entries", 0) < bound and last_n < bound:
            return last_rss + slope * (min(at, bound) - last_n)  # the table fills up to its bound
        if result.get("join_entries", 0) >= bound and not result.get("evicted"):
            return last_rss  # full just now: past it, entries are evicted (the bounded run measures that)
        return last_rss + slope * (at - last_n)

    result.update({
        "slope_bytes_per_prediction": slope,
        "slope_after_bound": after_bound,
        "rss_end": last_rss,
        "rss_quarter": float(np.interp(n[-1] / 4, n, rss)),
        "rss_half": float(np.interp(n[-1] / 2, n, rss)),
        "projected_1m": projected(1e6),
        "projected_10m": projected(1e7),
    })
    return result


WAITING = "no labels: every prediction waits (default TTL and bound)"
"""The run that measures a waiting prediction alone (the issue's "RSS per waiting prediction")."""


def run(events: int) -> dict[str, Any]:
    small = max(1, events // 5)
    out = {}
    for label, ttl, max_entries, share in (
        ("default TTL (7 days), default bound (1,000,000)", None, None, None),
        (f"default TTL, bound {small:,} (a fifth of the run)", None, small, None),
        ("TTL 60 s, default bound", 60.0, None, None),
        (WAITING, None, None, 0.0),
    ):
        print(f"  memory: {events:,} predictions, {label}", flush=True)
        out[label] = run_child(events, ttl, max_entries, share)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--ttl", type=float, default=None)
    parser.add_argument("--max-entries", type=int, default=None, help="join.max_entries (default: the config's)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--feedback-share", type=float, default=None,
                        help="share of predictions that get feedback (default the traffic's, ~50 %%); 0 measures "
                             "the cost of a prediction waiting for its label alone")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.events, args.ttl, args.workdir, args.max_entries, args.feedback_share)))
        return
    if args.ttl is not None or args.max_entries is not None or args.feedback_share is not None:
        result = run_child(args.events, args.ttl, args.max_entries, args.feedback_share)
        result.pop("samples")
        print(json.dumps(result, indent=1, default=str))
        return
    print(json.dumps(run(args.events), indent=1, default=str))


if __name__ == "__main__":
    main()
