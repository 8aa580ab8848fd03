"""``driftwarden worker``: load the configuration, build the app, run it until stopped."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from detectors.points import Point

from streams.app import WorkerRuntime, panes_topic, windows_changelog_topic
from streams.broker import all_topics, create_topics, partition_counts
from streams.collector import collection_at_batch_boundaries
from streams.config import Config, ConfigError, redacted
from streams.kafka import client_options
from streams.monitor import check_count_windows
from streams.runtime import load_evaluations, release_large_blocks, worker_factories
from streams.sinks import DiscardSink, FanOutSink, InfluxSink, LineProtocolFile, PointSink
from streams.state import changelog_topic
from streams.updates import UpdateFollower, VersionRegistry

log = logging.getLogger(__name__)


def build_sink(cfg: Config) -> PointSink:
    """InfluxDB unless ``influx.enabled`` is false, plus ``worker.metrics_file`` when set."""
    sinks: list[PointSink] = []
    if cfg.influx.enabled:
        sinks.append(_influx_sink(cfg))
    if cfg.worker.metrics_file is not None:
        sinks.append(LineProtocolFile(cfg.worker.metrics_file, append=True))
    if not sinks:
        log.warning("influx.enabled is false: points are not written anywhere")
        return DiscardSink()
    return sinks[0] if len(sinks) == 1 else FanOutSink(sinks)


def _influx_sink(cfg: Config) -> InfluxSink:
    """The InfluxDB sink; an outage it lived through becomes a figure on the dashboard too:
    ``monitor{stat=influx_outage_seconds}`` per model, stamped with the time InfluxDB answered again."""
    if not cfg.influx.token:
        log.warning("DRIFTWARDEN_INFLUX_TOKEN is not set: writing to %s without a token", cfg.influx.url)
    sink = InfluxSink(cfg.influx)

    def outage_ended(seconds: float) -> None:
        now_ns = time.time_ns()
        sink.write(Point("monitor", {"model_id": model_id, "stat": "influx_outage_seconds"}, {"value": seconds},
                         now_ns) for model_id in cfg.models)

    sink.on_outage_end = outage_ended
    return sink


def with_source_partitions(cfg: Config) -> Config:
    """The config with ``kafka.partitions`` set to the source topics' partition count.

    Predictions and feedback are joined locally per partition, so both topics
    (and the tables' changelogs) must have the same number of partitions.
    """
    topics = cfg.kafka.topics
    counts = partition_counts(cfg.kafka.bootstrap, [topics.predictions, topics.feedback], **client_options(cfg))
    if counts[topics.predictions] != counts[topics.feedback]:
        raise ConfigError(
            f"topics {topics.predictions!r} ({counts[topics.predictions]} partitions) and {topics.feedback!r} "
            f"({counts[topics.feedback]} partitions) must have the same number of partitions: feedback is joined "
            "to its prediction within a partition (both keyed by prediction_id)")
    if counts[topics.predictions] != cfg.kafka.partitions:
        log.info("source topics have %d partitions", counts[topics.predictions])
        cfg = replace(cfg, kafka=replace(cfg.kafka, partitions=counts[topics.predictions]))
    return cfg


def create_internal_topics(cfg: Config) -> int:
    """Create the worker's own topics that do not exist yet, one partition per source partition:
    the stage-1 changelog and stage 2's (compacted), the internal topic ``<group_id>-panes``
    (delete retention of ``kafka.panes_retention_hours``: every partial is a distinct delta,
    compaction would lose them). Returns the internal topic's partition count (an existing
    topic keeps its own)."""
    group, options = cfg.kafka.group_id, client_options(cfg)
    create_topics(cfg.kafka.bootstrap, [changelog_topic(group), windows_changelog_topic(group)],
                  cfg.kafka.partitions, compact=True, **options)
    retention_ms = int(cfg.kafka.panes_retention_hours * 3600 * 1000)
    create_topics(cfg.kafka.bootstrap, [panes_topic(group)], cfg.kafka.partitions,
                  configs={"cleanup.policy": "delete", "retention.ms": str(retention_ms)}, **options)
    return partition_counts(cfg.kafka.bootstrap, [panes_topic(group)], **options)[panes_topic(group)]


LOOP_CLOSE_GRACE_SECONDS = 0.1
"""What the Faust worker waits, once every service has stopped, before it closes the event loop."""


def _worker_class() -> type:
    """Faust's worker, whose last step before closing the loop waits a fixed second (mode's
    ``Worker._sentinel_task``: time for callbacks already scheduled) — a second of every stop.
    Everything of ours has stopped by then (each service awaits its own shutdown), so a
    tenth of that is enough for the transports' close callbacks."""
    import asyncio

    import faust

    class Worker(faust.Worker):
        async def _sentinel_task(self) -> None:
            await asyncio.sleep(LOOP_CLOSE_GRACE_SECONDS)

    return Worker


def run_worker(config_path: str) -> int:
    """Run the Faust worker in this process until SIGINT/SIGTERM; flush points on the way out."""
    import faust

    cfg = Config.load(config_path)
    log.info("driftwarden worker starting: %s", redacted(cfg))
    release_large_blocks()
    evaluations = load_evaluations(cfg)
    create_topics(cfg.kafka.bootstrap, all_topics(cfg.kafka.topics), cfg.kafka.partitions, **client_options(cfg))
    cfg = with_source_partitions(cfg)
    check_count_windows(cfg.models, cfg.kafka.partitions)
    sink = build_sink(cfg)
    from streams.actions import Actions

    echo = lambda line: print(line, flush=True)  # noqa: E731 - alerts, jobs and updates on stdout
    registry = VersionRegistry(evaluations)
    follower = UpdateFollower(cfg, registry, echo=echo)
    follower.catch_up()
    actions = Actions(cfg, evaluations, echo=echo, registry=registry)
    actions.preload_reports()
    panes_partitions = create_internal_topics(cfg)
    # partitions' state is read from the changelogs when they are assigned (streams.app)
    stage_one, stage_two = worker_factories(cfg, evaluations, sources=cfg.kafka.partitions, registry=registry)
    runtime = WorkerRuntime(cfg, source_pipeline=stage_one, merger=stage_two, sink=sink,
                            panes_partitions=panes_partitions, on_outcome=actions.handle, echo=echo)
    actions.bind(runtime.publish)
    app = runtime.app
    follower.attach(app)
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    worker = _worker_class()(app, loglevel="INFO" if verbose else "WARNING", quiet=True, redirect_stdouts=False)
    try:
        with collection_at_batch_boundaries():
            worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    else:
        code = 0
    finally:
        sink.close()
        summary = sink.primary if isinstance(sink, FanOutSink) else sink
        actions.close()
        done = runtime.totals()
        echo(f"driftwarden worker stopped: {done['events']} events, {done['pairs']} labelled pairs, "
             f"{done['dead_letters']} dead letters, {actions.alerts_sent} alerts, "
             f"{actions.jobs_sent} retrain jobs; points written {getattr(summary, 'written', 0)}, "
             f"lost {getattr(summary, 'failed', 0)}; InfluxDB unreachable {getattr(summary, 'outages', 0)} times "
             f"({getattr(summary, 'outage_seconds', 0.0):.0f} s)")
    return code
