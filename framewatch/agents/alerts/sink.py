"""The alert sink: store a batch of alerts (or of count windows, or of clips) in PostgreSQL, retrying until it is committed.

`stream.take` acknowledges its batch when the loop body returns *or raises*, so `store` never raises: it retries
with capped backoff while the database is down, and only returns once the batch is committed. A batch that
PostgreSQL refuses for its data (a poison record: retrying cannot help) is written again record by record; each
record refused goes to `reject` (a dead letter, with PostgreSQL's reason), the others are stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

from framewatch.clients.database import AlertStore, DatabaseUnavailable, DataRejected
from framewatch.metrics import Tally
from framewatch.retry import Backoff, logged
from framewatch.schemas.events import AlertEvent, ClipReady, CountWindow, Event

log = logging.getLogger("framewatch.sink")

BATCH_SIZE = Histogram("framewatch_sink_batch_size", "Alerts per database write", buckets=(1, 5, 10, 25, 50, 100, 250))
WRITE_SECONDS = Histogram("framewatch_sink_write_seconds", "Time to commit one batch",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
ALERTS_STORED = Tally("framewatch_sink_alerts_stored_total", "Alerts newly stored")
ALERTS_DUPLICATE = Counter("framewatch_sink_alerts_duplicate_total", "Alerts already stored (replays)")
WRITE_FAILURES = Counter("framewatch_sink_write_failures_total", "Failed attempts to write a batch")
DATABASE_UP = Gauge("framewatch_sink_database_up", "0 while the sink cannot write to the database")

SHADOW_ALERTS_STORED = Counter("framewatch_sink_shadow_alerts_stored_total",
                               "Candidates' alerts written to shadow_alerts (replays included)")
CLIPS_STORED = Counter("framewatch_sink_clips_stored_total", "Alerts' clips (or why they have none) recorded")
COUNT_WINDOWS_STORED = Counter("framewatch_sink_count_windows_stored_total", "Closed count minutes written")
REJECTED = Counter("framewatch_sink_rejected_total", "Records PostgreSQL refused for their data (dead-lettered)",
                   ["kind"])

WRITE_BACKOFF = Backoff(first_s=0.2, max_s=10.0)
T = TypeVar("T")
R = TypeVar("R", bound=Event)
Reject = Callable[[Event, str], Awaitable[None]]


class AlertSink:
    def __init__(self, store: AlertStore, reject: Reject) -> None:
        self.store = store
        self.reject = reject

    async def store_batch(self, alerts: list[AlertEvent]) -> list[AlertEvent]:
        """Stores the batch; returns the alerts now in the database (all but those refused for their data)."""
        if not alerts:
            return []
        unique = list({a.alert_id: a for a in alerts}.values())
        started = time.perf_counter()
        stored, inserted = await self._write(unique, self.store.insert, "alert")
        WRITE_SECONDS.observe(time.perf_counter() - started)
        BATCH_SIZE.observe(len(unique))
        ALERTS_STORED.inc(inserted)
        ALERTS_DUPLICATE.inc(len(stored) - inserted)
        return stored

    async def store_shadow(self, alerts: list[AlertEvent]) -> None:
        """Stores candidates' alerts in shadow_alerts (replays merge, as in `store_batch`)."""
        if alerts:
            stored, _ = await self._write(list({a.alert_id: a for a in alerts}.values()), self.store.insert_shadow,
                                          "shadow alert")
            SHADOW_ALERTS_STORED.inc(len(stored))

    async def store_counts(self, windows: list[CountWindow]) -> None:
        if windows:
            stored, _ = await self._write(windows, self.store.store_counts, "count window")
            COUNT_WINDOWS_STORED.inc(len(stored))

    async def store_clips(self, clips: list[ClipReady]) -> list[ClipReady]:
        """Records the clips; returns those PostgreSQL took (the rest are dead-lettered)."""
        if not clips:
            return []
        stored, _ = await self._write(clips, self.store.store_clips, "clip")
        CLIPS_STORED.inc(len(stored))
        return stored

    async def _write(self, records: list[R], write: Callable[[list[R]], Awaitable[int]],
                     kind: str) -> tuple[list[R], int]:
        """Writes the records in one statement, or one by one once PostgreSQL refuses the batch for its data.
        Returns the records written and the count the statements reported (new alerts, for the alert insert)."""
        try:
            return records, await self._until_committed(lambda: write(records), f"{kind} batch of {len(records)}")
        except DataRejected as error:
            if len(records) == 1:
                REJECTED.labels(kind).inc()
                log.error("%s %s dead-lettered: %s", kind, records[0].event_id, error)
                await self.reject(records[0], str(error))
                return [], 0
        written: list[R] = []
        reported = 0
        for record in records:
            done, count = await self._write([record], write, kind)
            written += done
            reported += count
        return written, reported

    async def _until_committed(self, write: Callable[[], Awaitable[T]], what: str) -> T:
        def database_down() -> None:
            WRITE_FAILURES.inc()
            DATABASE_UP.set(0)

        result = await WRITE_BACKOFF.call(write, lambda error: isinstance(error, DatabaseUnavailable),
                                          logged(log, f"storing the {what}", database_down))
        DATABASE_UP.set(1)
        return result
