"""Each algorithm service's load on this worker (requests in flight, breaker, latency, faults), and which service a
frame goes to: the least loaded, relative to its declared capacity, of those with room. Synchronous and without
I/O; the scheduler mirrors the figures into metrics."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from framewatch.agents.inference.breaker import BreakerSettings, BreakerState, CircuitBreaker
from framewatch.agents.inference.registry import RegisteredService
from framewatch.schemas.tasks import TaskType

Usable = Callable[[str, int], int]  # this worker's part of a service's capacity: (service id, capacity) -> slots


@dataclass(eq=False)
class ServiceLoad:
    breaker: CircuitBreaker
    in_flight: int = 0
    requests: int = 0
    faults: int = 0
    latency_ms: float | None = None

    def observe_latency(self, ms: float) -> None:
        self.latency_ms = ms if self.latency_ms is None else 0.8 * self.latency_ms + 0.2 * ms


class ServiceLoads(dict[str, ServiceLoad]):
    """Every service's load by service id, made on first use; `in_flight` counts the requests over all of them, and
    `success_ratio` is the share of the last 200 requests without a fault."""

    def __init__(self, breaker_settings: BreakerSettings) -> None:
        super().__init__()
        self.breaker_settings = breaker_settings
        self.in_flight = 0
        self._recent: deque[bool] = deque(maxlen=200)

    @property
    def success_ratio(self) -> float:
        return sum(self._recent) / len(self._recent)

    def of(self, service_id: str) -> ServiceLoad:
        load = self.get(service_id)
        if load is None:
            load = self[service_id] = ServiceLoad(CircuitBreaker(self.breaker_settings))
        return load

    def in_flight_on(self, service_id: str) -> int:
        load = self.get(service_id)
        return 0 if load is None else load.in_flight

    def dispatched(self, service_id: str) -> ServiceLoad:
        load = self.of(service_id)
        load.breaker.on_dispatch()
        load.in_flight += 1
        self.in_flight += 1
        return load

    def returned(self, service_id: str) -> ServiceLoad:
        load = self.of(service_id)
        load.in_flight -= 1
        self.in_flight -= 1
        return load

    def record(self, service_id: str, fault: bool) -> ServiceLoad:
        """A request's end: a fault (the service's, not the frame's) counts against its breaker."""
        load = self.of(service_id)
        load.requests += 1
        load.faults += fault
        load.breaker.record(success=not fault)
        self._recent.append(not fault)
        return load

    def ready(self, services: Iterable[RegisteredService], usable: Usable) -> list[RegisteredService]:
        """The services with room for a request: fewer in flight than this worker's part of their capacity, and a
        breaker that lets one through."""
        return [service for service in services if self._has_room(service, usable)]

    def _has_room(self, service: RegisteredService, usable: Usable) -> bool:
        load = self.of(service.service_id)
        return load.in_flight < usable(service.service_id, service.heartbeat.capacity) and load.breaker.allows()

    def wanted(self, services: Iterable[RegisteredService],
               task_types: AbstractSet[TaskType]) -> list[RegisteredService]:
        """The services that a waiting frame (of one of `task_types`) could go to once they have room."""
        return [service for service in services if self.of(service.service_id).breaker.allows()
                and not task_types.isdisjoint(service.heartbeat.task_types)]

    def least_loaded(self, task_type: TaskType, tried: Collection[str],
                     ready: Iterable[RegisteredService]) -> RegisteredService | None:
        """Of the services with room (`ready`), the least loaded relative to its capacity that serves the task type
        and has not been tried for the frame."""
        best: RegisteredService | None = None
        best_load = 0.0
        for service in ready:
            if service.service_id in tried or task_type not in service.heartbeat.task_types:
                continue
            share = self.of(service.service_id).in_flight / service.heartbeat.capacity
            if best is None or share < best_load:
                best, best_load = service, share
        return best

    def forget(self, known: Collection[str]) -> list[str]:
        """Drops the loads of services gone from the registry with nothing in flight; returns their ids."""
        gone = [service_id for service_id, load in self.items() if service_id not in known and not load.in_flight]
        for service_id in gone:
            del self[service_id]
        return gone


def service_row(service: RegisteredService, load: ServiceLoad, alive: bool, usable: int) -> dict[str, Any]:
    """One service as `framewatch services` shows it."""
    state = load.breaker.state
    heartbeat = service.heartbeat
    return {
        "service_id": service.service_id, "endpoint": heartbeat.endpoint,
        "task_types": [t.value for t in heartbeat.task_types],
        "capacity": heartbeat.capacity, "max_batch": heartbeat.max_batch,
        "version": heartbeat.version, "static": service.static,
        "healthy": alive and state is BreakerState.CLOSED,
        "alive": alive, "breaker": state.name.lower(),
        "in_flight": load.in_flight,
        "usable": usable,
        "requests": load.requests, "faults": load.faults,
        "latency_ms": None if load.latency_ms is None else round(load.latency_ms, 1),
        "heartbeat_age_s": round(time.monotonic() - service.last_seen, 1),
    }
