"""In-process cost per event of the worker's batch path, and where it goes.

``python -m bench.profile [--events N] [--array-size K] [--cprofile] [--changelog]``
builds the worker's :class:`~streams.pipeline.Pipeline` from the benchmark's config
(every detector on, the shipped policies, windows of 1,000 events), pre-encodes the
benchmark model's traffic (predictions, ~50 % feedback ~30 s of event time later) as
Kafka message values (one event per message, or JSON arrays of ``K``), then times
``Pipeline.process`` over batches of 2,000 messages (the worker's ``getmany`` size).
With ``--changelog`` the join table is a :class:`~streams.state.PartitionState` whose
records are encoded (not sent) after each batch, and the ``labelled`` messages of the
batch's pairs are built, as the worker does: their bytes per event are reported.
``--cprofile`` prints the top functions by cumulative and own time; ``--stages`` the CPU time per
event of stage 1 (and within it the parsing and the monitors), of stage 2, and (``--changelog``)
of the windows' snapshot stage 2 saves after every batch. The rate per CPU second
(``time.process_time``) is the figure to compare on a shared machine: wall time there
depends on what else runs.

No Kafka: this is the part of the worker's cost that the columnar work changes,
measured without the broker's noise; ``python -m bench throughput`` is the end-to-end figure.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any


def messages(events: int, array_size: int) -> list[Any]:
    """The traffic as :class:`~streams.pipeline.RawMessage` values, framed like the throughput run."""
    import orjson

    from bench.world import EventStream
    from streams.pipeline import FEEDBACK, PREDICTION, RawMessage

    stream = EventStream(seed=0, start=1_700_000_000.0, rate=1000.0, feedback_delay=30.0)
    out: list[RawMessage] = []
    buffers: dict[str, list[Any]] = {"prediction": [], "feedback": []}
    offsets = {"prediction": 0, "feedback": 0}

    def send(kind: str, batch: list[Any]) -> None:
        value = orjson.dumps(batch[0] if array_size == 1 else batch)
        out.append(RawMessage(PREDICTION if kind == "prediction" else FEEDBACK, value, None, kind, 0, offsets[kind]))
        offsets[kind] += 1

    for kind, event in stream.events(events):
        buffers[kind].append(event)
        if len(buffers[kind]) >= array_size:
            send(kind, buffers[kind])
            buffers[kind] = []
    for kind, batch in buffers.items():
        if batch:
            send(kind, batch)
    return out


STAGES = (("stage 1", "streams.pipeline", "SourcePipeline", "process"),
          ("parsing", "streams.pipeline", "SourcePipeline", "_parse"),
          ("monitors", "streams.monitor", "ModelMonitor", "add_batch"),
          ("CUSUM", "detectors.cusum", "ReferenceCUSUM", "update"),
          ("stage 2", "streams.pipeline", "Pipeline", "_merge"),
          ("stage 2 snapshot", "streams.windows", "ModelWindows", "snapshot"))
"""What ``--stages`` times: (name, module, class, method); parsing and monitors are within stage 1,
the CUSUM banks' predictions (the row loop and the sources it reads) within the monitors.
The windows' snapshot is taken only with ``--changelog`` (the worker saves it after every batch)."""


class _StageTimer:
    """CPU seconds spent in each of :data:`STAGES` while active (the methods wrapped, then restored)."""

    def __init__(self) -> None:
        self.seconds = {name: 0.0 for name, *_ in STAGES}
        self._restore: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> _StageTimer:
        import importlib

        for name, module, owner, method in STAGES:
            cls = getattr(importlib.import_module(module), owner)
            original = getattr(cls, method)
            self._restore.append((cls, method, original))
            setattr(cls, method, self._timed(name, original))
        return self

    def _timed(self, name: str, original: Any) -> Any:
        seconds = self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[name] += time.process_time() - started
        return timed

    def __exit__(self, *_exc: Any) -> None:
        for cls, method, original in self._restore:
            setattr(cls, method, original)


def run(events: int = 200_000, array_size: int = 1, *, batch: int = 2000, changelog: bool = False,
        profile: bool = False, stages: bool = False, workdir: Path | None = None) -> dict[str, Any]:
    """Seconds and events per second of ``Pipeline.process`` over the traffic (and its profile)."""
    from bench.world import write_workspace
    from streams.config import Config
    from streams.join import labelled_messages
    from streams.join_store import ColumnarStore
    from streams.runtime import pipeline_factory
    from streams.state import PartitionState

    with tempfile.TemporaryDirectory(prefix="driftwarden-profile-") as tmp:
        config = write_workspace(workdir or Path(tmp))
        cfg = Config.load(str(config))
        sent = {"changelog": 0, "labelled": 0}

        def send(_partition: int, key: bytes, value: bytes | None) -> None:
            sent["changelog"] += len(key) + len(value or b"")

        store: Any = PartitionState(0, send=send) if changelog else ColumnarStore()
        pipeline = pipeline_factory(cfg)(store)
        traffic = messages(events, array_size)
        total = sum(1 for _ in traffic)  # messages
        n_events = events  # predictions; feedback counted below
        profiler = cProfile.Profile() if profile else None
        timer = _StageTimer()
        if stages:
            timer.__enter__()
        started, cpu_started = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        for i in range(0, len(traffic), batch):
            outcome = pipeline.process(traffic[i:i + batch])
            if changelog:
                for _key, value, _ts in labelled_messages(outcome.pairs):
                    sent["labelled"] += len(value)
                store.save_snapshot(pipeline.snapshot())
        if profiler:
            profiler.disable()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if stages:
            timer.__exit__()
    counts = pipeline.join.counts
    all_events = pipeline.events_seen
    result = {"events": all_events, "predictions": n_events, "messages": total, "array_size": array_size,
              "seconds": seconds, "rate": all_events / seconds, "cpu_seconds": cpu, "cpu_rate": all_events / cpu, "pairs": counts.pairs,
              "changelog_bytes_per_event": sent["changelog"] / all_events if changelog else None,
              "labelled_bytes_per_pair": sent["labelled"] / max(counts.pairs, 1) if changelog else None}
    if profiler:
        result["profile"] = profiler
    if stages:
        result["stages_us_per_event"] = {name: value / all_events * 1e6 for name, value in timer.seconds.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="predictions (default 200,000)")
    parser.add_argument("--array-size", type=int, default=1, help="events per message (default 1)")
    parser.add_argument("--changelog", action="store_true", help="encode the state changelog and labelled messages")
    parser.add_argument("--cprofile", action="store_true", help="print the top functions")
    parser.add_argument("--stages", action="store_true", help="print the CPU time per event of each stage")
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args(argv)
    result = run(args.events, args.array_size, changelog=args.changelog, profile=args.cprofile, stages=args.stages)
    print(f"{result['events']:,} events ({result['predictions']:,} predictions) in {result['messages']:,} messages "
          f"(arrays of {args.array_size}): {result['seconds']:.1f}s, {result['rate']:,.0f} events/s in-process; "
          f"{result['cpu_seconds']:.1f} CPU s, {result['cpu_rate']:,.0f} events per CPU second")
    if args.changelog:
        print(f"changelog {result['changelog_bytes_per_event']:,.0f} bytes/event; "
              f"labelled {result['labelled_bytes_per_pair']:,.0f} bytes/pair")
    if args.stages:
        total = result["cpu_seconds"] / result["events"] * 1e6
        print(f"CPU µs per event: all {total:.1f}; " + "; ".join(
            f"{name} {value:.1f}" for name, value in result["stages_us_per_event"].items()))
    if args.cprofile:
        stats = pstats.Stats(result["profile"])
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
