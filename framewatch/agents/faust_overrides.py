"""Every override of Faust's private members (and, through Faust's driver, of aiokafka's), in one place.

Read from faust-streaming 0.15.3, over aiokafka 0.14.0; pyproject.toml pins faust-streaming to that minor version.
Each override corrects a behaviour of that version, and `tests/test_faust_overrides.py` shows that the behaviour is
still Faust's and that the private members relied on are still there: when it fails, Faust changed under an
override, which must be read again (and dropped, when Faust now does the right thing).

- `InFlightSafeConsumer` (installed by `WorkerApp._new_transport` through `KafkaTransport`): commits only a run of
  acked offsets that starts at the partition's head, the next record to handle (`_new_offset`), forgets records
  read before a revocation (`ack`, `on_partitions_revoked`), seeks with the flow stopped, reads an assigned
  partition without a commit from its start and learns each partition's head (`perform_seek`), hands on no record
  fetched before a seek (`getmany`), reads a partition again from a head that no agent holds
  (`read_again_passed_over_heads`), and waits for the records in flight a bounded time (`wait_empty`).
- `WorkerStream.batches`: Faust's `take` (`_enable_passive`, `_processors`), with the window of agents/batches.py
  and the batch acked only once the body handled it.
- `GroupAssignor`: announces a member address of its own (`_url`) and keeps the group's membership.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar, cast

import faust
from aiokafka.errors import KafkaError
from faust.assignor.partition_assignor import PartitionAssignor
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP, ChannelT, EventT
from faust.types.transports import TransportT
from faust.types.tuples import Message
from mode import Service
from mode.utils.futures import notify
from prometheus_client import Counter, Gauge
from yarl import URL

from framewatch.agents.batches import BatchWindow
from framewatch.agents.membership import Membership, membership_of

log = logging.getLogger("framewatch.worker")

WAIT_EMPTY_S = 15.0  # within the stop deadline, and well within the 10 s session timeout's rebalance patience
HEAD_CHECK_S = 5.0
HEAD_PASSED_OVER_S = 10.0  # seen passed over at two checks this far apart: a record handed on is tracked in a moment
HEAD_PASSED_OVER_MAX_S = 300.0  # the wait doubles each time the same head is read again (an agent far behind)

STALE_ACKS = Counter("framewatch_worker_stale_acks_total", "Acks of records read before their partition was revoked, "
                     "dropped (the new owner reads them again)")
REBALANCE_WAITS_ABANDONED = Counter("framewatch_worker_rebalance_waits_abandoned_total",
                                    "Rebalances or stops that handed partitions over with records still in flight")
HEADS_READ_AGAIN = Counter("framewatch_worker_heads_read_again_total",
                           "Partitions read again from a head record no agent held while later ones were handled "
                           "(dropped by Faust's stream, or by an agent that raised on it)", ["topic"])
GROUP_MEMBERS = Gauge("framewatch_worker_group_members",
                      "Workers in the consumer group at its last assignment (0: none received yet)")

T = TypeVar("T")


class InFlightSafeConsumer(kafka_driver.Consumer):
    """Faust's consumer, committing a partition only through a run of acked offsets that starts at its head.

    Faust's own `_new_offset` checks for a gap at the head of the acked offsets only while the partition has a
    committed offset other than 0, and then one offset too far (with 5 committed and 6 acked while 5 is in flight
    it commits 7). The infer agent acks out of order, so that commit would lose the frame in flight at a crash or
    rebalance; and a record that never reached the agent at all (fetched in one consumer generation, dropped by
    Faust's stream in the next) was passed over the same way: a frame of a worker killed while the broker refused its
    writes was found committed past, never inferred (tests/test_broker_loss.py). The head is the committed offset,
    or, before the first commit, the partition's first record, learnt when the partition is sought
    (tests/test_worker_consumer.py)."""

    wait_empty_s = WAIT_EMPTY_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # a partition's last revocation: the consumer generation (Faust's `message.generation_id`, the group's
        # generation when the record was fetched) of the records it ended
        self._revoked_in: dict[TP, int] = {}
        # the agents' partitions' heads as `perform_seek` found them: none until then, and nothing is committed
        self._heads: dict[TP, int] = {}
        # a head seen passed over: since when, and how long until it is read again
        self._passed_over: dict[TP, tuple[int, float, float]] = {}
        # a partition sought to its head, until a record of it is handed on: the head and the number of that seek
        self._sought: dict[TP, tuple[int, int]] = {}
        self._seeks = 0

    def owns(self, message: Message) -> bool:
        """Whether the record's partition has stayed this worker's since the record was read. Faust revokes every
        partition at each rebalance; one assigned again is read again from its committed offset, so a record
        read before is in the hands of the new reading, here or elsewhere."""
        return (message.generation_id or 0) > self._revoked_in.get(message.tp, -1)

    def ack(self, message: Message) -> bool:
        """Faust's, except for a record read before its partition was last revoked: its ack is dropped. Once the
        revocation's commit is made, the partition is another ownership's (whoever has it reads the record
        again); counted, that ack could commit past a record the new ownership has not handled yet (Faust
        commits one offset past an unacked head: see `_new_offset`)."""
        if not self.owns(message):
            message.acked = True
            STALE_ACKS.inc()
            return False
        acked: bool = super().ack(message)
        return acked

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust's (which waits for the records in flight and commits), then the revoked partitions' records
        still in flight belong to no one here: they are forgotten, and acks still to come for them dropped."""
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._revoked_in[tp] = self.app.consumer_generation_id
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._heads.pop(tp, None)
            self._passed_over.pop(tp, None)
            self._sought.pop(tp, None)
        self._unacked_messages -= {message for message in self._unacked_messages if message.tp in revoked}

    async def perform_seek(self) -> None:
        """Faust's, which seeks each assigned partition to its committed offset, then the agents' partitions that
        have none (or 0) to their start, as `consumer_auto_offset_reset = "earliest"` says: aiokafka seeks
        only to a committed offset above 0 and leaves such a partition where its last fetch got to, so one assigned
        back to this worker skipped the records read before the rebalance and never handled (Faust empties its
        agents' buffers at a revocation): they stayed unhandled, and its commits stalled below them.

        The flow is stopped first (each caller of Faust's resumes it after): Faust's table recovery seeks with the
        flow on and empties the agents' queues (`flow_control.resume()`) right after, so the records handed on
        from the new positions while the seek awaited the broker were dropped unhandled and never read again in
        that generation (a restarted worker left heads of fw.frames, fw.detections and fw.alerts unhandled)."""
        self.stop_flow()
        self._seeks += 1
        seek = self._seeks
        await super().perform_seek()
        self._passed_over.clear()
        agents_topics = self.app.topics.acking_topics
        partitions = [tp for tp in self.assignment() if tp.topic in agents_topics]
        starts = await self._log_starts(partitions)
        uncommitted = {tp: 0 for tp in partitions if not self._committed_offset.get(tp)}
        if uncommitted:  # below the log's start (retention), the earliest reset applies
            await self.seek_wait(uncommitted)
        for tp in partitions:
            # a committed offset below the log's start (the records expired unread) is reset to that start
            self._heads[tp] = max(self._committed_offset.get(tp) or 0, starts.get(tp, 0))
        self._sought = {tp: (self._heads[tp], seek) for tp in partitions}

    async def _log_starts(self, partitions: list[TP]) -> dict[TP, int]:
        """Each partition's first offset; none known when the broker does not say (a partition without a commit is
        then taken to start at 0: if its records expired, it commits nothing until it is sought again)."""
        if not partitions:
            return {}
        try:
            return dict(await self.earliest_offsets(*partitions))
        except (KafkaError, OSError, TimeoutError) as error:
            log.warning("the first offsets of %d partitions are unknown (%r): heads taken from the commits",
                        len(partitions), error)
            return {}

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's, once the head is acked: never past a record this ownership has not handled."""
        acked = self._acked[tp]
        head = self._head(tp)
        if not acked or head is None or min(acked) > head:
            return None
        offset: int | None = super()._new_offset(tp)
        if offset is not None:
            self._heads[tp] = offset
        return offset

    def _head(self, tp: TP) -> int | None:
        """The partition's next record to handle: its last commit here, else what `perform_seek` found."""
        known = [offset for offset in (self._heads.get(tp), self._committed_offset.get(tp)) if offset is not None]
        return max(known) if tp in self._heads else None

    @Service.timer(HEAD_CHECK_S)
    async def _watch_heads(self) -> None:
        try:
            await self.read_again_passed_over_heads()
        except Exception:  # a timer that raises crashes the consumer, and the worker with it
            log.exception("looking for heads passed over failed: looking again in %.0fs", HEAD_CHECK_S)

    async def read_again_passed_over_heads(self) -> None:
        """A partition whose head no agent holds while later records were handled is read again from its head.
        Faust passes over a record without a trace when the agent handling it raises (the agent restarts with the
        next record), or when its outputs are never confirmed (`Confirmations` leaves it unacked); before
        `perform_seek` stopped the flow, also when its table recovery emptied the agents' queues. Nothing commits
        past such a head, but nothing here would handle it before the partition changes hands, and a frame stayed
        unended for minutes (tests/test_broker_loss.py). Not while the partitions change hands, and the
        same head read again waits twice as long each time (read again, it may wait in an agent's queue)."""
        if self.should_stop or not self.flow_active or self.app.rebalancing:
            return
        now, in_flight = time.monotonic(), self._offsets_in_flight()
        for tp in list(self._heads):
            head = self._head(tp)
            if head is None or not self._is_passed_over(tp, head, in_flight.get(tp, set())):
                self._passed_over.pop(tp, None)
                continue
            seen_head, since, patience = self._passed_over.setdefault(tp, (head, now, HEAD_PASSED_OVER_S))
            if seen_head != head:
                self._passed_over[tp] = (head, now, HEAD_PASSED_OVER_S)
            elif now - since >= patience:
                self._passed_over[tp] = (head, now, min(2 * patience, HEAD_PASSED_OVER_MAX_S))
                await self._read_again(tp, head)

    def _offsets_in_flight(self) -> dict[TP, set[int]]:
        offsets: dict[TP, set[int]] = {}
        for message in list(self._unacked_messages):
            offsets.setdefault(message.tp, set()).add(message.offset)
        return offsets

    def _is_passed_over(self, tp: TP, head: int, in_flight: set[int]) -> bool:
        """Whether a later record than the head was taken in by an agent while the head is neither acked nor in
        flight. An agent takes its records in order, so it took the head first: the head was dropped."""
        if tp in self._sought or head in in_flight or head in self._acked_index.get(tp, ()):
            return False
        return max(in_flight | set(self._acked.get(tp, ())), default=head) > head

    async def _read_again(self, tp: TP, head: int) -> None:
        log.warning("%s-%d: record %d is in no agent's hands while later ones were handled: reading the partition "
                    "again from it", tp.topic, tp.partition, head)
        HEADS_READ_AGAIN.labels(tp.topic).inc()
        self._seeks += 1
        self._sought[tp] = (head, self._seeks)
        await self.seek_wait({tp: head})  # in the consumer's thread, where aiokafka's fetcher runs

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's, except that a partition sought to its head takes no record fetched before that seek (a fetch
        started before it yields only the head itself): handed on, such a record would move Faust's read offset
        past the head, and Faust would drop the head when it comes. The seek's first record handed on sets the
        read offset (the drain sets it to a record it gave up on when the flow stopped, maybe after the seek)."""
        fetched_after = self._seeks
        async for tp, message in super().getmany(timeout):
            if (sought := self._sought.get(tp)) is not None:
                head, seek = sought
                if fetched_after < seek and message.offset != head:
                    continue
                del self._sought[tp]
                self._read_offset[tp] = message.offset
            yield tp, message

    async def wait_empty(self) -> None:
        """Faust's, with a deadline: a rebalance (or a stop) waits for the records in flight at most
        `wait_empty_s`, then hands the partitions over anyway (whoever takes them reads those records again).
        Faust's own waits for ever, and swallows the cancellation that would end it: one record that is never
        acknowledged (its result could not be sent while the broker was away) kept a worker out of its group."""
        deadline = time.monotonic() + self.wait_empty_s
        while not self.should_stop and self._unacked_messages:
            if time.monotonic() >= deadline:
                REBALANCE_WAITS_ABANDONED.inc()
                log.warning("%d records still in flight after %.0fs: handing their partitions over anyway",
                            len(self._unacked_messages), self.wait_empty_s)
                break
            await self.commit()
            if not self._unacked_messages:
                break
            await self._wait_for_ack(timeout=1)
            self._clean_unacked_messages()
        await self.commit_and_end_transactions()


class KafkaTransport(kafka_driver.Transport):
    Consumer = InFlightSafeConsumer


class WorkerApp(faust.App):
    def _new_transport(self) -> TransportT:
        return KafkaTransport(self.conf.broker_consumer, self)


class BatchGathering(Generic[T]):
    """A stream's values gathered into a `BatchWindow`, one batch at a time: `add`, the stream's processor, holds a
    value back while the body handles the batch before it, and a full batch's last value until that batch is taken;
    `due` waits until the batch is due; `release` lets the next one in."""

    def __init__(self, stream: faust.Stream[T], size: int, within: float) -> None:
        self.stream = stream
        self.window: BatchWindow[tuple[T, EventT]] = BatchWindow(size, within)
        self.arrived, self.full, self.consumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.consuming: asyncio.Future[None] | None = None  # while the body handles a batch

    async def add(self, value: T) -> T:
        arrived_at = time.time()
        if self.consuming is not None:  # the body is handling the last batch: this value opens the next one
            try:
                await self.consuming
            finally:
                self.consuming = None
        event = self.stream.current_event
        if event is None:
            raise RuntimeError("a batch value without its event")
        full = self.window.on_item((value, event), min(arrived_at, event.message.timestamp))
        self.arrived.set()
        if full:
            self.full.set()
            self.consumed.clear()
            await self.stream.wait(self.consumed)  # type: ignore[arg-type]  # mode accepts anything with .wait()
        return value

    async def due(self) -> list[tuple[T, EventT]]:
        """The batch, once full or its window has passed; empty when the stream stopped first."""
        await self.stream.wait_for_stopped(self.arrived)  # type: ignore[arg-type]
        due_at = self.window.notify_at()
        if due_at is not None and (left := due_at - time.time()) > 0:
            await self.stream.wait_for_stopped(self.full, timeout=left)  # type: ignore[arg-type]
        if not self.window.items:
            return []
        self.consuming = self.stream.loop.create_future()
        return self.window.on_notify()

    def release(self) -> None:
        notify(self.consuming)
        self.arrived.clear()
        self.full.clear()
        self.consumed.set()


class WorkerStream(faust.Stream[T]):
    """The app's stream class (`create_app`'s `Stream=`): Faust's, with `batches` instead of `take`. `take` starts
    its window when the loop asks for the next batch (agents/batches.py), and acks a batch in a `finally`, so a
    batch whose body was cancelled (the worker stopping) or raised is acked and committed unhandled."""

    async def batches(self, size: int, within: float) -> AsyncIterator[list[T]]:
        """Lists of at most `size` values, each handed on when full or `within` seconds after its first record's
        timestamp; the values are acknowledged once the body has handled the list, never when it raised or was
        cancelled (the list then comes again to whoever reads its partition next: the sinks are idempotent)."""
        gathering = BatchGathering(self, size, within)
        acks_before = self.enable_acks
        self.enable_acks = False
        self.add_processor(gathering.add)
        self._enable_passive(cast(ChannelT, aiter(self.channel)))
        try:
            while not self.should_stop:
                batch = await gathering.due()
                if not batch:
                    continue
                handled = False
                try:
                    yield [value for value, _ in batch]
                    handled = True
                finally:
                    for _, event in batch if handled else ():
                        await self.ack(event)
                    gathering.release()
        finally:
            self.enable_acks = acks_before
            self._processors.remove(gathering.add)


def batches(stream: faust.StreamT[Any], size: int, within: float) -> AsyncIterator[list[Any]]:
    """`WorkerStream.batches` of an agent's stream (the app makes every stream a WorkerStream)."""
    if not isinstance(stream, WorkerStream):
        raise TypeError(f"{type(stream).__name__} is not a WorkerStream: create the app with Stream=WorkerStream")
    return stream.batches(size, within)


class GroupAssignor(PartitionAssignor):
    """Faust's partition assignor, announcing a member address of its own (agents/membership.py says why) and
    keeping the group's membership."""

    def __init__(self, app: faust.App, replicas: int = 0) -> None:
        super().__init__(app, replicas)
        self.member_id = uuid.uuid4().hex[:12]
        self.membership: Membership | None = None  # None until the first assignment

    @classmethod
    def of(cls, app: faust.App) -> GroupAssignor:
        assignor = app.assignor
        assert isinstance(assignor, cls), f"the app's assignor is a {type(assignor).__name__}: see create_app"
        return assignor

    @property
    def _url(self) -> URL:
        url: URL = self.app.conf.canonical_url
        return url.update_query(member=self.member_id)

    def on_assignment(self, assignment: Any) -> None:
        super().on_assignment(assignment)
        self.membership = membership_of(self.changelog_distribution, str(self._url))
        GROUP_MEMBERS.set(self.membership.members)

    def current(self) -> Membership | None:
        return self.membership
