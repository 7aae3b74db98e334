"""From a camera's reader thread to the event loop: a bounded hand-off that never blocks the reader.

When uploads fall behind, the oldest waiting sample gives way to the newest (it would be the stalest frame sent),
and the reader is told so it can count it. A file read as fast as possible is not live: there the reader waits
for room instead (`wait_for_room`), so every sample is sent.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    def __init__(self, loop: asyncio.AbstractEventLoop, size: int,
                 wait_for_room: threading.Event | None = None) -> None:
        """`wait_for_room`: the reader waits while the hand-off is full, until this event (its stop) is set."""
        self._loop = loop
        self._items: deque[T] = deque()
        self._size = size
        self._stop = wait_for_room
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, item: T) -> T | None:
        """From the thread: queue `item`; returns the sample it pushed out, if the hand-off was full."""
        with self._lock:
            while self._stop is not None and len(self._items) >= self._size and not self._stop.is_set():
                self._room.wait(0.1)
            pushed_out = self._items.popleft() if len(self._items) >= self._size else None
            self._items.append(item)
        self._wake()
        return pushed_out

    def close(self) -> None:
        """From the thread: nothing more will come."""
        with self._lock:
            self._closed = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is gone: the extractor is shutting down
            pass

    async def get(self) -> T | None:
        """The oldest waiting item; None once the thread has closed the hand-off and everything is taken."""
        while True:
            with self._lock:
                if self._items:
                    self._room.notify()
                    return self._items.popleft()
                if self._closed:
                    return None
                self._ready.clear()
            await self._ready.wait()
