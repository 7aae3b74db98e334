"""The Faust app: its topics and tables in one place, and the resources its agents share.

Topics carry raw bytes; agents decode them with `Topology.decode`, which turns a bad record into a dead letter
with its reason instead of ending the agent (robinhood/faust#586).
"""

from __future__ import annotations

import logging
import tempfile
from typing import TypeVar

import faust
from mode import Service

from framewatch.agents.catalog import camera_states, task_catalog
from framewatch.agents.database import AlertStore
from framewatch.agents.inference import ServiceClient
from framewatch.agents.registry import ServiceRegistry
from framewatch.agents.scheduler import InferenceScheduler
from framewatch.schemas import topics
from framewatch.schemas.config import Config
from framewatch.schemas.events import DeadLetter, DecodeError, Event
from framewatch.schemas.tasks import CameraTask
from framewatch.schemas.topics import TopicSpec
from framewatch.streams.objectstore import ObjectStore

log = logging.getLogger("framewatch.worker")

E = TypeVar("E", bound=Event)


class Topology:
    """Every topic and table of the worker, declared once."""

    def __init__(self, app: faust.App, config: Config) -> None:
        self.app = app
        self.config = config
        self.frames = self._topic(topics.FRAMES)
        self.detections = self._topic(topics.DETECTIONS)
        self.alerts = self._topic(topics.ALERTS)
        self.alerts_stored = self._topic(topics.ALERTS_STORED)
        self.frame_outcomes = self._topic(topics.FRAME_OUTCOMES)
        self.retention = self._topic(topics.RETENTION)
        self.counts = self._topic(topics.COUNTS)
        self.pressure = self._topic(topics.PRESSURE)
        self.dead_letters = self._topic(topics.DEAD_LETTERS)
        # task id (bytes) -> RuleState as bytes: tracks, incidents, cooldowns, the open count window (rules/state.py)
        self.rule_state = app.Table("rule-state", key_type=bytes, value_type=bytes, partitions=self.partitions)

    def _topic(self, spec: TopicSpec) -> faust.TopicT:
        return self.app.topic(self.config.topic(spec.name), key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", partitions=self.partitions)

    @property
    def partitions(self) -> int:
        return self.config.framewatch.topic_partitions

    async def send(self, topic: faust.TopicT, event: Event, key: str) -> None:
        await topic.send(key=key.encode(), value=event.to_bytes())

    async def decode(self, record: type[E], raw: bytes, topic: faust.TopicT) -> E | None:
        try:
            return record.decode(raw)
        except DecodeError as error:
            log.error("dead letter from %s: %s", topic.get_topic_name(), error)
            letter = DeadLetter(topic=topic.get_topic_name(), reason=str(error), key=None,
                                payload=raw.decode("utf-8", "replace") if isinstance(raw, bytes) else repr(raw))
            await self.send(self.dead_letters, letter, key=letter.topic)
            return None


class Resources(Service):
    """What the agents share: the object store, the alert store, the service registry, the inference scheduler,
    the tasks and camera states as the extractors publish them."""

    def __init__(self, config: Config, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.config = config
        self.store = ObjectStore(config.frame_extractor.minio)
        self.alerts = AlertStore(config.database.dsn.get_secret_value())
        self.registry = ServiceRegistry(config)
        self.catalog = task_catalog(config)  # fw.tasks
        self.camera_states = camera_states(config)  # fw.cameras
        self.client = ServiceClient(config, self.store)
        self.scheduler = InferenceScheduler(config, self.registry, self.client)

    async def on_start(self) -> None:
        await self.store.ensure_bucket()
        await self.alerts.connect()
        await self.registry.start()
        await self.catalog.start()
        await self.camera_states.start()
        await self.scheduler.start()

    async def on_stop(self) -> None:
        await self.scheduler.stop()
        await self.camera_states.stop()
        await self.catalog.stop()
        await self.registry.stop()
        await self.client.close()
        await self.alerts.close()

    def task_settings(self, task_id: str) -> CameraTask | None:
        """A task's rule settings as fw.tasks has them, else as this worker's config declares them, else None."""
        try:
            return self.catalog.values.get(task_id) or self.config.task(task_id)
        except KeyError:
            return None


def create_app(config: Config) -> faust.App:
    namespace = config.framewatch.namespace
    app = faust.App(
        f"{namespace}-framewatch" if namespace else "framewatch",
        broker=f"kafka://{config.kafka_bootstrap}",
        store="memory://",
        datadir=config.framewatch.data_dir or tempfile.mkdtemp(prefix="framewatch-worker-"),
        web_port=config.framewatch.worker_web_port,
        web_host=config.framewatch.bind_host,
        topic_partitions=config.framewatch.topic_partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        broker_session_timeout=10.0,  # a crashed worker's partitions move within 10 s, not Faust's default 60
        stream_wait_empty=True,
    )
    return app
