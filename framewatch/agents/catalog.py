"""Compacted topics every worker follows whole, without a consumer group: the last value of each key.

`fw.tasks` gives the rule settings changed at run time (`framewatch tasks update`: they apply to the next frame)
and the rules of cameras added at run time; `fw.cameras` gives what the extractors say of each camera, and
`fw.incidents` how many incidents each camera's rule has open, for `/api/cameras`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from mode import Service

from framewatch.clients.bus import BrokerUnavailable, follow, key_text, read_records
from framewatch.schemas.config import Config
from framewatch.schemas.events import CameraStatus, DecodeError, OpenIncidents, TaskEvent
from framewatch.schemas.tasks import CameraTask
from framewatch.schemas.topics import CAMERAS, INCIDENTS, TASKS, TopicSpec

log = logging.getLogger("framewatch.catalog")

V = TypeVar("V")


class CompactedView(Service, Generic[V]):
    def __init__(self, config: Config, spec: TopicSpec, read: Callable[[bytes], V | None],
                 **kwargs: object) -> None:
        """`read` turns a record's value into what is kept; None (like a tombstone) forgets the key."""
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.config = config
        self.spec = spec
        self.read = read
        self.values: dict[str, V] = {}

    @Service.task
    async def _follow(self) -> None:
        async for record in follow(self.config, self.spec):
            self.on_record(record)

    def on_record(self, record: ConsumerRecord) -> None:
        self._keep_readable(key_text(record.key), record.value)

    def _keep_readable(self, key: str, raw: bytes | None) -> None:
        try:
            self.keep(key, raw)
        except DecodeError as error:
            log.warning("ignoring a bad record on %s: %s", self.config.topic(self.spec.name), error)

    def keep(self, key: str, raw: bytes | None) -> None:
        """Keeps what a record's value reads as; a tombstone, or a value that reads as None, forgets the key."""
        value = None if raw is None else self.read(raw)
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value


class TaskCatalog(CompactedView[CameraTask]):
    """The tasks (`values`), and each one's record whole (`events`: its candidate, what last happened to it). The
    record is decoded a second time for `events`: fw.tasks changes rarely, and `values` stays what every reader
    of the catalog knows."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, TASKS, lambda raw: TaskEvent.decode(raw).task)
        self.events: dict[str, TaskEvent] = {}
        self._read_at_start: dict[str, int] = {}  # each key's offset in the start's read: the follow skips to it

    async def on_start(self) -> None:
        """fw.tasks as it stands, read whole before the agents start (they start after the app's dependencies): a
        restarted worker evaluates its first frames with the tasks' settings and candidates as fw.tasks has them,
        not with its config's and none. The follow, which reads the topic from its start, then skips each key's
        records up to the one read here (else it would show older records again until it caught up). A read that
        fails (the broker slow or away) leaves the tasks to the follow, as before."""
        try:
            records = await read_records(self.config, self.config.topic(self.spec.name))
        except (KafkaError, BrokerUnavailable, LookupError, TimeoutError) as error:
            log.warning("fw.tasks could not be read whole at start (%r): the tasks come as they are followed", error)
            return
        for record in records:
            if record.key is not None:
                self._read_at_start[key_text(record.key)] = record.offset
                self._keep_readable(key_text(record.key), record.value)

    def on_record(self, record: ConsumerRecord) -> None:
        key = key_text(record.key)
        if record.offset > self._read_at_start.get(key, -1):
            self._keep_readable(key, record.value)

    def keep(self, key: str, raw: bytes | None) -> None:
        super().keep(key, raw)
        if raw is not None and key in self.values:
            self.events[key] = TaskEvent.decode(raw)
        else:
            self.events.pop(key, None)


def task_catalog(config: Config) -> TaskCatalog:
    return TaskCatalog(config)


def camera_states(config: Config) -> CompactedView[CameraStatus]:
    return CompactedView(config, CAMERAS, CameraStatus.decode)


def open_incidents(config: Config) -> CompactedView[OpenIncidents]:
    return CompactedView(config, INCIDENTS, OpenIncidents.decode)
