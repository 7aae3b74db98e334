"""Retrying with capped exponential backoff: every retry loop in framewatch is one `Backoff` policy.

One place decides how waits grow (and how much they vary at random), when to give up and what a retry reports.
`CancelledError` is not an `Exception`, so a stopping service never waits out a backoff. A policy without `attempts`
retries until the call succeeds or `retry_on` refuses the error (a stopping service refuses every error); the last
error is raised as it was, never wrapped. A call that succeeds at once costs one `await` more than the call itself (it
runs for every frame an extractor uploads; tenacity's machinery cost 45 µs a call)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

RetryOn = Callable[[BaseException], bool]
OnRetry = Callable[[BaseException, float], None]  # the error, the seconds until the next attempt


@dataclass(frozen=True)
class Backoff:
    first_s: float  # the first wait; each next one doubles, up to `max_s`
    max_s: float
    attempts: int | None = None  # None: until it succeeds
    # each wait shortened at random by up to this part of it (0.5: 50–100 % of it), so that loops that failed
    # together (the cameras behind one switch) do not retry together
    jitter: float = 0.0

    async def call(self, fn: Callable[P, Awaitable[T]], retry_on: RetryOn, on_retry: OnRetry,
                   *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` until it returns; an error `retry_on` accepts is reported to `on_retry` and
        retried after the next wait, any other error, or the last one when the attempts are spent, is raised."""
        attempt = 1
        while True:
            try:
                return await fn(*args, **kwargs)
            except Exception as error:
                if not retry_on(error) or (self.attempts is not None and attempt >= self.attempts):
                    raise
                wait_s = self.wait_s(attempt)
                on_retry(error, wait_s)
            await asyncio.sleep(wait_s)
            attempt += 1

    def wait_s(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (from 1)."""
        wait_s = min(self.max_s, self.first_s * 2 ** (attempt - 1))
        return wait_s * random.uniform(1 - self.jitter, 1.0) if self.jitter else wait_s


def logged(log: logging.Logger, what: str, counter: Callable[[], None] | None = None) -> OnRetry:
    """An `on_retry` that logs `what` failed with the error and the wait, and counts it."""
    def on_retry(error: BaseException, wait_s: float) -> None:
        if counter is not None:
            counter()
        log.warning("%s failed, retrying in %.1fs: %s", what, wait_s, error or repr(error))
    return on_retry
