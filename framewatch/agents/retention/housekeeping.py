"""Housekeeping, run rarely: the reconciliation sweep for frame and clip objects nothing will delete, and the
maximum age of alert rows, their images and their clips.

In steady state retention works from events and never lists the store. A crash can still leave frame objects
behind (an upload whose event never left, deletions pending in retention's grace). The sweep lists frames/ and
deletes what is older than any frame can legitimately be, page by page with a pause so the store is not flooded,
and reports how many orphans it found.

It never deletes a frame something still needs, however old:
- an alert's image: a frame whose image could not be copied is the image of its alert, whose row points at it
  (deleted with the row at the alert's maximum age);
- a frame the workers have not finished with: named by a record their consumer group has not committed on
  fw.frames (a lossless recording's backlog waits there for inference, hours if need be), fw.detections (the
  rules copy the alert image from it) or fw.alerts (an alert not stored yet whose image is the frame).

Why reading those records is the cheap sound way: the group's committed offsets say exactly what is done, because
an agent acks a record only once the broker has confirmed its outputs (docs/architecture.md), and Faust commits
no further than the oldest record still in flight. So a frame event that is committed has its detection (or its
outcome) on fw.detections already, a committed detection its alert on fw.alerts, a committed alert its row in
PostgreSQL: reading the backlogs in that order, then the rows, no needed frame slips between two reads. The
backlogs are small: a lossless camera sends only while it is less than 32 frames ahead of inference, and live
frames are committed as soon as their results are out. An age bound instead (keep everything newer than the
oldest unprocessed frame event) costs a read per partition but is sound only for fw.frames: a detection can be
made hours after its frame's upload. When the backlogs together exceed `max_backlog` records (the workers far
behind), the sweep deletes nothing and waits for its next run; so it does when Kafka or PostgreSQL cannot say.

Clips (clips/) go with their alerts: an expired alert's clip row with it, and the clip object once no row names it
(several alerts may share one clip). The sweep deletes a clip older than an hour that no alert_clips row names and
no record the workers have yet to commit on fw.clips announces: an extractor killed between upload and
announcement, a ClipReady PostgreSQL refused, a deletion the store refused after the rows had gone.

Camera stills (snapshots/<namespace>/<camera>.jpg, `streams/snapshots.py`) are rewritten every few seconds while
their camera streams; the sweep deletes those not rewritten for a day (the camera removed, disabled or failing for
that long), this namespace's only.

Deployments of several namespaces may share the database: expiry deletes only this namespace's rows, but whether a
row still names an object is asked of every namespace's rows in this bucket, since namespaces may share a bucket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import orjson
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from framewatch.clients.bus import backlog, read_backlog
from framewatch.clients.database import AlertStore, DatabaseUnavailable, Expired
from framewatch.clients.objectstore import ObjectStore, StoreError, snapshot_folder
from framewatch.errors import FramewatchError, Unreachable
from framewatch.schemas.config import Config
from framewatch.schemas.events import RetentionEvent
from framewatch.schemas.topics import ALERTS, CLIPS, DETECTIONS, FRAMES, TopicSpec

log = logging.getLogger("framewatch.housekeeping")

ORPHANS = Counter("framewatch_housekeeping_orphans_deleted_total", "Frame objects the sweep found and deleted")
SWEEPS = Counter("framewatch_housekeeping_sweeps_total", "Reconciliation sweeps run, per folder", ["folder", "result"])
ALERTS_EXPIRED = Counter("framewatch_housekeeping_alerts_expired_total", "Alert rows and images past their max age")
CLIPS_DELETED = Counter("framewatch_retention_clips_deleted_total", "Clip objects deleted: with the last alert "
                        "naming them (alert_max_age), or found by the sweep with none (orphan)", ["reason"])
SNAPSHOTS_DELETED = Counter("framewatch_retention_snapshots_deleted_total",
                            "Camera stills not rewritten for a day (their camera gone), deleted by the sweep")
CLIPS_REFUSED = Counter("framewatch_retention_clips_refused_total",
                        "Expired clip rows naming an object outside this deployment's clips/ (left alone)")

ORPHAN_AFTER_S = 600  # far beyond max_frame_age_ms + infer timeout + retention grace: such a frame has no future
# a clip is uploaded before its ClipReady is sent: an hour is far beyond the extractor producer's delivery timeout
CLIP_ORPHAN_AFTER_S = 3600
SNAPSHOT_STALE_AFTER_S = 86400  # a streaming camera's still is rewritten every snapshot_interval_sec
PAGE = 1000
PAUSE_S = 0.2
YIELD_EVERY = 1000  # backlog records read between two turns of the event loop
MAX_BACKLOG = 50_000  # records read to learn what the workers still need: a few MB
PIPELINE_TOPICS = (FRAMES, DETECTIONS, ALERTS)  # in the order a frame meets them

KeysAmong = Callable[[list[str]], Awaitable[set[str]]]


class SweepPostponed(FramewatchError, RuntimeError):
    """The sweep cannot tell which old objects the workers still need (their backlog is too long to read)."""


class Housekeeping:
    def __init__(self, config: Config, store: ObjectStore, alerts: AlertStore, max_backlog: int = MAX_BACKLOG,
                 clip_orphan_after_s: float = CLIP_ORPHAN_AFTER_S,
                 snapshot_stale_after_s: float = SNAPSHOT_STALE_AFTER_S) -> None:
        self.config = config
        self.store = store
        self.alerts = alerts
        self.bucket = store.bucket
        extraction, analysis = config.frame_extractor, config.ai_analysis
        self.orphan_after_s = (ORPHAN_AFTER_S if analysis.save_only_with_detection
                               else extraction.max_frame_age_sec or None)
        self.clip_orphan_after_s = clip_orphan_after_s
        self.snapshot_stale_after_s = snapshot_stale_after_s
        self.snapshots = snapshot_folder(config.framewatch.namespace)
        self.alert_max_age = timedelta(days=analysis.alert_max_age_days) if analysis.alert_max_age_days else None
        self.max_backlog = max_backlog

    async def run(self) -> list[RetentionEvent]:
        events = await self.sweep_frames(self.orphan_after_s) if self.orphan_after_s else []
        events += await self.sweep_clips(self.clip_orphan_after_s)
        events += await self.sweep_snapshots(self.snapshot_stale_after_s)
        if self.alert_max_age is not None:
            events += await self.expire_alerts(datetime.now(UTC) - self.alert_max_age)
        return events

    async def sweep_frames(self, older_than_s: float) -> list[RetentionEvent]:
        deleted = await self.sweep("frames", older_than_s, self.frames_needed)
        ORPHANS.inc(len(deleted))
        return [self.retention_event(key, "frames", "orphan") for key in deleted]

    async def sweep_clips(self, older_than_s: float) -> list[RetentionEvent]:
        deleted = await self.sweep("clips", older_than_s, self.clips_needed)
        CLIPS_DELETED.labels("orphan").inc(len(deleted))
        return [self.retention_event(key, "clips", "orphan") for key in deleted]

    async def sweep_snapshots(self, older_than_s: float) -> list[RetentionEvent]:
        """This namespace's stills not rewritten for `older_than_s`; each event names the still's camera."""
        deleted = await self.sweep(self.snapshots, older_than_s, not_snapshots)
        SNAPSHOTS_DELETED.inc(len(deleted))
        return [RetentionEvent(bucket=self.bucket, object_key=key, reason="stale",
                               task_id=key.rsplit("/", 1)[-1].removesuffix(".jpg")) for key in deleted]

    async def sweep(self, folder: str, older_than_s: float, needed: KeysAmong) -> list[str]:
        """Deletes the objects under `folder`/ older than `older_than_s` that `needed` does not keep; returns their
        keys (none when the store or what the workers still need cannot be read)."""
        before = datetime.now(UTC) - timedelta(seconds=older_than_s)
        try:
            found = await self.store.list_keys(self.store.key(folder) + "/", modified_before=before)
            kept = await needed(found) if found else set()
            deleted = await self.delete_paced([key for key in found if key not in kept])
        except StoreError as error:
            SWEEPS.labels(folder, "failed").inc()
            log.warning("reconciliation sweep of %s/ failed, next one will retry: %s", folder, error)
            return []
        except (SweepPostponed, Unreachable, KafkaError, LookupError, TimeoutError) as error:
            SWEEPS.labels(folder, "postponed").inc()
            log.warning("reconciliation sweep of %s/ postponed, nothing deleted: what the workers still need is not "
                        "known (%s)", folder, error or type(error).__name__)
            return []
        SWEEPS.labels(folder, "ok").inc()
        log.info("reconciliation sweep: %d orphan objects under %s/ older than %.0fs deleted, %d still needed kept",
                 len(deleted), folder, older_than_s, len(kept))
        return deleted

    async def delete_paced(self, keys: list[str]) -> list[str]:
        """Deletes the keys a page at a time, pausing between pages; those the store deleted."""
        refused: dict[str, str] = {}
        for start in range(0, len(keys), PAGE):
            refused |= await self.store.delete_many(keys[start:start + PAGE])
            await asyncio.sleep(PAUSE_S)
        return [key for key in keys if key not in refused]

    async def frames_needed(self, candidates: list[str]) -> set[str]:
        """The candidates the workers have yet to finish with, then those alert rows keep as their image."""
        return await self.needed(candidates, PIPELINE_TOPICS, partial(self.alerts.images_among, self.bucket))

    async def clips_needed(self, candidates: list[str]) -> set[str]:
        """The candidates a ClipReady not yet stored announces, then those alert_clips rows name; and anything
        under clips/ that is not a clip of ours."""
        needed = await self.needed(candidates, (CLIPS,), partial(self.alerts.clips_among, self.bucket))
        return needed | {key for key in candidates if not self.store.holds_clip(self.bucket, key)}

    async def needed(self, candidates: list[str], topics: tuple[TopicSpec, ...], named_by_rows: KeysAmong) -> set[str]:
        """The candidates named by the workers' backlogs on `topics`, read first, then those named by rows."""
        waiting = await self.named_by_backlogs(topics)
        kept = {key for key in candidates if key in waiting}
        for start in range(0, len(candidates), PAGE):
            kept |= await named_by_rows(candidates[start:start + PAGE])
        return kept

    async def named_by_backlogs(self, topics: tuple[TopicSpec, ...]) -> set[str]:
        """The objects named by the records the workers' group has not committed, topic by topic in the order
        given; SweepPostponed when they are more than `max_backlog`."""
        named: set[str] = set()
        left = self.max_backlog
        for spec in topics:
            ranges = await backlog(self.config, self.config.worker_group, self.config.topic(spec.name))
            left -= sum(end - first for first, end in ranges.values())
            if left < 0:
                raise SweepPostponed(f"more than {self.max_backlog} records not processed yet")
            for count, record in enumerate(await read_backlog(self.config, ranges), 1):
                named |= objects_named(spec, record.value)
                if count % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # the leader's agents go on meanwhile
        return named

    async def expire_alerts(self, before: datetime) -> list[RetentionEvent]:
        """Deletes the alerts captured before a time, a page at a time: their rows, images and clips."""
        events: list[RetentionEvent] = []
        try:
            while True:
                expired = await self.alerts.expire(before, PAGE)
                events += await self.delete_expired(expired)
                ALERTS_EXPIRED.inc(len(expired.images))
                if len(expired.images) < PAGE:
                    break
        except (StoreError, DatabaseUnavailable) as error:
            log.warning("alert expiry stopped, next run will go on: %s", error)
        return events

    async def delete_expired(self, expired: Expired) -> list[RetentionEvent]:
        """The objects of a page of expired alerts; a clip the store refuses to delete is left to the sweep."""
        clips = [key for bucket, key in expired.clips if self.store.holds_clip(bucket, key)]
        if refused := len(expired.clips) - len(clips):
            CLIPS_REFUSED.inc(refused)
            log.warning("alert expiry: %d clip rows named objects outside %s/ in %s, left alone",
                        refused, self.store.key("clips"), self.bucket)
        deleted = set(await self.delete_paced([key for _, key in expired.images] + clips))
        CLIPS_DELETED.labels("alert_max_age").inc(len(deleted.intersection(clips)))
        return ([RetentionEvent(bucket=self.bucket, object_key=key, task_id=task_id, reason="alert_max_age")
                 for task_id, key in expired.images if key in deleted]
                + [self.retention_event(key, "clips", "alert_max_age") for key in clips if key in deleted])

    def retention_event(self, key: str, folder: str, reason: str) -> RetentionEvent:
        """folder/<output_path>/<day>/<file>: the event names <output_path> as its task."""
        parts = key.split(f"{folder}/", 1)[-1].split("/")
        return RetentionEvent(bucket=self.bucket, object_key=key, task_id=parts[0] if len(parts) > 1 else "",
                              reason=reason)


async def not_snapshots(candidates: list[str]) -> set[str]:
    """What the sweep of stills keeps however old: anything under their folder that is no still."""
    return {key for key in candidates if not key.endswith(".jpg")}


# where a record of each topic names an object: FrameEvent, DetectionEvent, AlertEvent, ClipReady
NAMED_AT = {FRAMES.name: (("object_key",),), DETECTIONS.name: (("frame", "object_key"),),
            ALERTS.name: (("frame", "object_key"), ("image_key",)), CLIPS.name: (("clip_key",),)}


def objects_named(spec: TopicSpec, raw: bytes | None) -> set[str]:
    """The objects a record of fw.frames, fw.detections, fw.alerts or fw.clips names, read as plain JSON: the sweep
    may read tens of thousands on the leader's event loop, and validating each as its model would hold the loop for
    seconds. A record that is not such JSON names nothing (its agent dead-letters it)."""
    try:
        record: object = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        return set()
    named = set()
    for path in NAMED_AT[spec.name]:
        value = record
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, str):
            named.add(value)
    return named
