"""Home Assistant MQTT discovery for `framewatch bridge mqtt --discovery`: the configs that make Home Assistant
create a device per camera by itself, built here without a broker so that tests can check every key.

Per camera (a task on fw.tasks: the camera id is the task id), under the discovery prefix (`homeassistant`), with
`<node>` the bridge's topic prefix (so that two installations on one broker, two prefixes, stay two devices each):
- `<discovery>/binary_sensor/<node>/<camera>/config`, "Alert": on at each message on `<prefix>/<camera>/alerts`,
  whose JSON (the alert) becomes its attributes, and off `off_delay` seconds after the last one. Home Assistant
  keeps that timer (`off_delay`), so the bridge keeps none and publishes no OFF;
- `<discovery>/image/<node>/<camera>/config`, "Latest alert": the image at the URL the bridge publishes, retained,
  on `<prefix>/<camera>/image_url` for each alert (presigned, valid `presign_expiry_sec`).
Both are unavailable while the bridge is offline (`<prefix>/available`, its last will); the alert sensor also while
the camera does not stream (`<prefix>/<camera>/availability`, from fw.cameras). An empty retained payload on a
config topic deletes the entity (`withdrawn`).

Every key is one documented on home-assistant.io: integrations/binary_sensor.mqtt, integrations/image.mqtt and
integrations/mqtt (discovery topics and payloads); tests/test_mqtt_discovery.py checks them against a schema
written from those pages."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from framewatch.schemas.tasks import CameraTask

Component = Literal["binary_sensor", "image"]
COMPONENTS: tuple[Component, ...] = get_args(Component)
Payload = dict[str, Any]

ONLINE, OFFLINE = "online", "offline"
_NOT_TOPIC_ID = re.compile(r"[^a-zA-Z0-9_-]")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class BridgeTopics:
    """Where `bridge mqtt` publishes, under its prefix: named once, for its messages and for the discovery configs
    that point Home Assistant at them."""

    prefix: str

    @property
    def available(self) -> str:
        return f"{self.prefix}/available"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def clips(self) -> str:
        return f"{self.prefix}/clips"

    def camera(self, camera: str, leaf: Literal["alerts", "clips", "availability", "image_url"]) -> str:
        return f"{self.prefix}/{camera}/{leaf}"


def topic_id(text: str) -> str:
    """`text` as a discovery topic's node or object id, which Home Assistant wants of `[a-zA-Z0-9_-]`: unchanged
    when it is, else with '_' for the other characters and a digest of the original, so that the cameras `cam.1`
    and `cam_1` (task ids may hold '.') keep topics and unique ids of their own."""
    safe = _NOT_TOPIC_ID.sub("_", text)
    return safe if safe == text else f"{safe}_{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def slug(*parts: str) -> str:
    """An entity id's object part (lowercase letters, digits, single inner '_'), which `default_entity_id` needs."""
    return _NOT_SLUG.sub("_", "_".join(parts).lower()).strip("_")


@dataclass(frozen=True)
class Discovery:
    topics: BridgeTopics
    prefix: str = "homeassistant"
    off_delay_s: int = 30

    @property
    def node(self) -> str:
        return topic_id(self.topics.prefix)

    def config_topic(self, component: Component, camera: str) -> str:
        return f"{self.prefix}/{component}/{self.node}/{topic_id(camera)}/config"

    def configs(self, task: CameraTask) -> dict[str, Payload]:
        """Each config topic of the task's camera, with its payload."""
        built: dict[Component, Payload] = {"binary_sensor": self._alert_sensor(task), "image": self._latest_image(task)}
        return {self.config_topic(component, task.id): payload for component, payload in built.items()}

    def withdrawn(self, camera: str) -> list[str]:
        """The config topics to empty (retained) when the camera goes away: Home Assistant deletes its entities."""
        return [self.config_topic(component, camera) for component in COMPONENTS]

    def _alert_sensor(self, task: CameraTask) -> Payload:
        alerts = self.topics.camera(task.id, "alerts")
        return {**self._entity(task, "binary_sensor", "Alert", "alert"),
                "state_topic": alerts, "value_template": "{{ 'ON' }}",  # any alert message turns it on
                "payload_on": "ON", "payload_off": "OFF", "off_delay": self.off_delay_s,
                "json_attributes_topic": alerts, "device_class": "problem", "qos": 1,
                **_availability(self.topics.available, self.topics.camera(task.id, "availability"))}

    def _latest_image(self, task: CameraTask) -> Payload:
        """Available while the bridge is: the last alert's image stays worth seeing while the camera is down."""
        return {**self._entity(task, "image", "Latest alert", "latest_alert"),
                "url_topic": self.topics.camera(task.id, "image_url"), **_availability(self.topics.available)}

    def _entity(self, task: CameraTask, component: Component, name: str, suffix: str) -> Payload:
        camera = topic_id(task.id)
        return {"name": name, "unique_id": f"{self.node}_{camera}_{suffix}",
                "default_entity_id": f"{component}.{slug(self.node, camera, suffix)}",
                "device": {"identifiers": [f"{self.node}_{camera}"], "name": task.id, "manufacturer": "framewatch",
                           "model": task.task_type.value}}


def _availability(*topics: str) -> Payload:
    """Available while every topic says so: `all`, since a camera that streams behind a stopped bridge is not."""
    return {"availability": [{"topic": topic, "payload_available": ONLINE, "payload_not_available": OFFLINE}
                             for topic in topics],
            "availability_mode": "all"}
