"""A circuit breaker per algorithm service, so a sick service stops getting traffic within seconds.

Closed: traffic flows; it opens after `failures_to_open` consecutive failures, or when the error rate over the
last `window` requests reaches `error_rate`. Open: no traffic for `open_sec`, doubled (up to `max_open_sec`) each
time a probe fails. Half-open: one probe request at a time; its success closes the breaker, its failure opens it
again. Time comes from a clock the caller can replace, so the transitions are testable without sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerSettings:
    failures_to_open: int = 5
    error_rate: float = 0.5
    window: int = 20
    open_sec: float = 2.0
    max_open_sec: float = 15.0


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._recent: deque[bool] = deque(maxlen=settings.window)
        self._open_for = settings.open_sec
        self._reopens_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self.clock() >= self._reopens_at:
            self._state = BreakerState.HALF_OPEN
            self._probing = False
        return self._state

    def allows(self) -> bool:
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._probing)

    def on_dispatch(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def record(self, success: bool) -> None:
        self._recent.append(success)
        if success:
            self._consecutive_failures = 0
            if self._state is not BreakerState.CLOSED:
                self._close()
            return
        self._consecutive_failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._open(backoff=True)
        elif self._state is BreakerState.CLOSED and self._tripped():
            self._open(backoff=False)

    def _tripped(self) -> bool:
        if self._consecutive_failures >= self.settings.failures_to_open:
            return True
        full = len(self._recent) == self._recent.maxlen
        return full and self._recent.count(False) / len(self._recent) >= self.settings.error_rate

    def _open(self, backoff: bool) -> None:
        if backoff:
            self._open_for = min(self._open_for * 2, self.settings.max_open_sec)
        self._state = BreakerState.OPEN
        self._probing = False
        self._reopens_at = self.clock() + self._open_for

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._open_for = self.settings.open_sec
        self._recent.clear()
        self._probing = False
