"""`Delivery` and `Confirmations` (agents/delivery.py) on their own: a source record is acked only once every record
it produced is confirmed; a refused one is handed to the producer again; a task has a bounded number of frames
unconfirmed at once (the rules' replay window); a revoked source's records are not sent again."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import MessageSizeTooLargeError, NotEnoughReplicasError

from framewatch.agents import delivery
from framewatch.agents.delivery import Confirmations, Delivery


class Producer:
    """Hands out a future per record; the test decides each one's fate."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[object]] = []

    async def enqueue(self) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    async def delivery(self) -> Delivery:
        return Delivery("t.fw.alerts", await self.enqueue(), self.enqueue,
                        lambda error: not isinstance(error, MessageSizeTooLargeError))


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "SEND_BACKOFF", delivery.Backoff(first_s=0.01, max_s=0.01))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.001)


async def test_acked_only_once_every_record_is_confirmed_and_a_refused_one_is_sent_again() -> None:
    producer, acked = Producer(), asyncio.Event()

    async def ack() -> None:
        acked.set()
    confirmations = Confirmations()
    first, second = await producer.delivery(), await producer.delivery()
    await confirmations.ack_when_confirmed([first, second], ack)
    producer.futures[0].set_result(None)
    producer.futures[1].set_exception(NotEnoughReplicasError())
    await settle()
    assert not acked.is_set() and len(producer.futures) == 3  # the refused record went to the producer again
    producer.futures[2].set_result(None)
    await asyncio.wait_for(acked.wait(), 5)


async def test_a_record_refused_for_good_leaves_its_source_unacked() -> None:
    producer, acks = Producer(), []

    async def ack() -> None:
        acks.append(1)
    confirmations = Confirmations()
    await confirmations.ack_when_confirmed([await producer.delivery()], ack)
    producer.futures[0].set_exception(MessageSizeTooLargeError())
    await settle()
    assert acks == [] and len(producer.futures) == 1


async def test_a_task_has_a_bounded_number_of_frames_unconfirmed_and_others_go_on() -> None:
    producer, acks = Producer(), []
    confirmations = Confirmations(per_key=2)

    def ack(name: str) -> delivery.Ack:
        async def done() -> None:
            acks.append(name)
        return done
    for name in ("a1", "a2"):
        await confirmations.ack_when_confirmed([await producer.delivery()], ack(name), key="a")
    third = asyncio.create_task(confirmations.ack_when_confirmed([await producer.delivery()], ack("a3"), key="a"))
    await confirmations.ack_when_confirmed([await producer.delivery()], ack("b1"), key="b")
    await settle()
    assert not third.done()  # task a has two frames unconfirmed: its third waits
    producer.futures[3].set_result(None)
    producer.futures[0].set_result(None)
    await asyncio.wait_for(third, 5)
    for future in producer.futures[1:3]:
        future.set_result(None)
    await settle()
    assert sorted(acks) == ["a1", "a2", "a3", "b1"]


async def test_a_refused_record_is_not_sent_again_once_its_source_partition_is_revoked() -> None:
    """The new owner reads the source again and sends its outputs; a resend of the old owner's would land after
    them (a rule state older than the new owner's written over it)."""
    producer, acks, owned = Producer(), [], [True]

    async def ack() -> None:
        acks.append(1)
    confirmations = Confirmations()
    await confirmations.ack_when_confirmed([await producer.delivery()], ack, owned=lambda: owned[0])
    producer.futures[0].set_exception(NotEnoughReplicasError())
    await settle()
    assert len(producer.futures) == 2  # still owned: sent again
    owned[0] = False
    producer.futures[1].set_exception(NotEnoughReplicasError())
    await settle()
    assert len(producer.futures) == 2 and acks == []  # revoked: neither sent again nor acked
