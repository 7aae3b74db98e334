"""A misbehaving algorithm service, for tests and benchmarks: the real contract over a real socket.

Each instance takes `capacity` requests at once (more wait in line, as on a real GPU), answers a batch of n
frames after `latency_ms` (+ normal jitter) + (n - 1) * `batch_extra_ms`, and injects the configured fault into a
`fault_rate` share of its requests. `POST /control` changes the behaviour while it runs; `GET /stats` says what
it saw. `framewatch fake-detector` runs a fleet of instances in one process, each announcing itself on
fw.services like a real service.
"""

from __future__ import annotations

import asyncio
import random
import time
from enum import StrEnum

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from framewatch.detector.announce import Announcer
from framewatch.schemas.config import Config
from framewatch.schemas.contract import (
    HEALTH_PATH,
    INFER_PATH,
    ErrorCode,
    FrameResult,
    InferRequest,
    InferResponse,
    ServiceError,
)
from framewatch.schemas.events import Detection, ServiceHeartbeat
from framewatch.schemas.tasks import TaskType

CONTROL_PATH = "/control"
STATS_PATH = "/stats"


class Fault(StrEnum):
    NONE = "none"
    RESOURCE_EXHAUSTED = "resource_exhausted"  # the seed's 107002, answered at once
    TIMEOUT = "timeout"  # never answers
    GARBAGE = "garbage"  # 200 with a body that is not JSON
    SLOW_BODY = "slow_body"  # the answer trickles out over ten seconds
    RESET = "reset"  # the connection is dropped without an answer
    HTTP_500 = "http_500"


class Behaviour(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=140.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    batch_extra_ms: float = Field(default=0.0, ge=0)
    fault: Fault = Fault.NONE
    fault_rate: float = Field(default=1.0, ge=0, le=1)
    people: int = Field(default=0, ge=0, description="person detections in every answer, new people every frame "
                                                    "(track ids of their own), so each frame is a new incident")
    steady: bool = Field(default=False, description="the same people in every frame instead (the same boxes, no "
                                                    "track ids): one track each, one incident")


class MisbehavingService:
    def __init__(self, service_id: str, port: int, capacity: int = 1, max_batch: int = 1,
                 behaviour: Behaviour | None = None, host: str = "127.0.0.1",
                 task_types: list[TaskType] | None = None) -> None:
        self.service_id = service_id
        self.host = host
        self.port = port
        self.capacity = capacity
        self.max_batch = max_batch
        self.behaviour = behaviour or Behaviour()
        self.task_types = task_types or list(TaskType)
        self.slots = asyncio.Semaphore(capacity)
        self.random = random.Random(port)
        self.requests = 0
        self.frames = 0
        self.faults = 0
        self.batch_sizes: list[int] = []
        self.busy = 0
        self.most_busy = 0
        self.concurrent = 0  # requests being handled, queued for a slot or not: what its callers sent at once
        self.most_concurrent = 0
        self.busy_s = 0.0  # slot-seconds spent inferring
        self._busy_changed = time.perf_counter()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def heartbeat(self) -> ServiceHeartbeat:
        return ServiceHeartbeat(service_id=self.service_id, endpoint=self.endpoint, task_types=self.task_types,
                                capacity=self.capacity, max_batch=self.max_batch, version="misbehaving")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(INFER_PATH, self.infer)
        app.router.add_get(HEALTH_PATH, self.health)
        app.router.add_post(CONTROL_PATH, self.control)
        app.router.add_get(STATS_PATH, self.stats)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service_id": self.service_id})

    async def control(self, request: web.Request) -> web.Response:
        try:
            self.behaviour = self.behaviour.model_copy(update=Behaviour.model_validate_json(
                await request.read()).model_dump(exclude_unset=True))
        except ValidationError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(self.behaviour.model_dump(mode="json"))

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"service_id": self.service_id, "requests": self.requests, "frames": self.frames,
                                  "faults": self.faults, "most_busy": self.most_busy,
                                  "most_concurrent": self.most_concurrent, "busy_s": self.busy_seconds(),
                                  "batch_sizes": self.batch_sizes[-1000:]})

    def busy_seconds(self) -> float:
        now = time.perf_counter()
        self.busy_s += self.busy * (now - self._busy_changed)
        self._busy_changed = now
        return self.busy_s

    async def infer(self, request: web.Request) -> web.StreamResponse:
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            return await self._infer(request)
        finally:
            self.concurrent -= 1

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        body = InferRequest.model_validate_json(await request.read())
        self.requests += 1
        self.frames += len(body.frames)
        self.batch_sizes.append(len(body.frames))
        behaviour = self.behaviour
        fault = behaviour.fault if self.random.random() < behaviour.fault_rate else Fault.NONE
        if fault is not Fault.NONE:
            self.faults += 1
            return await self._misbehave(fault, request)
        async with self.slots:
            self.busy_seconds()
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
            started = time.perf_counter()
            try:
                await asyncio.sleep(self._latency_s(behaviour, len(body.frames)))
            finally:
                self.busy_seconds()
                self.busy -= 1
        answer = InferResponse(results=[FrameResult(frame_id=f.frame_id,
                                                    detections=self._people(behaviour, f.frame_id))
                                        for f in body.frames],
                               inference_ms=(time.perf_counter() - started) * 1000)
        return web.Response(body=answer.model_dump_json(), content_type="application/json")

    def _latency_s(self, behaviour: Behaviour, frames: int) -> float:
        jitter = self.random.gauss(0, behaviour.jitter_ms) if behaviour.jitter_ms else 0.0
        return max(0.0, behaviour.latency_ms + jitter + (frames - 1) * behaviour.batch_extra_ms) / 1000

    @staticmethod
    def _people(behaviour: Behaviour, frame_id: str) -> list[Detection]:
        return [Detection(label="person", score=0.9, box=(0.1 * i, 0.2, 0.1 * i + 0.08, 0.6),
                          track_id=None if behaviour.steady else f"{frame_id}/{i}")
                for i in range(min(behaviour.people, 10))]

    async def _misbehave(self, fault: Fault, request: web.Request) -> web.StreamResponse:
        if fault is Fault.RESOURCE_EXHAUSTED:
            answer = InferResponse(error=ServiceError(code=ErrorCode.RESOURCE_EXHAUSTED,
                                                      message="CUDA out of memory"))
            return web.Response(body=answer.model_dump_json(), content_type="application/json")
        if fault is Fault.GARBAGE:
            return web.Response(text="<html>surprise</html>", content_type="text/html")
        if fault is Fault.HTTP_500:
            return web.Response(status=500, text="Internal Server Error")
        if fault is Fault.TIMEOUT:
            await asyncio.sleep(3600)
        if fault is Fault.RESET and request.transport is not None:
            request.transport.abort()
            return web.Response()
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        for chunk in ('{"results"', ": [", "]}"):
            await asyncio.sleep(5)
            await response.write(chunk.encode())
        await response.write_eof()
        return response


async def serve(service: MisbehavingService) -> web.AppRunner:
    """Start answering on the service's port; requests still hanging get a second when it is cleaned up."""
    runner = web.AppRunner(service.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, service.host, service.port).start()
    return runner


async def run_fleet(services: list[MisbehavingService], config: Config | None) -> None:
    """Serve every instance (and announce them when a config names the broker) until cancelled."""
    runners = [await serve(service) for service in services]
    announcer = Announcer(config, lambda: [s.heartbeat() for s in services]) if config is not None else None
    if announcer is not None:
        await announcer.start()
    try:
        await asyncio.Event().wait()
    finally:
        if announcer is not None:
            await announcer.stop()
        for runner in runners:
            await runner.cleanup()
