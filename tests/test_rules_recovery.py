"""A worker killed (SIGKILL) in the middle of a dwell: the restarted worker carries on from the rule state in its
table's changelog, so the loitering alert comes when the dwell reaches its threshold, once, not later and not twice.

Detections go straight onto fw.detections (a person standing still in every frame), so the test controls exactly
what the rules see; the frames' images are in MinIO as the extractor would have left them.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import uuid
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.load import TopicFollower, start_fleet
from framewatch.schemas.config import Config
from framewatch.schemas.events import Detection, DetectionEvent, FrameEvent, now_ms
from framewatch.schemas.tasks import TaskType
from framewatch.schemas.topics import DETECTIONS, FRAME_OUTCOMES
from tests.conftest import SAMPLE_JPEG
from tests.test_alert_path import published

STEP_MS = 500
DWELL_S = 20
STANDING = Detection(label="person", score=0.9, box=(0.4, 0.3, 0.48, 0.6))


def dwell_config(task_id: str) -> str:
    return (f'[[frame_extractor.tasks]]\nid = "{task_id}"\ntask_type = "徘徊检测"\nrtsp_url = "unused"\n'
            f"dwell_sec = {DWELL_S}\n[ai_analysis]\nalert_batch_interval_sec = 0.5\n")


class StandingPerson:
    """Frame i of one camera, captured STEP_MS apart, in which one person stands still."""

    def __init__(self, config: Config, task_id: str) -> None:
        self.config = config
        self.task_id = task_id
        self.store = ObjectStore(config.frame_extractor.minio)
        self.started_at = now_ms()

    def frame(self, i: int) -> FrameEvent:
        captured = self.started_at + i * STEP_MS
        return FrameEvent(frame_id=FrameEvent.make_id(self.task_id, captured, i), task_id=self.task_id,
                          camera_id=self.task_id, task_type=TaskType.LOITERING, seq=i, captured_at=captured,
                          bucket=self.config.frame_extractor.minio.bucket,
                          object_key=f"frames/{self.task_id}/20260101/{captured}-{i:06d}.jpg", width=640, height=480)

    async def send(self, frames: range) -> None:
        await self.store.ensure_bucket()
        producer = AIOKafkaProducer(bootstrap_servers=self.config.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in frames:
                frame = self.frame(i)
                await self.store.put(frame.object_key, SAMPLE_JPEG)
                event = DetectionEvent(frame=frame, service_id="test", inference_ms=1, detections=[STANDING])
                await producer.send_and_wait(self.config.topic(DETECTIONS.name), event.to_bytes(),
                                             key=self.task_id.encode())
        finally:
            await producer.stop()


def test_worker_killed_mid_dwell_alerts_once_when_the_dwell_is_reached(tmp_path: Path,
                                                                       stack_env: dict[str, str]) -> None:
    task_id = f"dwell-{uuid.uuid4().hex[:8]}"
    with start_fleet(tmp_path, stack_env, 1, dwell_config(task_id)) as fleet:
        config = fleet.run.config
        person = StandingPerson(config, task_id)

        async def scenario() -> None:
            outcomes = TopicFollower(config, [FRAME_OUTCOMES])
            await outcomes.start()
            try:
                def ended(count: int) -> object:
                    return lambda events: len({e.frame.frame_id for e in events}) >= count

                await person.send(range(0, 24))  # 12 s into the dwell
                assert await outcomes.collect_until(ended(24), timeout_s=60)
                await person.send(range(24, 30))  # some of these are in flight when the worker dies
                fleet.run.restart_worker(signal.SIGKILL)
                await person.send(range(30, 60))  # the dwell reaches 20 s at frame 40
                assert await outcomes.collect_until(ended(60), timeout_s=90), len(outcomes.events)
            finally:
                await outcomes.stop()

        asyncio.run(scenario())

        async def alerts() -> tuple[list[asyncpg.Record], collections.Counter[str]]:
            connection = await asyncpg.connect(config.database.dsn.get_secret_value())
            try:
                for _ in range(30):
                    rows = await connection.fetch(
                        "SELECT alert_id::text, (1000 * extract(epoch FROM captured_at))::bigint AS at_ms, evidence "
                        "FROM alerts WHERE task_id = $1", task_id)
                    sent = await published(config)
                    if rows and all(sent[r["alert_id"]] for r in rows):
                        return rows, sent
                    await asyncio.sleep(1)
                return rows, sent
            finally:
                await connection.close()

        rows, sent = asyncio.run(alerts())
    assert fleet.run.workers_started == 2
    assert len(rows) == 1, rows  # not one per frame, not a second one after the restart
    alert = rows[0]
    # at frame 40, when the dwell that began at frame 0, before the kill, reached 20 s: the state was recovered
    assert alert["at_ms"] == person.frame(2 * DWELL_S).captured_at
    assert orjson.loads(alert["evidence"])["dwell_sec"] == DWELL_S
    assert sent[alert["alert_id"]] == 1
