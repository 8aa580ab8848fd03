"""The worker's outbox: a record the producer or the broker refuses becomes a dead letter that
references it, and the batch goes on; a broker that is away still stops the batch."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
import pytest
from aiokafka import errors
from faust.exceptions import ProducerSendError

from streams.outbox import Outbox


class FakeProducer:
    """Refuses values over ``limit`` at once (as aiokafka's own check does, wrapped by Faust) and
    fails the delivery of values starting with ``b"broker-refuses"`` or ``b"down"``."""

    def __init__(self, limit: int = 400) -> None:
        self.limit = limit
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                   timestamp: Any, headers: Any) -> asyncio.Future[Any]:
        if len(value or b"") > self.limit:
            try:
                raise errors.MessageSizeTooLargeError("too big")
            except errors.MessageSizeTooLargeError as exc:
                raise ProducerSendError(f"Error while sending: {exc!r}") from exc
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if (value or b"").startswith(b"broker-refuses"):
            future.set_exception(errors.RecordListTooLargeError())
        elif (value or b"").startswith(b"down"):
            future.set_exception(errors.KafkaConnectionError())
        else:
            future.set_result(None)
            self.sent.append((topic, key, value))
        return future


def test_refused_records_are_dead_lettered_by_reference_and_the_rest_delivered() -> None:
    async def run() -> tuple[FakeProducer, Outbox]:
        producer, outbox = FakeProducer(), Outbox("dl")
        big = b"x" * 500
        outbox.put("labelled", b"k", b"ok-1")
        outbox.put("changelog", b"s:monitors", big, 3)
        outbox.put("alerts", None, b"broker-refuses this")
        outbox.put("labelled", b"k", b"ok-2")
        await outbox.send(producer)
        await outbox.delivered()
        return producer, outbox

    producer, outbox = asyncio.run(run())
    assert [v for t, _, v in producer.sent if t != "dl"] == [b"ok-1", b"ok-2"]
    letters = [orjson.loads(v) for t, _, v in producer.sent if t == "dl"]
    assert [(d["topic"], d["partition"], d["size"], d["payload_b64"], d["truncated"]) for d in letters] == [
        ("changelog", 3, 500, "", True), ("alerts", -1, 19, "", True)]
    assert letters[0]["sha256"] == hashlib.sha256(b"x" * 500).hexdigest()
    assert "MessageSizeTooLargeError" in letters[0]["reason"] and "RecordListTooLargeError" in letters[1]["reason"]
    assert outbox.refused == 2


def test_a_broker_that_is_away_still_fails_the_batch() -> None:
    async def run() -> None:
        outbox = Outbox("dl")
        outbox.put("labelled", None, b"down")
        await outbox.send(FakeProducer())
        await outbox.delivered()

    with pytest.raises(errors.KafkaConnectionError):
        asyncio.run(run())


class HeldProducer:
    """Accepts every record and acknowledges none until :meth:`acknowledge` (a frozen broker)."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, *record: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def acknowledge(self) -> None:
        for future in self.futures:
            future.set_result(None)


def test_a_broker_that_stops_answering_is_waited_for_with_a_warning_every_interval(caplog) -> None:
    """A frozen broker holds the batch (Faust's producer waits up to its 20-minute request timeout);
    the outbox says so every ``warn_every`` seconds, how many records wait, and when they came."""
    caplog.set_level("WARNING", logger="streams.outbox")

    def waiting() -> int:
        return sum("has not acknowledged" in r.getMessage() for r in caplog.records)

    async def run() -> None:
        producer, outbox = HeldProducer(), Outbox("dl", warn_every=0.01)
        for i in range(3):
            outbox.put("labelled", None, b"v%d" % i)
        await outbox.send(producer)
        delivery = asyncio.ensure_future(outbox.delivered())
        while waiting() < 2:  # the warnings come while the batch waits: no clock in the assertion
            await asyncio.sleep(0.005)
        assert not delivery.done()
        producer.acknowledge()
        await delivery

    asyncio.run(run())
    first = next(r.getMessage() for r in caplog.records if "has not acknowledged" in r.getMessage())
    assert first.startswith("the broker has not acknowledged 3 of 3 records for")
    assert "acknowledged the batch's records after" in caplog.records[-1].getMessage()


def test_labelled_arrays_are_cut_by_size() -> None:
    from streams.events import Prediction
    from streams.join import LABELLED_BYTES, LabelledPair, decode_pairs, labelled_messages

    pairs = [LabelledPair(Prediction(f"p{i}", "m", "1", float(i), {"c": "x" * (1000 if i % 7 else 30_000)}, "1"),
                          "0", float(i) + 1) for i in range(100)]
    messages = list(labelled_messages(pairs))
    assert len(messages) > 1 and all(len(value) <= LABELLED_BYTES for _, value, _ in messages)
    assert [pair for _, value, _ in messages for pair in decode_pairs(value)] == pairs
    # each message is stamped with the latest prediction time it holds
    assert all(stamp == max(p.prediction.timestamp for p in decode_pairs(value)) for _, value, stamp in messages)
    small = list(labelled_messages(pairs[:3]))
    assert len(small) == 1 and decode_pairs(small[0][1]) == pairs[:3]
