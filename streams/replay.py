"""``driftwarden replay``: the worker's detectors and policies on recorded events, without Kafka.

Predictions and feedback (JSON lines; a line may be one event or an array)
are merged in event-time order — a feedback line counts at its own
``timestamp`` — and fed to the same :class:`~streams.pipeline.Pipeline` the
worker runs, in micro-batches. Writes ``metrics.lp`` (InfluxDB line
protocol), ``alerts.jsonl`` and ``retrain_jobs.jsonl`` into the output
directory, ``dead_letters.jsonl`` when some input was rejected, and
``report.html``: the figures of the run drawn per model
(:mod:`streams.report_page`), a page that needs no network. The final
partial window is flushed at end of input.
"""

from __future__ import annotations

import heapq
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import orjson

from streams.config import Config, ConfigError
from streams.errors import NoValidInput
from streams.events import message_time
from streams.join_store import ColumnarStore
from streams.pipeline import FEEDBACK, PREDICTION, Outcome, RawMessage
from streams.report_page import ReportData, page_html
from streams.runtime import load_evaluations, pipeline_factory, release_large_blocks
from streams.sinks import LineProtocolFile

log = logging.getLogger(__name__)

BATCH = 2000


def _timed_lines(path: Path, kind: str) -> Iterator[tuple[float, int, RawMessage]]:
    """(event time, line number, message) per line; lines whose time cannot be read sort first."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle):
            line = line.strip()
            if not line:
                continue
            yield message_time(line), number, RawMessage(kind, line, None, str(path), 0, number)


def merged_messages(predictions: Path, feedback: Path | None) -> Iterator[RawMessage]:
    """Both files merged by event time (each file is assumed in time order, as logs are;
    ties keep predictions first)."""
    sources = [((t, 0, n), m) for t, n, m in _timed_lines(predictions, PREDICTION)]
    iterators = [iter(sources)]
    if feedback is not None:
        iterators.append(iter(((t, 1, n), m) for t, n, m in _timed_lines(feedback, FEEDBACK)))
    for _, message in heapq.merge(*iterators, key=lambda item: item[0]):
        yield message


class ReplayWriter:
    """Collects a replay's outputs into files."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.metrics = LineProtocolFile(out_dir / "metrics.lp")
        self.alerts = (out_dir / "alerts.jsonl").open("wb")
        self.jobs = (out_dir / "retrain_jobs.jsonl").open("wb")
        self.dead = (out_dir / "dead_letters.jsonl").open("wb")
        self.counts = {"alerts": 0, "jobs": 0, "dead_letters": 0}
        self.report = ReportData()

    def write(self, outcome: Outcome, actions: Any) -> None:
        self.metrics.write(outcome.points)
        self.report.add_points(outcome.points)
        for dead in outcome.dead_letters:
            self.dead.write(dead.to_json() + b"\n")
            self.counts["dead_letters"] += 1
        if actions is not None:
            for alert, job in actions.decide(outcome):
                if alert is not None:
                    self.alerts.write(orjson.dumps(alert) + b"\n")
                    self.report.add_alert(alert)
                    self.counts["alerts"] += 1
                if job is not None:
                    self.jobs.write(orjson.dumps(job) + b"\n")
                    self.report.add_job(job)
                    self.counts["jobs"] += 1

    def write_report(self, subtitle: str) -> Path:
        """``report.html``: what was written, drawn (plotly's JavaScript inside the file)."""
        path = self.out_dir / "report.html"
        document = self.report.document(title="driftwarden replay", subtitle=subtitle)
        path.write_text(page_html(document), encoding="utf-8")
        return path

    def close(self) -> None:
        self.metrics.close()
        for handle in (self.alerts, self.jobs, self.dead):
            handle.close()
        if self.counts["dead_letters"] == 0:
            (self.out_dir / "dead_letters.jsonl").unlink(missing_ok=True)


def run_replay(config_path: str, predictions: str, feedback: str | None, output: str) -> int:
    cfg = Config.load(config_path)
    pred_path = Path(predictions)
    fb_path = Path(feedback) if feedback else None
    for path in (pred_path, fb_path):
        if path is not None and not path.exists():
            raise ConfigError(f"input file not found: {path}")
    evaluations = load_evaluations(cfg)
    release_large_blocks()
    pipeline = pipeline_factory(cfg, evaluations)(ColumnarStore())
    from streams.actions import Actions

    actions = Actions(cfg, evaluations)
    writer = ReplayWriter(Path(output))
    started = time.monotonic()
    batch: list[RawMessage] = []
    messages = 0
    last_report = started
    try:
        for message in merged_messages(pred_path, fb_path):
            batch.append(message)
            if len(batch) >= BATCH:
                writer.write(pipeline.process(batch), actions)
                messages += len(batch)
                batch = []
                if time.monotonic() - last_report > 5:
                    last_report = time.monotonic()
                    log.info("replay: %d messages, %d events (%.0f events/s)", messages, pipeline.events_seen,
                             pipeline.events_seen / (last_report - started))
        if batch:
            writer.write(pipeline.process(batch), actions)
            messages += len(batch)
        writer.write(pipeline.flush(), actions)
        writer.write_report(f"{predictions} and {feedback or 'no feedback'}: {pipeline.events_seen} events, "
                            f"{writer.counts['alerts']} alerts, {writer.counts['jobs']} retrain jobs")
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    counts = pipeline.join.counts
    print(f"replayed {pipeline.events_seen} events from {messages} lines in {elapsed:.1f}s "
          f"({pipeline.events_seen / max(elapsed, 1e-9):.0f} events/s): {writer.metrics.written} points, "
          f"{writer.counts['alerts']} alerts, {writer.counts['jobs']} retrain jobs, "
          f"{writer.counts['dead_letters']} dead letters; {counts.pairs} labelled pairs joined "
          f"({counts.duplicate_feedback} duplicate feedback). Output in {output}/")
    if pipeline.events_seen == 0:
        inputs = f"--predictions {pred_path}" + (f" and --feedback {fb_path}" if fb_path else "")
        if messages == 0:
            raise NoValidInput(f"{inputs}: no lines to replay")
        raise NoValidInput(f"all {messages} lines of {inputs} were rejected; the reason for each is in "
                           f"{Path(output) / 'dead_letters.jsonl'}")
    return 0

