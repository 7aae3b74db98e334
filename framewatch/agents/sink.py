"""The alert sink: store a batch of alerts (or of count windows) in PostgreSQL, retrying until it is committed.

`stream.take` acknowledges its batch when the loop body returns *or raises*, so `store` never raises: it retries
with capped backoff while the database is down, and only returns once the batch is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

from framewatch.agents.database import AlertStore, DatabaseUnavailable
from framewatch.schemas.events import AlertEvent, CountWindow

log = logging.getLogger("framewatch.sink")

BATCH_SIZE = Histogram("framewatch_sink_batch_size", "Alerts per database write", buckets=(1, 5, 10, 25, 50, 100, 250))
WRITE_SECONDS = Histogram("framewatch_sink_write_seconds", "Time to commit one batch",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
ALERTS_STORED = Counter("framewatch_sink_alerts_stored_total", "Alerts newly stored")
ALERTS_DUPLICATE = Counter("framewatch_sink_alerts_duplicate_total", "Alerts already stored (replays)")
WRITE_FAILURES = Counter("framewatch_sink_write_failures_total", "Failed attempts to write a batch")
DATABASE_UP = Gauge("framewatch_sink_database_up", "0 while the sink cannot write to the database")

COUNT_WINDOWS_STORED = Counter("framewatch_sink_count_windows_stored_total", "Closed count minutes written")

MAX_BACKOFF_S = 10.0
T = TypeVar("T")


class AlertSink:
    def __init__(self, store: AlertStore) -> None:
        self.store = store

    async def store_batch(self, alerts: list[AlertEvent]) -> None:
        if not alerts:
            return
        unique = list({a.alert_id: a for a in alerts}.values())
        started = time.perf_counter()
        inserted = await self._until_committed(lambda: self.store.insert(unique), f"alert batch of {len(unique)}")
        WRITE_SECONDS.observe(time.perf_counter() - started)
        BATCH_SIZE.observe(len(unique))
        ALERTS_STORED.inc(inserted)
        ALERTS_DUPLICATE.inc(len(alerts) - inserted)

    async def store_counts(self, windows: list[CountWindow]) -> None:
        if windows:
            await self._until_committed(lambda: self.store.store_counts(windows), f"{len(windows)} count windows")
            COUNT_WINDOWS_STORED.inc(len(windows))

    async def _until_committed(self, write: Callable[[], Awaitable[T]], what: str) -> T:
        backoff = 0.2
        while True:
            try:
                result = await write()
            except DatabaseUnavailable as error:
                WRITE_FAILURES.inc()
                DATABASE_UP.set(0)
                log.warning("%s not stored yet, retrying in %.1fs: %s", what, backoff, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            DATABASE_UP.set(1)
            return result
