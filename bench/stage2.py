"""CPU per event of stage 2 alone (the partial codec, the windows, the policy), and a digest of
everything it produced.

``python -m bench.stage2 [--events N] [--array-size K] [--seconds W [--slide S]] [--repeats R]``
runs stage 1 (:class:`~streams.pipeline.SourcePipeline`) once over the traffic of
``python -m bench.profile`` and keeps every batch's partials; then, ``R`` times, a fresh stage 2
(the :class:`~streams.pipeline.Merger` of a new pipeline) takes them batch by batch as the worker
does: each partial encoded (:func:`streams.partials.encode`), decoded and merged, then the
merger's snapshot taken and serialised (the worker saves it after every batch). It prints the CPU
µs per event (``time.process_time``) of each part, the median over the repeats, the encoded
partials' bytes per event, a SHA-256 of every output (points, windows, alerts, jobs, the final
snapshot), so two versions of the code can be held to the same outputs on the same traffic, and
one of the encoded partials (it changes with the codec; the outputs must not). ``--seconds`` replaces
the benchmark's count windows of 1,000 events by event-time windows (the cohort path).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _canonical(value: Any) -> Any:
    """A structure whose ``repr`` shows every value with its type (numpy scalars stay visible)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple((f.name, _canonical(getattr(value, f.name)))
                                            for f in dataclasses.fields(value)))
    if isinstance(value, dict):
        return ("dict", tuple((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_canonical(v) for v in value))
    return value


def run(events: int = 40_000, array_size: int = 1, *, repeats: int = 5, seconds: float | None = None,
        slide: float | None = None, batch: int = 2000) -> dict[str, Any]:
    import orjson

    from bench.profile import messages
    from bench.world import write_workspace
    from streams.config import Config
    from streams.join import DictStore
    from streams.partials import encode
    from streams.collector import one_collection_per_batch
    from streams.pipeline import Outcome
    from streams.runtime import pipeline_factory

    overrides: dict[str, Any] = {}
    if seconds is not None:
        overrides["models.*.window"] = {"events": None, "seconds": seconds, "slide": slide}
    with tempfile.TemporaryDirectory(prefix="driftwarden-stage2-") as tmp:
        cfg = Config.load(str(write_workspace(Path(tmp), overrides=overrides)))
        build = pipeline_factory(cfg)
        source = build(DictStore()).source
        traffic = messages(events, array_size)
        batches = []
        for i in range(0, len(traffic), batch):
            with one_collection_per_batch():
                batches.append(source.process(traffic[i:i + batch]).partials)
        batches.append(source.end_of_input())
        n_events = source.events_seen
        figures: dict[str, list[float]] = {"encode": [], "merge": [], "snapshot": [], "stage 2": []}
        digest = partials_digest = ""
        partial_bytes = 0
        for _ in range(repeats):
            merger = build(DictStore()).merger
            h = hashlib.sha256()
            encoded = hashlib.sha256()
            partial_bytes = 0
            spent = {"encode": 0.0, "merge": 0.0, "snapshot": 0.0}
            for partials in batches:
                outcome = Outcome()
                with one_collection_per_batch():
                    t0 = time.process_time()
                    data = [encode(p) for p in partials]
                    t1 = time.process_time()
                    for message in data:
                        merger.merge_message(message, outcome)
                    t2 = time.process_time()
                    snapshot = orjson.dumps(merger.snapshot(), option=orjson.OPT_SERIALIZE_NUMPY)
                    t3 = time.process_time()
                spent["encode"] += t1 - t0
                spent["merge"] += t2 - t1
                spent["snapshot"] += t3 - t2
                for message in data:
                    encoded.update(message)
                    partial_bytes += len(message)
                h.update(repr(_canonical([outcome.points, outcome.windows, outcome.alerts, outcome.jobs])).encode())
            h.update(snapshot)
            h.update(repr(merger.internal_errors).encode())
            for name, value in spent.items():
                figures[name].append(value / n_events * 1e6)
            figures["stage 2"].append(sum(spent.values()) / n_events * 1e6)
            if digest and (h.hexdigest(), encoded.hexdigest()) != (digest, partials_digest):
                raise AssertionError("stage 2 gave different outputs on the same partials")
            digest, partials_digest = h.hexdigest(), encoded.hexdigest()
    return {"events": n_events, "batches": len(batches), "us_per_event": {k: statistics.median(v) for k, v in figures.items()},
            "runs": figures, "digest": digest, "partials_digest": partials_digest,
            "partial_bytes_per_event": partial_bytes / n_events}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stage2", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000, help="predictions (default 40,000)")
    parser.add_argument("--array-size", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=None, help="event-time windows of this many seconds")
    parser.add_argument("--slide", type=float, default=None, help="their slide (sliding windows)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    result = run(args.events, args.array_size, repeats=args.repeats, seconds=args.seconds, slide=args.slide)
    print(f"{result['events']:,} events, {result['batches']} batches; stage 2 CPU µs per event (median of "
          f"{args.repeats}): " + "; ".join(f"{k} {v:.2f}" for k, v in result["us_per_event"].items()))
    print(f"partials {result['partial_bytes_per_event']:.1f} B per event, sha256 {result['partials_digest']}")
    print(f"outputs sha256 {result['digest']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
