"""Each camera's recent still, for the dashboard: every `snapshot_interval_sec` the frame a camera has just sent is
copied by the store itself (CopyObject: nothing decoded or uploaded again) to one fixed key per camera,
`snapshots/<namespace>/<camera>.jpg` (`ObjectStore.snapshot_key`), over the one before. Storage is bounded by
construction, one object per camera; the worker's sweep deletes the stills of cameras gone for a day
(agents/retention/housekeeping.py).

The copy runs beside the camera's frames, at most one per camera at a time (one still running when the next is
due is skipped), so a slow or failing store never holds a frame back. A failure is counted and logged once per kind
of error for the whole extractor: a store that is down would otherwise log a line per camera every interval.
"""

from __future__ import annotations

import asyncio
import logging
import time

from minio.error import S3Error
from prometheus_client import Counter

from framewatch.clients.objectstore import ObjectStore, StoreError

log = logging.getLogger("framewatch.extractor")

SNAPSHOTS = Counter("framewatch_extractor_snapshots_total", "Stills refreshed: a camera's latest frame copied to "
                    "its fixed key (ok), or the copy failed (failed)", ["task", "outcome"])


def error_kind(error: StoreError) -> str:
    """The store's error code (AccessDenied, NoSuchKey…), else the class of the transport's error."""
    cause = error.__cause__
    return cause.code if isinstance(cause, S3Error) and cause.code else type(cause).__name__


class Snapshots:
    """The stills of an extractor's cameras: where they go, how often, and the kinds of failure logged so far."""

    def __init__(self, store: ObjectStore, namespace: str, interval_s: float) -> None:
        self.store = store
        self.namespace = namespace
        self.interval_s = interval_s
        self.logged: set[str] = set()

    def of(self, camera_id: str) -> CameraSnapshot:
        return CameraSnapshot(self, camera_id)

    async def copy(self, camera_id: str, frame_key: str) -> None:
        """The frame to the camera's still; never raises (a still is a convenience, the frames are the product)."""
        try:
            await self.store.copy(frame_key, self.store.snapshot_key(self.namespace, camera_id))
        except StoreError as error:
            SNAPSHOTS.labels(camera_id, "failed").inc()
            if (kind := error_kind(error)) not in self.logged:
                self.logged.add(kind)
                log.warning("camera %s: still not refreshed (%s; this kind of failure is logged once, "
                            "framewatch_extractor_snapshots_total{outcome=\"failed\"} counts them all): %s",
                            camera_id, kind, error)
            return
        SNAPSHOTS.labels(camera_id, "ok").inc()


class CameraSnapshot:
    """One camera's still: when the next is due, and the copy under way."""

    def __init__(self, snapshots: Snapshots, camera_id: str) -> None:
        self.snapshots = snapshots
        self.camera_id = camera_id
        self._due_at = 0.0  # monotonic: the camera's first frame makes its first still
        self._copying: asyncio.Task[None] | None = None

    def offer(self, frame_key: str) -> None:
        """The camera has just sent the frame at `frame_key`: it becomes the still when one is due and no copy is
        under way. Returns at once; the copy goes on beside the frames."""
        now = time.monotonic()
        if not self.snapshots.interval_s or now < self._due_at or not self.idle:
            return
        self._due_at = now + self.snapshots.interval_s
        self._copying = asyncio.create_task(self.snapshots.copy(self.camera_id, frame_key),
                                            name=f"snapshot-{self.camera_id}")

    @property
    def idle(self) -> bool:
        return self._copying is None or self._copying.done()

    async def settle(self) -> None:
        """Waits for the copy under way, if any: a stopping camera leaves no task behind."""
        if self._copying is not None:
            await asyncio.wait([self._copying])
