"""Compacted topics every worker follows whole, without a consumer group: the last value of each key.

`fw.tasks` gives the rule settings changed at run time (`framewatch tasks update`: they apply to the next frame)
and the rules of cameras added at run time; `fw.cameras` gives what the extractors say of each camera, for
`/api/cameras`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from mode import Service

from framewatch.clients.bus import follow, key_text
from framewatch.schemas.config import Config
from framewatch.schemas.events import CameraStatus, DecodeError, TaskEvent
from framewatch.schemas.tasks import CameraTask
from framewatch.schemas.topics import CAMERAS, TASKS, TopicSpec

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
            key = key_text(record.key)
            try:
                value = None if record.value is None else self.read(record.value)
            except DecodeError as error:
                log.warning("ignoring a bad record on %s: %s", record.topic, error)
                continue
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = value


def task_catalog(config: Config) -> CompactedView[CameraTask]:
    return CompactedView(config, TASKS, lambda raw: TaskEvent.decode(raw).task)


def camera_states(config: Config) -> CompactedView[CameraStatus]:
    return CompactedView(config, CAMERAS, CameraStatus.decode)
