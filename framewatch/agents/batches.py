"""The worker's stream: Faust's, with batches whose wait starts at their first value.

Faust's `take(max_, within)` starts its timer when the loop asks for the next batch, so a value that arrives just
after that waits the whole window, plus the handling of the batch before it when it arrived during that. Here the
window starts at the batch's first record's timestamp (a record `Topology.emit` sent carries its event's
`emitted_at`), or when it arrived if that is earlier (a producer whose clock runs ahead): no value waits longer than
`within` after it was made, the hops to here included, and a full batch goes at once. The buffering and the strict
size are Faust's. Acking is not: `take` acks a batch in a `finally`, so a batch whose body was cancelled (the worker
stopping) or raised is acked and committed unhandled. Here a batch is acked only once the body has asked for the
next: one it did not finish comes again to whoever reads its partition next (the sinks are idempotent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

import faust
from faust.types import ChannelT, EventT
from mode.utils.futures import notify

T = TypeVar("T")


class WorkerStream(faust.Stream[T]):
    async def batches(self, size: int, within: float) -> AsyncIterator[list[T]]:
        """Lists of at most `size` values, each handed on when full or `within` seconds after its first record's
        timestamp; the values are acknowledged once the body has handled the list, never when it raised or was
        cancelled."""
        buffer: list[T] = []
        events: list[EventT] = []
        first_at = 0.0
        arrived, full, consumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        consuming: asyncio.Future[None] | None = None

        async def add(value: T) -> T:
            nonlocal consuming, first_at
            arrived_at = time.time()
            if consuming is not None:  # the body is handling the last batch: this value opens the next one
                try:
                    await consuming
                finally:
                    consuming = None
            event = self.current_event
            if event is None:
                raise RuntimeError("a batch value without its event")
            if not buffer:
                first_at = min(arrived_at, event.message.timestamp)
            buffer.append(value)
            events.append(event)
            arrived.set()
            if len(buffer) >= size:
                full.set()
                consumed.clear()
                await self.wait(consumed)  # type: ignore[arg-type]  # mode accepts anything with .wait()
            return value

        acks_before = self.enable_acks
        self.enable_acks = False
        self.add_processor(add)
        self._enable_passive(cast(ChannelT, aiter(self.channel)))
        try:
            while not self.should_stop:
                await self.wait_for_stopped(arrived)  # type: ignore[arg-type]
                left = within - (time.time() - first_at)
                if buffer and left > 0:
                    await self.wait_for_stopped(full, timeout=left)  # type: ignore[arg-type]
                if not buffer:
                    continue
                consuming = self.loop.create_future()
                handled = False
                try:
                    yield list(buffer)
                    handled = True
                finally:
                    buffer.clear()
                    for event in events if handled else ():
                        await self.ack(event)
                    events.clear()
                    notify(consuming)
                    arrived.clear()
                    full.clear()
                    consumed.set()
        finally:
            self.enable_acks = acks_before
            self._processors.remove(add)


def batches(stream: faust.StreamT[Any], size: int, within: float) -> AsyncIterator[list[Any]]:
    """`WorkerStream.batches` of an agent's stream (the app makes every stream a WorkerStream)."""
    if not isinstance(stream, WorkerStream):
        raise TypeError(f"{type(stream).__name__} is not a WorkerStream: create the app with Stream=WorkerStream")
    return stream.batches(size, within)
