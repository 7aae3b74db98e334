"""The algorithm service framewatch ships, behind the contract in `schemas.contract`: OpenCV's HOG people
detector (the reference), or a model the user brings as an ONNX file (`detector/onnx.py`, `--model`).

CPU work runs in a thread pool sized to the cores (OpenCV and ONNX Runtime release the GIL), never on the event
loop: HOG one frame per thread, an ONNX model one batch per request (`max_batch` frames in one run). The service
announces itself on fw.services every few seconds so the inference agent can route to it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import ValidationError

from framewatch.detector.announce import Announcer
from framewatch.detector.hog import HogPeopleDetector
from framewatch.schemas.config import Config
from framewatch.schemas.contract import (
    HEALTH_PATH,
    INFER_PATH,
    ErrorCode,
    FrameResult,
    InferFrame,
    InferRequest,
    InferResponse,
    ServiceError,
)
from framewatch.schemas.events import Detection, ServiceHeartbeat
from framewatch.schemas.tasks import TaskType

log = logging.getLogger("framewatch.detector")

REQUESTS = Counter("framewatch_detector_requests_total", "Inference requests", ["outcome"])
DETECT_SECONDS = Histogram("framewatch_detector_detect_seconds", "Detection time per frame (a batch's time / its frames)",
                           buckets=(0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5))


MAX_IMAGE_BYTES = 16 * 1024 * 1024


PEOPLE_TASKS = [TaskType.PEOPLE_COUNTING, TaskType.AREA_INTRUSION, TaskType.LINE_CROSSING, TaskType.LOITERING,
                TaskType.OFF_POST]


class Detector(Protocol):
    def detect_jpegs(self, images: list[bytes]) -> list[list[Detection] | ValueError]: ...

    def describe(self) -> dict[str, object]: ...


@dataclass(frozen=True)
class DetectorSettings:
    service_id: str
    host: str = "127.0.0.1"
    port: int = 8500
    capacity: int = os.cpu_count() or 1
    advertise_url: str | None = None
    upscale: float = 1.0
    model: Path | None = None  # an ONNX file; HOG when None
    labels: list[str] | None = None  # the model's class names, in order (COCO when None)
    max_batch: int = 1  # frames per request (and per model run) a model takes
    threads: int | None = None  # a model's intra-op threads per run (None: the cores shared by `capacity` runs)
    task_types: list[TaskType] = field(default_factory=lambda: list(PEOPLE_TASKS))

    @property
    def endpoint(self) -> str:
        return self.advertise_url or f"http://{self.host}:{self.port}"


class DetectorService:
    def __init__(self, settings: DetectorSettings, config: Config) -> None:
        self.settings = settings
        self.config = config
        self.detector: Detector = HogPeopleDetector(upscale=settings.upscale)
        if settings.model is not None:
            # ONNX Runtime is the `onnx` extra: imported on use
            from framewatch.detector.onnx import OnnxDetector, intra_op_threads

            self.detector = OnnxDetector(settings.model, settings.labels,
                                         threads=settings.threads or intra_op_threads(settings.capacity))
        self.max_batch = 1 if settings.model is None else settings.max_batch
        self.pool = ThreadPoolExecutor(max_workers=settings.capacity, thread_name_prefix="hog")
        self.images: httpx.AsyncClient | None = None
        self.announcer: Announcer | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post(INFER_PATH, self.infer)
        app.router.add_get(HEALTH_PATH, self.health)
        app.router.add_get("/metrics", self.metrics)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        self.images = httpx.AsyncClient(timeout=httpx.Timeout(5.0), limits=httpx.Limits(max_connections=32))
        self.announcer = Announcer(self.config, lambda: [self.heartbeat()])
        await self.announcer.start()

    async def _stop(self, _: web.Application) -> None:
        if self.announcer is not None:
            await self.announcer.stop()
        if self.images is not None:
            await self.images.aclose()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def model(self) -> str:
        """What the answers and heartbeats name as the model: HOG's OpenCV version, or the ONNX file's name."""
        return str(self.detector.describe()["model"])

    def heartbeat(self) -> ServiceHeartbeat:
        return ServiceHeartbeat(service_id=self.settings.service_id, endpoint=self.settings.endpoint,
                                task_types=self.settings.task_types, capacity=self.settings.capacity,
                                max_batch=self.max_batch, version=self.model)

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service_id": self.settings.service_id,
                                  "capacity": self.settings.capacity, "max_batch": self.max_batch,
                                  **self.detector.describe()})

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def infer(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = InferRequest.model_validate_json(await request.read())
        except ValidationError as error:
            REQUESTS.labels("bad_request").inc()
            answer = InferResponse(error=ServiceError(code=ErrorCode.BAD_REQUEST, message=str(error)))
            return web.json_response(text=answer.model_dump_json(), status=400)
        if self.max_batch > 1:
            results = await self._infer_batch(body.frames)
        else:
            results = list(await asyncio.gather(*(self._infer_frame(frame) for frame in body.frames)))
        REQUESTS.labels("ok").inc()
        answer = InferResponse(results=results, inference_ms=(time.perf_counter() - started) * 1000,
                               model=self.model)
        return web.json_response(text=answer.model_dump_json())

    async def _infer_frame(self, frame: InferFrame) -> FrameResult:
        return (await self._infer_batch([frame]))[0]

    async def _infer_batch(self, frames: list[InferFrame]) -> list[FrameResult]:
        """The frames' images fetched together, then detected in one call (one model run for a batch)."""
        images = await asyncio.gather(*(self._image(frame) for frame in frames), return_exceptions=True)
        results: dict[str, FrameResult] = {}
        fetched: list[tuple[InferFrame, bytes]] = []
        for frame, image in zip(frames, images, strict=True):
            if isinstance(image, bytes):
                fetched.append((frame, image))
            elif isinstance(image, httpx.HTTPError | ValueError):
                results[frame.frame_id] = FrameResult(frame_id=frame.frame_id, error=ServiceError(
                    code=ErrorCode.IMAGE_UNAVAILABLE, message=str(image)))
            else:
                raise image
        if fetched:
            started = time.perf_counter()
            found = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.detector.detect_jpegs, [image for _, image in fetched])
            DETECT_SECONDS.observe((time.perf_counter() - started) / len(fetched))
            for (frame, _), detections in zip(fetched, found, strict=True):
                results[frame.frame_id] = FrameResult(frame_id=frame.frame_id, detections=detections) \
                    if not isinstance(detections, ValueError) else FrameResult(
                        frame_id=frame.frame_id, error=ServiceError(code=ErrorCode.BAD_REQUEST, message=str(detections)))
        return [results[frame.frame_id] for frame in frames]

    async def _image(self, frame: InferFrame) -> bytes:
        if frame.image_b64 is not None:
            return base64.b64decode(frame.image_b64, validate=True)
        assert frame.image_url is not None and self.images is not None
        async with self.images.stream("GET", frame.image_url) as answer:
            answer.raise_for_status()
            image = bytearray()
            async for chunk in answer.aiter_bytes():
                image += chunk
                if len(image) > MAX_IMAGE_BYTES:
                    raise ValueError(f"the image at {frame.image_url.split('?')[0]} is over {MAX_IMAGE_BYTES} bytes")
        return bytes(image)

def serve(settings: DetectorSettings, config: Config) -> None:
    service = DetectorService(settings, config)
    log.info("detector %s listening on %s (capacity %d)", settings.service_id, settings.endpoint, settings.capacity)
    web.run_app(service.app(), host=settings.host, port=settings.port, print=None, access_log=None)
