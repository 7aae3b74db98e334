"""The service registry trusts only what the config allows: announced endpoints outside
`ai_analysis.service_endpoints` are ignored, and a heartbeat out of bounds does not decode."""

from __future__ import annotations

import time

import orjson
import pytest

from framewatch.agents.inference.registry import ServiceRegistry
from framewatch.schemas.config import Config
from framewatch.schemas.events import DecodeError, ServiceHeartbeat
from framewatch.schemas.tasks import TaskType


def heartbeat(service_id: str, endpoint: str, capacity: int = 2) -> ServiceHeartbeat:
    return ServiceHeartbeat(service_id=service_id, endpoint=endpoint, task_types=[TaskType.AREA_INTRUSION],
                            capacity=capacity)


def registry(*patterns: str) -> ServiceRegistry:
    config = Config()
    ai = config.ai_analysis.model_copy(update={"service_endpoints": list(patterns)})
    return ServiceRegistry(config.model_copy(update={"ai_analysis": ai}))


def test_without_patterns_every_announced_service_is_used() -> None:
    services = registry()
    services.observe(heartbeat("a", "http://10.0.0.7:8500"))
    assert [s.service_id for s in services.alive()] == ["a"]


def test_services_outside_the_allowed_endpoints_are_ignored() -> None:
    services = registry("http://10.0.0.*:8500", "https://gpu-*.internal")
    services.observe(heartbeat("gpu", "http://10.0.0.7:8500"))
    services.observe(heartbeat("tls", "https://gpu-3.internal"))
    services.observe(heartbeat("rogue", "http://203.0.113.9:8500"))
    services.observe(heartbeat("other-port", "http://10.0.0.7:22"))
    assert sorted(s.service_id for s in services.alive()) == ["gpu", "tls"]


@pytest.mark.parametrize("fields,names", [
    ({"endpoint": "file:///etc/passwd"}, "endpoint"),
    ({"endpoint": "http://"}, "endpoint"),
    ({"capacity": 1_000_000}, "capacity"),
    ({"capacity": 0}, "capacity"),
    ({"max_batch": 10_000}, "max_batch"),
    ({"service_id": ""}, "service_id"),
])
def test_heartbeats_out_of_bounds_are_refused_naming_the_field(fields: dict[str, object], names: str) -> None:
    record = {**heartbeat("a", "http://10.0.0.7:8500").model_dump(mode="json"), **fields}
    with pytest.raises(DecodeError, match=names):
        ServiceHeartbeat.decode(orjson.dumps(record))


def test_services_silent_for_an_hour_are_forgotten() -> None:
    services = registry()
    services.observe(heartbeat("old", "http://10.0.0.7:8500"))
    services.observe(heartbeat("new", "http://10.0.0.8:8500"))
    services.known()[0].last_seen -= 7200  # its last heartbeat two hours ago
    services.forget_gone(horizon=time.monotonic() - 3600)
    assert [s.service_id for s in services.known()] == ["new"]
