"""``driftwarden``: the command line (see DESIGN.md for the stable commands)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from streams.broker import BrokerError
from streams.config import ConfigError

log = logging.getLogger("driftwarden")

EPILOG = """\
environment:
  DRIFTWARDEN_KAFKA_BOOTSTRAP   Kafka bootstrap servers (overrides kafka.bootstrap)
  DRIFTWARDEN_INFLUX_URL, _ORG, _BUCKET   InfluxDB 2 location (override influx.*)
  DRIFTWARDEN_INFLUX_TOKEN      InfluxDB token (environment only; never logged)
  DRIFTWARDEN_KAFKA_SASL_USERNAME, _SASL_PASSWORD, _SSL_KEY_PASSWORD   Kafka credentials (README: Secured Kafka)

examples:
  driftwarden demo
  driftwarden baseline --data train.csv --model credit-risk --target label -o profiles/credit-risk.json
  driftwarden worker -c driftwarden.yaml
  driftwarden replay -c driftwarden.yaml --predictions preds.jsonl --feedback fb.jsonl -o out/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftwarden",
        description="Streaming monitor for ML models in production: drift, label shift, data quality, "
                    "delayed-label performance and fairness, from Kafka to InfluxDB.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="embedded broker + worker + simulator with injected changes; Ctrl-C stops all")
    demo.add_argument("--rate", type=float, default=2000.0, help="prediction events per second (default 2000)")
    demo.add_argument("--change-after", type=int, default=20_000,
                      help="inject drift, label shift and a fairness regression after this many events (default 20000)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--workdir", default=None, help="where to keep profiles, config and reports (default: a temp dir)")
    demo.add_argument("--page-port", type=int, default=8050,
                      help="serve the figures page on http://127.0.0.1:PORT/ (default 8050; 0 or a taken port: a free one)")
    demo.add_argument("--influx-url", default=None,
                      help="also write points to this InfluxDB (token from DRIFTWARDEN_INFLUX_TOKEN); default: print only")

    broker = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu) on loopback")
    broker.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default 9092)")
    broker.add_argument("-c", "--config", default=None, help="create the topics this config names")
    broker.add_argument("--partitions", type=int, default=None, help="partitions per created topic")

    worker = sub.add_parser("worker", help="run the Faust worker")
    worker.add_argument("-c", "--config", required=True, help="YAML configuration file")

    baseline = sub.add_parser("baseline", help="build a reference profile from training data (CSV or Parquet)")
    baseline.add_argument("--data", required=True, help="training data: .csv or .parquet")
    baseline.add_argument("--model", required=True, help="model id")
    baseline.add_argument("--target", default=None, help="label column")
    baseline.add_argument("--prediction", default=None, help="model prediction column")
    baseline.add_argument("--score", default=None, help="score (probability of the positive class) column")
    baseline.add_argument("--attributes", default="", help="comma-separated sensitive/segment attribute columns")
    baseline.add_argument("--features", default=None,
                          help="comma-separated feature columns (default: every other column); or NAME:numeric|categorical")
    baseline.add_argument("--task", default="binary", choices=("binary", "multiclass", "regression"))
    baseline.add_argument("--bins", type=int, default=10, help="quantile bins per numeric feature (default 10)")
    baseline.add_argument("-o", "--output", required=True, help="profile JSON to write")

    replay = sub.add_parser("replay", help="run the detectors and policies on recorded JSON-lines events, no Kafka")
    replay.add_argument("-c", "--config", required=True)
    replay.add_argument("--predictions", required=True, help="JSON lines of prediction events (or arrays)")
    replay.add_argument("--feedback", default=None, help="JSON lines of feedback events (or arrays)")
    replay.add_argument("-o", "--output", required=True, help="directory for metrics.lp, alerts.jsonl, retrain_jobs.jsonl")

    simulate = sub.add_parser("simulate", help="publish synthetic traffic to a broker")
    simulate.add_argument("-c", "--config", default=None, help="config naming the broker, topics and models")
    simulate.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: config or 127.0.0.1:9092)")
    simulate.add_argument("--events", type=int, default=100_000, help="prediction events to publish (0: forever)")
    simulate.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    simulate.add_argument("--models", default="credit-risk", help="comma-separated simulated model ids")
    simulate.add_argument("--change-after", type=int, default=None, help="inject changes after this many events")
    simulate.add_argument("--changes", default="drift,label-shift,fairness",
                          help="which changes to inject: drift,label-shift,fairness,concept,quality")
    simulate.add_argument("--stagger", type=int, default=0,
                          help="events between one injected change and the next (default 0: all at once)")
    simulate.add_argument("--feedback-delay", type=float, default=30.0, help="mean label delay, seconds of event time")
    simulate.add_argument("--feedback-loss", type=float, default=0.1, help="share of predictions that never get a label")
    simulate.add_argument("--array-size", type=int, default=1, help="events per Kafka message (JSON array when > 1)")
    simulate.add_argument("--seed", type=int, default=7)

    retrain_worker = sub.add_parser("retrain-worker", help="consume retrain jobs and retrain")
    retrain_worker.add_argument("-c", "--config", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kafka", "aiokafka", "faust", "mode", "influxdb_client", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        return int(_dispatch(args) or 0)
    except ConfigError as exc:
        print(f"driftwarden: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"driftwarden: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:  # a client library's connection error: say what, not a traceback
        if type(exc).__module__.startswith(("kafka.", "aiokafka.")):
            print(f"driftwarden: cannot reach Kafka ({type(exc).__name__}: {exc}); check kafka.bootstrap or "
                  "DRIFTWARDEN_KAFKA_BOOTSTRAP", file=sys.stderr)
            return 3
        raise
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int | None:
    command = args.command
    if command == "worker":
        from streams.worker import run_worker

        return run_worker(args.config)
    if command == "broker":
        from streams.commands import run_broker

        return run_broker(args.port, args.config, args.partitions)
    if command == "baseline":
        from streams.commands import run_baseline

        return run_baseline(args)
    if command == "replay":
        from streams.replay import run_replay

        return run_replay(args.config, args.predictions, args.feedback, args.output)
    if command == "simulate":
        from streams.simulate import run_simulate

        return run_simulate(args)
    if command == "demo":
        from streams.demo import run_demo

        return run_demo(args)
    if command == "retrain-worker":
        from streams.retrain_service import run_retrain_worker

        return run_retrain_worker(args.config)
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
