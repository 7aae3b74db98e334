"""The service registry: every worker follows the whole compacted fw.services topic.

Each worker needs every service (routing is local), so the registry reads all partitions without a consumer
group instead of sharing them; the compacted topic is its changelog, and a restarted worker rebuilds the
registry by reading it from the beginning.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass

from mode import Service
from prometheus_client import Counter, Gauge

from framewatch.clients.bus import follow, key_text
from framewatch.schemas.config import Config
from framewatch.schemas.events import DecodeError, ServiceHeartbeat
from framewatch.schemas.tasks import TaskType
from framewatch.schemas.topics import SERVICES

log = logging.getLogger("framewatch.registry")

FORGET_AFTER_S = 3600.0

SERVICES_ALIVE = Gauge("framewatch_services_alive", "Algorithm services whose heartbeat is fresh")
HEARTBEATS_REFUSED = Counter("framewatch_services_heartbeats_refused_total",
                             "Heartbeats ignored: unreadable, or an endpoint outside ai_analysis.service_endpoints",
                             ["reason"])


@dataclass
class RegisteredService:
    heartbeat: ServiceHeartbeat
    last_seen: float
    static: bool = False

    @property
    def service_id(self) -> str:
        return self.heartbeat.service_id


class ServiceRegistry(Service):
    def __init__(self, config: Config, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.config = config
        self._services: dict[str, RegisteredService] = {}
        self._refused: set[str] = set()
        for declared in config.ai_analysis.services:
            heartbeat = ServiceHeartbeat(service_id=declared.id, endpoint=declared.endpoint,
                                         task_types=declared.task_types, capacity=declared.capacity,
                                         max_batch=declared.max_batch, version="static")
            self._services[declared.id] = RegisteredService(heartbeat, time.monotonic(), static=True)

    @Service.task
    async def _follow(self) -> None:
        async for message in follow(self.config, SERVICES):
            if message.value is None:
                self._services.pop(key_text(message.key), None)
                continue
            try:
                heartbeat = ServiceHeartbeat.decode(message.value)
            except DecodeError as error:
                HEARTBEATS_REFUSED.labels("unreadable").inc()
                log.warning("ignoring a bad heartbeat on %s: %s", message.topic, error)
                continue
            self.observe(heartbeat)

    def allowed(self, endpoint: str) -> bool:
        patterns = self.config.ai_analysis.service_endpoints
        return not patterns or any(fnmatch.fnmatchcase(endpoint, pattern) for pattern in patterns)

    def observe(self, heartbeat: ServiceHeartbeat) -> None:
        known = self._services.get(heartbeat.service_id)
        if known is not None and known.static:
            return
        if not self.allowed(heartbeat.endpoint):
            HEARTBEATS_REFUSED.labels("endpoint_not_allowed").inc()
            if heartbeat.service_id not in self._refused:  # once per service: heartbeats come every few seconds
                self._refused.add(heartbeat.service_id)
                log.warning("ignoring service %s: its endpoint %s matches none of ai_analysis.service_endpoints",
                            heartbeat.service_id, heartbeat.endpoint)
            return
        if known is None:
            log.info("service %s registered at %s (capacity %d)", heartbeat.service_id, heartbeat.endpoint,
                     heartbeat.capacity)
        self._services[heartbeat.service_id] = RegisteredService(heartbeat, self._seen_at(heartbeat))
        SERVICES_ALIVE.set(len(self.alive()))

    def _seen_at(self, heartbeat: ServiceHeartbeat) -> float:
        """Monotonic time of the heartbeat, so a replayed old heartbeat is already stale."""
        age_s = max(0.0, time.time() - heartbeat.emitted_at / 1000)
        return time.monotonic() - age_s

    @Service.timer(60.0)
    async def _forget_hourly(self) -> None:
        self.forget_gone(time.monotonic() - max(FORGET_AFTER_S, 10 * self.config.ai_analysis.heartbeat_timeout_sec))

    def forget_gone(self, horizon: float) -> None:
        """Services silent since `horizon` are forgotten (an hour and ten heartbeat timeouts): ids do not pile up."""
        for service_id, service in list(self._services.items()):
            if not service.static and service.last_seen < horizon:
                del self._services[service_id]
                log.info("service %s forgotten: no heartbeat for an hour", service_id)
        self._refused.clear()

    def known(self) -> list[RegisteredService]:
        return list(self._services.values())

    def alive(self, task_type: TaskType | None = None) -> list[RegisteredService]:
        horizon = time.monotonic() - self.config.ai_analysis.heartbeat_timeout_sec
        return [s for s in self._services.values() if (s.static or s.last_seen >= horizon)
                and (task_type is None or task_type in s.heartbeat.task_types)]
