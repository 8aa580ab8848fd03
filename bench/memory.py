"""Memory over a long run: RSS of an in-process Pipeline as events go by, and its slope.

A child process (so that nothing else lives in its heap) builds the worker's
:class:`~streams.pipeline.Pipeline` from a config, feeds it the benchmark
model's traffic (predictions, ~50 % feedback ~30 s of event time later,
1,000 predictions per second of event time) in batches of 2,000 messages, and
records ``VmRSS`` every 1/40 of the run (at least 5,000 predictions). The slope of RSS over the second
half of the run, in bytes per prediction, projects RSS to 1M and 10M
predictions (a projection, not a measurement, unless the run was that long).

Two join TTLs: the default (7 days of event time) and 60 s (most labels, ~30 s late on average, still join). Predictions that
never get a label wait in the join table until their TTL ends, so with the
default TTL the table — and RSS — grows with every unlabelled prediction until
7 days of traffic have gone by.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import REPO, proc_memory

def child(events: int, ttl: float | None, workdir: Path) -> dict[str, Any]:
    import os

    from bench.world import EventStream, encode, write_workspace
    from streams.config import Config
    from streams.join import DictStore
    from streams.pipeline import FEEDBACK, PREDICTION, RawMessage
    from streams.runtime import pipeline_factory

    overrides = {"join.ttl_seconds": ttl} if ttl else {}
    config = write_workspace(workdir, overrides=overrides)
    pipeline = pipeline_factory(Config.load(str(config)))(DictStore())
    stream = EventStream(seed=3, rate=1000.0, feedback_delay=30.0)
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
    store = pipeline.join.store
    entries = len(getattr(store, "data", {}))
    return {"events": events, "ttl": ttl, "samples": samples, "seconds": time.perf_counter() - started,
            "join_entries": entries, "peak": proc_memory(pid).get("VmHWM", 0)}


def run_child(events: int, ttl: float | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        cmd = [sys.executable, "-m", "bench.memory", "--child", "--events", str(events), "--workdir", tmp]
        if ttl:
            cmd += ["--ttl", str(ttl)]
        done = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"memory child failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    return analyse(result)


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    samples = np.array(result["samples"], dtype=np.float64)
    n, rss = samples[:, 0], samples[:, 1]
    half = n >= n[-1] / 2
    slope = float(np.polyfit(n[half], rss[half], 1)[0]) if half.sum() >= 2 else float("nan")
    last_n, last_rss = float(n[-1]), float(rss[-1])
    result.update({
        "slope_bytes_per_prediction": slope,
        "rss_end": last_rss,
        "rss_quarter": float(np.interp(n[-1] / 4, n, rss)),
        "rss_half": float(np.interp(n[-1] / 2, n, rss)),
        "projected_1m": last_rss + slope * max(1e6 - last_n, 0) if last_n < 1e6 else float(np.interp(1e6, n, rss)),
        "projected_10m": last_rss + slope * max(1e7 - last_n, 0),
    })
    return result


def run(events: int) -> dict[str, Any]:
    out = {}
    for label, ttl in (("default TTL (7 days)", None), ("TTL 60 s", 60.0)):
        print(f"  memory: {events:,} predictions, {label}", flush=True)
        out[label] = run_child(events, ttl)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--ttl", type=float, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.events, args.ttl, args.workdir)))
        return
    print(json.dumps(run(args.events), indent=1, default=str))


if __name__ == "__main__":
    main()
