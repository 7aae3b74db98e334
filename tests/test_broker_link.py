"""The worker's link to Kafka stalled (Toxiproxy drops every byte both ways) for longer than its producer waits for
a delivery, then restored, then the worker SIGKILLed, three times over: nothing it acknowledged lacks its effect on
the topics, every incident raises one alert, and every alert is stored once and published once. The worker that
acked on a buffered send committed frames whose results had failed once the link came back.

Only the worker and its detector reach Kafka through the proxy; the load and the checks go straight to the broker.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import uuid
from pathlib import Path

import httpx

from framewatch.clients.bus import connect_admin, read_records
from framewatch.detector.misbehaving import CONTROL_PATH
from framewatch.ops.load import FrameLoad, start_fleet
from framewatch.schemas.config import Config
from framewatch.schemas.events import AlertEvent, DetectionEvent, FrameEvent, FrameOutcome
from framewatch.schemas.topics import ALERTS, DETECTIONS, FRAME_OUTCOMES, FRAMES
from framewatch.stack.toxiproxy import PROXIED_KAFKA, KafkaLink
from tests.conftest import SAMPLE_JPEG
from tests.test_alert_path import alerting_config, missing_images, published, stored

CAMERAS = 6
ROUNDS = 3
PRODUCER_TIMEOUT_S = 4  # the worker's producer reports a record failed after this long (Faust's default: 20 min)
STALL_S = 8


def one_incident_config(prefix: str) -> str:
    """A person is always in view: one track, one incident, one alert per camera, however long it runs."""
    return (f"[framewatch]\nproducer_request_timeout_sec = {PRODUCER_TIMEOUT_S}\n"
            + alerting_config(prefix, cameras=CAMERAS,
                              rule="cooldown_sec = 3600\nclear_sec = 3600\ntrack_gap_sec = 3600\n"))


async def committed(config: Config, group: str) -> dict[tuple[str, int], int]:
    admin = await connect_admin(config)
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def acked_without_effect(config: Config, group: str) -> list[str]:
    """Records below the group's committed offsets whose results are not on the topics: a frame without its
    detection or outcome, a detection without its outcome."""
    offsets = await committed(config, group)
    ended = {FrameOutcome.decode(r.value).frame.frame_id
             for r in await read_records(config, config.topic(FRAME_OUTCOMES.name))}
    detected = {DetectionEvent.decode(r.value).frame.frame_id
                for r in await read_records(config, config.topic(DETECTIONS.name))}
    missing = []
    for spec, record_type, done in ((FRAMES, FrameEvent, detected | ended), (DETECTIONS, DetectionEvent, ended)):
        topic = config.topic(spec.name)
        for record in await read_records(config, topic):
            if record.offset < offsets.get((topic, record.partition), 0):
                event = record_type.decode(record.value)
                frame_id = event.frame_id if isinstance(event, FrameEvent) else event.frame.frame_id
                if frame_id not in done:
                    missing.append(f"{spec.name} partition {record.partition} offset {record.offset}")
    return missing


def test_a_stalled_broker_link_then_a_crash_loses_nothing_acked_and_raises_each_alert_once(
        tmp_path: Path, stack_env: dict[str, str]) -> None:
    prefix = "x" + uuid.uuid4().hex[:6]
    link = KafkaLink()
    link.clear()
    with start_fleet(tmp_path, stack_env, 1, one_incident_config(prefix), latency_ms=20, people=1,
                     extra_env={"FRAMEWATCH_KAFKA_BOOTSTRAP": PROXIED_KAFKA}) as fleet:
        proxied = fleet.run.config
        direct = proxied.framewatch.model_copy(update={"kafka_bootstrap": stack_env["FRAMEWATCH_KAFKA_BOOTSTRAP"]})
        config = proxied.model_copy(update={"framewatch": direct})
        group = f"{proxied.framewatch.namespace}-framewatch"

        async def scenario() -> None:
            async with httpx.AsyncClient() as client:  # the same person in every frame: one incident per camera
                (await client.post(fleet.url(0, CONTROL_PATH), json={"steady": True})).raise_for_status()
            load = FrameLoad(config, cameras=CAMERAS, fps_per_camera=2, prefix=prefix, image=SAMPLE_JPEG)
            running = asyncio.create_task(load.run(duration_s=ROUNDS * 30))
            not_confirmed: list[str] = []
            for _ in range(ROUNDS):
                await asyncio.sleep(6)
                for stream in ("upstream", "downstream"):
                    link.add(f"stall-{stream}", "timeout", stream=stream, timeout=0)
                await asyncio.sleep(STALL_S)  # past the producer's timeout: what it holds fails, then goes again
                link.clear()
                await asyncio.sleep(4)  # the commits go through again
                await asyncio.to_thread(fleet.run.stop_worker, signal.SIGKILL)
                not_confirmed += await acked_without_effect(config, group)
                await asyncio.to_thread(fleet.run.start_worker)
            await running
            for _ in range(90):  # every alert raised stored and published
                alerts = [AlertEvent.decode(r.value) for r in await read_records(config, config.topic(ALERTS.name))]
                rows = await stored(config, prefix)
                if set(rows) == {a.alert_id for a in alerts} and set(rows) <= set(await published(config)):
                    break
                await asyncio.sleep(1)
            per_camera = collections.Counter(alert.frame.camera_id for alert in {a.alert_id: a for a in alerts}.values())
            counts = await published(config)
            print(f"stalled link: {len(alerts)} alert records, {len(rows)} stored, {sum(counts.values())} published, "
                  f"per camera {dict(per_camera)}, acked without effect {not_confirmed[:5]}")
            assert not_confirmed == [], "acknowledged, its result not on the topics"
            assert per_camera == {f"{prefix}-{i:03d}": 1 for i in range(CAMERAS)}, "one incident, one alert"
            assert set(rows) == {alert.alert_id for alert in alerts}
            assert counts == {alert_id: 1 for alert_id in rows}, "published once each"
            assert await missing_images(config, list(rows.values())) == []

        asyncio.run(scenario())
