"""Heartbeats: an algorithm service announces itself on the compacted topic fw.services every few seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from framewatch.clients.bus import EventProducer
from framewatch.schemas.config import Config
from framewatch.schemas.events import ServiceHeartbeat
from framewatch.schemas.topics import SERVICES

log = logging.getLogger("framewatch.detector")

HEARTBEAT_INTERVAL_S = 3.0


class Announcer:
    """Sends each heartbeat the callables give, now and every HEARTBEAT_INTERVAL_S, until stopped."""

    def __init__(self, config: Config, heartbeats: Callable[[], list[ServiceHeartbeat]]) -> None:
        self.heartbeats = heartbeats
        self.producer = EventProducer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()
        self._task = asyncio.create_task(self._announce())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.producer.stop()

    async def _announce(self) -> None:
        while True:
            for heartbeat in self.heartbeats():
                try:
                    await self.producer.send(SERVICES, heartbeat)
                except Exception as error:  # noqa: BLE001 - a missed heartbeat must not end the loop
                    log.warning("heartbeat of %s failed: %s", heartbeat.service_id, error)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
