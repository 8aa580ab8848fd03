"""The batch's messages to the broker, sent through the app's producer and awaited.

A stage sends a batch's messages in phases (see :mod:`streams.consumer`): its
*intent* records, then its outputs, then its state records. Each phase is
:meth:`Outbox.put` then :meth:`Outbox.send`, and :meth:`Outbox.delivered`
returns once the broker has acknowledged everything sent so far (Faust's
``send_soon`` buffer gives no such point: its flush returns while messages
still wait in it).

A record the producer or the broker refuses as such (too large, corrupt) is
replaced by a dead letter that references it (``dead_letters`` topic: its
topic, partition, size and SHA-256, no payload) and the batch goes on: one
record never stops the worker, which would read the same batch again on
restart and stop again. Anything else (the broker is away) still raises, and
the batch is not committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

Message = tuple[str, bytes | None, bytes | None, int | None, float | None]
"""(topic, key, value, partition or None for the producer's partitioner, timestamp in epoch seconds
or None for now)."""


class Outbox:
    """Messages queued by a batch; sent in order; awaited as one."""

    def __init__(self, dead_letters: str = "dead-letters", *, warn_every: float = 30.0) -> None:
        self.dead_letters = dead_letters
        self.warn_every = warn_every
        """Seconds between the warnings while the broker leaves records unacknowledged."""
        self.queued: list[Message] = []
        self.in_flight: list[tuple[Any, Message | None]] = []
        self.refused = 0
        """Records refused and replaced by a dead letter, since start."""
        self._producer: Any = None

    def put(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
            timestamp: float | None = None) -> None:
        """Queue a message; ``timestamp`` (epoch seconds) is its Kafka timestamp (default: now)."""
        self.queued.append((topic, key, value, partition, timestamp))

    async def send(self, producer: Any, *, first: int | None = None) -> None:
        """Hand the queued messages (only the ``first`` ones if given: fault injection) to ``producer``."""
        self._producer = producer
        count = len(self.queued) if first is None else min(first, len(self.queued))
        sending, self.queued = self.queued[:count], self.queued[count:]
        for record in sending:
            try:
                self.in_flight.append((await producer.send(*record, None), record))
            except Exception as exc:  # the producer's own size check refuses at once
                if not _is_refusal(exc):
                    raise
                self.in_flight.append((await self._refer(record, exc), None))

    async def delivered(self) -> None:
        """Return once every message sent so far is acknowledged; a refused record is replaced by
        its dead letter (awaited too); any other failure raises."""
        in_flight, self.in_flight = self.in_flight, []
        if not in_flight:
            return
        results = await self._acknowledged([future for future, _ in in_flight])
        refused = []
        for (_, record), result in zip(in_flight, results):
            if not isinstance(result, BaseException):
                continue
            if record is None or not _is_refusal(result):
                raise result
            refused.append(await self._refer(record, result))
        if refused:
            await asyncio.gather(*refused)

    async def _acknowledged(self, futures: list[Any]) -> list[Any]:
        """The outcome of each delivery (a result or its exception), once all are known; every
        :attr:`warn_every` seconds until then, a warning of how many wait and for how long. A broker
        that stops answering without closing its connections (a network partition, a frozen host)
        holds the batch here until the producer's request timeout (Faust's default: 20 minutes), and
        a silent wait would look like a hung worker."""
        gathered = asyncio.gather(*futures, return_exceptions=True)
        started = time.monotonic()
        warned = False
        while True:
            done, _ = await asyncio.wait({gathered}, timeout=self.warn_every)
            if done:
                break
            warned = True
            log.warning("the broker has not acknowledged %d of %d records for %.0f s; the batch waits for them "
                        "(nothing is committed meanwhile)", sum(not f.done() for f in futures), len(futures),
                        time.monotonic() - started)
        if warned:
            log.warning("the broker acknowledged the batch's records after %.0f s", time.monotonic() - started)
        return gathered.result()

    async def _refer(self, record: Message, exc: Exception) -> Any:
        """Send the dead letter that stands for a refused record; return its delivery future."""
        from streams.pipeline import DeadLetter, RawMessage

        topic, key, value, partition, _ = record
        size = len(value or b"")
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        self.refused += 1
        log.error("the broker refused a record of %d bytes for %s (%s); a dead letter references it instead",
                  size, topic, type(cause).__name__)
        letter = DeadLetter(RawMessage("output", value or b"", key, topic, -1 if partition is None else partition),
                            reason=f"output record of {size} bytes for topic {topic!r} refused "
                                   f"({type(cause).__name__}: {cause}); not delivered",
                            payload_bytes=0)
        return await self._producer.send(self.dead_letters, (key or b"")[:256] or None, letter.to_json(),
                                         None, None, None)


def _is_refusal(exc: BaseException) -> bool:
    """True for an error that refuses one record (not the connection); Faust wraps the producer's
    own errors in ``ProducerSendError``."""
    from aiokafka import errors

    refusals = (errors.MessageSizeTooLargeError, errors.RecordListTooLargeError, errors.RecordTooLargeError,
                errors.CorruptRecordException)
    return isinstance(exc, refusals) or isinstance(exc.__cause__, refusals)
