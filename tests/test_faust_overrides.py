"""What each override in agents/faust_overrides.py corrects is still what Faust (faust-streaming 0.15.3) and aiokafka
do, and the private members the overrides replace or call are still there, with the parameters relied on. A test
here failing means Faust changed under an override: read the new version, then adapt the override or drop it.

What the overrides themselves do is tested beside the code that needs it: tests/test_worker_consumer.py (the
consumer), tests/test_batches.py (the batches), tests/test_capacity_parts.py (the membership)."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable
from typing import cast
from unittest.mock import AsyncMock, Mock, call
from weakref import WeakSet

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata
from faust.assignor.partition_assignor import PartitionAssignor
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import AgentT

from framewatch.agents.faust_overrides import GroupAssignor, InFlightSafeConsumer, KafkaTransport
from framewatch.agents.membership import membership_of
from tests.test_batches import HANDLING_S, WITHIN_S, wait_for
from tests.test_worker_consumer import consumer_of_frames, delivered

FaustConsumer = kafka_driver.Consumer  # the class InFlightSafeConsumer extends: its methods are Faust's own


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(("owner", "name", "parameters"), [
    (FaustConsumer, "_new_offset", ["self", "tp"]),
    (FaustConsumer, "ack", ["self", "message"]),
    (FaustConsumer, "on_partitions_revoked", ["self", "revoked"]),
    (FaustConsumer, "perform_seek", ["self"]),
    (FaustConsumer, "seek", ["self", "partition", "offset"]),
    (FaustConsumer, "getmany", ["self", "timeout"]),
    (FaustConsumer, "earliest_offsets", ["self", "partitions"]),
    (FaustConsumer, "wait_empty", ["self"]),
    (FaustConsumer, "_wait_for_ack", ["self", "timeout"]),
    (FaustConsumer, "_clean_unacked_messages", ["self"]),
    (FaustConsumer, "commit_and_end_transactions", ["self"]),
    (faust.App, "_new_transport", ["self"]),
    (faust.Stream, "_enable_passive", ["self", "channel", "declare"]),
    (faust.Stream, "add_processor", ["self", "processor"]),
    (PartitionAssignor, "__init__", ["self", "app", "replicas"]),
    (PartitionAssignor, "on_assignment", ["self", "assignment"]),
])
def test_the_members_overridden_or_called_keep_their_parameters(owner: type, name: str, parameters: list[str]) -> None:
    assert list(inspect.signature(getattr(owner, name)).parameters) == parameters


async def test_the_consumer_state_the_overrides_read_is_still_faust_s() -> None:
    consumer, tp = await consumer_of_frames()
    assert isinstance(consumer, InFlightSafeConsumer)
    assert consumer._acked[tp] == [] and consumer._acked_index[tp] == set() and consumer._committed_offset[tp] is None
    assert isinstance(consumer._unacked_messages, WeakSet)
    assert consumer._read_offset[tp] is None  # the drain's mark: a record below it is dropped
    assert tp.topic in consumer.app.topics.acking_topics
    assert isinstance(consumer.app.consumer_generation_id, int)


async def test_faust_own_new_offset_still_commits_past_a_record_in_flight() -> None:
    """`_new_offset`: Faust's commits past an unacked head before the partition's first commit, and one offset too
    far after it."""
    consumer, tp = await consumer_of_frames()
    _, second = delivered(consumer, tp, 0, 1)
    FaustConsumer.ack(consumer, second)
    assert FaustConsumer._new_offset(consumer, tp) == 2, "offset 0 is still in flight"

    consumer, tp = await consumer_of_frames()
    consumer._committed_offset[tp] = 5
    _, after = delivered(consumer, tp, 5, 6)
    FaustConsumer.ack(consumer, after)
    assert FaustConsumer._new_offset(consumer, tp) == 7, "offset 5 is still in flight"


async def test_faust_own_revocation_keeps_the_records_in_flight_and_counts_their_late_acks() -> None:
    """`on_partitions_revoked` and `ack`: after Faust's revocation a record read before it is still in flight, and
    its ack, once the partition is assigned again, counts and commits past the new reading's head."""
    consumer, tp = await consumer_of_frames()
    consumer._on_partitions_revoked = AsyncMock()  # the app's part (waiting for the records in flight)
    [stale] = delivered(consumer, tp, 6)
    await FaustConsumer.on_partitions_revoked(consumer, {tp})
    assert stale in consumer._unacked_messages
    consumer.app.consumer_generation_id += 1
    consumer._committed_offset[tp] = 5
    assert FaustConsumer.ack(consumer, stale) is True
    assert FaustConsumer._new_offset(consumer, tp) == 7


async def test_faust_own_perform_seek_leaves_a_partition_without_a_commit_where_it_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`perform_seek`: Faust's seeks only where `seek_to_committed` did (aiokafka's, below)."""
    consumer, tp = await consumer_of_frames()
    monkeypatch.setattr(consumer, "seek_to_committed", AsyncMock(return_value={tp: None}))
    monkeypatch.setattr(consumer, "seek", seek := AsyncMock())
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    await FaustConsumer.perform_seek(consumer)
    seek.assert_not_called()


async def test_aiokafka_seeks_only_to_a_committed_offset_above_0(monkeypatch: pytest.MonkeyPatch) -> None:
    """`perform_seek`: a partition committed at 0, or never, keeps its fetch position."""
    committed = {TopicPartition("frames", partition): offset for partition, offset in enumerate([None, 0, 7])}
    consumer = AIOKafkaConsumer(group_id="framewatch-overrides", bootstrap_servers="127.0.0.1:1")
    fetcher = Mock(close=AsyncMock())
    monkeypatch.setattr(consumer, "_fetcher", fetcher)
    monkeypatch.setattr(consumer, "committed", AsyncMock(side_effect=committed.get))
    monkeypatch.setattr(consumer._subscription, "assigned_partitions", lambda: set(committed))
    try:
        assert await consumer.seek_to_committed() == committed
    finally:
        await consumer.stop()
    assert fetcher.seek_to.call_args_list == [call(TopicPartition("frames", 2), 7)]


# `wait_empty`: tests/test_worker_consumer.py's test_a_rebalance_waits_for_a_record_in_flight_a_bounded_time shows
# that Faust's own still waits for as long as a record is in flight.


async def test_faust_own_transport_is_the_one_ours_extends() -> None:
    """`WorkerApp._new_transport`: Faust's makes the aiokafka driver's transport from the same arguments."""
    consumer, _ = await consumer_of_frames()
    app = cast(faust.App, consumer.app)
    own, ours = faust.App._new_transport(app), app._new_transport()
    assert type(own) is kafka_driver.Transport and type(ours) is KafkaTransport
    assert (ours.url, ours.app) == (own.url, own.app)


def taking_agent(handed: list[tuple[float, list[int]]], size: int, handling_s: float) -> AgentT:
    """An agent over Faust's own `take`, noting each batch and when it came, then handling it `handling_s`."""
    app = faust.App(f"framewatch-take-{uuid.uuid4().hex[:6]}")

    async def body(stream: faust.StreamT[int]) -> None:
        async for batch in stream.take(size, WITHIN_S):
            handed.append((time.monotonic(), list(batch)))
            await asyncio.sleep(handling_s)

    agent: AgentT = app.agent()(body)
    app.finalize()
    return agent


async def test_faust_own_take_acks_a_batch_its_body_did_not_finish() -> None:
    """`WorkerStream.batches`: Faust's `take` acks in a `finally`."""
    handed: list[tuple[float, list[int]]] = []
    agent = taking_agent(handed, 2, handling_s=3600)
    async with agent.test_context() as context:
        events = [await context.put(value, wait=False) for value in range(2)]
        await wait_for(handed, 1)  # the batch is being handled when the agent stops
    await until(lambda: all(event.message.acked for event in events))


async def test_faust_own_take_starts_the_window_when_the_loop_asks() -> None:
    """`WorkerStream.batches`: with Faust's `take`, a value that arrived while the body handled the batch before
    waits that handling and then a whole window."""
    handed: list[tuple[float, list[int]]] = []
    agent = taking_agent(handed, 3, handling_s=HANDLING_S)
    async with agent.test_context() as context:
        await context.put(0, wait=False)
        await wait_for(handed, 1)
        arrived = time.monotonic()
        await context.put(1, wait=False)
        await wait_for(handed, 2)
    assert handed[1][0] - arrived >= HANDLING_S + WITHIN_S / 2


def test_faust_own_assignor_announces_the_canonical_url() -> None:
    """`GroupAssignor._url`: Faust's member address is the canonical URL, which workers bound alike share."""
    app = faust.App(f"framewatch-assignor-{uuid.uuid4().hex[:6]}", PartitionAssignor=GroupAssignor)
    assignor = GroupAssignor.of(app)
    own_url = inspect.getattr_static(PartitionAssignor, "_url")
    assert isinstance(own_url, property) and own_url.fget is not None
    assert own_url.fget(assignor) == app.conf.canonical_url
    announced = ClientMetadata.loads(assignor.metadata(set()).user_data)
    assert announced.url == str(assignor._url) != str(app.conf.canonical_url)


def test_faust_own_assignment_gives_the_changelog_distribution_by_member_url() -> None:
    """`GroupAssignor.on_assignment`: Faust's takes each member's announced URL from the assignment's
    changelog distribution (and checks its own came back)."""
    app = faust.App(f"framewatch-assignor-{uuid.uuid4().hex[:6]}", PartitionAssignor=GroupAssignor)
    assignor = GroupAssignor.of(app)
    own = str(assignor._url)
    others = ["http://0.0.0.0:6066/?member=a", "http://0.0.0.0:6066/?member=b"]
    distribution: dict[str, dict[str, list[int]]] = {url: {} for url in [own, *others]}
    metadata = ClientMetadata(assignment=ClientAssignment(actives={}, standbys={}), url=own,
                              changelog_distribution=distribution)
    assignor.on_assignment(ConsumerProtocolMemberAssignment(
        assignor.version, [], assignor._compress(metadata.dumps())))
    assert assignor.changelog_distribution == distribution
    assert assignor.current() == membership_of(distribution, own)


async def test_faust_own_flow_resume_empties_the_agents_queues() -> None:
    """Why the worker's consumer seeks with the flow stopped: Faust's table recovery seeks, then resumes its flow
    control, which empties every agent's queue, records handed on from the new positions included."""
    consumer, _ = await consumer_of_frames()
    app = consumer.app
    channel = app.channel()
    queue = channel.queue
    assert queue._clear_on_resume
    queue.put_nowait("a record handed on while the seek awaited the broker")
    app.flow_control.resume()
    assert queue.empty()
