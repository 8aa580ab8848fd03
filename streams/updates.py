"""New model versions: the monitor tracks each version against its own reference profile.

The retrain worker publishes ``model-updates`` events naming a new version and
its reference profile. Every worker follows that topic from the beginning
(each worker reads all of it, whatever partitions it owns) and registers the
profile for the version, so traffic of the new
version is compared with the data it was trained on, while the old version
keeps its own reference until its traffic stops.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping

import orjson

from streams.config import Config
from streams.evaluation import Evaluation

log = logging.getLogger(__name__)


class VersionRegistry:
    """Evaluation per (model, version); a version nobody registered uses the model's configured one."""

    def __init__(self, defaults: Mapping[str, Evaluation]) -> None:
        self.defaults = dict(defaults)
        self._versions: dict[tuple[str, str], Evaluation] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def evaluation(self, model_id: str, version: str) -> Evaluation:
        found = self._versions.get((model_id, version))
        return found if found is not None else self.defaults[model_id]

    def versions(self) -> list[tuple[str, str]]:
        return sorted(self._versions)

    def apply(self, update: Mapping[str, Any]) -> str | None:
        """Register the version an update names; returns a one-line description, or ``None`` when
        the event is not a successful update of a configured model (or was seen before)."""
        update_id = str(update.get("update_id", ""))
        model_id = update.get("model_id")
        if update.get("status", "succeeded") != "succeeded" or model_id not in self.defaults:
            if update.get("status") == "failed":
                log.warning("retrain of %s failed: %s", model_id, update.get("reason"))
            return None
        if update_id and update_id in self._seen:
            return None
        version = str(update["model_version"])
        from streams.runtime import read_profile

        base = self.defaults[model_id]
        try:
            profile = read_profile(update["profile_path"], base.cfg.features)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("model update %s v%s: cannot use profile %s: %s", model_id, version,
                      update.get("profile_path"), exc)
            return None
        with self._lock:
            self._versions[(model_id, version)] = Evaluation(base.cfg, profile)
            if update_id:
                self._seen.add(update_id)
        return (f"UPDATE  {model_id} v{version} registered (replaces v{update.get('previous_version')}), "
                f"reference {update['profile_path']}")


class UpdateFollower:
    """Follows ``model-updates`` and applies each event to a :class:`VersionRegistry`.

    :meth:`catch_up` applies everything published so far, before the worker consumes;
    :meth:`attach` then follows new events from inside the Faust app's event loop (an
    aiokafka consumer without a group: every worker reads every update).
    """

    def __init__(self, cfg: Config, registry: VersionRegistry, *, echo: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.registry = registry
        self.echo = echo
        self.offsets: dict[int, int] = {}

    def catch_up(self) -> int:
        """Apply every update published so far; returns how many were applied."""
        from streams.kafka import client_options
        from streams.state import read_to_end

        applied = 0
        for record in read_to_end(self.cfg.kafka.bootstrap, self.cfg.kafka.topics.model_updates, idle_seconds=0.5,
                                  **client_options(self.cfg)):
            applied += self._apply(record.value)
            self.offsets[record.partition] = record.offset + 1
        return applied

    def attach(self, app: Any) -> None:
        """Follow new updates as a task of the Faust app."""

        @app.task
        async def follow_model_updates() -> None:
            from aiokafka import AIOKafkaConsumer, TopicPartition

            from streams.kafka import client_options

            topic = self.cfg.kafka.topics.model_updates
            consumer = AIOKafkaConsumer(bootstrap_servers=self.cfg.kafka.bootstrap, group_id=None,
                                        enable_auto_commit=False, client_id="driftwarden-model-updates",
                                        **client_options(self.cfg))
            await consumer.start()
            try:
                partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
                consumer.assign(partitions)
                for tp in partitions:
                    if tp.partition in self.offsets:
                        consumer.seek(tp, self.offsets[tp.partition])
                    else:
                        await consumer.seek_to_beginning(tp)
                async for record in consumer:
                    self._apply(record.value)
            finally:
                await consumer.stop()

    def _apply(self, value: bytes | None) -> bool:
        try:
            update = orjson.loads(value or b"null")
        except orjson.JSONDecodeError:
            log.warning("model-updates: a message that is not JSON was skipped")
            return False
        if not isinstance(update, dict):
            return False
        line = self.registry.apply(update)
        if line:
            log.info("%s", line)
            if self.echo is not None:
                self.echo(line)
        return line is not None
