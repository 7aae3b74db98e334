"""Retention: a frame whose outcome is known has no reason to stay under frames/ (an alert's image is copied
to its alert key before the alert's outcome is sent); only a frame whose alert image could not be copied stays."""

from __future__ import annotations

import logging

from prometheus_client import Counter

from framewatch.agents.relocation import IMAGE_NOT_COPIED
from framewatch.schemas.events import FrameOutcome, Outcome, RetentionEvent
from framewatch.streams.objectstore import ObjectStore, StoreError

log = logging.getLogger("framewatch.retention")

DELETED = Counter("framewatch_retention_deleted_total", "Frame objects deleted", ["reason"])
DELETE_FAILURES = Counter("framewatch_retention_delete_failures_total", "Frame objects that could not be deleted")


class Retention:
    def __init__(self, store: ObjectStore, save_only_with_detection: bool) -> None:
        self.store = store
        self.save_only_with_detection = save_only_with_detection

    async def on_outcomes(self, outcomes: list[FrameOutcome]) -> list[RetentionEvent]:
        """Deletes, in one request, the objects of the frames that have ended; never raises."""
        if not self.save_only_with_detection:
            return []
        ended = {o.frame.object_key: o for o in outcomes
                 if not (o.outcome is Outcome.ALERT and o.reason == IMAGE_NOT_COPIED)}
        try:
            refused = await self.store.delete_many(list(ended))
        except StoreError as error:
            DELETE_FAILURES.inc(len(ended))
            log.warning("%d frames not deleted (the reconciliation sweep will find them): %s", len(ended), error)
            return []
        for key, reason in refused.items():
            DELETE_FAILURES.inc()
            log.warning("frame object %s not deleted: %s", key, reason)
        events = []
        for key, outcome in ended.items():
            if key in refused:
                continue
            DELETED.labels(outcome.outcome.value).inc()
            reason = f"{outcome.outcome.value}:{outcome.reason}" if outcome.reason else outcome.outcome.value
            events.append(RetentionEvent(bucket=outcome.frame.bucket, object_key=key, task_id=outcome.frame.task_id,
                                         reason=reason))
        return events
