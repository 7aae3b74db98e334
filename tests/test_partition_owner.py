"""The hand-over of a fw.alerts-stored partition without a broker: the moves its states allow, markers read before
anything is published, a released partition that never begins nor commits a transaction, and a dead letter counted
once however often its transaction is tried."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace, TracebackType

import pytest
from prometheus_client import REGISTRY

from framewatch.agents.alerts.ownership import (
    MOVES,
    IllegalMove,
    NotOwned,
    OwnerState,
    PartitionOwner,
    PartitionOwners,
)
from framewatch.agents.alerts.publisher import AlertPublisher
from framewatch.schemas.config import load_config
from framewatch.schemas.events import DeadLetter

S = OwnerState


class FakeProducer:
    """What the owner asks of aiokafka's transactional producer, written down in `calls`."""

    def __init__(self, calls: list[str], fail_start: bool = False) -> None:
        self.calls = calls
        self.fail_start = fail_start
        self.started = asyncio.Event()  # the test lets `start` return
        self.started.set()

    async def start(self) -> None:
        await self.started.wait()
        self.calls.append("start")
        if self.fail_start:
            raise ConnectionError("broker away")

    async def stop(self) -> None:
        self.calls.append("stop")

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def commit_transaction(self) -> None:
        self.calls.append("commit")

    async def abort_transaction(self) -> None:
        self.calls.append("abort")

    def transaction(self) -> FakeTransaction:
        return FakeTransaction(self)


class FakeTransaction:
    """aiokafka's TransactionContext: begun on entry, committed on a clean exit, aborted on an error."""

    def __init__(self, producer: FakeProducer) -> None:
        self.producer = producer

    async def __aenter__(self) -> None:
        await self.producer.begin_transaction()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await (self.producer.abort_transaction() if kind else self.producer.commit_transaction())


async def markers_read() -> None:
    """fw.published read (there is nothing to read here)."""


def owner_of(calls: list[str]) -> PartitionOwner:
    return PartitionOwner(3, lambda: FakeProducer(calls))


async def ready_owner(calls: list[str]) -> PartitionOwner:
    owner = owner_of(calls)
    await owner.take_over()
    owner.markers_read()
    calls.clear()
    return owner


def test_the_moves_allowed_are_the_documented_ones() -> None:
    assert MOVES == {
        S.TAKING_OVER: {S.READING_MARKERS, S.RELEASED},
        S.READING_MARKERS: {S.READY, S.RELEASED},
        S.READY: {S.PUBLISHING, S.RELEASED},
        S.PUBLISHING: {S.READY, S.RELEASING},
        S.RELEASING: {S.RELEASED},
        S.RELEASED: set(),
    }


async def test_taking_over_fences_with_an_empty_transaction_then_waits_for_the_markers() -> None:
    calls: list[str] = []
    owner = owner_of(calls)
    assert owner.state is S.TAKING_OVER
    await owner.take_over()
    assert owner.state is S.READING_MARKERS and calls == ["start", "begin", "commit"]
    with pytest.raises(NotOwned):  # markers not read yet: nothing is published
        async with owner.transaction():
            pass
    owner.markers_read()
    assert owner.state is S.READY
    assert calls == ["start", "begin", "commit"]


async def test_markers_are_read_once_and_only_after_the_take_over() -> None:
    owner = owner_of([])
    with pytest.raises(IllegalMove):
        owner.markers_read()
    await owner.take_over()
    owner.markers_read()
    with pytest.raises(IllegalMove):
        owner.markers_read()


async def test_a_transaction_publishes_and_commits_then_the_partition_is_ready_again() -> None:
    calls: list[str] = []
    owner = await ready_owner(calls)
    async with owner.transaction() as producer:
        assert owner.state is S.PUBLISHING
        with pytest.raises(NotOwned):  # one transaction at a time
            async with owner.transaction():
                pass
        calls.append(f"send by {type(producer).__name__}")
    assert owner.state is S.READY and calls == ["begin", "send by FakeProducer", "commit"]


async def test_a_failed_transaction_aborts_and_the_partition_stays_ready() -> None:
    calls: list[str] = []
    owner = await ready_owner(calls)
    with pytest.raises(ConnectionError):
        async with owner.transaction():
            raise ConnectionError("refused")
    assert owner.state is S.READY and calls == ["begin", "abort"]


async def test_a_released_partition_never_begins_nor_commits_a_transaction() -> None:
    calls: list[str] = []
    owner = await ready_owner(calls)
    await owner.release()
    assert owner.state is S.RELEASED and calls == ["stop"]
    with pytest.raises(NotOwned):
        async with owner.transaction():
            calls.append("send")
    with pytest.raises(IllegalMove):
        owner.markers_read()
    assert calls == ["stop"]


async def test_a_revoked_transaction_may_still_commit_then_the_partition_is_released() -> None:
    calls: list[str] = []
    owner = await ready_owner(calls)
    async with owner.transaction():
        owner.revoke()
        assert owner.state is S.RELEASING
    assert calls == ["begin", "commit"] and owner.state is S.RELEASING
    await owner.release()
    assert owner.state is S.RELEASED and calls == ["begin", "commit", "stop"]


async def test_a_transaction_that_outlasts_its_release_is_aborted_not_committed() -> None:
    calls: list[str] = []
    owner = await ready_owner(calls)
    with pytest.raises(NotOwned):
        async with owner.transaction():
            await owner.release()  # the revocation's wait ran out
            calls.append("send")
    assert owner.state is S.RELEASED and calls == ["begin", "stop", "send", "abort"]


async def test_a_partition_released_while_its_producer_starts_stops_that_producer() -> None:
    calls: list[str] = []
    producer = FakeProducer(calls)
    producer.started.clear()
    owner = PartitionOwner(3, lambda: producer)
    starting = asyncio.create_task(owner.take_over())
    await asyncio.sleep(0)
    await owner.release()
    producer.started.set()
    await starting
    assert owner.state is S.RELEASED and calls == ["start", "begin", "commit", "stop"]


def test_a_commit_forgets_the_refusals_and_dead_letters_of_its_records() -> None:
    owner = owner_of([])
    owner.refusals = {10: (2, ValueError("too large")), 11: (1, ValueError("too large"))}
    owner.letters = {10: DeadLetter.of("fw.alerts-stored", "refused", b"{}")}
    owner.committed([10])
    assert list(owner.refusals) == [11] and owner.letters == {}


async def test_owners_take_over_every_partition_after_a_failed_start_without_starting_any_twice() -> None:
    calls: dict[int, list[str]] = {0: [], 1: []}
    failing = {1}

    def new_producer(partition: int) -> FakeProducer:
        return FakeProducer(calls[partition], fail_start=partition in failing)

    unready_at_reads: list[set[int]] = []
    owners = PartitionOwners(new_producer)

    async def read_markers() -> None:
        unready_at_reads.append({p for p in owners.partitions() if owners.ready(p) is None})

    with pytest.raises(ConnectionError):
        await owners.take_over([0, 1], read_markers)
    assert unready_at_reads == [] and owners.ready(0) is None and owners.ready(1) is None
    failing.clear()
    await owners.take_over([0, 1], read_markers)
    assert calls == {0: ["start", "begin", "commit"], 1: ["start", "start", "begin", "commit"]}
    assert unready_at_reads == [{0, 1}]
    assert owners.ready(0) is not None and owners.ready(1) is not None


async def owners_with_one_ready(calls: list[str]) -> tuple[PartitionOwners, PartitionOwner]:
    owners = PartitionOwners(lambda partition: FakeProducer(calls))
    await owners.take_over([5], markers_read)
    owner = owners.ready(5)
    assert owner is not None
    calls.clear()
    return owners, owner


async def publish_until(owner: PartitionOwner, done: asyncio.Event) -> None:
    async with owner.transaction():
        await done.wait()


async def test_owners_wait_for_a_transaction_under_way_before_releasing_its_partition() -> None:
    calls: list[str] = []
    owners, owner = await owners_with_one_ready(calls)
    done = asyncio.Event()
    publishing = asyncio.create_task(publish_until(owner, done))
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_later(0.05, done.set)
    assert await owners.release([5], wait_s=5)
    await publishing
    assert calls == ["begin", "commit", "stop"] and owners.ready(5) is None and owners.partitions() == []


async def test_owners_release_a_partition_whose_transaction_outlasts_the_wait_without_committing_it() -> None:
    calls: list[str] = []
    owners, owner = await owners_with_one_ready(calls)
    done = asyncio.Event()
    publishing = asyncio.create_task(publish_until(owner, done))
    await asyncio.sleep(0)
    assert not await owners.release([5], wait_s=0.01)
    done.set()
    with pytest.raises(NotOwned):
        await publishing
    assert calls == ["begin", "stop", "abort"] and owner.state is S.RELEASED


class SendingProducer(FakeProducer):
    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        self.calls.append(f"send to {topic}")
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sent.set_result(None)
        return sent


async def test_a_dead_letter_is_counted_and_logged_once_however_often_its_transaction_is_tried(
        caplog: pytest.LogCaptureFixture) -> None:
    config, _ = load_config(None, {})
    publisher = AlertPublisher(config, "app")
    calls: list[str] = []
    owner = owner_of(calls)
    record = SimpleNamespace(offset=7, value=b"not an alert")

    def counted() -> float:
        return REGISTRY.get_sample_value("framewatch_worker_dead_letters_total", {"topic": publisher.source}) or 0.0

    before = counted()
    with caplog.at_level(logging.ERROR, logger="framewatch.dead-letters"):
        for _ in range(3):  # two transactions aborted, the third committed
            await publisher._dead_letter(owner, SendingProducer(calls), record, "undecodable")
    assert counted() == before + 1 and len(caplog.records) == 1
    assert calls == ["send to fw.dead-letters"] * 3
    owner.committed([7])
    assert owner.letters == {}
