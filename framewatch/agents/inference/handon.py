"""Handing results on: every frame's end goes out through one loop, in the order the waiting room released it, so
the dispatcher never waits on Kafka. A hand-on that fails (the broker is away) is tried again until it succeeds, or
until the frame's partition is revoked (the outage that failed it often moves the partitions): a frame left
unacknowledged would freeze its partition's commits, one handed on after its revocation acts on a partition another
worker reads. A revoked frame's result is discarded."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from prometheus_client import Counter

from framewatch.agents.inference.waiting import Handover
from framewatch.retry import Backoff, logged

log = logging.getLogger("framewatch.scheduler")

FENCED = Counter("framewatch_inference_results_fenced_total",
                 "Frame results discarded because the frame's partition was revoked from this worker (its new "
                 "owner handles the frame)")
HAND_ON_FAILURES = Counter("framewatch_inference_hand_on_failures_total",
                           "Results that could not be sent on at the first try (retried until they are)")

HAND_ON_BACKOFF = Backoff(first_s=0.5, max_s=5.0)


class HandOn:
    def __init__(self) -> None:
        self._released: asyncio.Queue[Handover] = asyncio.Queue()

    def put(self, released: Iterable[Handover]) -> None:
        for handover in released:
            self._released.put_nowait(handover)

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Hands results on, each through its frame's `done`, until `stopping`; raises what a hand-on raised while
        the frame's partition is still this worker's."""
        while not stopping():
            item, result = await self._released.get()
            on_retry = logged(log, f"handing on the result of frame {result.frame.frame_id}", HAND_ON_FAILURES.inc)
            if item.owned():
                try:
                    await HAND_ON_BACKOFF.call(item.done, lambda _: not stopping() and item.owned(), on_retry, result)
                    continue
                except Exception:
                    if stopping():
                        return
                    if item.owned():
                        raise
            FENCED.inc()
