"""The inference scheduler against misbehaving services on real sockets: freshness, fairness, batching, failures."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from framewatch.agents.inference.breaker import BreakerSettings, BreakerState, CircuitBreaker
from framewatch.agents.inference.client import ServiceClient
from framewatch.agents.inference.registry import ServiceRegistry
from framewatch.agents.inference.scheduler import Capacity, InferenceScheduler
from framewatch.clients.objectstore import ObjectStore
from framewatch.detector.misbehaving import Behaviour, Fault, MisbehavingService, serve
from framewatch.schemas.config import Config, StaticService
from framewatch.schemas.events import DetectionEvent, FrameEvent, FrameOutcome, now_ms
from framewatch.schemas.tasks import Freshness
from tests.conftest import free_port
from tests.test_events import frame


def fake(name: str, **behaviour: Any) -> MisbehavingService:
    capacity = behaviour.pop("capacity", 1)
    max_batch = behaviour.pop("max_batch", 1)
    return MisbehavingService(name, free_port(), capacity, max_batch, Behaviour(**behaviour))


SEQ = itertools.count(1)


def camera_frame(camera: str, age_ms: int = 0, freshness: Freshness = Freshness.LATEST) -> FrameEvent:
    seq, captured = next(SEQ), now_ms() - age_ms
    return frame().model_copy(update={"task_id": camera, "camera_id": camera, "captured_at": captured, "seq": seq,
                                      "frame_id": FrameEvent.make_id(camera, captured, seq), "freshness": freshness})


def recorded_frames(camera: str, count: int) -> list[FrameEvent]:
    """Frames of a recorded video read faster than real time: all of them older than any live frame limit."""
    return [camera_frame(camera, age_ms=60_000 - i * 100, freshness=Freshness.ALL) for i in range(count)]


class Harness:
    """A scheduler over static services, with every frame's end collected in order."""

    def __init__(self, config: Config, services: list[MisbehavingService], capacity: Capacity | None = None,
                 **settings: Any) -> None:
        declared = [StaticService(id=s.service_id, endpoint=s.endpoint, capacity=s.capacity, max_batch=s.max_batch)
                    for s in services]
        ai = config.ai_analysis.model_copy(update={"services": declared, **settings})
        self.config = config.model_copy(update={"ai_analysis": ai})
        self.client = ServiceClient(self.config, ObjectStore(self.config.frame_extractor.minio))
        self.scheduler = InferenceScheduler(self.config, ServiceRegistry(self.config), self.client, capacity)
        self.results: list[DetectionEvent | FrameOutcome] = []
        self._ended: dict[str, asyncio.Event] = {}

    async def done(self, result: DetectionEvent | FrameOutcome) -> None:
        self.results.append(result)
        self._ended.setdefault(result.frame.frame_id, asyncio.Event()).set()

    async def submit(self, *frames: FrameEvent, owned: Callable[[], bool] = lambda: True) -> None:
        for f in frames:
            await self.scheduler.submit(f, self.done, owned)

    async def ended(self, *frames: FrameEvent, timeout_s: float = 10) -> list[DetectionEvent | FrameOutcome]:
        for f in frames:
            await asyncio.wait_for(self._ended.setdefault(f.frame_id, asyncio.Event()).wait(), timeout_s)
        by_id = {r.frame.frame_id: r for r in self.results}
        return [by_id[f.frame_id] for f in frames]


Fleet = Callable[..., Awaitable[list[MisbehavingService]]]
MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    runners: list[web.AppRunner] = []

    async def start(*services: MisbehavingService) -> list[MisbehavingService]:
        runners.extend([await serve(service) for service in services])
        return list(services)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def harness(stack_config: Config) -> AsyncIterator[MakeHarness]:
    made: list[Harness] = []

    async def make(services: list[MisbehavingService], **settings: Any) -> Harness:
        h = Harness(stack_config, services, **settings)
        await h.scheduler.start()
        made.append(h)
        return h

    yield make
    for h in made:
        await h.scheduler.stop()
        await h.client.close()


def outcome(result: DetectionEvent | FrameOutcome) -> tuple[str, str]:
    if isinstance(result, DetectionEvent):
        return ("inferred", result.service_id)
    return (result.outcome.value, result.reason)


async def test_latest_frame_of_a_camera_wins(fleet: Fleet, harness: MakeHarness) -> None:
    [slow] = await fleet(fake("slow", latency_ms=300))
    h = await harness([slow])
    first, older, newer = camera_frame("a"), camera_frame("a"), camera_frame("a")
    await h.submit(first)
    await asyncio.sleep(0.05)  # `first` is in flight; the next two wait, and only the newest stays
    await h.submit(older, newer)
    assert [outcome(r) for r in await h.ended(first, older, newer)] == [
        ("inferred", "slow"), ("dropped", "superseded"), ("inferred", "slow")]
    assert slow.requests == 2


async def test_frames_too_old_are_dropped_not_inferred(fleet: Fleet, harness: MakeHarness) -> None:
    [service] = await fleet(fake("s", latency_ms=400))
    h = await harness([service], max_frame_age_ms=300)
    busy, waits, stale = camera_frame("a"), camera_frame("b"), camera_frame("c", age_ms=1000)
    await h.submit(busy, waits, stale)
    assert [outcome(r) for r in await h.ended(busy, waits, stale)] == [
        ("inferred", "s"), ("dropped", "stale"), ("dropped", "stale")]
    assert service.requests == 1


async def test_frames_of_a_revoked_partition_leave_the_room_and_their_results_are_discarded(
        fleet: Fleet, harness: MakeHarness) -> None:
    [slow] = await fleet(fake("slow", latency_ms=300))
    h = await harness([slow])
    revoked = False
    in_flight, waiting, recording = camera_frame("a"), camera_frame("b"), recorded_frames("r", 3)
    await h.submit(in_flight, waiting, *recording, owned=lambda: not revoked)
    kept = camera_frame("c")
    await h.submit(kept)
    await asyncio.sleep(0.05)  # `in_flight` is at the service, the rest wait
    revoked = True
    [result] = await h.ended(kept)
    await asyncio.sleep(0.2)  # time for the revoked frames' ends, had they any
    assert outcome(result) == ("inferred", "slow")
    assert [r.frame.frame_id for r in h.results] == [kept.frame_id]  # nothing of the revoked partition handed on
    assert slow.requests == 2 and h.scheduler.queued == 0 and not h.scheduler._in_order


async def test_a_result_whose_hand_on_fails_is_not_sent_again_once_its_partition_is_revoked(
        fleet: Fleet, harness: MakeHarness) -> None:
    [service] = await fleet(fake("s", latency_ms=10))
    h = await harness([service])
    attempts = 0
    revoked = False

    async def broker_away(result: DetectionEvent | FrameOutcome) -> None:
        nonlocal attempts, revoked
        attempts += 1
        revoked = True  # the outage that failed the send moved the partition to another worker
        raise OSError("the broker is away")

    await h.scheduler.submit(camera_frame("a"), broker_away, lambda: not revoked)
    await asyncio.sleep(2)  # hand-on retries come 0.5 s, then 1 s, after a failure
    assert attempts == 1
    later = camera_frame("b")  # the finisher goes on with the next frame
    await h.submit(later)
    assert [outcome(r) for r in await h.ended(later)] == [("inferred", "s")]


async def test_a_recording_read_again_after_a_revocation_does_not_wait_for_its_revoked_frame(
        fleet: Fleet, harness: MakeHarness) -> None:
    slow, quick = await fleet(fake("slow", latency_ms=3000), fake("quick", latency_ms=10))
    h = await harness([slow, quick])
    revoked = False
    [before] = recorded_frames("recording", 1)
    await h.scheduler.submit(before, h.done, lambda: not revoked)
    await asyncio.sleep(0.1)  # at the slow service
    revoked = True
    again = recorded_frames("recording", 3)  # the partition's records, read again by its next ownership
    await h.submit(*again)
    assert {outcome(r) for r in await h.ended(*again, timeout_s=2)} == {("inferred", "quick")}
    assert before.frame_id not in {r.frame.frame_id for r in h.results}


async def test_cameras_take_turns(fleet: Fleet, harness: MakeHarness) -> None:
    [service] = await fleet(fake("s", latency_ms=100))
    h = await harness([service])
    busy = camera_frame("z")
    a1, b1, c1, a2 = camera_frame("a"), camera_frame("b"), camera_frame("c"), camera_frame("a")
    await h.submit(busy)
    await asyncio.sleep(0.02)
    await h.submit(a1, b1, c1, a2)  # a2 replaces a1 in a's place in the line
    await h.ended(busy, a2, b1, c1)
    inferred = [r.frame.camera_id for r in h.results if isinstance(r, DetectionEvent)]
    assert inferred == ["z", "a", "b", "c"]


async def test_frames_of_different_cameras_share_a_batch(fleet: Fleet, harness: MakeHarness) -> None:
    [batcher] = await fleet(fake("gpu", latency_ms=50, max_batch=8, capacity=1))
    h = await harness([batcher], batch_wait_ms=200)
    frames = [camera_frame(f"cam-{i}") for i in range(8)]
    await h.submit(*frames)
    results = await h.ended(*frames)
    assert batcher.batch_sizes == [8]
    assert all(isinstance(r, DetectionEvent) and r.batch_size == 8 for r in results)


async def test_a_lone_frame_waits_at_most_batch_wait(fleet: Fleet, harness: MakeHarness) -> None:
    [batcher] = await fleet(fake("gpu", latency_ms=10, max_batch=8))
    h = await harness([batcher], batch_wait_ms=100)
    lone = camera_frame("a")
    await h.submit(lone)
    [result] = await h.ended(lone, timeout_s=2)
    assert isinstance(result, DetectionEvent) and result.batch_size == 1
    assert result.dispatched_at is not None and 90 <= result.dispatched_at - lone.captured_at < 1000


async def test_lossless_frames_are_all_inferred_and_handed_on_in_order(fleet: Fleet, harness: MakeHarness) -> None:
    # three requests at once with jittered latency: answers overtake each other, results must not
    [service] = await fleet(fake("s", latency_ms=30, jitter_ms=60, capacity=3))
    h = await harness([service], max_frame_age_ms=500)
    frames = recorded_frames("recording", 15)
    await h.submit(*frames)
    results = await h.ended(*frames)
    assert {outcome(r) for r in results} == {("inferred", "s")}  # none stale, none superseded
    assert [r.frame.frame_id for r in h.results] == [f.frame_id for f in frames]
    assert service.requests == 15


async def test_a_full_room_holds_lossless_frames_back_instead_of_dropping(fleet: Fleet, harness: MakeHarness) -> None:
    [service] = await fleet(fake("s", latency_ms=100))
    h = await harness([service], max_queue_size=3)
    frames = recorded_frames("recording", 8)
    submitting = asyncio.create_task(h.submit(*frames))
    await asyncio.sleep(0.05)
    assert not submitting.done() and h.scheduler.queued == 3  # one in flight, three waiting, the rest held back
    await submitting
    assert {outcome(r) for r in await h.ended(*frames)} == {("inferred", "s")}


async def test_a_live_camera_keeps_its_turn_beside_a_recording(fleet: Fleet, harness: MakeHarness) -> None:
    [service] = await fleet(fake("s", latency_ms=40))
    h = await harness([service])
    recording = recorded_frames("recording", 10)
    await h.submit(*recording)
    live = camera_frame("live")
    await h.submit(live)
    await h.ended(live, *recording)
    order = [r.frame.camera_id for r in h.results]
    assert order.index("live") <= 2, order  # served in turn, not after the recording's whole backlog


async def test_a_failed_lossless_frame_is_retried_elsewhere_in_its_place(fleet: Fleet,
                                                                         harness: MakeHarness) -> None:
    bad, good = await fleet(fake("bad", fault=Fault.HTTP_500), fake("good", latency_ms=10))
    h = await harness([bad, good])
    frames = recorded_frames("recording", 6)
    await h.submit(*frames)
    results = await h.ended(*frames)
    assert {outcome(r) for r in results} == {("inferred", "good")}
    assert [r.frame.frame_id for r in h.results] == [f.frame_id for f in frames]


@pytest.mark.parametrize("fault,reason", [
    (Fault.RESOURCE_EXHAUSTED, "resource_exhausted"),
    (Fault.HTTP_500, "http_5xx"),
    (Fault.GARBAGE, "malformed"),
    (Fault.RESET, "transport"),
    (Fault.TIMEOUT, "timeout"),
    (Fault.SLOW_BODY, "timeout"),
])
async def test_failures_are_classified_and_retried_once_elsewhere(fleet: Fleet, harness: MakeHarness, fault: Fault,
                                                                  reason: str) -> None:
    bad, good = await fleet(fake("bad", fault=fault), fake("good", latency_ms=5))
    alone = await harness([bad], infer_timeout_sec=1.0)
    lost = camera_frame("a")
    await alone.submit(lost)
    assert [outcome(r) for r in await alone.ended(lost)] == [("failed", reason)]
    assert bad.requests == 1  # one try: no retry storm on a sick fleet

    pair = await harness([bad, good], infer_timeout_sec=1.0)
    frames = [camera_frame(f"cam-{i}") for i in range(6)]
    await pair.submit(*frames)
    assert {outcome(r) for r in await pair.ended(*frames)} == {("inferred", "good")}


async def test_a_service_that_is_down_fails_the_frame_with_connect(harness: MakeHarness) -> None:
    h = await harness([MisbehavingService("down", free_port())])
    lost = camera_frame("a")
    await h.submit(lost)
    assert [outcome(r) for r in await h.ended(lost)] == [("failed", "connect")]


async def test_the_breaker_stops_traffic_to_a_sick_service(fleet: Fleet, harness: MakeHarness) -> None:
    sick, healthy = await fleet(fake("sick", fault=Fault.RESOURCE_EXHAUSTED), fake("healthy", latency_ms=20,
                                                                                   capacity=4))
    h = await harness([sick, healthy], breaker_failures=3, breaker_open_sec=30)
    for round_ in range(10):
        frames = [camera_frame(f"cam-{i}") for i in range(4)]
        await h.submit(*frames)
        assert {outcome(r) for r in await h.ended(*frames)} == {("inferred", "healthy")}, round_
    assert sick.requests == 3
    assert h.scheduler.loads["sick"].breaker.state is BreakerState.OPEN
    view = {s["service_id"]: s for s in h.scheduler.services_view()}
    assert view["sick"]["breaker"] == "open" and not view["sick"]["healthy"] and view["healthy"]["healthy"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_probes_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(failures_to_open=3, open_sec=2, max_open_sec=5), clock)
    for _ in range(2):
        breaker.record(success=False)
    assert breaker.state is BreakerState.CLOSED and breaker.allows()
    breaker.record(success=False)
    assert breaker.state is BreakerState.OPEN and not breaker.allows()
    clock.now += 2
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
    breaker.on_dispatch()
    assert not breaker.allows()  # one probe at a time
    breaker.record(success=False)  # the probe failed: open again, for twice as long
    clock.now += 2
    assert breaker.state is BreakerState.OPEN
    clock.now += 2
    breaker.on_dispatch()
    breaker.record(success=False)
    clock.now += 4.9
    assert breaker.state is BreakerState.OPEN  # capped at max_open_sec = 5
    clock.now += 0.1
    breaker.on_dispatch()
    breaker.record(success=True)
    assert breaker.state is BreakerState.CLOSED and breaker.allows()


def test_breaker_opens_on_error_rate_without_a_run_of_failures() -> None:
    breaker = CircuitBreaker(BreakerSettings(failures_to_open=100, error_rate=0.5, window=10), Clock())
    for i in range(9):
        breaker.record(success=i % 2 == 0)
    assert breaker.state is BreakerState.CLOSED  # the window is not full yet
    breaker.record(success=False)
    assert breaker.state is BreakerState.OPEN


async def test_cameras_silent_for_an_hour_and_services_gone_are_forgotten(fleet: Fleet, harness: MakeHarness) -> None:
    services = await fleet(fake("a", latency_ms=5))
    h = await harness(services)
    first, second = camera_frame("cam-quiet"), camera_frame("cam-busy")
    await h.submit(first, second)
    await h.ended(first, second)
    h.scheduler.cameras["cam-quiet"].last_seen -= 7200
    h.scheduler.loads["gone-service"] = h.scheduler._load("gone-service")
    h.scheduler.forget_idle(time.monotonic() - 3600)
    assert set(h.scheduler.cameras) == {"cam-busy"}
    assert set(h.scheduler.loads) == {"a"}
