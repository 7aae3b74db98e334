"""The task catalog: every worker follows the whole compacted fw.tasks topic, so rule settings changed at run
time (`framewatch tasks update`) apply to the next frame, and a camera added at run time has its rule."""

from __future__ import annotations

import logging

from mode import Service

from framewatch.schemas.config import Config
from framewatch.schemas.events import DecodeError, TaskEvent
from framewatch.schemas.tasks import CameraTask
from framewatch.schemas.topics import TASKS
from framewatch.streams.bus import follow

log = logging.getLogger("framewatch.catalog")


class TaskCatalog(Service):
    def __init__(self, config: Config, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.config = config
        self._known: dict[str, CameraTask] = {}

    @Service.task
    async def _follow(self) -> None:
        async for record in follow(self.config, TASKS):
            task_id = record.key.decode() if record.key else ""
            if record.value is None:
                self._known.pop(task_id, None)
                continue
            try:
                task = TaskEvent.decode(record.value).task
            except DecodeError as error:
                log.warning("ignoring a bad task record on %s: %s", record.topic, error)
                continue
            if task is None:
                self._known.pop(task_id, None)
            else:
                self._known[task_id] = task

    def get(self, task_id: str) -> CameraTask | None:
        return self._known.get(task_id)
