"""Relocation: move an alert's image from frames/ to its alert key, with retries; report what still fails."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from framewatch.schemas.events import AlertEvent
from framewatch.streams.objectstore import ObjectStore, StoreError

log = logging.getLogger("framewatch.relocation")

MOVED = Counter("framewatch_relocation_moved_total", "Alert images moved")
RETRIES = Counter("framewatch_relocation_retries_total", "Move attempts that failed and were retried")
DEAD = Counter("framewatch_relocation_dead_letters_total", "Alert images that could not be moved")


class Relocator:
    def __init__(self, store: ObjectStore, attempts: int = 3, first_backoff_s: float = 0.5) -> None:
        self.store = store
        self.attempts = attempts
        self.first_backoff_s = first_backoff_s

    async def relocate(self, alert: AlertEvent) -> str | None:
        """Move the image; None on success, else the reason it could not be moved."""
        error: StoreError | None = None
        for attempt in range(self.attempts + 1):
            try:
                await self.store.move(alert.frame.object_key, alert.image_key)
                MOVED.inc()
                return None
            except StoreError as failure:
                error = failure
                if attempt < self.attempts:
                    RETRIES.inc()
                    await asyncio.sleep(self.first_backoff_s * 2 ** attempt)
        DEAD.inc()
        log.error("alert %s: image not moved after %d retries: %s", alert.alert_id, self.attempts, error)
        return str(error)
