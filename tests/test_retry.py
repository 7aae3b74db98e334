"""The one retry policy: waits that double up to a cap, errors it refuses raised at once, the last one raised
as it was, and callables that return an awaitable (a lambda) awaited like coroutine functions."""

from __future__ import annotations

import asyncio

import pytest

from framewatch.retry import Backoff


class Flaky:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self, value: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return value


async def test_retries_until_it_succeeds_with_doubling_capped_waits() -> None:
    flaky = Flaky(4, ConnectionError("down"))
    waits: list[float] = []
    result = await Backoff(first_s=0.001, max_s=0.004).call(
        lambda: flaky("done"), lambda e: True, lambda e, wait: waits.append(wait))
    assert result == "done" and flaky.calls == 5
    assert waits == pytest.approx([0.001, 0.002, 0.004, 0.004])


async def test_gives_up_after_its_attempts_with_the_last_error_unwrapped() -> None:
    flaky = Flaky(10, ConnectionError("still down"))
    with pytest.raises(ConnectionError, match="still down"):
        await Backoff(first_s=0.001, max_s=0.001, attempts=3).call(flaky, lambda e: True, lambda e, w: None, "x")
    assert flaky.calls == 3


async def test_an_error_it_refuses_is_raised_at_once() -> None:
    flaky = Flaky(10, ValueError("bad data"))
    with pytest.raises(ValueError):
        await Backoff(first_s=0.001, max_s=0.001).call(flaky, lambda e: isinstance(e, ConnectionError),
                                                      lambda e, w: None, "x")
    assert flaky.calls == 1


async def test_cancellation_is_not_retried() -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    task = asyncio.create_task(Backoff(first_s=0.001, max_s=0.001).call(forever, lambda e: True, lambda e, w: None))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
