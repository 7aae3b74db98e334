"""Service loads and the choice of service, and what the scheduler saw of each camera: synchronous, without
sockets."""

from __future__ import annotations

from framewatch.agents.inference.activity import CameraActivity
from framewatch.agents.inference.breaker import BreakerSettings, BreakerState
from framewatch.agents.inference.loads import ServiceLoads
from framewatch.agents.inference.registry import RegisteredService
from framewatch.schemas.events import ServiceHeartbeat
from framewatch.schemas.tasks import Freshness, TaskType
from tests.test_scheduler import camera_frame


def service(service_id: str, capacity: int = 1, task_type: TaskType = TaskType.AREA_INTRUSION) -> RegisteredService:
    return RegisteredService(ServiceHeartbeat(service_id=service_id, endpoint="http://10.0.0.1:8500",
                                              task_types=[task_type], capacity=capacity), last_seen=0.0)


def whole(service_id: str, capacity: int) -> int:
    return capacity


def test_the_least_loaded_service_relative_to_its_capacity_that_serves_the_frame_and_was_not_tried() -> None:
    loads = ServiceLoads(BreakerSettings())
    big, small, tried, other = service("big", 4), service("small", 1), service("tried", 8), service(
        "other", 8, TaskType.SMOKING)
    loads.dispatched("big")
    assert loads.least_loaded(TaskType.AREA_INTRUSION, {"tried"}, [small, big, tried, other]) is small
    loads.dispatched("small")
    assert loads.least_loaded(TaskType.AREA_INTRUSION, {"tried"}, [small, big, tried, other]) is big
    assert loads.least_loaded(TaskType.LOITERING, set(), [small, big, tried, other]) is None
    assert loads.in_flight == 2 and loads.in_flight_on("big") == 1 and loads.in_flight_on("unknown") == 0


def test_a_service_is_ready_while_under_its_usable_slots_and_its_breaker_lets_requests_through() -> None:
    loads = ServiceLoads(BreakerSettings(failures_to_open=1, open_sec=30))
    busy, sick, free = service("busy", 2), service("sick", 2), service("free", 2)
    loads.dispatched("busy")
    assert loads.ready([busy, sick, free], whole) == [busy, sick, free]
    assert loads.ready([busy, sick, free], lambda service_id, capacity: 1) == [sick, free]
    loads.record("sick", fault=True)
    assert loads["sick"].breaker.state is BreakerState.OPEN
    assert loads.ready([busy, sick, free], whole) == [busy, free]
    assert loads.wanted([busy, sick, free], {TaskType.AREA_INTRUSION}) == [busy, free]
    assert loads.wanted([busy, sick, free], {TaskType.SMOKING}) == []


def test_requests_are_counted_and_faults_weigh_on_the_success_ratio() -> None:
    loads = ServiceLoads(BreakerSettings())
    loads.dispatched("s")
    loads.returned("s")
    for fault in (False, False, False, True):
        loads.record("s", fault)
    assert (loads["s"].requests, loads["s"].faults, loads.in_flight) == (4, 1, 0)
    assert loads.success_ratio == 0.75


def test_loads_of_services_gone_from_the_registry_are_forgotten_once_idle() -> None:
    loads = ServiceLoads(BreakerSettings())
    loads.of("known")
    loads.of("gone")
    loads.dispatched("gone-busy")
    assert loads.forget({"known"}) == ["gone"]
    assert set(loads) == {"known", "gone-busy"}


def test_a_camera_counts_its_frames_and_says_when_its_freshness_mode_is_new() -> None:
    activity = CameraActivity()
    live, again, recorded = camera_frame("a"), camera_frame("a"), camera_frame("a", freshness=Freshness.ALL)
    assert activity.saw(live, at=1.0)  # the first frame
    assert not activity.saw(again, at=2.0)
    assert activity.saw(recorded, at=3.0)  # its mode changed
    seen = activity.cameras["a"]
    assert (seen.frames, seen.freshness, seen.last_seen, seen.task_id) == (3, Freshness.ALL, 3.0, "a")
    assert seen.last_captured_at == max(f.captured_on_broker_clock for f in (live, again, recorded))


def test_cameras_silent_since_the_horizon_are_forgotten() -> None:
    activity = CameraActivity()
    activity.saw(camera_frame("quiet"), at=10.0)
    activity.saw(camera_frame("busy"), at=100.0)
    assert [seen.task_id for seen in activity.forget(horizon=50.0)] == ["quiet"]
    assert set(activity.cameras) == {"busy"}
