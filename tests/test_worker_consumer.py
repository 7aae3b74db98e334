"""Faust commits a partition's offsets only below every record still in flight, and a rebalance waits for the
records in flight a bounded time.

Faust's own arithmetic (`faust/transport/consumer.py`, `Consumer._new_offset`) checks for a gap at the head of the
acked offsets only while the partition has a committed offset other than 0, and then one offset too far: with
offset 5 committed (the next to read) and 6 acked while 5 is still in flight, it commits 7. The infer agent acks out
of order (frames of several cameras share a partition and finish in any order), so a crash or rebalance after such
a commit loses the frame in flight; the worker's consumer (`agents/faust_overrides.py`) commits only a run of acked
offsets that starts at the partition's head, which also keeps a record that never reached the agent from being
passed over.

Faust's `wait_empty`, which every rebalance and stop awaits, waits for ever while one record is unacknowledged
(and swallows the cancellation that would end it); the worker's gives up after `wait_empty_s`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import cast

import pytest

from faust.transport.conductor import Conductor
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP
from faust.types.tuples import Message

from framewatch.agents import faust_overrides
from framewatch.agents.pipeline import build_worker
from framewatch.schemas.config import load_config


async def consumer_of_frames(head: int | None = 0) -> tuple[Consumer, TP]:
    """The worker's consumer with fw.frames partition 0 assigned, its head (the next record to handle) `head`, as
    `perform_seek` finds it; None: not sought yet."""
    config, _ = load_config(None, {"FRAMEWATCH_NAMESPACE": "offsets"})
    app, topology, *_ = build_worker(config)
    conductor = cast(Conductor, app.topics)
    conductor.add(topology.frames)
    await conductor._update_indices()  # what starting the agents does: acks are enabled for fw.frames
    consumer, tp = cast(Consumer, app.consumer), TP(topology.frames.get_topic_name(), 0)
    if head is not None:
        sought(consumer, tp, head)
    return consumer, tp


def sought(consumer: Consumer, tp: TP, head: int) -> None:
    consumer._heads[tp] = head  # type: ignore[attr-defined]  # what perform_seek learns


def seeks_of(consumer: Consumer) -> list[tuple[TP, int]]:
    """The seeks the consumer makes from now on (in its thread, as `seek_wait` makes them), recorded instead."""
    seeks: list[tuple[TP, int]] = []

    async def seek_wait(partitions: Mapping[TP, int]) -> None:
        seeks.extend(partitions.items())
    consumer.seek_wait = seek_wait  # type: ignore[method-assign]
    return seeks


def delivered(consumer: Consumer, tp: TP, *offsets: int) -> list[Message]:
    """Records as Faust's stream takes them in: of the group's current generation, tracked the way
    `Stream._py_aiter` inlines `Consumer.track_message` (so an override of that method is never called)."""
    generation = consumer.app.consumer_generation_id
    messages = [Message(tp.topic, tp.partition, offset, 0.0, 0, None, None, b"cam", b"{}", None, tp=tp,
                        generation_id=generation) for offset in offsets]
    for message in messages:
        message.tracked = True
        consumer._unacked_messages.add(message)
        consumer._on_message_in(message.tp, message.offset, message)
    return messages


async def test_no_commit_past_a_record_in_flight_before_the_first_commit() -> None:
    consumer, tp = await consumer_of_frames()
    first, second, third = delivered(consumer, tp, 0, 1, 2)
    consumer.ack(second)
    consumer.ack(third)
    assert consumer._new_offset(tp) is None  # Faust's own: 3, past offset 0
    consumer.ack(first)
    assert consumer._new_offset(tp) == 3


async def test_no_commit_past_the_next_offset_while_it_is_in_flight() -> None:
    consumer, tp = await consumer_of_frames(head=5)
    consumer._committed_offset[tp] = 5  # the next to read, as Kafka keeps it
    head, after = delivered(consumer, tp, 5, 6)
    consumer.ack(after)
    assert consumer._new_offset(tp) is None  # Faust's own: 7, past offset 5
    consumer.ack(head)
    assert consumer._new_offset(tp) == 7


async def test_no_commit_past_a_head_that_never_reached_the_agent() -> None:
    """Offset 0 was fetched in one consumer generation and dropped by Faust's stream in the next (a rebalance
    between): never in flight, never acked. Committing 1 and 2 would pass over it for good."""
    consumer, tp = await consumer_of_frames()
    for message in delivered(consumer, tp, 1, 2):
        consumer.ack(message)
    assert consumer._new_offset(tp) is None  # Faust's own, and the in-flight check before this one: 3
    consumer.ack(delivered(consumer, tp, 0)[0])
    assert consumer._new_offset(tp) == 3


async def test_nothing_is_committed_before_the_partition_is_sought() -> None:
    consumer, tp = await consumer_of_frames(head=None)
    for message in delivered(consumer, tp, 0, 1):
        consumer.ack(message)
    assert consumer._new_offset(tp) is None
    sought(consumer, tp, 0)
    assert consumer._new_offset(tp) == 2


async def test_contiguous_acks_commit_as_before() -> None:
    consumer, tp = await consumer_of_frames(head=10)
    messages = delivered(consumer, tp, 10, 11, 12, 13)
    for message in messages[:3]:
        consumer.ack(message)
    assert consumer._new_offset(tp) == 13  # 13 is in flight: the commit stops right below it


async def test_a_rebalance_waits_for_a_record_in_flight_a_bounded_time() -> None:
    consumer, tp = await consumer_of_frames()
    [stuck] = delivered(consumer, tp, 0)
    faust_own = asyncio.ensure_future(kafka_driver.Consumer.wait_empty(consumer))
    await asyncio.sleep(2)
    assert not faust_own.done()  # Faust's own would wait for as long as the record is in flight
    consumer._stopped.set()  # (only a stop ends it: it swallows cancellation)
    await faust_own
    consumer._stopped.clear()

    [stuck] = delivered(consumer, tp, 1)
    consumer.wait_empty_s = 1.0  # type: ignore[attr-defined]
    started = time.monotonic()
    await consumer.wait_empty()
    assert 1.0 <= time.monotonic() - started < 3.0
    assert not stuck.acked  # handed over unacknowledged: whoever takes the partition reads it again


def test_a_worker_rebalancing_for_too_long_exits_for_its_supervisor_to_restart_it() -> None:
    script = ("import time\nfrom framewatch.agents.app import RebalanceWatch\nwatch = RebalanceWatch(limit_s=0.2)\n"
              "watch.observe(True)\nwatch.observe(False)\nwatch.observe(True)\ntime.sleep(0.1)\nwatch.observe(True)\n"
              "time.sleep(0.2)\nwatch.observe(True)\nprint('still here')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "still here" not in done.stdout
    assert "rebalancing for 0s and cannot rejoin its group: exiting (status 3)" in done.stderr


async def test_an_ack_from_before_a_revocation_commits_nothing_for_the_next_ownership() -> None:
    """A record read before its partition was revoked (a frame still at a detector, a rule's send still
    unconfirmed) is acked after the partition came back: Faust's own counted it and, one offset past the new
    committed offset, committed past the head the new ownership had not handled yet."""
    consumer, tp = await consumer_of_frames()

    async def app_revocation(revoked: set[TP]) -> None:  # the app's part: wait for what is in flight, commit
        pass
    consumer._on_partitions_revoked = app_revocation
    consumer._committed_offset[tp] = 5
    [stale] = delivered(consumer, tp, 6)
    await consumer.on_partitions_revoked({tp})
    consumer.app.consumer_generation_id += 1  # assigned again, in the next generation: the next to read is still 5
    consumer._committed_offset[tp] = 5
    sought(consumer, tp, 5)
    assert consumer.ack(stale) is False
    assert consumer._new_offset(tp) is None  # Faust's own: 7, past offset 5 that nobody here has read yet
    head, after = delivered(consumer, tp, 5, 6)
    consumer.ack(after)
    consumer.ack(head)
    assert consumer._new_offset(tp) == 7



async def test_a_partition_without_a_commit_is_read_again_from_its_start_when_assigned() -> None:
    """aiokafka seeks an assigned partition only to a committed offset above 0: one never committed (its first
    frame still at a detector) and assigned back to the same worker kept its fetch position, past the records
    Faust dropped from the agents' buffers at the revocation; they were never handled."""
    consumer, tp = await consumer_of_frames()
    committed_tp = TP(tp.topic, 1)
    seeks = seeks_of(consumer)

    async def seek_to_committed() -> dict[TP, int | None]:
        assert not consumer.flow_active, "no record is handed on while the partitions are sought"
        return {tp: None, committed_tp: 7}

    async def earliest_offsets(*partitions: TP) -> dict[TP, int]:
        return {partition: 3 for partition in partitions}  # records below 3 expired
    consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign,assignment]
    consumer.earliest_offsets = earliest_offsets  # type: ignore[method-assign]
    consumer.assignment = lambda: {tp, committed_tp}  # type: ignore[method-assign]
    await consumer.perform_seek()
    assert seeks == [(tp, 0)]
    assert consumer._heads == {tp: 3, committed_tp: 7}  # type: ignore[attr-defined]


async def test_a_head_passed_over_is_read_again_from_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offset 0 was dropped on its way to the agent (or by an agent that raised on it) while 1 and 2 were handled:
    nothing commits past it, and once it has stayed passed over for a while the partition is read again from it,
    then after twice as long each time."""
    monkeypatch.setattr(faust_overrides, "HEAD_PASSED_OVER_S", 0.2)
    consumer, tp = await consumer_of_frames()
    seeks = seeks_of(consumer)
    for message in delivered(consumer, tp, 1, 2):
        consumer.ack(message)
    await consumer.read_again_passed_over_heads()  # type: ignore[attr-defined]
    assert seeks == []  # seen once: a record is tracked a moment after it is handed on
    await asyncio.sleep(0.3)
    await consumer.read_again_passed_over_heads()  # type: ignore[attr-defined]
    assert seeks == [(tp, 0)]
    await asyncio.sleep(0.3)
    await consumer.read_again_passed_over_heads()  # type: ignore[attr-defined]
    assert seeks == [(tp, 0)], "read again once, until the head's record is fetched"
    # fetched and handed on, the head may wait in the agent's queue behind a backlog (tracked only once the agent
    # takes it): read again, the same head waits twice as long
    consumer._sought.pop(tp)  # type: ignore[attr-defined]
    await consumer.read_again_passed_over_heads()  # type: ignore[attr-defined]
    assert seeks == [(tp, 0)]
    await asyncio.sleep(0.45)
    await consumer.read_again_passed_over_heads()  # type: ignore[attr-defined]
    assert seeks == [(tp, 0), (tp, 0)]


async def test_a_head_in_flight_or_not_taken_in_yet_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust_overrides, "HEAD_PASSED_OVER_S", 0.0)
    consumer, tp = await consumer_of_frames()
    seeks = seeks_of(consumer)
    await consumer.read_again_passed_over_heads()  # type: ignore[attr-defined]
    head, after = delivered(consumer, tp, 0, 1)
    consumer.ack(after)
    await consumer.read_again_passed_over_heads()  # type: ignore[attr-defined]
    assert seeks == []  # nothing later taken in, then the head in flight (at a detector)
    consumer.ack(head)
    await consumer.read_again_passed_over_heads()  # type: ignore[attr-defined]
    assert seeks == [] and consumer._new_offset(tp) == 2


async def test_read_again_the_records_fetched_before_the_seek_are_not_handed_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetch under way when the partition is sought back to its head 3 brings 5 and 6 from the old position, then
    3 from the new one; handing 5 or 6 on would move Faust's read offset past 3, and Faust would drop 3 again."""
    consumer, tp = await consumer_of_frames(head=3)
    seeks = seeks_of(consumer)
    fetches = [[5, 6, 3], [4, 5]]

    async def faust_getmany(self: Consumer, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        offsets = fetches.pop(0)
        if offsets[0] == 5:
            await consumer._read_again(tp, 3)  # type: ignore[attr-defined]  # while this fetch is under way
        for message in delivered(consumer, tp, *offsets):
            yield tp, message
    monkeypatch.setattr(kafka_driver.Consumer, "getmany", faust_getmany)
    handed_on = [message.offset async for _, message in consumer.getmany(timeout=1.0)]
    assert seeks == [(tp, 3)] and handed_on == [3] and consumer._read_offset[tp] == 3
    handed_on = [message.offset async for _, message in consumer.getmany(timeout=1.0)]
    assert handed_on == [4, 5]
