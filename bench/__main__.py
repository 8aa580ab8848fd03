"""``python -m bench all|SECTION [SECTION ...] [--events N] [--full]`` (sections: throughput, alternatives, quality, memory).

Starts what it needs itself (the embedded broker; VictoriaMetrics when the
``victoria-metrics`` binary is installed, else the worker runs with
``influx.enabled: false`` and the latency run is skipped), prints a table per
section and, for ``all``, writes BENCHMARKS.md at the repository root. Every
process it starts is stopped on the way out.

``--events N``: predictions per run (throughput and alternatives publish N
predictions and their ~50 % feedback; quality runs N stationary predictions;
memory runs N predictions per TTL). Default 200,000; ``--full`` means 1,000,000
(and more Evidently windows and KSWIN events).

``--whylogs-python PATH`` (or ``$DRIFTWARDEN_BENCH_WHYLOGS_PYTHON``): an interpreter with whylogs,
for the alternatives' whylogs column; without one the column says "not installed". whylogs
1.6.4 pins old dependencies and breaks on numpy 2, so it gets a venv of its own::

    python3 -m venv /tmp/whylogs-venv
    /tmp/whylogs-venv/bin/pip install whylogs==1.6.4 'numpy<2' 'pandas>=2.1,<3' orjson aiokafka
    python -m bench alternatives --no-write --whylogs-python /tmp/whylogs-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.harness import REPO, Services, machine

DEFAULT_EVENTS = 200_000
FULL_EVENTS = 1_000_000
SECTIONS = ("throughput", "alternatives", "quality", "memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("section", nargs="+", choices=(*SECTIONS, "all"),
                        help="what to run (several may be given; all: every section, and writes the report)")
    parser.add_argument("--events", type=int, default=None, help=f"predictions per run (default {DEFAULT_EVENTS:,}; "
                        f"--full: {FULL_EVENTS:,})")
    parser.add_argument("--full", action="store_true", help="the headline run: 1M predictions, longer capped runs")
    parser.add_argument("--evidently-cap", type=float, default=60.0, help="seconds the DIY Evidently monitor runs")
    parser.add_argument("--whylogs-python", default=None, metavar="PATH",
                        help="interpreter with whylogs for the whylogs column (default: "
                        "$DRIFTWARDEN_BENCH_WHYLOGS_PYTHON; none: 'not installed')")
    parser.add_argument("--whylogs-cap", type=float, default=120.0, help="seconds the whylogs monitor runs at most")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md", help="report path (all)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write the report")
    parser.add_argument("--json", type=Path, default=None, help="also dump raw results here")
    args = parser.parse_args(argv)
    events = args.events or (FULL_EVENTS if args.full else DEFAULT_EVENTS)
    everything = "all" in args.section
    sections = SECTIONS if everything else tuple(s for s in SECTIONS if s in args.section)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {"events": events, "full": args.full, "command": command.strip(),
                               "machine": machine(), "commit": report.git_commit(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="driftwarden-bench-") as tmp:
        workdir = Path(tmp)
        if {"throughput", "alternatives"} & set(sections):
            results.update(run_kafka_sections(workdir, sections, events, args))
        if "quality" in sections:
            from bench import quality

            print(f"quality: {events:,} stationary predictions, scenarios", flush=True)
            results["quality"] = quality.run(stationary=events, evidently_windows=100 if args.full else 30,
                                             kswin_events=200_000 if args.full else 50_000, workdir=workdir)
        if "memory" in sections:
            from bench import memory

            results["memory"] = memory.run(events)
    results["runtime_s"] = time.monotonic() - started
    text = report.render(results, sections)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if everything and not args.no_write:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


def run_kafka_sections(workdir: Path, sections: tuple[str, ...], events: int, args: Any) -> dict[str, Any]:
    from bench import alternatives, throughput

    out: dict[str, Any] = {}
    with Services(workdir) as services:
        out["victoria"] = services.victoria is not None
        print(f"broker on {services.bootstrap}; VictoriaMetrics: "
              f"{services.victoria.url if services.victoria else 'not installed (influx.enabled: false)'}", flush=True)
        print(f"publishing {events:,} predictions (+ ~50 % feedback), one event per message and arrays of "
              f"{throughput.ARRAY_SIZE}", flush=True)
        data = throughput.prepare(services, events)
        if "throughput" in sections:
            runs = {}
            timeout = max(600.0, events / 1000.0)
            for size, dataset in data.items():
                print(f"throughput: worker on arrays of {size}", flush=True)
                runs[size] = throughput.run_worker(services, dataset, workdir, timeout=timeout)
                print(f"  {runs[size]['rate']:,.0f} events/s", flush=True)
            out["throughput"] = {"runs": runs}
            print("latency: paced run", flush=True)
            out["throughput"]["latency"] = throughput.run_latency(services, workdir)
            print("latency: paced run, tuned settings", flush=True)
            out["throughput"]["latency_tuned"] = throughput.run_latency(services, workdir, seed=6,
                                                                        settings=throughput.LOW_LATENCY)
        if "alternatives" in sections:
            alt: dict[str, Any] = {}
            for size, dataset in data.items():
                print(f"alternatives: bare consumer, arrays of {size}", flush=True)
                alt[f"bare-{size}"] = alternatives.bare(services.bootstrap, dataset.published)
                print(f"alternatives: River ADWIN x12, arrays of {size}", flush=True)
                alt[f"river-{size}"] = alternatives.river_adwin(services.bootstrap, dataset.published)
            print(f"alternatives: Evidently per window (capped at {args.evidently_cap:.0f}s)", flush=True)
            alt["evidently-1"] = alternatives.evidently_monitor(services.bootstrap, data[1].published,
                                                                cap_s=args.evidently_cap)
            python = alternatives.whylogs_python(args.whylogs_python)
            print(f"alternatives: whylogs per window ({python or 'no interpreter given'}; capped at "
                  f"{args.whylogs_cap:.0f}s)", flush=True)
            alt["whylogs-1"] = alternatives.whylogs_monitor(services.bootstrap, data[1].published, python,
                                                            cap_s=args.whylogs_cap)
            if "skipped" in alt["whylogs-1"]:
                print(f"  {alt['whylogs-1']['skipped']}", flush=True)
            out["alternatives"] = alt
        out["published"] = {size: {"predictions": d.published.predictions, "feedback": d.published.feedback,
                                   "messages": d.published.messages, "bytes": d.published.bytes,
                                   "seconds": d.published.seconds} for size, d in data.items()}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
