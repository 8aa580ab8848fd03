"""Acting on decisions: alerts to ``alerts`` (and a webhook), retrain jobs to ``retrain-jobs``.

The policy itself runs inside the pipeline (its state is snapshotted with the
windows); this module does the I/O: it renders the Evidently report of a
triggering window, writes it under ``retrain.reports_dir``, and publishes the
events. A slow or failing webhook never blocks the stream: posts go through a
small bounded queue served by one thread, with a timeout and retries.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

from detectors.profile import as_class_labels
from retrain.events import Alert, RetrainJob
from retrain.policy import describe_crossing
from streams.config import Config
from streams.pipeline import Outcome
from streams.runtime import policy_rules
from streams.windows import JobRequest

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bytes], None]
"""(topic, key, value) → hands one message to the producer."""


class Webhook:
    """POSTs JSON to a URL from a background thread; bounded, with timeout and retries."""

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3, capacity: int = 1000) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="driftwarden-webhook", daemon=True)
        self._thread.start()

    def post(self, body: bytes) -> None:
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            log.warning("webhook queue full: alert dropped (%d dropped so far)", self.dropped)

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            for attempt in range(self.retries + 1):
                try:
                    request = urllib.request.Request(self.url, data=body, method="POST",
                                                     headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(request, timeout=self.timeout) as response:
                        response.read()
                    self.sent += 1
                    break
                except Exception as exc:  # noqa: BLE001 - any failure is retried, then counted
                    if attempt == self.retries:
                        self.failed += 1
                        log.warning("webhook POST failed after %d attempts: %s", attempt + 1, exc)
                    else:
                        time.sleep(min(0.5 * 2**attempt, 5.0))


class Actions:
    """Turns a batch's decisions into published alerts and retrain jobs."""

    def __init__(self, cfg: Config, evaluations: dict[str, Any], *, publish: Publish | None = None,
                 echo: Callable[[str], None] | None = None, registry: Any = None) -> None:
        self.cfg = cfg
        self.evaluations = evaluations
        self.registry = registry
        self.publish = publish
        self.echo = echo
        self.webhook = (Webhook(cfg.alerts.webhook_url, timeout=cfg.alerts.webhook_timeout,
                                retries=cfg.alerts.webhook_retries) if cfg.alerts.webhook_url else None)
        self.alerts_sent = 0
        self.jobs_sent = 0

    def preload_reports(self) -> threading.Thread | None:
        """Import Evidently in a background thread when a model's rules can request a retrain job
        (its report needs it): the first job then waits for the rendering only, not the ~10 s
        import (the time from a change to a new version). Returns the thread started, if any."""
        if not any(rule.retrain for model_id in self.cfg.models for rule in policy_rules(self.cfg, model_id)):
            return None
        thread = threading.Thread(target=_import_evidently, name="driftwarden-evidently-import", daemon=True)
        thread.start()
        return thread

    def bind(self, publish: Publish) -> None:
        """Publish with the worker's batch output (:attr:`streams.app.WorkerRuntime.publish`: the
        batch's offsets are committed only once the broker has acknowledged its alerts and jobs)."""
        self.publish = publish

    def decide(self, outcome: Outcome) -> Iterator[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """The batch's alerts and jobs as dicts (``replay``), with reports written."""
        for alert in outcome.alerts:
            self._echo_alert(alert)
            yield alert.to_dict(), None
        for request in outcome.jobs:
            job = self.job(request)
            self._echo_job(job)
            yield None, job.to_dict()

    async def handle(self, outcome: Outcome) -> None:
        """Publish the batch's alerts and jobs (the worker's ``on_outcome``)."""
        if self.echo is not None and self.cfg.worker.echo_windows:
            for window in outcome.windows:
                self.echo(window_summary(window))
        for alert in outcome.alerts:
            body = _bytes(alert.to_json())
            self._send(self.cfg.kafka.topics.alerts, alert.model_id, body)
            if self.webhook is not None:
                self.webhook.post(body)
            self.alerts_sent += 1
            self._echo_alert(alert)
        for request in outcome.jobs:
            loop = asyncio.get_running_loop()
            job = await loop.run_in_executor(None, self.job, request)
            self._send(self.cfg.kafka.topics.retrain_jobs, job.model_id, _bytes(job.to_json()))
            self.jobs_sent += 1
            self._echo_job(job)

    def job(self, request: JobRequest) -> RetrainJob:
        """The retrain job of a trigger, with its Evidently report written to disk; the job's data is
        the training span of ``retrain.train_pairs``/``retrain.train_seconds`` before the trigger."""
        report = self.write_report(request)
        window = request.window
        span = request.trigger.training_span(train_pairs=self.cfg.retrain.train_pairs,
                                             train_seconds=self.cfg.retrain.train_seconds)
        return request.trigger.to_job(report_path=str(report) if report else None, offsets=window.offsets,
                                      replaces_version=window.model_version, **span)

    def write_report(self, request: JobRequest) -> Path | None:
        """Render the Evidently report of the triggering window against the reference profile."""
        trigger, window = request.trigger, request.window
        evaluation = (self.registry.evaluation(trigger.model_id, window.model_version) if self.registry is not None
                      else self.evaluations.get(trigger.model_id))
        if evaluation is None or evaluation.profile is None or not window.evidence:
            return None
        from detectors.report import evidently_report_html

        profile = evaluation.profile
        path = Path(self.cfg.retrain.reports_dir) / trigger.model_id / f"{trigger.job_id}.html"
        try:
            current = evaluation.evidence_frame(window.evidence)
            reference = profile.sample_frame()
            if evaluation.cfg.task != "regression":
                # class labels compare as strings everywhere in driftwarden ("1", not 1)
                for frame in (reference, current):
                    for column in (profile.target, profile.prediction):
                        if column and column in frame.columns:
                            frame[column] = as_class_labels(frame[column].to_numpy())
            html = evidently_report_html(
                reference, current, numeric=evaluation.numeric, categorical=evaluation.categorical,
                target=profile.target if profile.target in current.columns else None,
                prediction=profile.prediction, task=evaluation.cfg.task,
                positive_label=evaluation.cfg.positive_label)
        except Exception:  # a report is evidence, not a reason to lose the job
            log.exception("job %s: the Evidently report could not be rendered", trigger.job_id)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html, encoding="utf-8")
        return path

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.close()

    def _send(self, topic: str, key: str, body: bytes) -> None:
        if self.publish is not None:
            self.publish(topic, key.encode(), body)

    def _echo_alert(self, alert: Alert) -> None:
        """One line per alert saying what was crossed: the series, its value and threshold (for a
        CUSUM: its statistic over its threshold and the change it is tuned to), ``n``."""
        if self.echo is not None:
            crossed = describe_crossing(alert.detail) if alert.detail else alert.message
            self.echo(f"ALERT {alert.state:<8} {alert.severity:<8} {alert.model_id} v{alert.model_version} "
                      f"{alert.rule}: {crossed}")

    def _echo_job(self, job: RetrainJob) -> None:
        if self.echo is not None:
            self.echo(f"RETRAIN  job {job.job_id[:12]} {job.model_id} v{job.model_version}: {job.reason} "
                      f"(report {job.report_path})")


def _import_evidently() -> None:
    """:func:`detectors.report.import_evidently`, logging a failure (the report will say it again)."""
    from detectors.report import import_evidently

    started = time.monotonic()
    try:
        import_evidently()
    except Exception:  # noqa: BLE001 - a report is evidence: its job is published without it
        log.warning("Evidently could not be imported: retrain jobs will have no report", exc_info=True)
        return
    log.info("Evidently imported for the retrain jobs' reports in %.1fs", time.monotonic() - started)


def window_summary(window: Any) -> str:
    """One line of a closed window's headline figures (the demo prints these). Fairness shows the
    lowest demographic parity ratio over the model's attributes (and intersections), named."""
    by_key: dict[tuple[str, ...], Any] = {}
    drifted: list[str] = []
    for p in window.points:
        if p.measurement == "feature_drift" and p.fields.get("drift") is True:
            drifted.append(f"{p.tags['feature']}({p.tags['method']})")
        key = (p.measurement, p.tags.get("metric", ""), p.tags.get("attribute", ""), p.tags.get("group", ""),
               p.tags.get("source", ""), p.tags.get("class", ""), p.tags.get("stat", ""))
        by_key[key] = p

    def value(*key: str, field: str = "value") -> str:
        point = by_key.get(tuple(key) + ("",) * (7 - len(key)))
        v = point.fields.get(field) if point is not None else None
        return f"{v:.3f}" if isinstance(v, float) else "-"

    groups = [p for p in window.points if p.measurement == "fairness" and p.tags.get("metric") == "accuracy"
              and p.tags.get("group") != "all" and isinstance(p.fields.get("n"), int) and p.fields["n"] >= 30]
    ratios = [p for p in window.points if p.measurement == "fairness" and p.tags.get("group") == "all"
              and p.tags.get("metric") == "demographic_parity_ratio" and isinstance(p.fields.get("value"), float)]
    parity = min(ratios, key=lambda p: p.fields["value"], default=None)  # the model's worst attribute
    parity_text = (f"parity ratio ({parity.tags['attribute']}) {parity.fields['value']:.3f}" if parity is not None
                   else "parity ratio -")
    worst = min(groups, key=lambda p: p.fields["value"], default=None)
    worst_text = (f"{worst.tags['attribute']}={worst.tags['group']} {worst.fields['value']:.3f}"
                  if worst is not None else "-")
    end = time.strftime("%H:%M:%S", time.gmtime(window.end_ns / 1e9))
    return (f"WINDOW  {window.model_id} v{window.model_version} ..{end}Z {window.n} events | "
            f"accuracy {value('performance', 'accuracy')} (estimated {value('performance_estimate', 'accuracy')}) | "
            f"label shift {value('label_shift', '', '', '', 'prediction', 'all')} | "
            f"{parity_text} | "
            f"worst group accuracy {worst_text} | "
            f"join rate {value('monitor', '', '', '', '', '', 'join_rate')} | "
            f"drift: {', '.join(sorted(set(drifted))) or 'none'}")


def _bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text

