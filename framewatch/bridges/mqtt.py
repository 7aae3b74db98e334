"""`framewatch bridge mqtt`: alerts and camera availability on an MQTT broker, the way Frigate publishes them for
Home Assistant.

Topics (`--prefix`, default `framewatch`):
- `<prefix>/events`: every alert, the alert feed's JSON (`AlertMessage`), QoS 1;
- `<prefix>/<camera_id>/alerts`: the same, per camera;
- `<prefix>/clips` and `<prefix>/<camera_id>/clips`: each alert's clip once recorded (`ClipMessage`), QoS 1, on
  topics of their own so that the alerts' subscribers see alerts only;
- `<prefix>/<camera_id>/availability`: `online` while the camera streams, else `offline`, retained (from fw.cameras);
- `<prefix>/available`: `online` while the bridge runs, `offline` as its last will, retained.
With `--discovery`, Home Assistant's discovery configs too (`discovery.py`): a device per task of fw.tasks, its
configs emptied when the task is removed, and `<prefix>/<camera_id>/image_url`, the last alert's image (a presigned
URL), retained, published before the alert itself so that what the alert triggers finds its image.
A broker that goes away is reconnected to with backoff; the message waits uncommitted meanwhile."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Any

import aiomqtt
from mode import Service

from framewatch.bridges.discovery import OFFLINE, ONLINE, BridgeTopics, Discovery
from framewatch.bridges.feed import FeedConsumer
from framewatch.clients.bus import follow, key_text
from framewatch.clients.objectstore import ObjectStore
from framewatch.metrics import Tally
from framewatch.retry import Backoff, logged
from framewatch.schemas.config import Config
from framewatch.schemas.events import CameraState, CameraStatus, DecodeError, TaskEvent
from framewatch.schemas.feed import ClipMessage, FeedMessage
from framewatch.schemas.tasks import CameraTask
from framewatch.schemas.topics import CAMERAS, TASKS

log = logging.getLogger("framewatch.bridge.mqtt")

PUBLISH_BACKOFF = Backoff(first_s=0.5, max_s=10.0)
PUBLISHED = Tally("framewatch_bridge_mqtt_messages_total", "MQTT messages published, by kind", ["kind"])
RECONNECTS = Tally("framewatch_bridge_mqtt_reconnects_total", "Connections to the MQTT broker lost and made again")
DISCOVERY = Tally("framewatch_bridge_mqtt_discovery_total", "Home Assistant discovery configs published (config) "
                  "and emptied for a removed task (removed)", ["action"])


class MqttBridge(Service):
    def __init__(self, config: Config, host: str, port: int, prefix: str = "framewatch",
                 username: str = "", password: str = "", discovery_prefix: str | None = None,
                 alert_off_delay_s: int = 30, **kwargs: Any) -> None:
        """`discovery_prefix`: publish Home Assistant's discovery configs under it (None: none)."""
        super().__init__(**kwargs)
        self.config = config
        self.host, self.port = host, port
        self.topics = BridgeTopics(prefix.rstrip("/"))
        self.username, self.password = username or None, password or None
        self.feed = FeedConsumer(config, "mqtt", self.deliver)
        self.availability: dict[str, str] = {}
        self.discovery = None if discovery_prefix is None else Discovery(self.topics, discovery_prefix.rstrip("/"),
                                                                         alert_off_delay_s)
        # to presign the alerts' image URLs, which makes no request
        self.store = None if self.discovery is None else ObjectStore(config.frame_extractor.minio)
        self.announced: dict[str, dict[str, Any]] = {}  # camera: its configs as last published
        self._client: aiomqtt.Client | None = None
        self._connecting = asyncio.Lock()
        self.add_dependency(self.feed)

    async def on_start(self) -> None:
        await self._publish(self.topics.available, ONLINE, retain=True, kind="available")

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._publish_once(self.topics.available, OFFLINE, retain=True)
            await self._disconnect(self._client)

    async def deliver(self, message: FeedMessage) -> None:
        body = message.model_dump_json()
        if isinstance(message, ClipMessage):
            await self._publish(self.topics.camera(message.camera_id, "clips"), body, retain=False, kind="clip")
            await self._publish(self.topics.clips, body, retain=False, kind="clips")
            return
        if self.store is not None:  # a URL as the worker's API gives it: a read grant, never logged
            url = self.store.presign(message.image_key, self.config.ai_analysis.presign_expiry_sec)
            await self._publish(self.topics.camera(message.camera_id, "image_url"), url, retain=True, kind="image_url")
        await self._publish(self.topics.camera(message.camera_id, "alerts"), body, retain=False, kind="alert")
        await self._publish(self.topics.events, body, retain=False, kind="event")

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
            state = ONLINE if status.state is CameraState.STREAMING else OFFLINE
            camera = key_text(record.key)
            if self.availability.get(camera) != state:
                await self._publish(self.topics.camera(camera, "availability"), state, retain=True,
                                    kind="availability")
                self.availability[camera] = state

    @Service.task
    async def _follow_tasks(self) -> None:
        """With --discovery: a camera exists while its task is on fw.tasks (disabled or not); it goes away with a
        tombstone or a removed task, the only departure fw.tasks records (fw.cameras keeps a stopped camera)."""
        discovery = self.discovery
        if discovery is None:
            return
        async for record in follow(self.config, TASKS):
            try:
                task = None if record.value is None else TaskEvent.decode(record.value).task
            except DecodeError as error:
                log.warning("ignoring a bad record on fw.tasks: %s", error)
                continue
            if task is None:
                await self._withdraw(discovery, key_text(record.key))
            else:
                await self._announce(discovery, task)

    async def _announce(self, discovery: Discovery, task: CameraTask) -> None:
        """Publishes the camera's configs, again only when they changed (a rule setting's change leaves them)."""
        configs = discovery.configs(task)
        if self.announced.get(task.id) == configs:
            return
        for topic, payload in configs.items():
            await self._publish(topic, json.dumps(payload), retain=True, kind="discovery")
            DISCOVERY.labels("config").inc()
        self.announced[task.id] = configs

    async def _withdraw(self, discovery: Discovery, camera: str) -> None:
        """Empties the camera's configs, announced by this process or by one before it (a bridge that was down when
        the task went sees its tombstone only), and its retained image URL."""
        self.announced.pop(camera, None)
        for topic in discovery.withdrawn(camera):
            await self._publish(topic, "", retain=True, kind="discovery")
            DISCOVERY.labels("removed").inc()
        await self._publish(self.topics.camera(camera, "image_url"), "", retain=True, kind="image_url")

    async def _publish(self, topic: str, payload: str, retain: bool, kind: str) -> None:
        await PUBLISH_BACKOFF.call(self._publish_once, lambda e: isinstance(e, aiomqtt.MqttError) and not self.should_stop,
                                   logged(log, f"publishing to {topic}"), topic, payload, retain)
        PUBLISHED.labels(kind).inc()

    async def _publish_once(self, topic: str, payload: str, retain: bool) -> None:
        client = await self._connected()
        try:
            await client.publish(topic, payload, qos=1, retain=retain)
        except aiomqtt.MqttError:
            await self._disconnect(client)
            RECONNECTS.inc()
            raise

    async def _connected(self) -> aiomqtt.Client:
        """The client, connected by one task at a time: the bridge's tasks publish concurrently, and a second
        connection under the same client id would make the broker close the first."""
        async with self._connecting:
            if self._client is None:
                self._client = await self._connect()
            return self._client

    async def _connect(self) -> aiomqtt.Client:
        will = aiomqtt.Will(self.topics.available, OFFLINE, qos=1, retain=True)
        client = aiomqtt.Client(self.host, self.port, username=self.username, password=self.password, will=will,
                                identifier=f"framewatch-bridge-{socket.gethostname()}-{os.getpid()}")
        await client.__aenter__()
        return client

    async def _disconnect(self, client: aiomqtt.Client) -> None:
        """Closes `client` unless another task whose publish failed on it too closed it already (and may have
        connected again since)."""
        if self._client is not client:
            return
        self._client = None
        try:
            await client.__aexit__(None, None, None)
        except aiomqtt.MqttError:
            pass

    async def readiness(self) -> dict[str, bool]:
        return {"assigned": self.feed.joined, "mqtt": self._client is not None}
