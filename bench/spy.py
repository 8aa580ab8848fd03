"""One throughput run of the worker, optionally with py-spy sampling it: where its CPU goes end to end.

``python -m bench.spy [--events N] [--array-size K] [--py-spy PATH --output FILE] [--gc-times]`` publishes N
predictions (and ~50 % feedback) to the embedded broker, starts the worker on them (as
``bench.throughput`` does: every detector on, points to VictoriaMetrics when installed), prints the
sustained rate, and with ``--py-spy`` records the worker's stacks (``py-spy record -f raw``, 200 per
second, idle time left out) into FILE for a flame graph or a folded-stack summary. py-spy is not a
dependency: install it in a venv of its own (``python3 -m venv /tmp/tools && /tmp/tools/bin/pip install
py-spy``). With ``--gc-times`` the worker's garbage collections are timed (``bench/gc_times``: a
``sitecustomize`` on its ``PYTHONPATH``) and summed up per generation, with each full collection's
seconds. ``bench.profile`` is the in-process figure; this one includes the Kafka path.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import OffsetSampler, Services, Worker, sustained_rate
from bench.throughput import prepare
from bench.world import write_workspace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.spy", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="predictions (default 200,000)")
    parser.add_argument("--array-size", type=int, default=1, help="events per message (default 1)")
    parser.add_argument("--py-spy", help="path of a py-spy executable: record the worker")
    parser.add_argument("--output", default="worker-stacks.txt", help="py-spy's raw output (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the worker may take (default 900)")
    parser.add_argument("--gc-times", action="store_true", help="time the worker's garbage collections")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="driftwarden-spy-"))
    gc_times = work / "gc-times.json"
    if args.gc_times:  # the worker inherits this process's environment (bench.harness.Worker)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(GC_TIMES), os.environ.get("PYTHONPATH"))))
        os.environ["DRIFTWARDEN_BENCH_GC_TIMES"] = str(gc_times)
    with Services(work) as services:
        data = prepare(services, args.events, array_sizes=(args.array_size,))[args.array_size]
        influx = services.victoria.url if services.victoria else None
        config = write_workspace(work / "ws", bootstrap=services.bootstrap, influx_url=influx, overrides=data.overrides)
        worker = Worker(config, work / "ws" / "worker.log")
        sampler = OffsetSampler(services.bootstrap, data.overrides["kafka.group_id"], data.published)
        worker.start()
        assert worker.process is not None
        spy = None
        if args.py_spy:
            spy = subprocess.Popen([args.py_spy, "record", "--pid", str(worker.process.pid), "-r", "200", "-f", "raw",
                                    "-o", args.output, "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            done = sampler.run(timeout=args.timeout, alive=worker.alive)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            worker.stop()
    if not done:
        print(f"the worker did not consume everything within {args.timeout:.0f}s")
        return 1
    rate = sustained_rate(sampler.samples, data.published.events)
    print(f"{data.published.events:,} events (arrays of {args.array_size}): {rate:,.0f} events/s sustained"
          + (f"; worker stacks in {args.output}" if spy is not None else ""))
    if args.gc_times:
        print(gc_summary(json.loads(gc_times.read_text())))
    return 0


GC_TIMES = Path(__file__).resolve().parent / "gc_times"


def gc_summary(times: dict[str, Any]) -> str:
    """The worker's collections per generation and each full one, from ``bench/gc_times``' file.

    >>> print(gc_summary({"collections": [10, 1, 1], "seconds": [0.01, 0.002, 0.3], "full": [[1.5, 0.3, 0]]}))
    worker's garbage collections: young 10 (0.010 s), middle 1 (0.002 s), full 1 (0.300 s)
      full collections (s since start: seconds, containers frozen before): 1.5: 0.300 (0)
    """
    counts, seconds = times["collections"], times["seconds"]
    parts = [f"{name} {n:,} ({s:.3f} s)" for name, n, s in zip(("young", "middle", "full"), counts, seconds)]
    fulls = ", ".join(f"{at}: {s:.3f} ({frozen:,})" for at, s, frozen in times["full"])
    return ("worker's garbage collections: " + ", ".join(parts)
            + f"\n  full collections (s since start: seconds, containers frozen before): {fulls}")


if __name__ == "__main__":
    raise SystemExit(main())
