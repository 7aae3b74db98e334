"""Retention: a frame whose outcome is known has no reason to stay under frames/ (an alert's image is copied
to its alert key before the alert's outcome is sent); only a frame whose alert image could not be copied stays,
as that alert's image: its row points at it, and it goes with the row (`housekeeping`), never before.

Frames kept (all of them with `save_only_with_detection = false`) stay within the task's `max_frame_count` and
`max_frame_age_sec`: the oldest go first.

Deletion waits `grace_s` after the outcome. A frame can be delivered twice (a replay after a crash or a
rebalance) and end differently each time, e.g. dropped as stale on the second delivery while the first one's
alert is still on its way through the rules; the grace lets that alert copy the image first.

An outcome is acknowledged only once its frame's object is deleted (or kept), so a worker that dies with
deletions pending reads those outcomes again and deletes the objects then. A store that is down keeps the
deletions pending, retried every `RETRY_S`, with their outcomes unacknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from framewatch.agents.alerts.relocation import IMAGE_NOT_COPIED
from framewatch.clients.objectstore import ObjectStore, StoreError
from framewatch.metrics import Tally
from framewatch.schemas.events import (
    FrameEvent,
    FrameOutcome,
    Outcome,
    RetentionEvent,
    now_ms,
)

log = logging.getLogger("framewatch.retention")

DELETED = Tally("framewatch_retention_deleted_total", "Frame objects deleted", ["reason"])
DELETE_FAILURES = Counter("framewatch_retention_delete_failures_total", "Frame objects that could not be deleted")
PENDING = Gauge("framewatch_retention_pending", "Frame objects waiting out the grace period before deletion")
REFUSED = Counter("framewatch_retention_refused_total",
                  "Outcomes naming an object outside this deployment's frames/ (left alone)")
KEPT = Gauge("framewatch_retention_kept", "Frame objects kept (bounded by max_frame_count and max_frame_age_sec)")

GRACE_S = 5.0
RETRY_S = 2.0

Ack = Callable[[], Awaitable[object]]


async def no_ack() -> None:
    """A deletion with no outcome waiting on it (a kept frame evicted by the task's bounds)."""


@dataclass(frozen=True)
class Deletion:
    frame: FrameEvent
    reason: str
    ack: Ack = no_ack  # acknowledges the outcome that asked for it, once the object is gone


@dataclass(frozen=True)
class Deleted:
    event: RetentionEvent | None  # None: the store refused to delete it
    acks: list[Ack]


class Retention:
    """Deletes frame objects as their outcomes arrive, and bounds the frames it keeps (when frames are kept at all:
    `save_only_with_detection = false`) by count per task and by age."""

    def __init__(self, store: ObjectStore, save_only_with_detection: bool, limit_for: Callable[[str], int],
                 max_age_s: int, grace_s: float = GRACE_S) -> None:
        self.store = store
        self.save_only_with_detection = save_only_with_detection
        self.limit_for = limit_for
        self.max_age_s = max_age_s
        self.grace_s = grace_s
        self._pending: deque[tuple[float, Deletion]] = deque()
        self._kept: dict[str, deque[FrameEvent]] = {}

    async def on_outcome(self, outcome: FrameOutcome, ack: Ack) -> None:
        """Schedules the deletion of an ended frame's object (`ack` is called once it is gone), or keeps the
        frame within the task's bounds (and calls `ack` now)."""
        frame = outcome.frame
        if not self.store.holds_frame(frame.bucket, frame.object_key):
            REFUSED.inc()
            log.error("not deleting %s/%s for frame %s: not a frame object of this deployment", frame.bucket,
                      frame.object_key, frame.frame_id)
            await ack()
        elif outcome.outcome is Outcome.ALERT and outcome.reason == IMAGE_NOT_COPIED:
            await ack()  # the alert's image now: neither deleted nor counted against the task's kept frames
        elif not self.save_only_with_detection:
            self._keep(outcome.frame)
            await ack()
        else:
            reason = f"{outcome.outcome.value}:{outcome.reason}" if outcome.reason else outcome.outcome.value
            self._schedule(Deletion(outcome.frame, reason, ack))
        PENDING.set(len(self._pending))

    def _keep(self, frame: FrameEvent) -> None:
        kept = self._kept.setdefault(frame.task_id, deque())
        kept.append(frame)
        limit = self.limit_for(frame.task_id)
        while limit and len(kept) > limit:
            self._schedule(Deletion(kept.popleft(), "max_frame_count"))
        KEPT.set(sum(len(k) for k in self._kept.values()))

    def _schedule(self, deletion: Deletion, after_s: float | None = None) -> None:
        self._pending.append((time.monotonic() + (self.grace_s if after_s is None else after_s), deletion))

    def _expire_kept(self) -> None:
        if not self.max_age_s:
            return
        horizon = now_ms() - self.max_age_s * 1000
        for kept in self._kept.values():
            while kept and kept[0].captured_at < horizon:
                self._schedule(Deletion(kept.popleft(), "max_age"))
        KEPT.set(sum(len(k) for k in self._kept.values()))

    async def delete_due(self) -> list[Deleted]:
        """Deletes, in one request, the objects whose grace has passed; never raises. What it returns is deleted:
        record it, then call its acks. An object the store refused to delete is acknowledged all the same (and
        left to the reconciliation sweep); a store that cannot be reached keeps everything pending."""
        self._expire_kept()
        now = time.monotonic()
        due: dict[str, list[Deletion]] = {}
        while self._pending and self._pending[0][0] <= now:
            deletion = self._pending.popleft()[1]
            due.setdefault(deletion.frame.object_key, []).append(deletion)
        if not due:
            return []
        try:
            refused = await self.store.delete_many(list(due))
        except StoreError as error:
            DELETE_FAILURES.inc(len(due))
            log.warning("%d frames not deleted yet, retrying in %.0fs: %s", len(due), RETRY_S, error)
            for deletions in due.values():
                for deletion in deletions:
                    self._schedule(deletion, after_s=RETRY_S)
            return []
        finally:
            PENDING.set(len(self._pending))
        for key, reason in refused.items():
            DELETE_FAILURES.inc()
            log.warning("frame object %s not deleted: %s", key, reason)
        deleted = []
        for key, deletions in due.items():
            first = deletions[0]
            event = None
            if key not in refused:
                DELETED.labels(first.reason.split(":")[0]).inc()
                event = RetentionEvent(bucket=first.frame.bucket, object_key=key, task_id=first.frame.task_id,
                                       reason=first.reason)
            deleted.append(Deleted(event, [d.ack for d in deletions]))
        return deleted
