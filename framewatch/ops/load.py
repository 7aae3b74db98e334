"""Synthetic load for the inference path, and a follower that reads what comes out: tests and `bench/` use both.

`FrameLoad` plays the extractor's part: frame events at a steady rate over N cameras, straight onto fw.frames
(their objects need not exist: misbehaving services never fetch them, and deleting a missing key is a no-op).
`TopicFollower` reads the events that land on some topics from the moment it starts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from framewatch.schemas.config import Config, TaskType
from framewatch.schemas.events import Event, FrameEvent, now_ms
from framewatch.schemas.topics import FRAMES, TopicSpec, by_name
from framewatch.streams.bus import connect_admin, partitions


class FrameLoad:
    def __init__(self, config: Config, cameras: int, fps_per_camera: float, prefix: str = "load",
                 task_type: TaskType = TaskType.AREA_INTRUSION) -> None:
        self.config = config
        self.cameras = [f"{prefix}-{i:03d}" for i in range(cameras)]
        self.interval_s = 1 / fps_per_camera
        self.task_type = task_type
        self.sent = 0
        self._seq = 0

    def frame(self, camera: str) -> FrameEvent:
        self._seq += 1
        captured = now_ms()
        return FrameEvent(frame_id=FrameEvent.make_id(camera, captured, self._seq), task_id=camera, camera_id=camera,
                          task_type=self.task_type, seq=self._seq, captured_at=captured,
                          bucket=self.config.frame_extractor.minio.bucket,
                          object_key=f"frames/{camera}/load-{self._seq}.jpg", width=640, height=480)

    async def run(self, duration_s: float) -> int:
        """Every camera sends a frame each interval (cameras spread evenly over it) for `duration_s`."""
        producer = AIOKafkaProducer(bootstrap_servers=self.config.kafka_bootstrap, acks="all", linger_ms=5)
        await producer.start()
        topic = self.config.topic(FRAMES.name)
        step = self.interval_s / len(self.cameras)
        started = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        try:
            tick = 0
            while (due := started + tick * step) < started + duration_s:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                camera = self.cameras[tick % len(self.cameras)]
                pending.append(await producer.send(topic, self.frame(camera).to_bytes(), key=camera.encode()))
                tick += 1
                if len(pending) >= 200:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            self.sent += tick
            return tick
        finally:
            await producer.stop()


class TopicFollower:
    """Every event that lands on the given topics after `start`, decoded."""

    def __init__(self, config: Config, specs: list[TopicSpec]) -> None:
        self.config = config
        self.topics = [config.topic(spec.name) for spec in specs]
        self.consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka_bootstrap, group_id=None,
                                         enable_auto_commit=False)
        self.events: list[Event] = []

    async def start(self) -> None:
        admin = await connect_admin(self.config)
        try:
            counts = await partitions(admin, self.topics)
        finally:
            await admin.close()
        await self.consumer.start()
        assigned = [TopicPartition(t, p) for t in self.topics for p in range(counts[t])]
        self.consumer.assign(assigned)
        await self.consumer.seek_to_end(*assigned)
        for tp in assigned:
            await self.consumer.position(tp)  # fixes the starting point now, before any load is sent

    async def stop(self) -> None:
        await self.consumer.stop()

    async def poll(self, timeout_s: float = 0.5) -> list[Event]:
        batches = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=5000)
        fresh: list[Event] = []
        for tp, records in batches.items():
            spec = by_name(tp.topic)
            assert spec is not None, tp.topic
            fresh.extend(spec.record.decode(r.value) for r in records if r.value is not None)
        self.events.extend(fresh)
        return fresh

    async def collect_until(self, done: Any, timeout_s: float) -> bool:
        """Poll until `done(self.events)` holds; False when the time runs out first."""
        deadline = time.monotonic() + timeout_s
        while not done(self.events):
            if time.monotonic() > deadline:
                return False
            await self.poll()
        return True
