"""Clip retention against the real object store and database: clips expire with their alerts (a shared one with
the last of them), and the sweep deletes the clip objects nothing names once past their grace."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from framewatch.agents.retention.housekeeping import Housekeeping, objects_named
from framewatch.clients.bus import EventProducer, ensure_topics
from framewatch.clients.database import AlertStore
from framewatch.clients.objectstore import ObjectStore
from framewatch.schemas.config import Config, MinioSettings
from framewatch.schemas.events import AlertEvent, ClipReady, FrameEvent
from framewatch.schemas.topics import CLIPS
from tests.conftest import SAMPLE_JPEG
from tests.test_events import frame
from tests.test_retention import connected, started

SEQ = itertools.count(1)
DAY_MS = 86_400_000
MP4 = b"\x00\x00\x00\x18ftypisom"  # the store keeps any bytes: nothing here plays a clip


def alert(task_id: str, captured_at: int, bucket: str) -> AlertEvent:
    seq = next(SEQ)
    captured = frame(seq, captured_at).model_copy(update={
        "task_id": task_id, "camera_id": task_id, "bucket": bucket,
        "frame_id": FrameEvent.make_id(task_id, captured_at, seq)})
    return AlertEvent(alert_id=AlertEvent.make_id(captured.frame_id, "area_intrusion"), frame=captured,
                      rule="area_intrusion", evidence={},
                      image_key=f"alerts/{task_id}/20261123/{captured_at}-{seq}.jpg")


async def stored_alert(store: ObjectStore, task_id: str, age_days: float) -> AlertEvent:
    made = alert(task_id, int(datetime.now(UTC).timestamp() * 1000 - age_days * DAY_MS), store.bucket)
    await store.put(made.image_key, SAMPLE_JPEG)
    return made


def clip_of(made: AlertEvent, key: str | None) -> ClipReady:
    """The ClipReady an extractor announces for an alert: `key` None when it has no clip."""
    task_id = made.frame.task_id
    return ClipReady(alert_id=made.alert_id, task_id=task_id, camera_id=task_id, bucket=made.frame.bucket,
                     clip_key=key, reason=None if key else "the extractor stopped before the post-roll")


def clips_deleted(reason: str) -> float:
    return REGISTRY.get_sample_value("framewatch_retention_clips_deleted_total", {"reason": reason}) or 0.0


async def test_clips_go_with_their_last_alert_and_the_sweep_takes_orphans_past_their_grace(
        stack_config: Config) -> None:
    """Alerts 40 days old, past `alert_max_age_days` (30), and one a day old. Their clips: one of an old alert
    (goes), one shared by an old and the recent alert (stays), one shared by two old alerts (goes), one whose alert
    was never stored, its row as old (goes); an old alert without a clip. An old alert's row naming an alert image
    as its clip (a forged ClipReady): the row goes, the image stays. Unnamed clip objects: one past the sweep's
    grace (goes); one within it, one past it that a ClipReady the workers have not stored yet announces, and a
    file under clips/ that is no clip (all stay)."""
    await ensure_topics(stack_config)
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    task = "cam-clips"
    old, shared_old, pair_a, pair_b, no_clip, forged = [await stored_alert(store, task, 40) for _ in range(6)]
    recent = await stored_alert(store, task, 1)
    never_stored = alert(task, int(datetime.now(UTC).timestamp() * 1000) - 40 * DAY_MS, store.bucket)
    key = {name: f"clips/{task}/20261123/{name}.mp4" for name in (
        "own", "shared", "pair", "unstored", "orphan", "fresh", "announced")}
    rows = [clip_of(old, key["own"]), clip_of(shared_old, key["shared"]), clip_of(recent, key["shared"]),
            clip_of(pair_a, key["pair"]), clip_of(pair_b, key["pair"]), clip_of(never_stored, key["unstored"]),
            clip_of(no_clip, None), clip_of(forged, recent.image_key)]
    for name in ("own", "shared", "pair", "unstored", "orphan", "announced"):
        await store.put(key[name], MP4, "video/mp4")
    await store.put(f"clips/{task}/notes.txt", b"not a clip", "text/plain")
    before = {reason: clips_deleted(reason) for reason in ("alert_max_age", "orphan")}
    async with started(EventProducer(stack_config)) as producer, \
            connected(AlertStore.of(stack_config)) as alerts:
        await alerts.insert([old, shared_old, pair_a, pair_b, no_clip, forged, recent])
        await alerts.store_clips(rows)
        await alerts.pool.execute("UPDATE alert_clips SET made_at = now() - interval '40 days' WHERE alert_id = $1",
                                  never_stored.alert_id)
        await asyncio.sleep(3.1)  # past the grace of 2 s below: object times have a one-second resolution
        await store.put(key["fresh"], MP4, "video/mp4")
        await producer.send(CLIPS, clip_of(recent, key["announced"]))  # not stored: no worker reads fw.clips here
        events = await Housekeeping(stack_config, store, alerts, clip_orphan_after_s=2).run()
        remaining = await alerts.pool.fetch("SELECT alert_id::text FROM alert_clips WHERE alert_id = ANY($1::uuid[])",
                                            [r.alert_id for r in rows])
    assert sorted((e.object_key, e.reason) for e in events if e.object_key.startswith("clips/")) == sorted(
        [(key["orphan"], "orphan"), (key["own"], "alert_max_age"), (key["pair"], "alert_max_age"),
         (key["unstored"], "alert_max_age")])
    assert {e.task_id for e in events if e.object_key.startswith("clips/")} == {task}
    assert sorted(await store.list_keys("clips/")) == sorted(
        [key["shared"], key["fresh"], key["announced"], f"clips/{task}/notes.txt"])
    assert [r["alert_id"] for r in remaining] == [recent.alert_id]
    assert await store.exists(recent.image_key), "a clip row naming an alert image deletes no image"
    assert not await store.exists(old.image_key)
    assert clips_deleted("alert_max_age") - before["alert_max_age"] == 3
    assert clips_deleted("orphan") - before["orphan"] == 1


async def test_a_clip_shared_by_two_expiring_alerts_goes_with_the_second(stack_config: Config) -> None:
    """Expired one alert a page: the first page leaves the clip to the alert still naming it."""
    bucket, captured = stack_config.frame_extractor.minio.bucket, int(datetime(2001, 1, 1, tzinfo=UTC).timestamp())
    first, second = alert("cam-pages", captured * 1000, bucket), alert("cam-pages", captured * 1000 + 1, bucket)
    shared = "clips/cam-pages/20010101/shared.mp4"
    async with connected(AlertStore.of(stack_config)) as alerts:
        await alerts.insert([first, second])
        await alerts.store_clips([clip_of(first, shared), clip_of(second, shared)])
        cutoff = datetime(2001, 1, 2, tzinfo=UTC)  # only this test's alerts are older
        one, other, none = [await alerts.expire(cutoff, limit=1) for _ in range(3)]
    assert (len(one.images), one.clips) == (1, [])
    assert (len(other.images), other.clips) == (1, [(bucket, shared)])
    assert (none.images, none.clips) == ([], [])


def test_only_mp4s_under_this_deployments_clips_folder_are_its_clips() -> None:
    store = ObjectStore(MinioSettings(bucket="ours", base_path="site-1"))
    assert store.holds_clip("ours", "site-1/clips/cam/20261123/a.mp4")
    for bucket, key in [("theirs", "site-1/clips/cam/20261123/a.mp4"), ("ours", "clips/cam/20261123/a.mp4"),
                        ("ours", "site-1/alerts/cam/20261123/a.mp4"), ("ours", "site-1/clips/cam/20261123/a.jpg"),
                        ("ours", "site-1/clips/../alerts/a.mp4"), ("ours", "site-1/clips//a.mp4")]:
        assert not store.holds_clip(bucket, key), key
    ready = ClipReady(alert_id=str(uuid.uuid4()), task_id="cam", camera_id="cam", bucket="b", clip_key="clips/cam/a.mp4")
    assert objects_named(CLIPS, ready.to_bytes()) == {"clips/cam/a.mp4"}
    assert objects_named(CLIPS, ready.model_copy(update={"clip_key": None}).to_bytes()) == set()
