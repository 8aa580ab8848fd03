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
from typing import Any

import orjson

from streams.broker import EmbeddedBroker, all_topics, create_topics
from streams.commands import prepare_workspace
from streams.config import Config
from streams.kafka import client_options, close_client, close_producer
from streams.live_page import LivePage, start_page

log = logging.getLogger(__name__)


STOP_BUDGET = 8.0
"""Seconds from the start of the stop to the broker stopped: the simulator, the workers (SIGTERM, then
SIGKILL), the broker. With the main loop's poll before it and the interpreter's exit after, Ctrl-C to exit
takes under 10 s."""

BROKER_SHARE = 1.5
"""Seconds of :data:`STOP_BUDGET` kept for the broker, which stops last (Tansu exits at once on SIGTERM)."""

ECHOED = ("WINDOW", "ALERT", "RETRAIN", "UPDATE", "PARTITIONS", "driftwarden")
"""Output lines of a child that the demo shows (besides ERROR lines and tracebacks)."""


class _Child:
    """A driftwarden subprocess whose output lines are echoed with a prefix.

    Every line it writes also goes to ``log_path`` (``WORKDIR/NAME.log``), as it comes: the
    echo shows only some lines (the first of a traceback), the file all of them.
    It runs in its own session, so a Ctrl-C in the terminal reaches only the demo,
    which stops its children in order (see :func:`run_demo`).
    """

    def __init__(self, name: str, args: list[str], cwd: Path, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], cwd=str(cwd), env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        with open(self.log_path, "wb", buffering=0) as log_file:  # this run's lines only
            for raw in self.process.stdout:
                log_file.write(raw)
                line = raw.decode(errors="replace").rstrip()
                if not line or "\x1b[" in line:
                    continue
                if "Traceback" in line:
                    print(f"[{self.name}] {line} (the whole traceback: {self.log_path})", flush=True)
                elif line.startswith(ECHOED) or " ERROR " in line:
                    print(f"[{self.name}] {line}", flush=True)

    @property
    def exit_code(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM: the worker commits and flushes, the retrain worker finishes its poll)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> str:
        """Wait for the child to exit until ``deadline`` (monotonic), then kill it; say how it ended."""
        try:
            code = self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            # -SIGTERM: it was still importing, before its handler was installed; nothing to flush yet
            how = "stopped while starting" if code == -signal.SIGTERM else f"stopped (exit {code})"
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            how = "killed: it did not stop in time (a retrain job's report may have been in hand)"
        self.thread.join(timeout=1.0)
        return how


def run_demo(args: Any) -> int:
    """Start the broker, the workers and the simulator; run until ``--duration`` or Ctrl-C/SIGTERM;
    then stop them in order — the simulator (its producer flushed), the workers, the broker last, so
    no client ever sees its broker vanish — within :data:`STOP_BUDGET` seconds (a child that has not
    exited by then is killed; the demo's broker keeps nothing anyway)."""
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="driftwarden-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    deadline = None
    print(f"driftwarden demo: working in {workdir} (the children's whole output: broker.log, worker.log, "
          "retrain.log)", flush=True)
    page = _start_page(args, workdir)
    broker = EmbeddedBroker(port=0, log_path=workdir / "broker.log")
    try:
        broker.start()
        config_path = prepare_workspace(workdir, bootstrap=broker.bootstrap, influx_url=args.influx_url,
                                        overrides={"worker.echo_windows": True, "worker.metrics_file": METRICS_FILE})
        cfg = Config.load(config_path)
        create_topics(broker.bootstrap, all_topics(cfg.kafka.topics), cfg.kafka.partitions, **client_options(cfg))
        page.follow_topics(bootstrap=broker.bootstrap, alerts_topic=cfg.kafka.topics.alerts,
                           jobs_topic=cfg.kafka.topics.retrain_jobs, client_options=client_options(cfg))
        print(f"embedded broker on {broker.bootstrap}; config {config_path}; reference profile built from "
              f"20,000 simulated training rows", flush=True)
        if not stop.is_set():
            code, deadline = _run(cfg, config_path, workdir, args, started, stop)
    finally:
        page.close()  # its topic reader first: no client may see its broker vanish
        remaining = (deadline - time.monotonic()) if deadline is not None else 5.0
        broker.stop(timeout=max(0.5, remaining))
        if deadline is not None:
            print("  broker stopped", flush=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    print(f"demo stopped after {time.monotonic() - started:.0f}s; files in {workdir}", flush=True)
    return code


def _run(cfg: Config, config_path: Path, workdir: Path, args: Any, started: float,
         stop: threading.Event) -> tuple[int, float]:
    """The demo's children and its loop (printing model updates) until ``stop`` or ``--duration``.

    Stops the simulator and the workers before it returns ``(exit code, deadline)``: the code is 1
    when a child died; the broker is to be stopped by the deadline (monotonic)."""
    from kafka import KafkaConsumer

    children = [_Child("worker", ["worker", "-c", str(config_path)], workdir, workdir / "worker.log"),
                _Child("retrain", ["retrain-worker", "-c", str(config_path)], workdir, workdir / "retrain.log")]
    sim_stop = threading.Event()
    simulator = threading.Thread(target=_simulate, args=(cfg, args, started, sim_stop), daemon=True)
    simulator.start()
    print(f"simulator: {args.rate:.0f} predictions/s; drift after {args.change_after} events, then a "
          f"label shift, then a fairness regression (each {args.change_after} events apart). Ctrl-C stops.",
          flush=True)
    updates = KafkaConsumer(cfg.kafka.topics.model_updates, bootstrap_servers=cfg.kafka.bootstrap,
                            auto_offset_reset="earliest", group_id=None, client_id="driftwarden-demo",
                            **client_options(cfg))
    until = started + args.duration if args.duration else None
    code = 0
    try:
        while not stop.is_set() and (until is None or time.monotonic() < until):
            for records in updates.poll(timeout_ms=200).values():
                for message in records:
                    update = orjson.loads(message.value)
                    _print_update(update, started)
                    if update.get("status") == "succeeded":
                        _SERVING[update.get("model_id", "")] = update
            dead = [child for child in children if child.exit_code is not None]
            if dead:
                print(f"[{dead[0].name}] exited with code {dead[0].exit_code}: stopping the demo", flush=True)
                code = 1
                break
    finally:
        deadline = time.monotonic() + STOP_BUDGET
        print("stopping: the simulator, then the workers, then the broker", flush=True)
        sim_stop.set()
        simulator.join(timeout=2.0)
        print("  simulator stopped" if not simulator.is_alive() else "  simulator abandoned", flush=True)
        for child in children:
            child.terminate()
        for child in children:
            print(f"  {child.name} {child.wait(deadline - BROKER_SHARE)}", flush=True)
        close_client(updates)
    return code, deadline


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


CHANGE_NAMES = {"drift": "input drift", "label-shift": "label shift", "fairness": "fairness regression"}
"""What a ``CHANGE`` line calls each of the simulator's changes, in the order the demo injects them."""


def _simulate(cfg: Config, args: Any, started: float, stop: threading.Event) -> None:
    """Publish the simulated traffic until ``stop``; flush what was sent before returning.

    Prints a ``CHANGE`` line as it sends the first prediction of each change, ``+Ns`` on the clock of
    the ``UPDATE`` lines (since the demo started): the time from a change to a new version is theirs."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from streams.simulate import SimulatedStream

    stream = SimulatedStream(model_id="credit-risk", start=time.time(), rate=args.rate,
                             change_after=args.change_after, stagger=args.change_after,
                             changes=tuple(CHANGE_NAMES), feedback_delay=5.0, feedback_loss=0.1)
    # the prediction (0-based) that starts each change (--change-after is positive: one change each)
    change_at = {args.change_after * (i + 1): name for i, name in enumerate(CHANGE_NAMES.values())}
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap, linger_ms=20, client_id="driftwarden-demo-sim",
                             **client_options(cfg))
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
                if sent in change_at:
                    print(f"CHANGE  {event['model_id']}: {change_at[sent]} from prediction {sent} on "
                          f"(+{time.monotonic() - started:.0f}s)", flush=True)
                sent += 1
                ahead = sent / args.rate - (time.monotonic() - begun)
                if ahead > 0 and stop.wait(ahead):
                    return
            producer.send(topics[kind], key=event["prediction_id"].encode(), value=orjson.dumps(event))
    finally:
        try:
            # within the stop's share for the simulator (run_demo joins it for 2 s); the demo keeps nothing
            if not close_producer(producer, timeout=0.8):
                log.warning("simulator: the last predictions were not all sent within 0.8 s; dropped them")
        except KafkaError as exc:
            log.warning("simulator: the last predictions were not all sent: %s", exc)
