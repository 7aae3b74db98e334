"""The bridges against real peers: Debian's mosquitto for `bridge mqtt` (alerts per camera and on events, clips
per camera and on clips, camera availability retained, a broker restart survived) and a webhook receiver on a real
socket that fails at first (every alert delivered, signed, at least once; clip messages too when asked for)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import aiomqtt
import httpx
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from framewatch.clients.bus import ensure_topics, kafka_options
from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import free_port, namespaced_env
from framewatch.schemas.config import Config, load_config
from framewatch.schemas.events import AlertEvent, AlertStored, CameraState, CameraStatus, ClipReady
from framewatch.schemas.feed import AlertMessage, ClipMessage, FeedMessage
from framewatch.schemas.topics import CAMERAS
from tests.conftest import write_config
from tests.mosquitto import Mosquitto, mosquitto  # noqa: F401 (a fixture)
from tests.test_events import frame

SECRET = "webhook-secret-for-the-test"


def alerts(camera: str, count: int, first: int = 0) -> list[AlertMessage]:
    found = []
    for seq in range(first, first + count):
        f = frame(seq=seq).model_copy(update={"camera_id": camera, "task_id": camera})
        alert = AlertEvent(alert_id=AlertEvent.make_id(f"{camera}-{seq}", "area_intrusion"), frame=f,
                           rule="area_intrusion", evidence={"box": [0.1, 0.1, 0.2, 0.4]}, image_key=f"alerts/{seq}.jpg")
        found.append(AlertMessage.of(AlertStored(alert=alert, stored_at=seq)))
    return found


def clips(alerts: list[AlertMessage]) -> list[ClipMessage]:
    """A clip message for each alert: the first one's clip is short, the others share a full one."""
    return [ClipMessage.of(ClipReady(alert_id=a.alert_id, task_id=a.task_id, camera_id=a.camera_id, bucket=a.bucket,
                                     clip_key=f"clips/{a.task_id}/20231114/{alerts[0].alert_id}.mp4",
                                     start_at=a.captured_at - 5000, end_at=a.captured_at + 5000, clip_bytes=800_000,
                                     reason=None if i else "camera_moved"), stored_at=a.stored_at + 9000)
            for i, a in enumerate(alerts)]


async def publish(config: Config, messages: Sequence[FeedMessage], statuses: Sequence[CameraStatus] = ()) -> None:
    producer = AIOKafkaProducer(**kafka_options(config), acks="all")
    await producer.start()
    try:
        for message in messages:
            await producer.send_and_wait(config.ai_analysis.mq_topic, message.to_bytes(), key=message.camera_id.encode())
        for status in statuses:
            await producer.send_and_wait(config.topic(CAMERAS.name), status.to_bytes(), key=CAMERAS.key_of(status))
    finally:
        await producer.stop()


class Bridge:
    def __init__(self, folder: Path, stack_env: dict[str, str], extra_env: dict[str, str] | None = None) -> None:
        self.env = namespaced_env(stack_env, **(extra_env or {}))
        self.path = write_config(folder / "bridge.toml", "")
        self.config = load_config(self.path, self.env)[0]
        self.folder = folder
        self.port = free_port()
        asyncio.run(ensure_topics(self.config))
        self.process: ServiceProcess | None = None

    def start(self, kind: str, target: str, *options: str) -> None:
        self.process = ServiceProcess(f"bridge-{kind}", ["bridge", kind, target, "-c", str(self.path),
                                                         "--port", str(self.port), *options], self.env,
                                      self.folder / "logs")

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture
def bridge(tmp_path: Path, stack_env: dict[str, str]) -> Iterator[Bridge]:
    running = Bridge(tmp_path, stack_env, {"FRAMEWATCH_WEBHOOK_SECRET": SECRET})
    yield running
    running.stop()


async def collect(port: int, found: dict[str, list[bytes]]) -> None:
    """MQTT messages under framewatch/ (retained ones included), by topic, until cancelled."""
    while True:
        try:
            async with aiomqtt.Client("127.0.0.1", port) as client:
                await client.subscribe("framewatch/#", qos=1)
                async for message in client.messages:
                    found.setdefault(str(message.topic), []).append(bytes(message.payload))
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)  # the broker is starting


def alert_ids(payloads: list[bytes], kind: str = "alert") -> set[str]:
    """The alert ids of these messages, every one of them of this kind."""
    messages = [json.loads(p) for p in payloads]
    assert {m["kind"] for m in messages} <= {kind}
    return {m["alert_id"] for m in messages}


async def test_mqtt_bridge_publishes_alerts_and_availability_and_outlives_a_broker_restart(
        bridge: Bridge, mosquitto: Mosquitto) -> None:
    sent = alerts("cam-a", 3) + alerts("cam-b", 2)
    clipped = clips(sent[:2])
    status = CameraStatus(camera_id="cam-a", extractor="x", state=CameraState.STREAMING, fps_in=25, fps_out=5,
                          interval_ms=200)
    await publish(bridge.config, [*clipped[:1], *sent, *clipped[1:]], [status])  # a clip may come before its alert
    found: dict[str, list[bytes]] = {}
    collecting = asyncio.create_task(collect(mosquitto.port, found))
    try:
        await asyncio.sleep(1)  # subscribed by then; the bridge needs seconds more to join its consumer group
        await asyncio.to_thread(bridge.start, "mqtt", f"127.0.0.1:{mosquitto.port}")
        async with asyncio.timeout(60):
            while not (alert_ids(found.get("framewatch/events", [])) >= {m.alert_id for m in sent}
                       and len(found.get("framewatch/clips", [])) >= len(clipped)
                       and "framewatch/cam-a/availability" in found):
                await asyncio.sleep(0.2)
    finally:
        collecting.cancel()
    assert alert_ids(found["framewatch/cam-a/alerts"]) == {m.alert_id for m in sent if m.camera_id == "cam-a"}
    assert alert_ids(found["framewatch/cam-b/alerts"]) == {m.alert_id for m in sent if m.camera_id == "cam-b"}
    assert alert_ids(found["framewatch/cam-a/clips"], "clip") == alert_ids(found["framewatch/clips"], "clip") == {
        m.alert_id for m in clipped}
    assert {ClipMessage.model_validate_json(p) for p in found["framewatch/clips"]} == set(clipped)
    assert "framewatch/cam-b/clips" not in found
    assert found["framewatch/cam-a/availability"] == [b"online"] and found["framewatch/available"] == [b"online"]
    ready = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{bridge.port}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["mqtt"] is True

    mosquitto.stop()  # the broker goes away; alerts sent meanwhile wait uncommitted until it is back
    later = alerts("cam-a", 2, first=10)
    await publish(bridge.config, later)
    await asyncio.sleep(2)
    mosquitto.start()
    delivered = 'framewatch_bridge_alerts_delivered_total{bridge="mqtt"}'  # each acknowledged by the broker (QoS 1)
    async with asyncio.timeout(60):
        while await asyncio.to_thread(bridge.metric, delivered) < len(sent) + len(later):
            await asyncio.sleep(0.5)
    assert await asyncio.to_thread(bridge.metric, "framewatch_bridge_mqtt_reconnects_total") >= 1


Requests = list[tuple[bytes, dict[str, str]]]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, Requests]]:
    """A webhook receiver that answers 503 to its first two requests, then 200; it keeps what it was sent."""
    requests: Requests = []

    async def take(request: web.Request) -> web.Response:
        requests.append((await request.read(), dict(request.headers)))
        return web.Response(status=503 if len(requests) <= 2 else 200)

    app = web.Application()
    app.router.add_post("/hook", take)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", requests
    await runner.cleanup()


def assert_signed(requests: Requests) -> None:
    for body, headers in requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Framewatch-Signature"] == expected
        message = json.loads(body)
        assert (headers["X-Framewatch-Alert-Id"], headers["X-Framewatch-Kind"]) == (message["alert_id"],
                                                                                    message["kind"])


def posted(requests: Requests, kind: str) -> set[str]:
    """The alert ids of the messages of this kind the receiver took (it refused the first two)."""
    return {headers["X-Framewatch-Alert-Id"] for _, headers in requests[2:] if headers["X-Framewatch-Kind"] == kind}


async def test_webhook_bridge_delivers_every_alert_signed_retrying_a_failing_receiver(
        bridge: Bridge, receiver: tuple[str, Requests]) -> None:
    url, requests = receiver
    sent = alerts("cam-w", 4)
    await publish(bridge.config, [*clips(sent[:1]), *sent])  # clips are not posted unless asked for
    await asyncio.to_thread(bridge.start, "webhook", url)
    async with asyncio.timeout(90):
        while {m.alert_id for m in sent} - posted(requests, "alert"):
            await asyncio.sleep(0.2)
    assert len(requests) >= len(sent) + 2  # the two refused were sent again
    assert_signed(requests)
    assert not posted(requests, "clip")
    assert await asyncio.to_thread(bridge.metric, 'framewatch_bridge_webhook_requests_total{answer="5xx"}') == 2


async def test_webhook_bridge_posts_clip_messages_signed_when_asked(bridge: Bridge,
                                                                    receiver: tuple[str, Requests]) -> None:
    url, requests = receiver
    sent = alerts("cam-c", 3)
    clipped = clips(sent)
    await publish(bridge.config, [*clipped[:1], *sent, *clipped[1:]])
    await asyncio.to_thread(bridge.start, "webhook", url, "--clips")
    async with asyncio.timeout(90):
        while posted(requests, "clip") != {m.alert_id for m in clipped}:
            await asyncio.sleep(0.2)
    delivered = 'framewatch_bridge_clips_delivered_total{bridge="webhook"}'
    async with asyncio.timeout(10):  # counted once the receiver's answer is back
        while await asyncio.to_thread(bridge.metric, delivered) < len(clipped):
            await asyncio.sleep(0.2)
    assert posted(requests, "alert") == {m.alert_id for m in sent}
    assert_signed(requests)
    taken = {ClipMessage.model_validate_json(body) for body, headers in requests[2:]
             if headers["X-Framewatch-Kind"] == "clip"}
    assert taken == set(clipped)
