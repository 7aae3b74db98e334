"""Home Assistant MQTT discovery (`bridge mqtt --discovery`): the configs checked against Home Assistant's documented
schema, built alone and as Debian's mosquitto_sub reads them, retained, from a real mosquitto the bridge published
them to; the empty retained payloads that delete a camera's entities once its task is removed."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import jsonschema
import pytest

from framewatch.bridges.discovery import BridgeTopics, Discovery, topic_id
from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.tasks import add_task, remove_task
from framewatch.schemas.events import CameraState, CameraStatus
from framewatch.schemas.tasks import CameraTask, TaskType
from tests.conftest import SAMPLE_JPEG
from tests.mosquitto import Mosquitto, Received, mosquitto  # noqa: F401 (a fixture)
from tests.test_bridges import Bridge, alerts, bridge, publish  # noqa: F401 (a fixture)

# Home Assistant's schema, as its documentation gives it: home-assistant.io/integrations/binary_sensor.mqtt/ and
# /integrations/image.mqtt/ (each key with its type and allowed values; `default_entity_id`, which replaces
# `object_id` from 2025.10, as /integrations/infrared.mqtt/ words it: `<component>.<object id>`), and
# /integrations/mqtt/#mqtt-discovery (the topic; unknown keys are ignored there, so a misspelt one would fail
# silently: here every key must be documented).
STRING: dict[str, Any] = {"type": "string"}
TOPIC: dict[str, Any] = {"type": "string", "minLength": 1}
# <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, the ids of [a-zA-Z0-9_-]
DISCOVERY_TOPIC = re.compile(r"^homeassistant/(?P<component>binary_sensor|image)/([a-zA-Z0-9_-]+/)?[a-zA-Z0-9_-]+"
                             r"/config$")
BINARY_SENSOR_CLASSES = ["battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
                         "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
                         "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
                         "tamper", "update", "vibration", "window"]
DEVICE = {"type": "object", "additionalProperties": False,
          "anyOf": [{"required": ["identifiers"]}, {"required": ["connections"]}],
          "properties": {"identifiers": {"anyOf": [{"type": "array", "items": STRING, "minItems": 1}, STRING]},
                         "connections": {"type": "array", "items": {"type": "array", "items": STRING,
                                                                    "minItems": 2, "maxItems": 2}},
                         **{key: STRING for key in ("configuration_url", "hw_version", "manufacturer", "model",
                                                    "model_id", "name", "serial_number", "suggested_area",
                                                    "sw_version", "via_device")}}}


def entity_id(component: str) -> dict[str, Any]:
    """An entity id of the component, as Home Assistant's valid_entity_id takes it."""
    return {"type": "string", "pattern": rf"^(?!.+__){component}\.(?!_)[\da-z_]+(?<!_)$"}


ENTITY = {"availability": {"type": "array", "minItems": 1, "items": {
              "type": "object", "additionalProperties": False, "required": ["topic"],
              "properties": {"topic": TOPIC, "payload_available": STRING, "payload_not_available": STRING,
                             "value_template": STRING}}},
          "availability_mode": {"enum": ["all", "any", "latest"]},
          "availability_template": STRING, "availability_topic": TOPIC, "device": DEVICE,
          "enabled_by_default": {"type": "boolean"}, "encoding": STRING, "entity_category": STRING, "icon": STRING,
          "json_attributes_template": STRING, "json_attributes_topic": TOPIC, "name": {"type": ["string", "null"]},
          "object_id": STRING, "unique_id": STRING}
RULES = {"type": "object", "additionalProperties": False,
         "not": {"required": ["availability", "availability_topic"]},  # "must not be used together"
         "dependentRequired": {"device": ["unique_id"]}}  # "only works when unique_id is set"
SCHEMAS = {
    "binary_sensor": {**RULES, "required": ["state_topic"], "properties": {
        **ENTITY, "default_entity_id": entity_id("binary_sensor"),
        "device_class": {"enum": BINARY_SENSOR_CLASSES}, "entity_picture": STRING,
        "expire_after": {"type": "integer"}, "force_update": {"type": "boolean"}, "off_delay": {"type": "integer"},
        "payload_available": STRING, "payload_not_available": STRING, "payload_on": STRING, "payload_off": STRING,
        "qos": {"enum": [0, 1, 2]}, "state_topic": TOPIC, "value_template": STRING}},
    "image": {**RULES, "properties": {
        **ENTITY, "default_entity_id": entity_id("image"),
        "content_type": STRING, "image_encoding": {"enum": ["b64"]}, "image_topic": TOPIC, "url_template": STRING,
        "url_topic": TOPIC},
        # exactly one of image_topic and url_topic; content_type "cannot be used with the url_topic"
        "oneOf": [{"required": ["image_topic"]}, {"required": ["url_topic"]}],
        "dependentSchemas": {"url_topic": {"not": {"required": ["content_type"]}}}}}


def assert_home_assistants(topic: str, payload: dict[str, Any]) -> None:
    """A discovery config Home Assistant takes, by its documentation."""
    found = DISCOVERY_TOPIC.match(topic)
    assert found, f"{topic} is not a discovery topic"
    jsonschema.Draft202012Validator(SCHEMAS[found["component"]]).validate(payload)


def task(camera: str) -> CameraTask:
    return CameraTask(id=camera, task_type=TaskType.AREA_INTRUSION, rtsp_url="rtsp://127.0.0.1:1/none")


CAMERAS = [task("cam-a"), task("Gate.North_2"), task("gate_north_2")]
DISCOVERY = Discovery(BridgeTopics("framewatch"), off_delay_s=45)


def test_each_cameras_configs_are_home_assistants() -> None:
    configs = {topic: payload for camera in CAMERAS for topic, payload in DISCOVERY.configs(camera).items()}
    assert len(configs) == 2 * len(CAMERAS)
    for topic, payload in configs.items():
        assert_home_assistants(topic, payload)
    unique_ids = [payload["unique_id"] for payload in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)  # two alike would make Home Assistant refuse the second


def test_a_config_beyond_the_documentation_fails_the_check() -> None:
    """The checker can fail: a misspelt key, a missing one, keys the documentation says exclude each other."""
    sensor, image = DISCOVERY.configs(task("cam-a")).items()
    for topic, payload in [(sensor[0], {**sensor[1], "stat_topic": "x"}),
                           (sensor[0], {key: value for key, value in sensor[1].items() if key != "state_topic"}),
                           (sensor[0], {**sensor[1], "device_class": "alarm"}),
                           (sensor[0], {**sensor[1], "availability_topic": "x"}),
                           (image[0], {**image[1], "content_type": "image/jpeg"}),
                           (image[0], {**image[1], "image_topic": "x"})]:
        with pytest.raises(jsonschema.ValidationError):
            assert_home_assistants(topic, payload)


def test_ids_are_what_discovery_topics_allow_and_keep_cameras_apart() -> None:
    assert topic_id("cam-a") == "cam-a"
    assert topic_id("Gate.North_2") != topic_id("Gate_North_2")
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", topic_id("Gate.North_2"))
    assert DISCOVERY.config_topic("image", "Gate.North_2") != DISCOVERY.config_topic("image", "Gate_North_2")


def test_configs_point_at_the_bridges_topics() -> None:
    (sensor_topic, sensor), (image_topic, image) = DISCOVERY.configs(task("cam-a")).items()
    assert (sensor_topic, image_topic) == ("homeassistant/binary_sensor/framewatch/cam-a/config",
                                           "homeassistant/image/framewatch/cam-a/config")
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == "framewatch/cam-a/alerts"
    assert sensor["off_delay"] == 45 and sensor["payload_on"] == "ON"
    assert [a["topic"] for a in sensor["availability"]] == ["framewatch/available", "framewatch/cam-a/availability"]
    assert sensor["availability_mode"] == "all"
    assert image["url_topic"] == "framewatch/cam-a/image_url"
    assert [a["topic"] for a in image["availability"]] == ["framewatch/available"]
    assert sensor["device"] == image["device"] == {"identifiers": ["framewatch_cam-a"], "name": "cam-a",
                                                   "manufacturer": "framewatch", "model": "area_intrusion"}
    assert DISCOVERY.withdrawn("cam-a") == [sensor_topic, image_topic]


def counted(bridge: Bridge, least: dict[str, float]) -> bool:
    """Whether the bridge's metrics reached these counts (not yet while it starts)."""
    try:
        return all(bridge.metric(name) >= count for name, count in least.items())
    except httpx.TransportError:
        return False


def configs_of(messages: list[Received]) -> dict[str, dict[str, Any]]:
    assert all(m.retained for m in messages)
    return {m.topic: json.loads(m.payload) for m in messages}


async def test_bridge_publishes_retained_configs_home_assistant_takes_and_empties_them_with_the_task(
        bridge: Bridge, mosquitto: Mosquitto) -> None:
    kept, gone = task("cam-h1"), task("cam-h2")
    for camera in (kept, gone):
        await add_task(bridge.config, camera.model_dump())
    alert = alerts(kept.id, 1)[0]
    streaming = CameraStatus(camera_id=kept.id, extractor="x", state=CameraState.STREAMING, fps_in=25, fps_out=5,
                             interval_ms=200)
    await publish(bridge.config, [alert], [streaming])
    store = ObjectStore(bridge.config.frame_extractor.minio)
    await store.ensure_bucket()
    await store.put(alert.image_key, SAMPLE_JPEG)
    store.close()
    await asyncio.to_thread(bridge.start, "mqtt", f"127.0.0.1:{mosquitto.port}", "--discovery",
                            "--alert-off-delay", "45")
    async with asyncio.timeout(45):
        while not await asyncio.to_thread(counted, bridge, {
                'framewatch_bridge_mqtt_discovery_total{action="config"}': 4,
                "framewatch_bridge_alerts_delivered_total": 1,
                'framewatch_bridge_mqtt_messages_total{kind="availability"}': 1}):
            await asyncio.sleep(0.2)

    with mosquitto.subscribe("homeassistant/#", wait_s=2, retained_only=True) as held:
        configs = configs_of(await asyncio.to_thread(held.rest))
    assert configs == {**DISCOVERY.configs(kept), **DISCOVERY.configs(gone)}
    for topic, payload in configs.items():
        assert_home_assistants(topic, payload)
    with mosquitto.subscribe("framewatch/+/+", wait_s=2, retained_only=True) as held:
        state = {m.topic: m.payload for m in await asyncio.to_thread(held.rest)}
    assert state["framewatch/cam-h1/availability"] == "online"
    image = await asyncio.to_thread(httpx.get, state["framewatch/cam-h1/image_url"], timeout=5)
    assert image.status_code == 200 and image.content == SAMPLE_JPEG  # what Home Assistant downloads

    with mosquitto.subscribe("homeassistant/+/framewatch/cam-h2/config", wait_s=30) as watching:
        held_before = configs_of(await asyncio.to_thread(watching.take, 2))  # subscribed from here on
        assert set(held_before) == set(DISCOVERY.withdrawn(gone.id))
        await remove_task(bridge.config, gone.id)
        emptied = await asyncio.to_thread(watching.take, 2)
    assert {(m.topic, m.payload) for m in emptied} == {(topic, "") for topic in DISCOVERY.withdrawn(gone.id)}
    with mosquitto.subscribe("homeassistant/#", wait_s=2, retained_only=True) as held:
        assert configs_of(await asyncio.to_thread(held.rest)) == DISCOVERY.configs(kept)
    assert await asyncio.to_thread(bridge.metric, 'framewatch_bridge_mqtt_discovery_total{action="removed"}') == 2
