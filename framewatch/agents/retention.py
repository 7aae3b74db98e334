"""Retention: a frame whose outcome is known and is not an alert has no reason to stay in the store."""

from __future__ import annotations

import logging

from prometheus_client import Counter

from framewatch.schemas.events import FrameOutcome, Outcome, RetentionEvent
from framewatch.streams.objectstore import ObjectStore, StoreError

log = logging.getLogger("framewatch.retention")

DELETED = Counter("framewatch_retention_deleted_total", "Frame objects deleted", ["reason"])
DELETE_FAILURES = Counter("framewatch_retention_delete_failures_total", "Frame objects that could not be deleted")


class Retention:
    def __init__(self, store: ObjectStore, save_only_with_detection: bool) -> None:
        self.store = store
        self.save_only_with_detection = save_only_with_detection

    async def on_outcome(self, outcome: FrameOutcome) -> RetentionEvent | None:
        if outcome.outcome is Outcome.ALERT or not self.save_only_with_detection:
            return None
        frame = outcome.frame
        try:
            await self.store.delete(frame.object_key)
        except StoreError as error:
            DELETE_FAILURES.inc()
            log.warning("frame %s not deleted (the reconciliation sweep will find it): %s", frame.frame_id, error)
            return None
        reason = f"{outcome.outcome.value}:{outcome.reason}" if outcome.reason else outcome.outcome.value
        DELETED.labels(outcome.outcome.value).inc()
        return RetentionEvent(bucket=frame.bucket, object_key=frame.object_key, task_id=frame.task_id, reason=reason)
