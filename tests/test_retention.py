"""Retention against the real object store and database: bounds on kept frames, the sweep, alert expiry."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition

from framewatch.agents.alerts.relocation import IMAGE_NOT_COPIED
from framewatch.agents.retention.frames import Retention
from framewatch.agents.retention.housekeeping import Housekeeping, objects_named
from framewatch.clients.bus import EventProducer, ensure_topics, kafka_options, read_records
from framewatch.clients.database import AlertStore
from framewatch.clients.objectstore import ObjectStore
from framewatch.schemas.config import Config
from framewatch.schemas.events import (
    AlertEvent,
    DetectionEvent,
    FrameEvent,
    FrameOutcome,
    Outcome,
    now_ms,
)
from framewatch.schemas.tasks import Freshness
from framewatch.schemas.topics import ALERTS, DETECTIONS, FRAMES
from tests.conftest import SAMPLE_JPEG, free_port
from tests.test_events import frame

SEQ = itertools.count(1)


class Acks:
    """Records which frames' outcomes were acknowledged, in order."""

    def __init__(self) -> None:
        self.frames: list[FrameEvent] = []

    def ack(self, frame: FrameEvent) -> Callable[[], Awaitable[None]]:
        async def acknowledge() -> None:
            self.frames.append(frame)
        return acknowledge


async def stored_frame(store: ObjectStore, task_id: str, age_ms: int = 0) -> FrameEvent:
    seq, captured = next(SEQ), now_ms() - age_ms
    key = f"frames/{task_id}/20261123/{captured}-{seq}.jpg"
    await store.put(key, SAMPLE_JPEG)
    return frame().model_copy(update={"task_id": task_id, "camera_id": task_id, "seq": seq, "captured_at": captured,
                                      "object_key": key, "frame_id": FrameEvent.make_id(task_id, captured, seq),
                                      "bucket": store.bucket})


async def test_kept_frames_stay_within_max_frame_count_and_age(stack_config: Config) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    retention = Retention(store, save_only_with_detection=False, limit_for=lambda task: 3, max_age_s=60, grace_s=0)
    old = await stored_frame(store, "cam-a", age_ms=120_000)
    fresh = [await stored_frame(store, "cam-a") for _ in range(5)]
    acked = Acks()
    for f in [old, *fresh]:
        await retention.on_outcome(FrameOutcome(frame=f, outcome=Outcome.NO_ALERT), acked.ack(f))
    assert acked.frames == [old, *fresh]  # kept frames are acknowledged at once
    events = [d.event for d in await retention.delete_due() if d.event is not None]
    assert sorted((e.object_key, e.reason) for e in events) == sorted(
        [(old.object_key, "max_frame_count"), (fresh[0].object_key, "max_frame_count"),
         (fresh[1].object_key, "max_frame_count")])
    assert sorted(await store.list_keys("frames/cam-a/")) == sorted(f.object_key for f in fresh[2:])


async def test_a_frame_whose_alert_image_was_not_copied_is_that_alert_image(stack_config: Config) -> None:
    """Its alert row points at it: retention neither deletes it nor counts it against the task's kept frames."""
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    for keeping in (True, False):
        retention = Retention(store, save_only_with_detection=keeping, limit_for=lambda task: 1, max_age_s=60,
                              grace_s=0)
        images = [await stored_frame(store, "cam-i") for _ in range(3)]
        acked = Acks()
        for f in images:
            await retention.on_outcome(FrameOutcome(frame=f, outcome=Outcome.ALERT, reason=IMAGE_NOT_COPIED),
                                       acked.ack(f))
        assert acked.frames == images and await retention.delete_due() == []
        assert all([await store.exists(f.object_key) for f in images])


async def test_frames_without_detection_go_after_the_grace(stack_config: Config) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    retention = Retention(store, save_only_with_detection=True, limit_for=lambda task: 0, max_age_s=0, grace_s=0.3)
    ended = await stored_frame(store, "cam-b")
    acked = Acks()
    outcome = FrameOutcome(frame=ended, outcome=Outcome.DROPPED, reason="stale")
    await retention.on_outcome(outcome, acked.ack(ended))
    await retention.on_outcome(outcome, acked.ack(ended))  # delivered twice: both deliveries are acknowledged
    assert await retention.delete_due() == []  # still within its grace
    assert acked.frames == []  # nothing is acknowledged before the object is gone
    await asyncio.sleep(0.35)
    [deleted] = await retention.delete_due()
    assert deleted.event is not None
    assert (deleted.event.object_key, deleted.event.reason) == (ended.object_key, "dropped:stale")
    assert not await store.exists(ended.object_key)
    for ack in deleted.acks:
        await ack()
    assert acked.frames == [ended, ended]


async def test_a_store_that_is_down_keeps_deletions_pending_and_unacknowledged(stack_config: Config) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    ended = await stored_frame(store, "cam-e")
    down = ObjectStore(stack_config.frame_extractor.minio.model_copy(update={"endpoint": f"127.0.0.1:{free_port()}"}))
    retention = Retention(down, save_only_with_detection=True, limit_for=lambda task: 0, max_age_s=0, grace_s=0)
    await retention.on_outcome(FrameOutcome(frame=ended, outcome=Outcome.NO_ALERT), Acks().ack(ended))
    assert await retention.delete_due() == []
    assert len(retention._pending) == 1 and await store.exists(ended.object_key)  # retried in RETRY_S
    retention.store = store  # the store is back
    retention._pending[0] = (0.0, retention._pending[0][1])
    [deleted] = await retention.delete_due()
    assert deleted.event is not None and deleted.acks and not await store.exists(ended.object_key)


async def test_sweep_deletes_orphan_frames_only(stack_config: Config) -> None:
    await ensure_topics(stack_config)
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    orphans = [await stored_frame(store, "cam-c") for _ in range(3)]
    await store.put("alerts/cam-c/20261123/keep.jpg", SAMPLE_JPEG)
    async with connected(AlertStore.of(stack_config)) as alerts:
        housekeeping = Housekeeping(stack_config, store, alerts)
        await asyncio.sleep(1.1)  # object times have a one-second resolution
        events = await housekeeping.sweep_frames(older_than_s=1)
    assert sorted(e.object_key for e in events) == sorted(f.object_key for f in orphans)
    assert {e.reason for e in events} == {"orphan"} and {e.task_id for e in events} == {"cam-c"}
    assert await store.list_keys("frames/") == []
    assert await store.exists("alerts/cam-c/20261123/keep.jpg")


async def test_sweep_keeps_alert_images_and_frames_the_workers_have_not_finished(stack_config: Config) -> None:
    """Old frames, all past the sweep's age: an orphan and a frame whose event the workers have processed go; a
    frame an alert row keeps as its image, a lossless frame whose event waits for inference and a frame whose
    detection waits for the rules stay. And when the workers' backlog is too long to read, nothing goes."""
    await ensure_topics(stack_config)
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    orphan, processed, waiting, detected, alert_image = [await stored_frame(store, "cam-s") for _ in range(5)]
    async with started(EventProducer(stack_config)) as producer, \
            connected(AlertStore.of(stack_config)) as alerts:
        await producer.send(FRAMES, processed)
        await producer.send(FRAMES, waiting.model_copy(update={"freshness": Freshness.ALL}))
        await producer.send(DETECTIONS, DetectionEvent(frame=detected, service_id="s", inference_ms=1,
                                                       detections=[]))
        [done] = [r for r in await read_records(stack_config, stack_config.topic(FRAMES.name))
                  if FrameEvent.decode(r.value).frame_id == processed.frame_id]
        await commit(stack_config, TopicPartition(done.topic, done.partition), done.offset + 1)
        await alerts.insert([AlertEvent(alert_id=AlertEvent.make_id(alert_image.frame_id, "r"), frame=alert_image,
                                        rule="r", evidence={}, image_key=alert_image.object_key)])
        await asyncio.sleep(1.1)  # object times have a one-second resolution
        assert await Housekeeping(stack_config, store, alerts, max_backlog=1).sweep_frames(older_than_s=1) == []
        assert await store.exists(orphan.object_key)  # the backlog (2 records) was too long to read
        events = await Housekeeping(stack_config, store, alerts).sweep_frames(older_than_s=1)
    assert sorted(e.object_key for e in events) == sorted([orphan.object_key, processed.object_key])
    assert sorted(await store.list_keys("frames/")) == sorted(
        f.object_key for f in (waiting, detected, alert_image))


async def commit(config: Config, partition: TopicPartition, offset: int) -> None:
    """The workers' consumer group commits `offset` on a partition, as a worker does once a record is processed."""
    consumer = AIOKafkaConsumer(**kafka_options(config), group_id=config.worker_group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([partition])
        await consumer.commit({partition: offset})
    finally:
        await consumer.stop()


@asynccontextmanager
async def started(producer: EventProducer) -> AsyncIterator[EventProducer]:
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@asynccontextmanager
async def connected(alerts: AlertStore) -> AsyncIterator[AlertStore]:
    await alerts.connect()
    try:
        yield alerts
    finally:
        await alerts.close()


async def test_alerts_past_their_max_age_lose_row_and_image(stack_config: Config) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    alerts = AlertStore.of(stack_config)
    await alerts.connect()
    try:
        made = []
        for age_days in (40, 1):
            f = await stored_frame(store, "cam-d", age_ms=age_days * 86_400_000)
            alert = AlertEvent(alert_id=AlertEvent.make_id(f.frame_id, "area_intrusion"), frame=f,
                               rule="area_intrusion", evidence={}, image_key=f.object_key.replace("frames/", "alerts/"))
            await store.copy(f.object_key, alert.image_key)
            made.append(alert)
        await alerts.insert(made)
        events = await Housekeeping(stack_config, store, alerts).expire_alerts(datetime.now(UTC) - timedelta(days=30))
        assert made[0].image_key in {e.object_key for e in events}
        assert not await store.exists(made[0].image_key) and await store.exists(made[1].image_key)
        assert await alerts.get(made[0].alert_id) is None and await alerts.get(made[1].alert_id) is not None
    finally:
        await alerts.close()


async def test_outcomes_naming_anything_but_a_frame_of_ours_delete_nothing(stack_config: Config) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    retention = Retention(store, save_only_with_detection=True, limit_for=lambda task: 0, max_age_s=0, grace_s=0)
    alert_image = "alerts/cam-x/20261123/precious.jpg"
    await store.put(alert_image, SAMPLE_JPEG)
    genuine = await stored_frame(store, "cam-x")
    forged = [genuine.model_copy(update={"object_key": key, "frame_id": f"forged-{i}"}) for i, key in enumerate(
        [alert_image, "frames/../alerts/cam-x/20261123/precious.jpg", "frames/cam-x/notes.txt"])]
    forged.append(genuine.model_copy(update={"bucket": "someone-elses", "frame_id": "forged-bucket"}))
    acked = Acks()
    for f in [*forged, genuine]:
        await retention.on_outcome(FrameOutcome(frame=f, outcome=Outcome.NO_ALERT), acked.ack(f))
    assert acked.frames == forged, "forged outcomes are acknowledged at once, with nothing deleted"
    events = [d.event for d in await retention.delete_due() if d.event is not None]
    assert [e.object_key for e in events] == [genuine.object_key]
    assert await store.list_keys("alerts/cam-x/") == [alert_image]


def test_the_objects_a_backlog_record_names_are_read_from_its_json_and_a_broken_one_names_none() -> None:
    f = frame()
    detection = DetectionEvent(frame=f, service_id="s", inference_ms=1, detections=[])
    alert = AlertEvent(alert_id=AlertEvent.make_id(f.frame_id, "area_intrusion"), frame=f, rule="area_intrusion",
                       evidence={}, image_key="alerts/a.jpg")
    assert objects_named(FRAMES, f.to_bytes()) == {f.object_key}
    assert objects_named(DETECTIONS, detection.to_bytes()) == {f.object_key}
    assert objects_named(ALERTS, alert.to_bytes()) == {f.object_key, "alerts/a.jpg"}
    assert objects_named(ALERTS, b"not json") == objects_named(FRAMES, None) == objects_named(FRAMES, b"[1]") == set()
