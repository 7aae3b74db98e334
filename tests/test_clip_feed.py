"""The worker's clips agent against the real broker and PostgreSQL: each ClipReady it reads on fw.clips is recorded,
then announced on the alert feed as a ClipMessage keyed by camera, valid against the feed's exported schema; one
whose message would not fit in a record is dead-lettered, and the agent goes on."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import jsonschema
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from framewatch.clients.bus import kafka_options, read_records
from framewatch.ops.load import start_fleet
from framewatch.schemas.config import Config
from framewatch.schemas.events import ClipReady, DeadLetter
from framewatch.schemas.feed import ClipMessage, feed_schemas, read_message
from framewatch.schemas.topics import CLIPS, DEAD_LETTERS, MAX_RECORD_BYTES

FEED = jsonschema.Draft202012Validator(feed_schemas()["FeedMessage"])


def ready(camera: str, bucket: str, clip_key: str | None, reason: str | None = None) -> ClipReady:
    span = (1_700_000_000_000, 1_700_000_010_000, 812_345) if clip_key else (None, None, None)
    return ClipReady(alert_id=str(uuid.uuid4()), task_id=camera, camera_id=camera, bucket=bucket, clip_key=clip_key,
                     start_at=span[0], end_at=span[1], clip_bytes=span[2], reason=reason)


def ready_clips(bucket: str) -> list[ClipReady]:
    """Two alerts of one camera sharing a full clip, one of another camera with a short clip, one with none."""
    shared = f"clips/cam-1/20231114/{uuid.uuid4()}.mp4"
    return [ready("cam-1", bucket, shared), ready("cam-1", bucket, shared),
            ready("cam-2", bucket, f"clips/cam-2/20231114/{uuid.uuid4()}.mp4", "camera_moved"),
            ready("cam-2", bucket, None, "extractor_stopped")]


async def send_clips(config: Config, clips: list[ClipReady]) -> None:
    producer = AIOKafkaProducer(**kafka_options(config), acks="all")
    await producer.start()
    try:
        for clip in clips:
            await producer.send_and_wait(config.topic(CLIPS.name), clip.to_bytes(), key=CLIPS.key_of(clip))
    finally:
        await producer.stop()


async def feed_records(config: Config, count: int, timeout_s: float = 60) -> list[ConsumerRecord]:
    async with asyncio.timeout(timeout_s):
        while len(records := await read_records(config, config.ai_analysis.mq_topic)) < count:
            await asyncio.sleep(0.5)
    return records


async def announcements_dead_lettered(config: Config, timeout_s: float = 30) -> list[tuple[str, str | None]]:
    """The source topic and key of each clip announcement on fw.dead-letters, once there is one."""
    async with asyncio.timeout(timeout_s):
        while True:
            records = await read_records(config, config.topic(DEAD_LETTERS.name))
            letters = [DeadLetter.decode(r.value) for r in records]
            if found := [(d.topic, d.key) for d in letters if "announcement: a ClipMessage of" in d.reason]:
                return found
            await asyncio.sleep(0.5)


async def recorded(config: Config, alert_ids: list[str]) -> set[str]:
    connection = await asyncpg.connect(config.database.dsn.get_secret_value())
    try:
        rows = await connection.fetch("SELECT alert_id::text FROM alert_clips WHERE alert_id = ANY($1::uuid[])",
                                      alert_ids)
    finally:
        await connection.close()
    return {r["alert_id"] for r in rows}


def test_the_worker_announces_each_recorded_clip_on_the_alert_feed(tmp_path: Path, stack_env: dict[str, str]) -> None:
    with start_fleet(tmp_path, stack_env, 1) as fleet:
        config = fleet.run.config
        clips = ready_clips(config.frame_extractor.minio.bucket)
        # a forged reason: the broker takes the ClipReady (under 1 MiB), its message is over what framewatch sends
        oversized = ready("cam-2", config.frame_extractor.minio.bucket, None, "x" * (MAX_RECORD_BYTES - 200))

        async def scenario() -> None:
            await send_clips(config, [oversized, *clips])
            records = await feed_records(config, len(clips))
            assert await announcements_dead_lettered(config) == [(config.topic(CLIPS.name), "cam-2")]
            assert await recorded(config, [c.alert_id for c in clips]) == {c.alert_id for c in clips}
            for record in records:
                FEED.validate(orjson.loads(record.value))
            messages = [read_message(r.value) for r in records]
            announced = {m.alert_id: m for m in messages if isinstance(m, ClipMessage)}
            assert all(isinstance(m, ClipMessage) for m in messages) and len(announced) == len(clips)
            assert [r.key for r in records] == [m.camera_id.encode() for m in messages]
            assert [announced[c.alert_id].status for c in clips] == ["ready", "ready", "short", "none"]
            for clip in clips:
                message = announced[clip.alert_id]
                assert message == ClipMessage.of(clip, stored_at=message.stored_at)
                assert message.stored_at >= clip.emitted_at

        asyncio.run(scenario())
