"""Who publishes for a partition of fw.alerts-stored, and when: one owner per partition a worker is assigned, whose
hand-over state moves only as `MOVES` allows (as Quix Streams' `PartitionTransactionStatus` does a transaction's).

    TAKING_OVER ─► READING_MARKERS ─► READY ◄─► PUBLISHING ─► RELEASING
         │                │             │                         │
         └────────────────┴─────────────┴──────► RELEASED ◄───────┘

- TAKING_OVER: the partition's transactional producer starts, its id derived from the partition alone, so the broker
  aborts the open transaction of whoever had the partition (alive, hung or dead) and fences that producer.
- READING_MARKERS: fenced, so fw.published is final; nothing is published until it has been read.
- READY, PUBLISHING: one transaction at a time.
- RELEASING: revoked during a transaction, which may still commit (a graceful hand-over aborts nothing); no other
  begins.
- RELEASED: revoked, fenced by a newer owner, or stopped; its producer is stopped, and it never begins or commits a
  transaction again.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaProducer

from framewatch.errors import FramewatchError
from framewatch.schemas.events import DeadLetter

log = logging.getLogger("framewatch.publisher")


class OwnerState(enum.Enum):
    TAKING_OVER = "taking over"
    READING_MARKERS = "reading markers"
    READY = "ready"
    PUBLISHING = "publishing"
    RELEASING = "releasing"
    RELEASED = "released"


MOVES: dict[OwnerState, frozenset[OwnerState]] = {
    OwnerState.TAKING_OVER: frozenset({OwnerState.READING_MARKERS, OwnerState.RELEASED}),
    OwnerState.READING_MARKERS: frozenset({OwnerState.READY, OwnerState.RELEASED}),
    OwnerState.READY: frozenset({OwnerState.PUBLISHING, OwnerState.RELEASED}),
    OwnerState.PUBLISHING: frozenset({OwnerState.READY, OwnerState.RELEASING}),
    OwnerState.RELEASING: frozenset({OwnerState.RELEASED}),
    OwnerState.RELEASED: frozenset(),
}


class IllegalMove(FramewatchError, RuntimeError):
    """A hand-over state asked to move where `MOVES` does not let it: a bug in the publisher."""


class NotOwned(FramewatchError, RuntimeError):
    """The partition is not (or no longer) this worker's to publish for: nothing of the transaction is committed."""


class PartitionOwner:
    """The hand-over state of one fw.alerts-stored partition, its producer once it has taken the partition over, and
    what it remembers of the partition's records until a transaction commits them."""

    def __init__(self, partition: int, new_producer: Callable[[], AIOKafkaProducer]) -> None:
        self.partition = partition
        self.state = OwnerState.TAKING_OVER
        self.refusals: dict[int, tuple[int, BaseException]] = {}  # offset -> lasting refusals so far, the last one
        self.letters: dict[int, DeadLetter] = {}  # offset -> its dead letter: sent again, not built again, on a retry
        self._new_producer = new_producer
        self._producer: AIOKafkaProducer | None = None
        self._idle = asyncio.Event()  # set while no transaction is under way
        self._idle.set()

    def _move(self, to: OwnerState) -> None:
        if to not in MOVES[self.state]:
            raise IllegalMove(f"fw.alerts-stored partition {self.partition}: {self.state.value} cannot become "
                              f"{to.value}")
        self.state = to

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise NotOwned(f"fw.alerts-stored partition {self.partition} is {self.state.value}: no producer")
        return self._producer

    async def take_over(self) -> None:
        """Starts a producer (a fresh one on each try) and fences the previous owner's, then awaits the markers."""
        producer = self._new_producer()
        await producer.start()
        # start() does not wait for the producer id: an empty transaction gets it, and with it the fencing
        await producer.begin_transaction()
        await producer.commit_transaction()
        if self.state is OwnerState.RELEASED:  # revoked meanwhile
            await producer.stop()
            return
        self._producer = producer
        self._move(OwnerState.READING_MARKERS)

    def markers_read(self) -> None:
        self._move(OwnerState.READY)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AIOKafkaProducer]:
        """A transaction of the partition's producer, committed when the block ends unless the partition was released
        meanwhile (then, or when it is not READY, `NotOwned`)."""
        if self.state is not OwnerState.READY:
            raise NotOwned(f"fw.alerts-stored partition {self.partition} is {self.state.value}: no transaction")
        producer = self.producer
        self._move(OwnerState.PUBLISHING)
        self._idle.clear()
        try:
            async with producer.transaction():
                yield producer
                if self.state is OwnerState.RELEASED:  # it outlasted the wait of a revocation: aborted, not committed
                    raise NotOwned(f"fw.alerts-stored partition {self.partition} was released during a transaction")
        finally:
            self._idle.set()
            if self.state is OwnerState.PUBLISHING:
                self._move(OwnerState.READY)

    def committed(self, offsets: Iterable[int]) -> None:
        """Forgets what it remembered of records a transaction has committed."""
        for offset in offsets:
            self.refusals.pop(offset, None)
            self.letters.pop(offset, None)

    def revoke(self) -> None:
        """No transaction begins any more; one under way may still commit until `release`."""
        if self.state is OwnerState.PUBLISHING:
            self._move(OwnerState.RELEASING)
        elif self.state is not OwnerState.RELEASED:
            self._move(OwnerState.RELEASED)

    async def transaction_ended(self) -> None:
        await self._idle.wait()

    async def release(self) -> None:
        """Revoked for good: its producer stops (a transaction still under way is left to the next owner's, which
        aborts it)."""
        self.revoke()
        if self.state is OwnerState.RELEASING:
            self._move(OwnerState.RELEASED)
        if self._producer is not None:
            await self._producer.stop()


class PartitionOwners:
    """The owners of the fw.alerts-stored partitions this worker publishes for, made and dropped at each hand-over."""

    def __init__(self, new_producer: Callable[[int], AIOKafkaProducer]) -> None:
        self._owners: dict[int, PartitionOwner] = {}
        self._new_producer = new_producer
        # one take-over at a time: the rebalance listener takes an assignment over, the publish loop a partition it
        # was fenced from
        self._taking_over = asyncio.Lock()
        # set while no hand-over is under way: aiokafka may hand out records of new partitions while the assignment
        # listener is still reading the markers, and records fetched before a revocation wait for the assignment after
        self.settled = asyncio.Event()

    def partitions(self) -> list[int]:
        return list(self._owners)

    def ready(self, partition: int) -> PartitionOwner | None:
        """The partition's owner if it may publish now."""
        owner = self._owners.get(partition)
        return owner if owner is not None and owner.state is OwnerState.READY else None

    async def take_over(self, partitions: Iterable[int], read_markers: Callable[[], Awaitable[None]]) -> None:
        """Each partition's producer started (the previous owner fenced), then the markers read: the partitions are
        READY. Tried again after a failure, it goes on from where each owner is."""
        async with self._taking_over:
            for partition in partitions:
                if partition not in self._owners:
                    new_producer = functools.partial(self._new_producer, partition)
                    self._owners[partition] = PartitionOwner(partition, new_producer)
            await self._start_producers()
            await read_markers()
            for owner in self._owners.values():
                if owner.state is OwnerState.READING_MARKERS:
                    owner.markers_read()

    async def _start_producers(self) -> None:
        starting = [owner for owner in self._owners.values() if owner.state is OwnerState.TAKING_OVER]
        # every start ends before a failure is raised, so that a retry never starts a partition's producer twice
        failures = [result for result in await asyncio.gather(*(owner.take_over() for owner in starting),
                                                               return_exceptions=True) if result is not None]
        if failures:
            raise failures[0]
        if starting:
            log.info("publishing for fw.alerts-stored partitions %s", sorted(owner.partition for owner in starting))

    async def release(self, partitions: Iterable[int], wait_s: float) -> bool:
        """The partitions revoked: their transactions under way may commit within `wait_s`, then their producers
        stop. False when one outlasted `wait_s` (the next owner's producer aborts and fences it)."""
        owners = [owner for partition in partitions if (owner := self._owners.pop(partition, None)) is not None]
        for owner in owners:
            owner.revoke()
        busy = [owner for owner in owners if owner.state is OwnerState.RELEASING]
        ended = True
        if busy:
            try:
                await asyncio.wait_for(asyncio.gather(*(owner.transaction_ended() for owner in busy)), wait_s)
            except TimeoutError:
                ended = False
        for owner in owners:
            await owner.release()
        return ended
