"""The worker's batches (`agents/batches.py`): a batch's wait starts at its first value, and a full one goes at
once; through Faust's own agent test context, no broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import faust
import pytest

from framewatch.agents.faust_overrides import WorkerStream, batches

WITHIN_S = 0.5
HANDLING_S = 0.6  # longer than the window: with Faust's `take`, a value arriving meanwhile waits both


@pytest.fixture
async def handed() -> AsyncIterator[tuple[faust.types.AgentT, list[tuple[float, list[int]]]]]:
    app = faust.App("framewatch-batches-test", Stream=WorkerStream)
    handed: list[tuple[float, list[int]]] = []

    async def body(stream: faust.StreamT[int]) -> None:
        async for batch in batches(stream, 3, WITHIN_S):
            handed.append((time.monotonic(), batch))
            await asyncio.sleep(HANDLING_S)

    agent: faust.types.AgentT = app.agent()(body)
    app.finalize()
    yield agent, handed


async def wait_for(handed: list[tuple[float, list[int]]], count: int) -> None:
    async with asyncio.timeout(10):
        while len(handed) < count:
            await asyncio.sleep(0.01)


async def test_a_full_batch_goes_at_once_and_keeps_its_size(
        handed: tuple[faust.types.AgentT, list[tuple[float, list[int]]]]) -> None:
    agent, batches_seen = handed
    async with agent.test_context() as context:
        sent = time.monotonic()
        for value in range(4):
            await context.put(value, wait=False)
        await wait_for(batches_seen, 2)
    (first_at, first), (_, second) = batches_seen
    assert first == [0, 1, 2] and second == [3]
    assert first_at - sent < WITHIN_S, "a full batch does not wait for the window"


async def test_a_value_arriving_during_a_batch_waits_the_window_from_its_own_arrival(
        handed: tuple[faust.types.AgentT, list[tuple[float, list[int]]]]) -> None:
    agent, batches_seen = handed
    async with agent.test_context() as context:
        await context.put(0, wait=False)
        await wait_for(batches_seen, 1)  # handed on one window after it came; now the body handles it
        arrived = time.monotonic()
        await context.put(1, wait=False)
        await wait_for(batches_seen, 2)
    (first_at, first), (second_at, second) = batches_seen
    assert first == [0] and second == [1]
    # its window ended while the body still handled the batch before: it goes as soon as the body is done (Faust's
    # `take` would start the window then, and hand it on a whole window later)
    assert second_at - arrived < HANDLING_S + WITHIN_S / 2, "the window starts when the value arrived"
    assert second_at - first_at >= HANDLING_S, "one batch at a time"


async def test_a_batch_the_body_did_not_finish_is_not_acked() -> None:
    """Faust's `take` acks in a `finally`: a worker stopped while storing a batch committed it unstored."""
    app = faust.App("framewatch-batches-ack-test", Stream=WorkerStream)
    storing = asyncio.Event()

    async def body(stream: faust.StreamT[int]) -> None:
        async for batch in batches(stream, 2, WITHIN_S):
            if batch == [2, 3]:
                storing.set()
                await asyncio.sleep(3600)  # the worker stops meanwhile

    agent: faust.types.AgentT = app.agent()(body)
    app.finalize()
    async with agent.test_context() as context:
        events = [await context.put(value, wait=False) for value in range(4)]
        await asyncio.wait_for(storing.wait(), 10)
    assert [event.message.acked for event in events] == [True, True, False, False]
