"""Retrying with capped exponential backoff: every retry loop in framewatch is one `Backoff` policy.

Built on tenacity (its `AsyncRetrying`), not on hand-written loops: one place decides how waits grow, when to give
up and what a retry reports, and tenacity lets `CancelledError` through, so a stopping service never waits out a
backoff. A policy without `attempts` retries until the call succeeds or `retry_on` refuses the error (a stopping
service refuses every error); the last error is raised as it was, never wrapped."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_never, wait_exponential

P = ParamSpec("P")
T = TypeVar("T")

RetryOn = Callable[[BaseException], bool]
OnRetry = Callable[[BaseException, float], None]  # the error, the seconds until the next attempt


@dataclass(frozen=True)
class Backoff:
    first_s: float  # the first wait; each next one doubles, up to `max_s`
    max_s: float
    attempts: int | None = None  # None: until it succeeds

    async def call(self, fn: Callable[P, Awaitable[T]], retry_on: RetryOn, on_retry: OnRetry,
                   *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` until it returns; an error `retry_on` accepts is reported to `on_retry` and
        retried after the next wait, any other error, or the last one when the attempts are spent, is raised."""
        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if error is not None:
                on_retry(error, state.upcoming_sleep)

        retrying = AsyncRetrying(
            wait=wait_exponential(multiplier=self.first_s, max=self.max_s),
            stop=stop_never if self.attempts is None else stop_after_attempt(self.attempts),
            retry=retry_if_exception(lambda error: isinstance(error, Exception) and retry_on(error)),
            before_sleep=before_sleep, reraise=True)

        async def attempt() -> T:  # awaited here: tenacity would return the coroutine of a plain callable unawaited
            return await fn(*args, **kwargs)
        return await retrying(attempt)


def logged(log: logging.Logger, what: str, counter: Callable[[], None] | None = None) -> OnRetry:
    """An `on_retry` that logs `what` failed with the error and the wait, and counts it."""
    def on_retry(error: BaseException, wait_s: float) -> None:
        if counter is not None:
            counter()
        log.warning("%s failed, retrying in %.1fs: %s", what, wait_s, error or repr(error))
    return on_retry
