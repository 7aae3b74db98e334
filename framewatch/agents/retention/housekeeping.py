"""Housekeeping, run rarely: the reconciliation sweep for frame objects nothing will delete, and the maximum age
of alert rows and images.

In steady state retention works from events and never lists the store. A crash can still leave frame objects
behind (an upload whose event never left, deletions pending in retention's grace). The sweep lists frames/ and
deletes what is older than any frame can legitimately be, page by page with a pause so the store is not flooded,
and reports how many orphans it found.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter

from framewatch.clients.database import AlertStore, DatabaseUnavailable
from framewatch.clients.objectstore import ObjectStore, StoreError
from framewatch.schemas.config import Config
from framewatch.schemas.events import RetentionEvent

log = logging.getLogger("framewatch.housekeeping")

ORPHANS = Counter("framewatch_housekeeping_orphans_deleted_total", "Frame objects the sweep found and deleted")
SWEEPS = Counter("framewatch_housekeeping_sweeps_total", "Reconciliation sweeps run", ["result"])
ALERTS_EXPIRED = Counter("framewatch_housekeeping_alerts_expired_total", "Alert rows and images past their max age")

ORPHAN_AFTER_S = 600  # far beyond max_frame_age_ms + infer timeout + retention grace: such a frame has no future
PAGE = 1000
PAUSE_S = 0.2


class Housekeeping:
    def __init__(self, config: Config, store: ObjectStore, alerts: AlertStore) -> None:
        self.store = store
        self.alerts = alerts
        self.bucket = store.bucket
        extraction, analysis = config.frame_extractor, config.ai_analysis
        self.orphan_after_s = (ORPHAN_AFTER_S if analysis.save_only_with_detection
                               else extraction.max_frame_age_sec or None)
        self.alert_max_age = timedelta(days=analysis.alert_max_age_days) if analysis.alert_max_age_days else None

    async def run(self) -> list[RetentionEvent]:
        events = await self.sweep_frames(self.orphan_after_s) if self.orphan_after_s else []
        if self.alert_max_age is not None:
            events += await self.expire_alerts(datetime.now(UTC) - self.alert_max_age)
        return events

    async def sweep_frames(self, older_than_s: float) -> list[RetentionEvent]:
        before = datetime.now(UTC) - timedelta(seconds=older_than_s)
        try:
            found = await self.store.list_keys(self.store.key("frames") + "/", modified_before=before)
            refused: dict[str, str] = {}
            for start in range(0, len(found), PAGE):
                refused |= await self.store.delete_many(found[start:start + PAGE])
                await asyncio.sleep(PAUSE_S)
            orphans = [key for key in found if key not in refused]
        except StoreError as error:
            SWEEPS.labels("failed").inc()
            log.warning("reconciliation sweep failed, next one will retry: %s", error)
            return []
        SWEEPS.labels("ok").inc()
        ORPHANS.inc(len(orphans))
        log.info("reconciliation sweep: %d orphan frame objects older than %.0fs deleted", len(orphans), older_than_s)
        return [RetentionEvent(bucket=self.bucket, object_key=key, task_id=_task_of(key), reason="orphan")
                for key in orphans]

    async def expire_alerts(self, before: datetime) -> list[RetentionEvent]:
        events: list[RetentionEvent] = []
        try:
            while expired := await self.alerts.expire(before, PAGE):
                await self.store.delete_many([key for _, key in expired])
                events += [RetentionEvent(bucket=self.bucket, object_key=key, task_id=task_id, reason="alert_max_age")
                           for task_id, key in expired]
                ALERTS_EXPIRED.inc(len(expired))
                if len(expired) < PAGE:
                    break
                await asyncio.sleep(PAUSE_S)
        except (StoreError, DatabaseUnavailable) as error:
            log.warning("alert expiry stopped, next run will go on: %s", error)
        return events


def _task_of(key: str) -> str:
    """frames/<output_path>/<day>/<file> -> <output_path>"""
    parts = key.split("frames/", 1)[-1].split("/")
    return parts[0] if len(parts) > 1 else ""
