"""Reading ``predictions`` and ``feedback`` in micro-batches; offsets committed after the work.

Faust's streams hand an agent one event object per Kafka message, and that
path tops out near 11,000 messages/s on a 2-core machine whatever the agent
does (DESIGN.md, "Numbers that matter"), while a plain aiokafka consumer reads
and decodes the same messages more than 20 times faster. The worker therefore
reads its two source topics with aiokafka's ``getmany``: every fetch is handed
to the partitions' pipelines as one batch of raw records. The consumer runs as
a service of the worker's Faust app, next to Faust's producer (which carries
every output), its timers and the model-updates follower.

Delivery: a batch's offsets are committed only after its work is done — the
pipelines have processed it, and its state changes, dead letters, labelled
pairs, alerts and retrain jobs have been acknowledged by the broker (the
producer is flushed first). A worker killed in between reads the batch again.

Rebalances: a revoked partition is dropped only after the batch in hand is
committed; a partition assigned later is read back from the state changelog
before its first batch (see :mod:`streams.state`), so whichever worker owns a
partition resumes its join entries and open windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable, Iterable

from mode import Service

from streams.config import Config
from streams.kafka import client_options
from streams.pipeline import FEEDBACK, PREDICTION, RawMessage

log = logging.getLogger(__name__)

Batch = dict[int, list[RawMessage]]
"""Raw messages of one fetch, by source partition (predictions and feedback share partitions)."""


kafka_security = client_options
"""Kept for callers of the old name: :func:`streams.kafka.client_options`."""


class SourceConsumer(Service):
    """Consumes the source topics as a consumer group and hands each fetch to ``handle``.

    ``handle(batch)`` does the work of a batch; ``before_commit()`` must return once
    everything the batch produced is acknowledged; ``assigned(partitions)`` is awaited
    before the first batch of newly assigned partitions, ``revoked(partitions)`` after
    the last batch of revoked ones has been committed.
    """

    def __init__(self, cfg: Config, *, handle: Callable[[Batch], Awaitable[None]],
                 before_commit: Callable[[], Awaitable[None]],
                 assigned: Callable[[list[int]], Awaitable[None]] | None = None,
                 revoked: Callable[[list[int]], Awaitable[None]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cfg = cfg
        self.handle = handle
        self.before_commit = before_commit
        self.assigned = assigned
        self.revoked = revoked
        self.failed_commits = 0
        self._consumer: Any = None
        self._loop_task: asyncio.Task[None] | None = None
        self._committing: asyncio.Future[None] | None = None
        self._batch_lock = asyncio.Lock()

    async def on_start(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.abc import ConsumerRebalanceListener

        kafka = self.cfg.kafka
        owner = self

        class Rebalance(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
                await owner._on_revoked(revoked)

            async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
                await owner._on_assigned(assigned)

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap.split(","),
            group_id=kafka.group_id,
            client_id=f"{kafka.group_id}-source",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=kafka.batch_size,
            # the embedded broker completes a group join only after the rebalance timeout
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            rebalance_timeout_ms=5000,
            max_poll_interval_ms=30000,
            **client_options(self.cfg),
        )
        self._consumer.subscribe([kafka.topics.predictions, kafka.topics.feedback], listener=Rebalance())
        await self._consumer.start()

    async def on_started(self) -> None:
        self._loop_task = asyncio.ensure_future(self._consume())

    async def on_stop(self) -> None:
        task = self._loop_task
        if task is not None:
            async with self._batch_lock:  # never between a batch's work and its commit
                task.cancel()
                with contextlib.suppress(Exception):  # a failed delivery is logged; stop regardless
                    await self._drain()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # already logged by the loop
                pass
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: the partitions move on at once

    async def _consume(self) -> None:
        timeout_ms = max(int(self.cfg.kafka.batch_timeout * 1000), 1)
        while True:
            try:
                fetched = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.cfg.kafka.batch_size)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading %s/%s failed (%s: %s); retrying in 1 s", self.cfg.kafka.topics.predictions,
                            self.cfg.kafka.topics.feedback, type(exc).__name__, exc)
                await asyncio.sleep(1.0)
                continue
            if not fetched:
                continue
            try:
                async with self._batch_lock:
                    batch, ends = self._batch_of(fetched)
                    if batch:
                        await self.handle(batch)
                        await self._commit_after_flush(ends)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The batch's state has moved on but its output may not have left: stop (exit 1)
                # rather than commit past it; a restart resumes from the changelog and the offsets.
                log.exception("a batch could not be handed on; stopping the worker")
                await self.crash(exc)
                return

    def _batch_of(self, fetched: dict[Any, list[Any]]) -> tuple[Batch, dict[Any, int]]:
        """Raw messages by partition, and the offsets to commit once they are done."""
        feedback = self.cfg.kafka.topics.feedback
        assignment = self._consumer.assignment()
        batch: Batch = {}
        ends: dict[Any, int] = {}
        for tp, records in fetched.items():
            if not records or tp not in assignment:  # revoked while the fetch waited for the lock
                continue
            kind = FEEDBACK if tp.topic == feedback else PREDICTION
            topic, partition = tp.topic, tp.partition
            batch.setdefault(partition, []).extend(
                [RawMessage(kind, r.value or b"", r.key, topic, partition, r.offset) for r in records])
            ends[tp] = records[-1].offset + 1
        return batch, ends

    async def _commit_after_flush(self, ends: dict[Any, int]) -> None:
        """Commit ``ends`` once the producer has delivered what the batch produced. The wait runs
        while the next batch is processed; at most one commit is in flight, and they land in order."""
        await self._drain()
        self._committing = asyncio.ensure_future(self._commit(ends))

    async def _drain(self) -> None:
        """Wait for the commit in flight, if any."""
        if self._committing is not None:
            await asyncio.shield(self._committing)
            self._committing = None

    async def _commit(self, ends: dict[Any, int]) -> None:
        try:
            await self.before_commit()
        except Exception as exc:  # raised again by the next batch's drain: the loop stops the worker
            log.error("the broker did not take a batch's output (%s: %s)", type(exc).__name__, exc)
            raise
        try:
            await self._consumer.commit(ends)
        except Exception as exc:  # the group moved on: the new owner reads these messages again
            self.failed_commits += 1
            log.warning("committing offsets failed (%s: %s); the partitions' new owner will read the batch again",
                        type(exc).__name__, exc)

    async def _on_revoked(self, revoked: Iterable[Any]) -> None:
        async with self._batch_lock:  # the batch in hand is committed first
            await self._drain()
            partitions = sorted({tp.partition for tp in revoked})
            if partitions and self.revoked is not None:
                await self.revoked(partitions)

    async def _on_assigned(self, assigned: Iterable[Any]) -> None:
        partitions = sorted({tp.partition for tp in assigned})
        if self.assigned is not None:
            async with self._batch_lock:  # no batch of a new partition before its state is back
                await self.assigned(partitions)
