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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mode import Service
from prometheus_client import Counter, Gauge, Histogram

from framewatch.agents.inference.breaker import BreakerSettings, BreakerState, CircuitBreaker
from framewatch.agents.inference.client import BatchAnswer, InferenceFailure, ServiceClient
from framewatch.agents.inference.registry import RegisteredService, ServiceRegistry
from framewatch.metrics import Tally
from framewatch.retry import Backoff, logged
from framewatch.schemas.config import Config
from framewatch.schemas.events import (
    DetectionEvent,
    FrameEvent,
    FrameOutcome,
    Outcome,
    now_ms,
)
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

FENCED = Counter("framewatch_inference_results_fenced_total",
                 "Frame results discarded because the frame's partition was revoked from this worker (its new "
                 "owner handles the frame)")
HAND_ON_FAILURES = Counter("framewatch_inference_hand_on_failures_total",
                           "Results that could not be sent on at the first try (retried until they are)")

FORGET_EVERY_S = 60.0
FORGET_AFTER_S = 3600.0
MAX_ATTEMPTS = 2
HAND_ON_BACKOFF = Backoff(first_s=0.5, max_s=5.0)
WAIT_FOR_SERVICE_S = 5.0
IDLE_TICK_S = 0.05

Done = Callable[[DetectionEvent | FrameOutcome], Awaitable[None]]
Owned = Callable[[], bool]  # whether this worker still owns the partition the frame was read from


def always_owned() -> bool:
    return True


def _unlabel(metric: Gauge, *labels: str) -> None:
    """Drops a metric's child (prometheus_client keeps every label set it was given until removed)."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


Result = DetectionEvent | FrameOutcome


class Capacity(Protocol):
    """This worker's part of each service's declared capacity (agents/inference/capacity.py shares it among workers)."""

    def usable(self, service_id: str, capacity: int) -> int: ...

    def demand(self, service_id: str, capacity: int) -> None: ...


class WholeCapacity:
    """A worker alone: every service's whole capacity is its own."""

    def usable(self, service_id: str, capacity: int) -> int:
        return capacity

    def demand(self, service_id: str, capacity: int) -> None:
        pass


@dataclass(eq=False)
class Waiting:
    frame: FrameEvent
    done: Done
    queued_at: float
    owned: Owned = always_owned
    tried: set[str] = field(default_factory=set)
    result: Result | None = None  # an in-order frame's end, held until the frames before it have ended

    @property
    def key(self) -> str:
        return self.frame.task_id

    @property
    def lossless(self) -> bool:
        return self.frame.freshness is Freshness.ALL


@dataclass
class CameraSeen:
    task_id: str
    frames: int = 0
    inferred: int = 0
    last_captured_at: int = 0  # on the broker's clock
    freshness: Freshness = Freshness.LATEST  # of its last frame
    last_seen: float = field(default_factory=time.monotonic)


@dataclass
class TaskPressure:
    """Since the last report: frames of a task that arrived, that were dropped (superseded or stale), and that
    left inference by any way (the credit a lossless camera waits for)."""

    received: int = 0
    dropped: int = 0
    ended: int = 0


@dataclass(eq=False)
class ServiceLoad:
    breaker: CircuitBreaker
    in_flight: int = 0
    requests: int = 0
    faults: int = 0
    latency_ms: float | None = None

    def observe_latency(self, ms: float) -> None:
        self.latency_ms = ms if self.latency_ms is None else 0.8 * self.latency_ms + 0.2 * ms


class InferenceScheduler(Service):
    def __init__(self, config: Config, registry: ServiceRegistry, client: ServiceClient,
                 capacity: Capacity | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        settings = config.ai_analysis
        self.registry = registry
        self.client = client
        self.capacity = capacity or WholeCapacity()
        self.max_in_flight = settings.max_concurrent_infer
        self.max_waiting = settings.max_queue_size
        self.max_age_ms = settings.max_frame_age_ms
        self.batch_wait_s = settings.batch_wait_ms / 1000
        self.breaker_settings = BreakerSettings(failures_to_open=settings.breaker_failures,
                                                error_rate=settings.breaker_error_rate,
                                                open_sec=settings.breaker_open_sec)
        self.waiting: OrderedDict[str, deque[Waiting]] = OrderedDict()  # the line: a task's turn, its frames
        self.queued = 0
        self._in_order: dict[str, deque[Waiting]] = {}  # frames of lossless tasks not yet handed on, in order
        self.loads: dict[str, ServiceLoad] = {}
        self.in_flight = 0
        self.waiting_max = 0
        self.cameras: dict[str, CameraSeen] = {}
        self.pressure: dict[str, TaskPressure] = {}
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._finished: asyncio.Queue[tuple[Waiting, Result]] = asyncio.Queue()
        self._requests: set[asyncio.Task[None]] = set()
        self._recent: deque[bool] = deque(maxlen=200)
        self._expired_at = 0.0

    # -- the way in ---------------------------------------------------------------------------------------------

    async def submit(self, frame: FrameEvent, done: Done, owned: Owned = always_owned) -> None:
        """Queue a frame. Waits while the room is full: of other cameras' frames, or, for a lossless task, of
        any frames (that wait is the backpressure that holds a recorded video's stream back). Once `owned` says
        the frame's partition went to another worker, the frame leaves the room and its result is discarded."""
        item = Waiting(frame, done, time.monotonic(), owned)
        seen = self._seen(frame)
        seen.last_seen = item.queued_at
        seen.frames += 1
        seen.last_captured_at = max(seen.last_captured_at, frame.captured_on_broker_clock)
        if seen.freshness is not frame.freshness or seen.frames == 1:
            seen.freshness = frame.freshness
            for mode in Freshness:
                TASK_FRESHNESS.labels(frame.task_id, mode.value).set(int(mode is frame.freshness))
        self.pressure.setdefault(frame.task_id, TaskPressure()).received += 1
        if item.lossless:
            await self._submit_in_order(item)
        else:
            await self._submit_latest(item)
        self._gauge_waiting()
        self._wake.set()

    async def _submit_latest(self, item: Waiting) -> None:
        if self._too_old(item):
            self._drop(item, "stale")
            return
        while item.key not in self.waiting and self.queued >= self.max_waiting:
            await self._room()
        line = self.waiting.get(item.key)
        waiting = line[-1] if line else None
        if line is None or waiting is None or waiting.lossless:
            self._enqueue(item)
        elif waiting.frame.captured_at > item.frame.captured_at:
            self._drop(item, "superseded")
        else:
            line[-1] = item  # in place: the camera keeps its turn
            self._drop(waiting, "superseded")

    async def _submit_in_order(self, item: Waiting) -> None:
        while self.queued >= self.max_waiting:
            await self._room()
        self._in_order.setdefault(item.key, deque()).append(item)
        self._enqueue(item)

    async def _room(self) -> None:
        self._space.clear()
        await self._space.wait()

    def _enqueue(self, item: Waiting, first: bool = False) -> None:
        line = self.waiting.get(item.key)
        if line is None:
            line = self.waiting[item.key] = deque()
        if first:
            line.appendleft(item)
            self.waiting.move_to_end(item.key, last=False)  # it has waited longest: first in line
        else:
            line.append(item)
        self.queued += 1

    def _dequeue(self, item: Waiting) -> None:
        line = self.waiting[item.key]
        line.remove(item)
        self.queued -= 1
        if not line:
            del self.waiting[item.key]

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
        """Every frame's end goes out through here, in order, so the dispatcher never waits on Kafka. A hand-on
        that fails (the broker is away) is tried again until it succeeds, or until the frame's partition is revoked
        (the outage that failed it often moves the partitions): a frame left unacknowledged would freeze its
        partition's commits, one handed on after its revocation acts on a partition another worker reads."""
        while not self.should_stop:
            item, result = await self._finished.get()
            on_retry = logged(log, f"handing on the result of frame {result.frame.frame_id}", HAND_ON_FAILURES.inc)
            if item.owned():
                try:
                    await HAND_ON_BACKOFF.call(item.done, lambda _: not self.should_stop and item.owned(), on_retry,
                                               result)
                    continue
                except Exception:
                    if self.should_stop:
                        return
                    if item.owned():
                        raise
            FENCED.inc()

    def _dispatch_ready(self) -> float:
        """Send every request that can go now; returns how long to sleep before looking again."""
        now = time.monotonic()
        if now - self._expired_at >= IDLE_TICK_S:
            self._expire(now)
        delay = IDLE_TICK_S
        self._mark_demand()
        ready = self._ready()
        for key in list(self.waiting):
            if not ready or self.in_flight >= self.max_in_flight:
                break  # nothing can go before a request returns: the rest of the line need not be looked at
            line = self.waiting.get(key)
            if not line:  # it left with an earlier batch of this pass
                continue
            item = line[0]
            if self._left_waiting(item):
                self._gauge_waiting()
                continue
            service = self._choose(item, ready)
            if service is None:
                continue
            batch = self._batch(service, item)
            filled_in = self.batch_wait_s - (now - item.queued_at)
            if len(batch) < service.heartbeat.max_batch and filled_in > 0:
                delay = min(delay, filled_in)
                continue
            self._send(service, batch)
            ready = [s for s in ready if self._has_room(s)]
        return delay

    def _mark_demand(self) -> None:
        """Tells the capacity share which services have frames waiting for them."""
        if not self.waiting:
            return
        waiting_types = {line[0].frame.task_type for line in self.waiting.values()}
        for service in self.registry.alive():
            if self._load(service.service_id).breaker.allows() and not waiting_types.isdisjoint(
                    service.heartbeat.task_types):
                self.capacity.demand(service.service_id, service.heartbeat.capacity)

    def _ready(self) -> list[RegisteredService]:
        return [s for s in self.registry.alive() if self._has_room(s)]

    def _has_room(self, service: RegisteredService) -> bool:
        load = self._load(service.service_id)
        usable = self.capacity.usable(service.service_id, service.heartbeat.capacity)
        return load.in_flight < usable and load.breaker.allows()

    def in_flight_on(self, service_id: str) -> int:
        load = self.loads.get(service_id)
        return 0 if load is None else load.in_flight

    def wake(self) -> None:
        self._wake.set()

    def _choose(self, item: Waiting, ready: list[RegisteredService]) -> RegisteredService | None:
        """The least loaded service with room, relative to its capacity, that serves the frame."""
        best: RegisteredService | None = None
        best_load = 0.0
        for service in ready:
            if service.service_id in item.tried or item.frame.task_type not in service.heartbeat.task_types:
                continue
            share = self._load(service.service_id).in_flight / service.heartbeat.capacity
            if best is None or share < best_load:
                best, best_load = service, share
        return best

    def _batch(self, service: RegisteredService, first: Waiting) -> list[Waiting]:
        batch = [first]
        if service.heartbeat.max_batch == 1:
            return batch
        for item in (item for line in self.waiting.values() for item in line):
            if len(batch) == service.heartbeat.max_batch:
                break
            if (item is not first and item.frame.task_type == first.frame.task_type
                    and service.service_id not in item.tried and item.owned()):
                batch.append(item)
        return batch

    def _send(self, service: RegisteredService, batch: list[Waiting]) -> None:
        load = self._load(service.service_id)
        load.breaker.on_dispatch()
        load.in_flight += 1
        self.in_flight += 1
        IN_FLIGHT.labels(service.service_id).set(load.in_flight)
        BREAKER.labels(service.service_id).set(load.breaker.state)
        for item in batch:
            self._dequeue(item)
            item.tried.add(service.service_id)
            if item.key in self.waiting:
                self.waiting.move_to_end(item.key)  # the task's next frame waits for its next turn
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
            self._returned(service)
        if isinstance(answer, InferenceFailure):
            log.warning("request to %s with %d frame(s) failed: %s", sid, len(batch), answer)
            self._record(service, answer.service_fault)
            for item in batch:
                self._failed(item, sid, answer)
        else:
            self._answered(service, batch, answer, dispatched_at)
        self._wake.set()

    def _returned(self, service: RegisteredService) -> None:
        load = self._load(service.service_id)
        load.in_flight -= 1
        self.in_flight -= 1
        IN_FLIGHT.labels(service.service_id).set(load.in_flight)

    def _answered(self, service: RegisteredService, batch: list[Waiting], answer: BatchAnswer,
                  dispatched_at: int) -> None:
        sid = service.service_id
        faults = [r for r in answer.results.values() if isinstance(r, InferenceFailure) and r.service_fault]
        self._record(service, fault=bool(faults))
        if not faults:
            RESPONSES.labels(sid).inc()
            INFER_SECONDS.labels(sid).observe(answer.round_trip_ms / 1000)
            self._load(sid).observe_latency(answer.round_trip_ms)
        for item in batch:
            result = answer.results[item.frame.frame_id]
            if isinstance(result, InferenceFailure):
                self._failed(item, sid, result)
                continue
            FRAMES_DONE.labels("inferred", "").inc()
            self._seen(item.frame).inferred += 1
            self._finish(item, DetectionEvent(frame=item.frame, service_id=sid, inference_ms=answer.round_trip_ms,
                                              service_ms=answer.service_ms, dispatched_at=dispatched_at,
                                              batch_size=len(batch), detections=result))

    def _record(self, service: RegisteredService, fault: bool) -> None:
        load = self._load(service.service_id)
        load.requests += 1
        load.faults += fault
        load.breaker.record(success=not fault)
        BREAKER.labels(service.service_id).set(load.breaker.state)
        self._recent.append(not fault)
        SUCCESS_RATIO.set(sum(self._recent) / len(self._recent))

    def _failed(self, item: Waiting, service_id: str, failure: InferenceFailure) -> None:
        FAILURES.labels(service_id, failure.reason).inc()
        if len(item.tried) >= MAX_ATTEMPTS or not self._retryable(item):
            self._end(item, Outcome.FAILED, failure.reason)
        elif item.key in self.waiting and not item.lossless:
            self._drop(item, "superseded")
        else:
            self._enqueue(item, first=True)
            self._gauge_waiting()

    def _retryable(self, item: Waiting) -> bool:
        return not self._too_old(item) and any(
            s.service_id not in item.tried for s in self.registry.alive(item.frame.task_type))

    # -- ends ---------------------------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        """Drops stale frames and fails those whose task type no live service has served for a while."""
        self._expired_at = now
        served = {t for s in self.registry.alive() for t in s.heartbeat.task_types}
        for item in [item for line in self.waiting.values() for item in line]:
            if self._left_waiting(item):
                continue
            if item.frame.task_type not in served and now - item.queued_at >= WAIT_FOR_SERVICE_S:
                self._dequeue(item)
                self._end(item, Outcome.FAILED, "no_service")
        self._gauge_waiting()

    def _left_waiting(self, item: Waiting) -> bool:
        """Ends a waiting frame that can no longer go: of a partition revoked from this worker (its result is
        then discarded), or stale."""
        if item.owned() and not self._too_old(item):
            return False
        self._dequeue(item)
        if item.owned():
            self._drop(item, "stale")
        else:
            self._end(item, Outcome.DROPPED, "revoked")
        return True

    def _too_old(self, item: Waiting) -> bool:
        return not item.lossless and item.frame.age_ms() > self.max_age_ms

    def _drop(self, item: Waiting, reason: str) -> None:
        self.pressure.setdefault(item.frame.task_id, TaskPressure()).dropped += 1
        self._end(item, Outcome.DROPPED, reason)

    def take_pressure(self) -> dict[str, TaskPressure]:
        """Per task, what arrived and was dropped since the last call (the extractor's credit signal)."""
        taken, self.pressure = self.pressure, {}
        return taken

    def _end(self, item: Waiting, outcome: Outcome, reason: str) -> None:
        FRAMES_DONE.labels(outcome.value, reason).inc()
        self._finish(item, FrameOutcome(frame=item.frame, outcome=outcome, reason=reason))

    def _finish(self, item: Waiting, result: Result) -> None:
        self.pressure.setdefault(item.frame.task_id, TaskPressure()).ended += 1
        if item.lossless and item.owned():
            item.result = result  # handed on once the frames before it are
        else:
            self._finished.put_nowait((item, result))  # a revoked frame's is discarded there: no order to keep
        if item.lossless:
            self._release_in_order(item.key)

    def _release_in_order(self, key: str) -> None:
        """Hands on a lossless task's results that no earlier frame holds back; a revoked frame holds none back
        (one still at a service: the frames read again after the revocation need not wait for its answer)."""
        in_order = self._in_order.get(key)
        if in_order is None:
            return
        while in_order and ((head := in_order[0]).result is not None or not head.owned()):
            in_order.popleft()
            if head.result is not None:
                self._finished.put_nowait((head, head.result))
        if not in_order:
            del self._in_order[key]

    def _seen(self, frame: FrameEvent) -> CameraSeen:
        seen = self.cameras.get(frame.camera_id)
        if seen is None:
            seen = self.cameras[frame.camera_id] = CameraSeen(frame.task_id)
        return seen

    @Service.timer(FORGET_EVERY_S)
    async def _forget_hourly(self) -> None:
        self.forget_idle(time.monotonic() - FORGET_AFTER_S)

    def forget_idle(self, horizon: float) -> None:
        """Cameras silent since `horizon` and services gone from the registry leave the maps and the metrics."""
        for camera_id, seen in list(self.cameras.items()):
            if seen.last_seen < horizon:
                del self.cameras[camera_id]
                for mode in Freshness:
                    _unlabel(TASK_FRESHNESS, seen.task_id, mode.value)
        known = {s.service_id for s in self.registry.known()}
        for service_id in [sid for sid, load in self.loads.items() if sid not in known and not load.in_flight]:
            del self.loads[service_id]
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

    def _load(self, service_id: str) -> ServiceLoad:
        load = self.loads.get(service_id)
        if load is None:
            load = self.loads[service_id] = ServiceLoad(CircuitBreaker(self.breaker_settings))
        return load

    # -- what `framewatch services` shows -----------------------------------------------------------------------

    def services_view(self) -> list[dict[str, Any]]:
        alive = {s.service_id for s in self.registry.alive()}
        view = []
        for service in self.registry.known():
            load = self._load(service.service_id)
            state = load.breaker.state
            view.append({
                "service_id": service.service_id, "endpoint": service.heartbeat.endpoint,
                "task_types": [t.value for t in service.heartbeat.task_types],
                "capacity": service.heartbeat.capacity, "max_batch": service.heartbeat.max_batch,
                "version": service.heartbeat.version, "static": service.static,
                "healthy": service.service_id in alive and state is BreakerState.CLOSED,
                "alive": service.service_id in alive, "breaker": state.name.lower(),
                "in_flight": load.in_flight,
                "usable": self.capacity.usable(service.service_id, service.heartbeat.capacity),
                "requests": load.requests, "faults": load.faults,
                "latency_ms": None if load.latency_ms is None else round(load.latency_ms, 1),
                "heartbeat_age_s": round(time.monotonic() - service.last_seen, 1),
            })
        return view
