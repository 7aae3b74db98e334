"""The alert path whatever crashes: every alert stored once, its image moved once, published once."""

from __future__ import annotations

import asyncio
import collections
import signal
import uuid
from pathlib import Path

import asyncpg
import httpx
import jsonschema
import orjson

from framewatch.clients.bus import read_records
from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.load import FrameLoad, TopicFollower, start_fleet
from framewatch.schemas.config import Config
from framewatch.schemas.events import AlertEvent, DeadLetter, now_ms
from framewatch.schemas.feed import feed_schemas, kind_of
from framewatch.schemas.topics import ALERTS, DEAD_LETTERS
from framewatch.stack.base import StackHome
from framewatch.stack.minio import Minio
from framewatch.stack.postgres import Postgres
from tests.conftest import SAMPLE_JPEG

CAMERAS = 10


def alerting_config(*prefixes: str, batch_size: int = 20, cameras: int = CAMERAS,
                    rule: str = "cooldown_sec = 0\n") -> str:
    """Every frame of these cameras (`cameras` per prefix) raises an alert (no cooldown, unless `rule` says
    otherwise) when the detector sees a person."""
    tasks = "".join(f'[[frame_extractor.tasks]]\nid = "{prefix}-{i:03d}"\ntask_type = "area_intrusion"\n'
                    f'rtsp_url = "unused"\n{rule}' for prefix in prefixes for i in range(cameras))
    return f"[ai_analysis]\nalert_batch_size = {batch_size}\nalert_batch_interval_sec = 1\n{tasks}"


async def stored(config: Config, prefix: str) -> dict[str, str]:
    connection = await asyncpg.connect(config.database.dsn.get_secret_value())
    try:
        rows = await connection.fetch("SELECT alert_id::text, image_key FROM alerts WHERE camera_id LIKE $1",
                                      f"{prefix}%")
    finally:
        await connection.close()
    return {r["alert_id"]: r["image_key"] for r in rows}


FEED = jsonschema.Draft202012Validator(feed_schemas()["FeedMessage"])


async def published(config: Config) -> collections.Counter[str]:
    """Alert ids of the alert messages on the alert feed (its clip messages come at least once, so they are not
    counted), each message checked against the feed's exported JSON Schema."""
    records = await read_records(config, config.ai_analysis.mq_topic)
    messages = [orjson.loads(r.value) for r in records if r.value]
    for message in messages:
        FEED.validate(message)
    return collections.Counter(message["alert_id"] for message in messages if kind_of(message) == "alert")


async def missing_images(config: Config, keys: list[str]) -> list[str]:
    store = ObjectStore(config.frame_extractor.minio)
    return [key for key in keys if not await store.exists(key)]


async def settle_stored(config: Config, prefix: str, alerts: int, timeout_s: float = 60) -> None:
    for _ in range(int(timeout_s)):
        if len(await stored(config, prefix)) >= alerts:
            return
        await asyncio.sleep(1)
    raise TimeoutError(f"{len(await stored(config, prefix))} of {alerts} alerts stored")


async def settle(config: Config, prefix: str, alert_ids: set[str], timeout_s: float = 120) -> None:
    """Wait until every alert is stored, published and has its image in place (or the time runs out)."""
    for _ in range(int(timeout_s)):
        rows = await stored(config, prefix)
        if (alert_ids <= set(rows) and alert_ids <= set(await published(config))
                and not await missing_images(config, list(rows.values()))):
            return
        await asyncio.sleep(1)


def test_worker_killed_mid_flush_stores_moves_and_publishes_each_alert_once(tmp_path: Path,
                                                                            stack_env: dict[str, str]) -> None:
    prefix = "k" + uuid.uuid4().hex[:6]
    with start_fleet(tmp_path, stack_env, 2, alerting_config(prefix), latency_ms=20, people=1) as fleet:
        config = fleet.run.config

        async def scenario() -> None:
            follower = TopicFollower(config, [ALERTS])
            await follower.start()
            load = FrameLoad(config, cameras=CAMERAS, fps_per_camera=2, prefix=prefix, image=SAMPLE_JPEG)
            # long enough to outlast the restart: the killed member holds its partitions for its 10 s session
            running = asyncio.create_task(load.run(duration_s=30))
            await asyncio.sleep(8)  # alerts flow at 20/s in batches of 20 a second: a flush is always in flight
            killed_at = now_ms()
            await asyncio.to_thread(fleet.run.restart_worker, signal.SIGKILL)
            restarted_at = now_ms()
            await running
            await follower.collect_until(lambda events: False, timeout_s=5)
            alert_ids = {e.alert_id for e in follower.events if isinstance(e, AlertEvent)}
            await settle(config, prefix, alert_ids)
            await follower.poll()
            alert_ids = {e.alert_id for e in follower.events if isinstance(e, AlertEvent)}
            rows = await stored(config, prefix)
            counts = await published(config)
            missing = await missing_images(config, list(rows.values()))
            await follower.stop()
            raised_after = {e.alert_id for e in follower.events
                            if isinstance(e, AlertEvent) and e.frame.emitted_at >= restarted_at}
            print(f"crash test: {len(alert_ids)} alerts on fw.alerts ({len(raised_after)} of frames sent after the "
                  f"restart, {restarted_at - killed_at} ms after the kill), {len(rows)} stored, "
                  f"{sum(counts.values())} published, {len(missing)} images missing")
            if unstored := alert_ids - set(rows):  # where they sat on fw.alerts
                for record in await read_records(config, config.topic(ALERTS.name)):
                    if (alert := AlertEvent.decode(record.value)).alert_id in unstored:
                        print("not stored:", alert.alert_id, "partition", record.partition, "offset", record.offset,
                              "sent", record.timestamp - killed_at, "ms after the kill")
            assert len(alert_ids) > 100  # the 8 s before the kill alone: 160 frames, each alerting
            assert raised_after  # the restarted worker took over (frames that waited past max_frame_age are dropped)
            assert set(rows) == alert_ids  # stored exactly once: alert_id is the primary key
            assert missing == []
            twice = {a for a, n in counts.items() if n != 1}
            if twice:
                for r in await read_records(config, config.ai_analysis.mq_topic):
                    body = orjson.loads(r.value)
                    if body["alert_id"] in twice:
                        print("DUP", r.partition, r.offset, r.timestamp - killed_at, restarted_at - killed_at,
                              body["alert_id"][:8], body["stored_at"] - killed_at)
                markers = await read_records(config, config.topic("fw.published"))
                keys = [m.key.decode() for m in markers if m.key]
                print("markers", collections.Counter(k for k in keys if k in twice))
            assert {a: n for a, n in counts.items() if n != 1} == {}  # published once each
            assert set(counts) == alert_ids

        asyncio.run(scenario())


def metric(fleet_metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in fleet_metrics.splitlines() if line.startswith(name))


def test_postgres_down_for_a_minute_loses_no_alert(tmp_path: Path, stack_env: dict[str, str]) -> None:
    prefix = "p" + uuid.uuid4().hex[:6]
    postgres = Postgres(StackHome.default())
    with start_fleet(tmp_path, stack_env, 2, alerting_config(prefix), latency_ms=20, people=1) as fleet:
        config = fleet.run.config

        def scrape() -> str:
            return httpx.get(fleet.run.metrics_url, timeout=10).text

        async def scenario() -> None:
            follower = TopicFollower(config, [ALERTS])
            await follower.start()
            load = FrameLoad(config, cameras=CAMERAS, fps_per_camera=1, prefix=prefix, image=SAMPLE_JPEG)
            running = asyncio.create_task(load.run(duration_s=80))
            await asyncio.sleep(5)
            await asyncio.to_thread(postgres.down)
            try:
                await asyncio.sleep(30)
                during = await asyncio.to_thread(scrape)
                await asyncio.sleep(30)
            finally:
                await asyncio.to_thread(postgres.up)
            await running
            await follower.collect_until(lambda events: False, timeout_s=5)
            alert_ids = {e.alert_id for e in follower.events if isinstance(e, AlertEvent)}
            await settle(config, prefix, alert_ids, timeout_s=120)
            await follower.poll()
            alert_ids = {e.alert_id for e in follower.events if isinstance(e, AlertEvent)}
            rows = await stored(config, prefix)
            counts = await published(config)
            after = await asyncio.to_thread(scrape)
            await follower.stop()
            print(f"postgres outage: {len(alert_ids)} alerts, {len(rows)} stored, {sum(counts.values())} published, "
                  f"{metric(after, 'framewatch_sink_write_failures_total')} failed writes")
            assert metric(during, "framewatch_sink_database_up") == 0
            assert metric(after, "framewatch_sink_database_up") == 1
            assert metric(after, "framewatch_sink_write_failures_total") > 0
            assert len(alert_ids) > 500 and set(rows) == alert_ids
            assert set(counts) == alert_ids and set(counts.values()) == {1}

        asyncio.run(scenario())


def test_minio_down_for_a_minute_dead_letters_with_a_reason_and_keeps_the_frame(tmp_path: Path,
                                                                                stack_env: dict[str, str]) -> None:
    prefix = "m" + uuid.uuid4().hex[:6]
    minio = Minio(StackHome.default())
    with start_fleet(tmp_path, stack_env, 1, alerting_config(prefix), latency_ms=20, people=1) as fleet:
        config = fleet.run.config

        async def scenario() -> None:
            follower = TopicFollower(config, [ALERTS, DEAD_LETTERS])
            await follower.start()
            load = FrameLoad(config, cameras=CAMERAS, fps_per_camera=1, prefix=prefix)
            frames = [load.frame(camera) for camera in load.cameras]
            store = ObjectStore(config.frame_extractor.minio)
            await store.ensure_bucket()
            for f in frames:  # uploaded before the outage, announced during it
                await store.put(f.object_key, SAMPLE_JPEG)
            await asyncio.to_thread(minio.down)
            try:
                await load.send(frames)
                await asyncio.sleep(60)
            finally:
                await asyncio.to_thread(minio.up)
            await follower.collect_until(lambda events: False, timeout_s=5)
            alerts = {e.alert_id: e for e in follower.events if isinstance(e, AlertEvent)}
            letters = {AlertEvent.decode(e.payload.encode()).alert_id: e.reason for e in follower.events
                       if isinstance(e, DeadLetter) and e.reason.startswith("relocation")}
            await settle_stored(config, prefix, len(frames))
            await follower.stop()
            print(f"minio outage: {len(alerts)} alerts, {len(letters)} dead letters")
            assert sorted(a.frame.frame_id for a in alerts.values()) == sorted(f.frame_id for f in frames)
            for alert in alerts.values():  # each image either copied or dead-lettered with its reason, never lost
                if alert.alert_id in letters:
                    assert "object store unreachable" in letters[alert.alert_id]
                    assert alert.image_key == alert.frame.object_key  # the frame is its image: the row points at it
                    assert await store.exists(alert.frame.object_key)
                else:
                    assert await store.exists(alert.image_key)
            assert letters  # the outage outlasted the retries
            assert set(await stored(config, prefix)) == set(alerts)

        asyncio.run(scenario())
