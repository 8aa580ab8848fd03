"""``driftwarden demo``: the embedded broker, a worker, a retrain worker and the simulator, in one go.

The simulator publishes credit-risk traffic with delayed feedback and, after
``--change-after`` events, injects input drift, then a label shift, then a
fairness regression (one every ``--change-after`` events). The demo prints what the worker reports
(one line per closed window), every alert, every retrain job, and every new
model version. When the retrain worker publishes a new version, the
simulator starts serving it. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import orjson

from streams.broker import EmbeddedBroker, all_topics, create_topics
from streams.commands import prepare_workspace
from streams.config import Config
from streams.kafka import client_options
from streams.live_page import LivePage, start_page

log = logging.getLogger(__name__)


class _Child:
    """A driftwarden subprocess whose output lines are echoed with a prefix."""

    def __init__(self, name: str, args: list[str], cwd: Path) -> None:
        self.name = name
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], cwd=str(cwd), env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line or "\x1b[" in line:
                continue
            if line.startswith(("WINDOW", "ALERT", "RETRAIN", "UPDATE")) or " ERROR " in line or "Traceback" in line:
                print(f"[{self.name}] {line}", flush=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _updates(cfg: Config, stop: threading.Event) -> Iterator[dict[str, Any]]:
    """Model-update events as they are published."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(cfg.kafka.topics.model_updates, bootstrap_servers=cfg.kafka.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=500, group_id=None,
                             **client_options(cfg))
    try:
        while not stop.is_set():
            for message in consumer:
                yield orjson.loads(message.value)
    finally:
        consumer.close()


def run_demo(args: Any) -> int:
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="driftwarden-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"driftwarden demo: working in {workdir}", flush=True)
    page = _start_page(args, workdir)
    with EmbeddedBroker(port=0, log_path=workdir / "broker.log") as broker:
        config_path = prepare_workspace(workdir, bootstrap=broker.bootstrap, influx_url=args.influx_url,
                                        overrides={"worker.echo_windows": True, "worker.metrics_file": METRICS_FILE})
        cfg = Config.load(config_path)
        create_topics(broker.bootstrap, all_topics(cfg.kafka.topics), cfg.kafka.partitions, **client_options(cfg))
        page.follow_topics(bootstrap=broker.bootstrap, alerts_topic=cfg.kafka.topics.alerts,
                           jobs_topic=cfg.kafka.topics.retrain_jobs, client_options=client_options(cfg))
        print(f"embedded broker on {broker.bootstrap}; config {config_path}; reference profile built from "
              f"20,000 simulated training rows", flush=True)
        children = [_Child("worker", ["worker", "-c", str(config_path)], workdir)]
        children.append(_Child("retrain", ["retrain-worker", "-c", str(config_path)], workdir))
        stop = threading.Event()
        simulator = threading.Thread(target=_simulate, args=(cfg, args, stop), daemon=True)
        simulator.start()
        print(f"simulator: {args.rate:.0f} predictions/s; drift after {args.change_after} events, then a "
              f"label shift, then a fairness regression (each {args.change_after} events apart). Ctrl-C stops.",
              flush=True)
        try:
            deadline = started + args.duration if args.duration else None
            for update in _updates(cfg, stop):
                _print_update(update, started)
                if update.get("status") == "succeeded":
                    _SERVING[update.get("model_id", "")] = update
                if deadline and time.monotonic() > deadline:
                    break
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping...", flush=True)
        finally:
            stop.set()
            simulator.join(timeout=10)
            for child in children:
                child.stop()
            page.close()
    print(f"demo stopped after {time.monotonic() - started:.0f}s; files in {workdir}", flush=True)
    return 0


METRICS_FILE = "metrics.lp"
"""The worker's points, as line protocol, in the demo's workdir: what the page draws."""


def _start_page(args: Any, workdir: Path) -> LivePage:
    """The figures page (``--page-port``), drawing this run's points: the file is started afresh."""
    (workdir / METRICS_FILE).unlink(missing_ok=True)
    page = start_page(args.page_port, workdir / METRICS_FILE)
    print(f"figures: {page.url} (redrawn while the demo runs; plotly's JavaScript served locally)", flush=True)
    return page


_SERVING: dict[str, dict[str, Any]] = {}
"""The latest model update per model: the simulator serves that version once it exists."""


def _print_update(update: dict[str, Any], started: float) -> None:
    elapsed = time.monotonic() - started
    if update.get("status") in ("failed", "deferred"):
        print(f"UPDATE  retrain of {update.get('model_id')} {update['status']}: {update.get('reason')} "
              f"(+{elapsed:.0f}s)", flush=True)
        return
    print(f"UPDATE  {update.get('model_id')} v{update.get('previous_version')} -> v{update.get('model_version')}: "
          f"trained on {update.get('trained_on')} labelled pairs, holdout {update.get('holdout')}; "
          f"the simulator now serves v{update.get('model_version')} (+{elapsed:.0f}s)", flush=True)


def _simulate(cfg: Config, args: Any, stop: threading.Event) -> None:
    from kafka import KafkaProducer

    from streams.simulate import SimulatedStream

    stream = SimulatedStream(model_id="credit-risk", start=time.time(), rate=args.rate,
                             change_after=args.change_after, stagger=args.change_after,
                             changes=("drift", "label-shift", "fairness"), feedback_delay=5.0, feedback_loss=0.1)
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=20, **client_options(cfg))
    topics = {"prediction": cfg.kafka.topics.predictions, "feedback": cfg.kafka.topics.feedback}
    begun = time.monotonic()
    sent = 0
    try:
        for kind, event in stream.events(None):
            if stop.is_set():
                return
            if kind == "prediction":
                update = _SERVING.get(event["model_id"])
                if update and update.get("model_version"):
                    event["model_version"] = str(update["model_version"])
                sent += 1
                ahead = sent / args.rate - (time.monotonic() - begun)
                if ahead > 0:
                    time.sleep(ahead)
            producer.send(topics[kind], key=event["prediction_id"].encode(), value=orjson.dumps(event))
    finally:
        producer.flush()
        producer.close()
