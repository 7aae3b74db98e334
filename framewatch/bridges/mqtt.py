"""`framewatch bridge mqtt`: alerts and camera availability on an MQTT broker, the way Frigate publishes them for
Home Assistant.

Topics (`--prefix`, default `framewatch`):
- `<prefix>/events`: every alert, the alert feed's JSON (`AlertMessage`), QoS 1;
- `<prefix>/<camera_id>/alerts`: the same, per camera;
- `<prefix>/clips` and `<prefix>/<camera_id>/clips`: each alert's clip once recorded (`ClipMessage`), QoS 1, on
  topics of their own so that the alerts' subscribers see alerts only;
- `<prefix>/<camera_id>/availability`: `online` while the camera streams, else `offline`, retained (from fw.cameras);
- `<prefix>/available`: `online` while the bridge runs, `offline` as its last will, retained.
A broker that goes away is reconnected to with backoff; the message waits uncommitted meanwhile."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import aiomqtt
from mode import Service

from framewatch.bridges.feed import FeedConsumer
from framewatch.clients.bus import follow, key_text
from framewatch.metrics import Tally
from framewatch.retry import Backoff, logged
from framewatch.schemas.config import Config
from framewatch.schemas.events import CameraState, CameraStatus, DecodeError
from framewatch.schemas.feed import ClipMessage, FeedMessage
from framewatch.schemas.topics import CAMERAS

log = logging.getLogger("framewatch.bridge.mqtt")

PUBLISH_BACKOFF = Backoff(first_s=0.5, max_s=10.0)
PUBLISHED = Tally("framewatch_bridge_mqtt_messages_total", "MQTT messages published, by kind", ["kind"])
RECONNECTS = Tally("framewatch_bridge_mqtt_reconnects_total", "Connections to the MQTT broker lost and made again")


class MqttBridge(Service):
    def __init__(self, config: Config, host: str, port: int, prefix: str = "framewatch",
                 username: str = "", password: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.host, self.port, self.prefix = host, port, prefix.rstrip("/")
        self.username, self.password = username or None, password or None
        self.feed = FeedConsumer(config, "mqtt", self.deliver)
        self.availability: dict[str, str] = {}
        self._client: aiomqtt.Client | None = None
        self.add_dependency(self.feed)

    async def on_start(self) -> None:
        await self._publish(f"{self.prefix}/available", "online", retain=True, kind="available")

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._publish_once(f"{self.prefix}/available", "offline", retain=True)
            await self._disconnect()

    async def deliver(self, message: FeedMessage) -> None:
        body = message.model_dump_json()
        camera = f"{self.prefix}/{message.camera_id}"
        if isinstance(message, ClipMessage):
            await self._publish(f"{camera}/clips", body, retain=False, kind="clip")
            await self._publish(f"{self.prefix}/clips", body, retain=False, kind="clips")
        else:
            await self._publish(f"{camera}/alerts", body, retain=False, kind="alert")
            await self._publish(f"{self.prefix}/events", body, retain=False, kind="event")

    @Service.task
    async def _follow_cameras(self) -> None:
        async for record in follow(self.config, CAMERAS):
            if record.value is None:
                continue
            try:
                status = CameraStatus.decode(record.value)
            except DecodeError as error:
                log.warning("ignoring a bad record on fw.cameras: %s", error)
                continue
            state = "online" if status.state is CameraState.STREAMING else "offline"
            camera = key_text(record.key)
            if self.availability.get(camera) != state:
                await self._publish(f"{self.prefix}/{camera}/availability", state, retain=True, kind="availability")
                self.availability[camera] = state

    async def _publish(self, topic: str, payload: str, retain: bool, kind: str) -> None:
        await PUBLISH_BACKOFF.call(self._publish_once, lambda e: isinstance(e, aiomqtt.MqttError) and not self.should_stop,
                                   logged(log, f"publishing to {topic}"), topic, payload, retain)
        PUBLISHED.labels(kind).inc()

    async def _publish_once(self, topic: str, payload: str, retain: bool) -> None:
        if self._client is None:
            self._client = await self._connect()
        try:
            await self._client.publish(topic, payload, qos=1, retain=retain)
        except aiomqtt.MqttError:
            await self._disconnect()
            RECONNECTS.inc()
            raise

    async def _connect(self) -> aiomqtt.Client:
        will = aiomqtt.Will(f"{self.prefix}/available", "offline", qos=1, retain=True)
        client = aiomqtt.Client(self.host, self.port, username=self.username, password=self.password, will=will,
                                identifier=f"framewatch-bridge-{socket.gethostname()}-{os.getpid()}")
        await client.__aenter__()
        return client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                pass

    async def readiness(self) -> dict[str, bool]:
        return {"assigned": self.feed.joined, "mqtt": self._client is not None}
