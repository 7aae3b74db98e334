"""The inference scheduler: detector time goes to the freshest frame of each camera, and never idles.

Frames wait in one bounded room, in a line per task (camera stream). A task that wants the freshest frame
(`Freshness.LATEST`, live cameras) has at most one waiting: a newer frame replaces it in place (latest wins, the
camera keeps its turn), and a frame older than `max_frame_age_ms` is dropped. A task that wants every frame
(`Freshness.ALL`, recorded video) keeps them all, however old; its results leave in the order its frames came, and
a full room holds the stream back instead of dropping. Cameras are served in turn, so they share capacity fairly.
Whenever a service has room (the slots of its declared capacity this worker holds, shared with the other workers
through `Capacity`; its breaker; and `max_concurrent_infer` for the whole worker), the dispatcher sends it the next frame, plus, when the
service takes batches, more frames of the same task type from other cameras, waiting at most `batch_wait_ms` for
a batch to fill. A failed frame is retried once, on another service. Every frame submitted ends exactly once
through its `done` callback: inferred (a DetectionEvent) or a FrameOutcome (dropped or failed, with its reason),
unless its partition is revoked from this worker first (`owned` says so): the frame then leaves the room and a
result that comes back for it is discarded, for the partition's next reader handles the frame again.

The room is `waiting.py` (synchronous: what waits, what supersedes or expires, in which order results leave); each
service's load and the choice of service are `loads.py`. This module runs the dispatcher, the requests and the
hand-on, and keeps the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from mode import Service
from prometheus_client import Gauge, Histogram

from framewatch.agents.inference.activity import CameraActivity, CameraSeen
from framewatch.agents.inference.breaker import BreakerSettings
from framewatch.agents.inference.handon import HandOn
from framewatch.agents.inference.client import BatchAnswer, InferenceFailure, ServiceClient
from framewatch.agents.inference.loads import ServiceLoad, ServiceLoads, service_row
from framewatch.agents.inference.registry import RegisteredService, ServiceRegistry
from framewatch.agents.inference.waiting import (
    Done,
    Ends,
    Owned,
    Result,
    TaskPressure,
    Waiting,
    WaitingRoom,
    always_owned,
)
from framewatch.metrics import Tally
from framewatch.schemas.config import Config
from framewatch.schemas.events import DetectionEvent, FrameEvent, now_ms
from framewatch.schemas.tasks import Freshness

log = logging.getLogger("framewatch.scheduler")

REQUESTS = Tally("framewatch_inference_requests_total", "Requests sent to algorithm services", ["service"])
RESPONSES = Tally("framewatch_inference_responses_total", "Requests answered without a service fault",
                    ["service"])
FAILURES = Tally("framewatch_inference_failures_total", "Failed requests or frames, by reason",
                   ["service", "reason"])
FRAMES_DONE = Tally("framewatch_inference_frames_total", "Frames leaving inference, by outcome and reason",
                      ["outcome", "reason"])
INFER_SECONDS = Histogram("framewatch_inference_seconds", "Request round trip per service", ["service"],
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5, 10))
FRAME_AGE = Histogram("framewatch_inference_frame_age_seconds", "Frame age (since capture, on the broker's clock) "
                      "when dispatched",
                      buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30))
BATCH_SIZE = Histogram("framewatch_inference_batch_size", "Frames per request", buckets=(1, 2, 4, 8, 16, 32))
IN_FLIGHT = Gauge("framewatch_inference_in_flight", "Requests in flight", ["service"])
BREAKER = Gauge("framewatch_inference_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                ["service"])
WAITING = Gauge("framewatch_inference_waiting", "Frames waiting for a service")
WAITING_MAX = Gauge("framewatch_inference_waiting_max", "Most frames ever waiting at once")
SUCCESS_RATIO = Gauge("framewatch_inference_success_ratio", "Share of the last 200 requests without a fault")
TASK_FRESHNESS = Gauge("framewatch_inference_task_freshness", "1 for the freshness mode of a task's last frame "
                       "(latest: superseded and stale frames dropped; all: every frame, in order)", ["task", "mode"])

FORGET_EVERY_S = 60.0
FORGET_AFTER_S = 3600.0
MAX_ATTEMPTS = 2
IDLE_TICK_S = 0.05


def _unlabel(metric: Gauge, *labels: str) -> None:
    """Drops a metric's child (prometheus_client keeps every label set it was given until removed)."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def outcome_labels(result: Result) -> tuple[str, str]:
    """A frame's end as FRAMES_DONE counts it: outcome and reason."""
    if isinstance(result, DetectionEvent):
        return "inferred", ""
    return result.outcome.value, result.reason


class SlotUser(Protocol):
    """Whoever sends on a capacity's slots (the scheduler): its requests in flight on a service, and its wake-up."""

    def in_flight_on(self, service_id: str) -> int: ...

    def wake(self) -> None: ...


class Capacity(Protocol):
    """This worker's part of each service's declared capacity (agents/inference/capacity.py shares it among workers).
    `serve` hands it the scheduler: it counts the scheduler's requests on the slots, and wakes it once it took one."""

    def serve(self, user: SlotUser) -> None: ...

    def usable(self, service_id: str, capacity: int) -> int: ...

    def demand(self, service_id: str, capacity: int) -> None: ...


class WholeCapacity:
    """A worker alone: every service's whole capacity is its own."""

    def usable(self, service_id: str, capacity: int) -> int:
        return capacity

    def demand(self, service_id: str, capacity: int) -> None:
        pass


class InferenceScheduler(Service):
    def __init__(self, config: Config, registry: ServiceRegistry, client: ServiceClient,
                 capacity: Capacity | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        settings = config.ai_analysis
        self.registry = registry
        self.client = client
        if capacity is not None:
            capacity.serve(self)
        self.capacity = capacity or WholeCapacity()
        self.max_in_flight = settings.max_concurrent_infer
        self.batch_wait_s = settings.batch_wait_ms / 1000
        self.room = WaitingRoom(settings.max_queue_size, settings.max_frame_age_ms)
        self.loads = ServiceLoads(BreakerSettings(failures_to_open=settings.breaker_failures,
                                                  error_rate=settings.breaker_error_rate,
                                                  open_sec=settings.breaker_open_sec))
        self.activity = CameraActivity()
        self.hand_on = HandOn()
        self.waiting_max = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._requests: set[asyncio.Task[None]] = set()
        self._expired_at = 0.0

    @property
    def queued(self) -> int:
        return self.room.queued

    @property
    def max_waiting(self) -> int:
        return self.room.max_waiting

    @property
    def in_flight(self) -> int:
        return self.loads.in_flight

    def in_flight_on(self, service_id: str) -> int:
        return self.loads.in_flight_on(service_id)

    @property
    def cameras(self) -> dict[str, CameraSeen]:
        return self.activity.cameras

    def camera_activity(self) -> Mapping[str, CameraSeen]:
        """What this worker saw of each camera's frames, by camera id."""
        return MappingProxyType(self.activity.cameras)

    def wake(self) -> None:
        self._wake.set()

    # -- the way in ---------------------------------------------------------------------------------------------

    async def submit(self, frame: FrameEvent, done: Done, owned: Owned = always_owned) -> None:
        """Queue a frame. Waits while the room is full: of other cameras' frames, or, for a lossless task, of
        any frames (that wait is the backpressure that holds a recorded video's stream back). Once `owned` says
        the frame's partition went to another worker, the frame leaves the room and its result is discarded."""
        item = Waiting(frame, done, time.monotonic(), owned)
        if self.activity.saw(frame, item.queued_at):
            for mode in Freshness:
                TASK_FRESHNESS.labels(frame.task_id, mode.value).set(int(mode is frame.freshness))
        ends = self.room.arrive(item)
        if not ends.ended:  # not dropped on arrival: it takes a place once there is one
            while self.room.must_wait(item):
                await self._room()
            ends = self.room.submit(item)
        self._settle(ends)
        self._wake.set()

    async def _room(self) -> None:
        self._space.clear()
        await self._space.wait()

    # -- the dispatcher -----------------------------------------------------------------------------------------

    @Service.task
    async def _dispatcher(self) -> None:
        while not self.should_stop:
            delay = self._dispatch_ready()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            self._wake.clear()

    @Service.task
    async def _finisher(self) -> None:
        await self.hand_on.run(lambda: self.should_stop)

    def _dispatch_ready(self) -> float:
        """Send every request that can go now; returns how long to sleep before looking again."""
        now = time.monotonic()
        if now - self._expired_at >= IDLE_TICK_S:
            self._expire(now)
        delay = IDLE_TICK_S
        self._mark_demand()
        ready = self.loads.ready(self.registry.alive(), self.capacity.usable)
        for item in self.room.heads():
            if not ready or self.in_flight >= self.max_in_flight:
                break  # nothing can go before a request returns: the rest of the line need not be looked at
            if self.room.is_lapsed(item):
                self._settle(self.room.lapse(item))
                continue
            service = self.loads.least_loaded(item.frame.task_type, item.tried, ready)
            if service is None:
                continue
            batch = self.room.batch(item, service.service_id, service.heartbeat.max_batch)
            filled_in = self.batch_wait_s - (now - item.queued_at)
            if len(batch) < service.heartbeat.max_batch and filled_in > 0:
                delay = min(delay, filled_in)
                continue
            self._send(service, batch)
            ready = self.loads.ready(ready, self.capacity.usable)
        return delay

    def _mark_demand(self) -> None:
        """Tells the capacity share which services have frames waiting for them."""
        for service in self.loads.wanted(self.registry.alive(), self.room.task_types()):
            self.capacity.demand(service.service_id, service.heartbeat.capacity)

    def _send(self, service: RegisteredService, batch: list[Waiting]) -> None:
        load = self.loads.dispatched(service.service_id)
        IN_FLIGHT.labels(service.service_id).set(load.in_flight)
        BREAKER.labels(service.service_id).set(load.breaker.state)
        self.room.send(batch, service.service_id)
        self._gauge_waiting()
        task = asyncio.create_task(self._request(service, batch))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    # -- one request --------------------------------------------------------------------------------------------

    async def _request(self, service: RegisteredService, batch: list[Waiting]) -> None:
        sid = service.service_id
        dispatched_at = now_ms()
        for item in batch:
            FRAME_AGE.observe(max(0, item.frame.age_ms(dispatched_at)) / 1000)
        REQUESTS.labels(sid).inc()
        BATCH_SIZE.observe(len(batch))
        answer: BatchAnswer | InferenceFailure
        try:
            answer = await self.client.infer(service, [item.frame for item in batch])
        except InferenceFailure as failure:
            answer = failure
        except Exception as error:
            log.exception("request to %s failed unexpectedly", sid)
            answer = InferenceFailure("internal", repr(error))
        finally:
            IN_FLIGHT.labels(sid).set(self.loads.returned(sid).in_flight)
        if isinstance(answer, InferenceFailure):
            log.warning("request to %s with %d frame(s) failed: %s", sid, len(batch), answer)
            self._record(service, answer.service_fault)
            for item in batch:
                self._failed(item, sid, answer)
        else:
            self._answered(service, batch, answer, dispatched_at)
        self._wake.set()

    def _answered(self, service: RegisteredService, batch: list[Waiting], answer: BatchAnswer,
                  dispatched_at: int) -> None:
        sid = service.service_id
        faults = [r for r in answer.results.values() if isinstance(r, InferenceFailure) and r.service_fault]
        self._record(service, fault=bool(faults))
        if not faults:
            RESPONSES.labels(sid).inc()
            INFER_SECONDS.labels(sid).observe(answer.round_trip_ms / 1000)
            self.loads.of(sid).observe_latency(answer.round_trip_ms)
        for item in batch:
            result = answer.results[item.frame.frame_id]
            if isinstance(result, InferenceFailure):
                self._failed(item, sid, result)
                continue
            self.activity.of(item.frame).inferred += 1
            self._settle(self.room.end(item, DetectionEvent(
                frame=item.frame, service_id=sid, inference_ms=answer.round_trip_ms, service_ms=answer.service_ms,
                dispatched_at=dispatched_at, batch_size=len(batch), detections=result, model=answer.model)))

    def _record(self, service: RegisteredService, fault: bool) -> None:
        load = self.loads.record(service.service_id, fault)
        BREAKER.labels(service.service_id).set(load.breaker.state)
        SUCCESS_RATIO.set(self.loads.success_ratio)

    def _failed(self, item: Waiting, service_id: str, failure: InferenceFailure) -> None:
        FAILURES.labels(service_id, failure.reason).inc()
        elsewhere = len(item.tried) < MAX_ATTEMPTS and any(
            s.service_id not in item.tried for s in self.registry.alive(item.frame.task_type))
        self._settle(self.room.fail(item, failure.reason, elsewhere))

    # -- ends ---------------------------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        """Drops stale frames and fails those whose task type no live service has served for a while."""
        self._expired_at = now
        served = {t for s in self.registry.alive() for t in s.heartbeat.task_types}
        self._settle(self.room.expire(now, served))

    def _settle(self, ends: Ends) -> None:
        """After a change to the room: counts what ended, gives what it released to the finisher to hand on, and
        gauges how full it is."""
        for result in ends.ended:
            FRAMES_DONE.labels(*outcome_labels(result)).inc()
        self.hand_on.put(ends.released)
        self._gauge_waiting()

    def take_pressure(self) -> dict[str, TaskPressure]:
        """Per task, what arrived and was dropped since the last call (the extractor's credit signal)."""
        return self.room.take_pressure()

    # -- forgetting -----------------------------------------------------------------------------------------------

    @Service.timer(FORGET_EVERY_S)
    async def _forget_hourly(self) -> None:
        self.forget_idle(time.monotonic() - FORGET_AFTER_S)

    def forget_idle(self, horizon: float) -> None:
        """Cameras silent since `horizon` and services gone from the registry leave the maps and the metrics."""
        for seen in self.activity.forget(horizon):
            for mode in Freshness:
                _unlabel(TASK_FRESHNESS, seen.task_id, mode.value)
        for service_id in self.loads.forget({s.service_id for s in self.registry.known()}):
            for metric in (IN_FLIGHT, BREAKER):
                _unlabel(metric, service_id)

    def _gauge_waiting(self) -> None:
        size = self.queued
        WAITING.set(size)
        if size > self.waiting_max:
            self.waiting_max = size
            WAITING_MAX.set(size)
        if size < self.max_waiting:
            self._space.set()

    # -- what `framewatch services` shows -----------------------------------------------------------------------

    def services_view(self) -> list[dict[str, Any]]:
        alive = {s.service_id for s in self.registry.alive()}
        return [service_row(service, self.loads.of(service.service_id), service.service_id in alive,
                            self.capacity.usable(service.service_id, service.heartbeat.capacity))
                for service in self.registry.known()]

    # -- reached into by tests/test_scheduler.py ----------------------------------------------------------------

    @property
    def _in_order(self) -> dict[str, deque[Waiting]]:
        return self.room.in_order

    def _load(self, service_id: str) -> ServiceLoad:
        return self.loads.of(service_id)
