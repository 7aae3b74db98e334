"""Exactly-once publishing while fw.alerts-stored's partitions move between workers: three publishers of one
group join and leave under a steady stream of stored alerts (some stored twice, as a sink replay does), and a
read_committed reader of the alert topic sees every alert exactly once."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from framewatch.agents.alerts.publisher import AlertPublisher
from framewatch.clients.bus import (
    EventProducer,
    connect_admin,
    ensure_topics,
    partitions,
)
from framewatch.schemas.config import Config
from framewatch.schemas.events import AlertEvent, AlertStored, FrameEvent, now_ms
from framewatch.schemas.topics import ALERTS_STORED
from tests.test_events import frame

ALERTS = 1500
CAMERAS = 24
MOVES = 4


def stored(i: int) -> AlertStored:
    camera = f"cam-{i % CAMERAS:02d}"
    captured = now_ms()
    f = frame(seq=i, captured_at=captured).model_copy(update={
        "camera_id": camera, "task_id": camera, "frame_id": FrameEvent.make_id(camera, captured, i)})
    alert = AlertEvent(alert_id=AlertEvent.make_id(f.frame_id, "area_intrusion"), frame=f, rule="area_intrusion",
                       evidence={"n": i}, image_key=f"alerts/{camera}/{i}.jpg")
    return AlertStored(alert=alert, stored_at=captured)


async def store_alerts(config: Config) -> list[str]:
    """The sink's part: every alert once, every tenth one again a little later."""
    producer = EventProducer(config)
    await producer.start()
    ids = []
    try:
        replays: list[AlertStored] = []
        for i in range(ALERTS):
            record = stored(i)
            ids.append(record.alert.alert_id)
            await producer.send(ALERTS_STORED, record)
            if i % 10 == 0:
                replays.append(record)
            if i % 50 == 49:
                for again in replays:
                    await producer.send(ALERTS_STORED, again)
                replays.clear()
                await asyncio.sleep(0.05)
    finally:
        await producer.stop()
    return ids


async def read_published(config: Config, expected: int) -> Counter[str]:
    reader = AIOKafkaConsumer(bootstrap_servers=config.kafka_bootstrap, group_id=None,
                              isolation_level="read_committed", enable_auto_commit=False)
    await reader.start()
    seen: Counter[str] = Counter()
    try:
        topic = config.ai_analysis.mq_topic
        admin = await connect_admin(config)
        try:
            count = (await partitions(admin, [topic]))[topic]
        finally:
            await admin.close()
        tps = [TopicPartition(topic, p) for p in range(count)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        idle = 0
        while idle < 6 and (sum(seen.values()) < expected or idle < 2):
            batches = await reader.getmany(timeout_ms=500)
            idle = 0 if batches else idle + 1
            for records in batches.values():
                for record in records:
                    seen[orjson.loads(record.value)["alert_id"]] += 1
    finally:
        await reader.stop()
    return seen


async def test_alerts_are_published_once_while_partitions_move_between_workers(stack_config: Config) -> None:
    try:
        async with asyncio.timeout(240):
            await publish_while_moving(stack_config)
    except TimeoutError:
        for task in asyncio.all_tasks():  # where it waits, for whoever reads the failure
            task.print_stack(limit=8)
        raise


async def publish_while_moving(config: Config) -> None:
    await ensure_topics(config)
    app_id = f"{config.framewatch.namespace}-framewatch"
    storing = asyncio.create_task(store_alerts(config))
    publishers: list[AlertPublisher] = []
    moves = 0
    shuffle = random.Random(7)
    # at least four hand-overs, whether the sink is still announcing or the publishers work through its backlog:
    # how many fit in the storing alone depends on this machine's speed
    while not storing.done() or moves < MOVES:
        if len(publishers) < 3 and (not publishers or shuffle.random() < 0.6):
            publisher = AlertPublisher(config, app_id)
            await publisher.start()
            publishers.append(publisher)
        else:
            await publishers.pop(shuffle.randrange(len(publishers))).stop()
        moves += 1
        await asyncio.sleep(shuffle.uniform(0.5, 2.0))
    ids = await storing
    if not publishers:
        publishers.append(AlertPublisher(config, app_id))
        await publishers[0].start()

    seen = await read_published(config, expected=len(ids))
    for publisher in publishers:
        await publisher.stop()
    missing = [i for i in ids if i not in seen]
    twice = {i: n for i, n in seen.items() if n > 1}
    assert not missing, f"{len(missing)} of {len(ids)} alerts were never published"
    assert not twice, f"{len(twice)} alerts were published more than once"
    assert set(seen) == set(ids)
