"""The batch's messages to the broker, sent through the app's producer and awaited.

A stage sends a batch's messages in phases (see :mod:`streams.consumer`): its
*intent* records, then its outputs, then its state records. Each phase is
:meth:`Outbox.put` then :meth:`Outbox.send`, and :meth:`Outbox.delivered`
returns once the broker has acknowledged everything sent so far (Faust's
``send_soon`` buffer gives no such point: its flush returns while messages
still wait in it).
"""

from __future__ import annotations

import asyncio
from typing import Any

Message = tuple[str, bytes | None, bytes | None, int | None]
"""(topic, key, value, partition or None for the producer's partitioner)."""


class Outbox:
    """Messages queued by a batch; sent in order; awaited as one."""

    def __init__(self) -> None:
        self.queued: list[Message] = []
        self.in_flight: list[Any] = []

    def put(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        self.queued.append((topic, key, value, partition))

    async def send(self, producer: Any, *, first: int | None = None) -> None:
        """Hand the queued messages (only the ``first`` ones if given: fault injection) to ``producer``."""
        count = len(self.queued) if first is None else min(first, len(self.queued))
        sending, self.queued = self.queued[:count], self.queued[count:]
        for topic, key, value, partition in sending:
            self.in_flight.append(await producer.send(topic, key, value, partition, None, None))

    async def delivered(self) -> None:
        """Return once every message sent so far is acknowledged (raises what the broker refused)."""
        in_flight, self.in_flight = self.in_flight, []
        if in_flight:
            await asyncio.gather(*in_flight)
