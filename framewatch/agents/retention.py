"""Retention: a frame whose outcome is known has no reason to stay under frames/ (an alert's image is copied
to its alert key before the alert's outcome is sent); only a frame whose alert image could not be copied stays.

Deletion waits `grace_s` after the outcome. A frame can be delivered twice (a replay after a crash or a
rebalance) and end differently each time, e.g. dropped as stale on the second delivery while the first one's
alert is still on its way through the rules; the grace lets that alert copy the image first. Deletions still
pending when the worker dies are left to the reconciliation sweep.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from prometheus_client import Counter, Gauge

from framewatch.agents.relocation import IMAGE_NOT_COPIED
from framewatch.schemas.events import FrameOutcome, Outcome, RetentionEvent
from framewatch.streams.objectstore import ObjectStore, StoreError

log = logging.getLogger("framewatch.retention")

DELETED = Counter("framewatch_retention_deleted_total", "Frame objects deleted", ["reason"])
DELETE_FAILURES = Counter("framewatch_retention_delete_failures_total", "Frame objects that could not be deleted")
PENDING = Gauge("framewatch_retention_pending", "Frame objects waiting out the grace period before deletion")

GRACE_S = 5.0


class Retention:
    def __init__(self, store: ObjectStore, save_only_with_detection: bool, grace_s: float = GRACE_S) -> None:
        self.store = store
        self.save_only_with_detection = save_only_with_detection
        self.grace_s = grace_s
        self._pending: deque[tuple[float, FrameOutcome]] = deque()

    def on_outcomes(self, outcomes: list[FrameOutcome]) -> None:
        """Schedules the deletion of every ended frame's object (not the ones whose alert image is not copied)."""
        if not self.save_only_with_detection:
            return
        due = time.monotonic() + self.grace_s
        self._pending.extend((due, o) for o in outcomes
                             if not (o.outcome is Outcome.ALERT and o.reason == IMAGE_NOT_COPIED))
        PENDING.set(len(self._pending))

    async def delete_due(self) -> list[RetentionEvent]:
        """Deletes, in one request, the objects whose grace has passed; never raises."""
        now = time.monotonic()
        ended: dict[str, FrameOutcome] = {}
        while self._pending and self._pending[0][0] <= now:
            outcome = self._pending.popleft()[1]
            ended[outcome.frame.object_key] = outcome
        PENDING.set(len(self._pending))
        if not ended:
            return []
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
