"""Delivered, not buffered: a record counts once the broker has confirmed it, and a source record is acked only then.

A producer's `send` returns when the record is in its buffer. Faust's commit flushes that buffer first, but gives up
after 100 ms without progress, and aiokafka's flush never raises: an agent that acked on the buffered send had its
offset committed for records the broker never took (a slow or leaderless partition, `min.insync.replicas` unmet).
So every record an ack stands for is a `Delivery`, and `Confirmations` acks the source record once each of them is
confirmed, handing a refused one to the producer again. Confirmations run side by side (many frames in flight at
once, as many as `limit`), so waiting costs no throughput, only commit latency.

A refused record is sent again only while this worker still owns the partition its source record came from: after
a rebalance the new owner reads that record again and sends its outputs itself, and a resend of the old owner's
would land after them (a rule state older than the new owner's written over it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import Counter, Gauge

from framewatch.retry import Backoff, RetryOn, logged
from framewatch.rules.state import SEEN_FRAMES

log = logging.getLogger("framewatch.worker")

SEND_RETRIES = Counter("framewatch_worker_send_retries_total", "Sends retried while Kafka could not take them",
                       ["topic"])
SEND_BACKOFF = Backoff(first_s=0.5, max_s=5.0)
RESENDS_ABANDONED = Counter("framewatch_worker_resends_abandoned_total",
                            "Refused records not sent again: their source's partition went to another worker", ["topic"])
UNCONFIRMED = Gauge("framewatch_worker_records_unconfirmed",
                    "Source records handled whose outputs the broker has not confirmed yet (not acked until it has)")

Enqueue = Callable[[], Awaitable["asyncio.Future[object]"]]
Ack = Callable[[], Awaitable[object]]
Owned = Callable[[], bool]  # whether this worker still owns the partition a source record came from


def always_owned() -> bool:
    return True


class NoLongerOwned(Exception):
    """The source record's partition went to another worker: its outputs are the new owner's to send."""

CONFIRMING_MAX = 2000  # source records whose outputs are awaited at once; the agent waits for room beyond
CONFIRMING_PER_KEY = SEEN_FRAMES // 2


class Delivery:
    """One record handed to the producer. `confirmed` returns once the broker has it, handing it to the producer
    again (`enqueue`, which may send a newer value, as a table's changelog does) while it is refused for a reason
    `retry_on` accepts and the source is `owned`; any other error is raised, and then the source record must stay
    unacked."""

    def __init__(self, topic: str, future: asyncio.Future[object], enqueue: Enqueue, retry_on: RetryOn) -> None:
        self.topic = topic
        self.future = future
        self.enqueue = enqueue
        self.retry_on = retry_on
        self.attempts = 0

    async def confirmed(self, owned: Owned = always_owned) -> None:
        await SEND_BACKOFF.call(self._attempt, self.retry_on,
                                logged(log, f"delivering to {self.topic}", SEND_RETRIES.labels(self.topic).inc), owned)

    async def _attempt(self, owned: Owned) -> None:
        if self.attempts:
            if not owned():
                RESENDS_ABANDONED.labels(self.topic).inc()
                raise NoLongerOwned(f"not sent to {self.topic} again: its source's partition was revoked")
            self.future = await self.enqueue()
        self.attempts += 1
        await self.future


async def all_confirmed(deliveries: Iterable[Delivery], owned: Owned = always_owned) -> None:
    """Every delivery confirmed, awaited side by side."""
    await asyncio.gather(*(delivery.confirmed(owned) for delivery in deliveries))


class Confirmations:
    """Acks each source record once the records it produced are confirmed, many source records at a time: at most
    `limit` in all, and at most `per_key` of one key (a task: the rules' replay window, `rules/state.py`, re-derives
    a replayed frame's outputs only within its last 64 frames, so no more than that may be unconfirmed). An ack can
    come out of order: the worker's consumer commits only below every record still in flight."""

    def __init__(self, limit: int = CONFIRMING_MAX, per_key: int = CONFIRMING_PER_KEY) -> None:
        self._room = asyncio.Semaphore(limit)
        self._per_key = per_key
        self._key_room: dict[str, asyncio.Semaphore] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def ack_when_confirmed(self, deliveries: list[Delivery], ack: Ack, key: str = "",
                                 owned: Owned = always_owned) -> None:
        if not deliveries:
            await ack()
            return
        rooms = [self._room, self._key_room.setdefault(key, asyncio.Semaphore(self._per_key))]
        for room in rooms:
            await room.acquire()
        task = asyncio.create_task(self._confirm_then_ack(deliveries, ack, rooms, owned))
        self._pending.add(task)
        UNCONFIRMED.set(len(self._pending))
        task.add_done_callback(self._done)

    async def _confirm_then_ack(self, deliveries: list[Delivery], ack: Ack, rooms: list[asyncio.Semaphore],
                                owned: Owned) -> None:
        try:
            await all_confirmed(deliveries, owned)
        except NoLongerOwned as error:
            log.info("%s", error)
            return
        except Exception as error:  # stopping, or a record Kafka will never take: read again by the next owner
            log.error("records for %s not confirmed, their source stays unacked: %r",
                      sorted({d.topic for d in deliveries}), error)
            return
        finally:
            for room in rooms:
                room.release()
        await ack()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        UNCONFIRMED.set(len(self._pending))
