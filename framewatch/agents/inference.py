"""Inference: route each frame to an algorithm service, classify what comes back.

Routing picks, among the live services for the frame's task type, the one with the fewest outstanding requests
relative to its declared capacity; `max_concurrent_infer` bounds the whole worker. A failed frame is retried at
most once, on another service, and otherwise ends as a FrameOutcome(failed, reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import httpx
from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from framewatch.agents.registry import RegisteredService, ServiceRegistry
from framewatch.schemas.config import Config
from framewatch.schemas.contract import (
    INFER_PATH,
    MAX_RESPONSE_BYTES,
    ErrorCode,
    InferFrame,
    InferRequest,
    InferResponse,
)
from framewatch.schemas.events import (
    Detection,
    DetectionEvent,
    FrameEvent,
    FrameOutcome,
    Outcome,
    now_ms,
)
from framewatch.streams.objectstore import ObjectStore

log = logging.getLogger("framewatch.inference")

REQUESTS = Counter("framewatch_inference_requests_total", "Requests sent to algorithm services", ["service"])
RESPONSES = Counter("framewatch_inference_responses_total", "Successful answers", ["service"])
FAILURES = Counter("framewatch_inference_failures_total", "Failed requests", ["service", "reason"])
FRAMES_DONE = Counter("framewatch_inference_frames_total", "Frames leaving inference", ["outcome"])
INFER_SECONDS = Histogram("framewatch_inference_seconds", "Request time per service", ["service"],
                          buckets=(0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10))
FRAME_AGE = Histogram("framewatch_inference_frame_age_seconds", "Frame age when dispatched",
                      buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
IN_FLIGHT = Gauge("framewatch_inference_in_flight", "Requests in flight", ["service"])

MAX_ATTEMPTS = 2
WAIT_FOR_SERVICE_S = 5.0


class InferenceFailure(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Inference:
    def __init__(self, config: Config, registry: ServiceRegistry, store: ObjectStore) -> None:
        self.config = config
        self.registry = registry
        self.store = store
        self.outstanding: dict[str, int] = defaultdict(int)
        self._regions = {task.id: task.region for task in config.frame_extractor.tasks}
        self._slots = asyncio.Semaphore(config.ai_analysis.max_concurrent_infer)
        self._released = asyncio.Condition()
        timeout = config.ai_analysis.infer_timeout_sec
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=2.0),
                                      limits=httpx.Limits(max_connections=config.ai_analysis.max_concurrent_infer,
                                                          max_keepalive_connections=config.ai_analysis.max_concurrent_infer))

    async def close(self) -> None:
        await self.http.aclose()

    async def infer(self, frame: FrameEvent) -> DetectionEvent | FrameOutcome:
        FRAME_AGE.observe(max(0, now_ms() - frame.captured_at) / 1000)
        tried: set[str] = set()
        failure = InferenceFailure("no_service", f"no live service serves {frame.task_type.value}")
        async with self._slots:
            for _ in range(MAX_ATTEMPTS):
                service = await self._pick(frame, exclude=tried)
                if service is None:
                    break
                tried.add(service.service_id)
                try:
                    detections = await self._call(service, frame)
                except InferenceFailure as error:
                    failure = error
                    log.warning("frame %s on %s failed: %s", frame.frame_id, service.service_id, error)
                    continue
                FRAMES_DONE.labels("inferred").inc()
                return detections
        FRAMES_DONE.labels("failed").inc()
        return FrameOutcome(frame=frame, outcome=Outcome.FAILED, reason=failure.reason)

    def _choose(self, frame: FrameEvent, exclude: set[str]) -> RegisteredService | None:
        def load(s: RegisteredService) -> float:
            return self.outstanding[s.service_id] / s.heartbeat.capacity

        free = [s for s in self.registry.alive(frame.task_type) if s.service_id not in exclude
                and self.outstanding[s.service_id] < s.heartbeat.capacity]
        return min(free, key=load, default=None)

    async def _pick(self, frame: FrameEvent, exclude: set[str]) -> RegisteredService | None:
        """A service with room; waits while all are busy, gives up when none serves the task type."""
        deadline = time.monotonic() + WAIT_FOR_SERVICE_S
        async with self._released:
            while (service := self._choose(frame, exclude)) is None:
                serving = [s for s in self.registry.alive(frame.task_type) if s.service_id not in exclude]
                remaining = deadline - time.monotonic()
                if not serving and remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._released.wait(), timeout=max(0.05, min(remaining, 0.5)))
                except asyncio.TimeoutError:
                    pass
            self.outstanding[service.service_id] += 1
            return service

    async def _release(self, service_id: str) -> None:
        async with self._released:
            self.outstanding[service_id] -= 1
            self._released.notify()

    async def _call(self, service: RegisteredService, frame: FrameEvent) -> DetectionEvent:
        sid = service.service_id
        request = InferRequest(frames=[InferFrame(
            frame_id=frame.frame_id, task_type=frame.task_type,
            image_url=self.store.presign(frame.object_key, expiry_sec=600),
            region=self._regions.get(frame.task_id))])
        REQUESTS.labels(sid).inc()
        IN_FLIGHT.labels(sid).inc()
        started = time.perf_counter()
        try:
            answer = await self._post(service, request)
        except InferenceFailure as failure:
            FAILURES.labels(sid, failure.reason).inc()
            raise
        finally:
            IN_FLIGHT.labels(sid).dec()
            await self._release(sid)
        elapsed = time.perf_counter() - started
        INFER_SECONDS.labels(sid).observe(elapsed)
        RESPONSES.labels(sid).inc()
        return DetectionEvent(frame=frame, service_id=sid, inference_ms=elapsed * 1000, detections=answer)

    async def _post(self, service: RegisteredService, request: InferRequest) -> list[Detection]:
        url = service.heartbeat.endpoint.rstrip("/") + INFER_PATH
        try:
            response = await self.http.post(url, content=request.model_dump_json(),
                                            headers={"content-type": "application/json"})
        except httpx.ConnectError as error:
            raise InferenceFailure("connect", f"{url}: {error}") from None
        except httpx.TimeoutException:
            raise InferenceFailure("timeout", f"{url}: no answer within the timeout") from None
        except httpx.HTTPError as error:
            raise InferenceFailure("transport", f"{url}: {error}") from None
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise InferenceFailure("too_large", f"{url}: answer of {len(response.content)} bytes")
        try:
            body = InferResponse.model_validate_json(response.content)
        except ValidationError as error:
            if response.status_code >= 500:
                raise InferenceFailure("http_5xx", f"{url}: HTTP {response.status_code}") from None
            raise InferenceFailure("malformed", f"{url}: answer breaks the contract: {error}") from None
        refusal = body.error or next((r.error for r in body.results if r.error), None)
        if refusal is not None:
            reason = "resource_exhausted" if refusal.code == ErrorCode.RESOURCE_EXHAUSTED else f"service_{refusal.code}"
            raise InferenceFailure(reason, f"{url}: {refusal.code} {refusal.message}")
        if response.status_code >= 400:
            raise InferenceFailure(f"http_{response.status_code // 100}xx", f"{url}: HTTP {response.status_code}")
        frame_id = request.frames[0].frame_id
        result = next((r for r in body.results if r.frame_id == frame_id), None)
        if result is None:
            raise InferenceFailure("malformed", f"{url}: no result for frame {frame_id}")
        return result.detections
