"""The extractor: for each camera task, sample frames, upload each JPEG, then emit its FrameEvent.

An event is sent only once its object exists, so no event ever points to a missing object. A camera that fails
ends with its error recorded and counted; the other cameras go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import cv2
from prometheus_client import Counter, Gauge, Histogram

from framewatch.schemas.config import Config, mask_url
from framewatch.schemas.events import FrameEvent, now_ms
from framewatch.schemas.tasks import CameraTask
from framewatch.schemas.topics import FRAMES
from framewatch.streams.bus import EventProducer, ensure_topics
from framewatch.streams.objectstore import ObjectStore, StoreError
from framewatch.streams.source import Sample, SourceError, samples

log = logging.getLogger("framewatch.extractor")

FRAMES_SAMPLED = Counter("framewatch_extractor_frames_sampled_total", "Frames sampled from sources", ["task"])
FRAMES_EMITTED = Counter("framewatch_extractor_frames_emitted_total", "FrameEvents sent to fw.frames", ["task"])
FRAMES_DROPPED = Counter("framewatch_extractor_frames_dropped_total", "Sampled frames not emitted", ["task", "reason"])
UPLOAD_BYTES = Counter("framewatch_extractor_upload_bytes_total", "JPEG bytes uploaded", ["task"])
UPLOAD_SECONDS = Histogram("framewatch_extractor_upload_seconds", "Time to upload one JPEG",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
CAPTURE_TO_EVENT = Histogram("framewatch_extractor_capture_to_event_seconds", "Capture to FrameEvent sent",
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
CAMERA_UP = Gauge("framewatch_extractor_camera_up", "1 while a camera is streaming", ["task"])
CAMERA_ERRORS = Counter("framewatch_extractor_camera_errors_total", "Sources that failed", ["task", "reason"])

UPLOAD_ATTEMPTS = 3


@dataclass
class CameraReport:
    task_id: str
    emitted: int = 0
    dropped: int = 0
    error: str | None = None


@dataclass
class ExtractReport:
    cameras: list[CameraReport] = field(default_factory=list)

    @property
    def emitted(self) -> int:
        return sum(c.emitted for c in self.cameras)

    @property
    def failed(self) -> list[CameraReport]:
        return [c for c in self.cameras if c.error]


def frame_key(store: ObjectStore, task: CameraTask, captured_at: int, seq: int) -> str:
    day = datetime.fromtimestamp(captured_at / 1000, tz=UTC).strftime("%Y%m%d")
    return store.key("frames", task.output_path or task.id, day, f"{captured_at}-{seq:06d}.jpg")


class Extractor:
    def __init__(self, config: Config, store: ObjectStore, producer: EventProducer) -> None:
        self.config = config
        self.store = store
        self.producer = producer

    async def run(self) -> ExtractReport:
        tasks = [t for t in self.config.frame_extractor.tasks if t.enabled]
        reports = await asyncio.gather(*(self.run_camera(t) for t in tasks))
        return ExtractReport(list(reports))

    async def run_camera(self, task: CameraTask) -> CameraReport:
        report = CameraReport(task.id)
        interval = self.config.frame_extractor.interval_for(task)
        CAMERA_UP.labels(task.id).set(1)
        try:
            seq = 0
            async for sample in samples(task.rtsp_url, interval, self.config.frame_extractor.realtime):
                FRAMES_SAMPLED.labels(task.id).inc()
                if await self._emit(task, sample, seq):
                    report.emitted += 1
                else:
                    report.dropped += 1
                seq += 1
        except SourceError as error:
            report.error = str(error)
            CAMERA_ERRORS.labels(task.id, "source").inc()
            log.error("camera %s stopped: %s", task.id, error)
        finally:
            CAMERA_UP.labels(task.id).set(0)
        log.info("camera %s (%s): %d frames emitted, %d dropped", task.id, mask_url(task.rtsp_url),
                 report.emitted, report.dropped)
        return report

    async def _emit(self, task: CameraTask, sample: Sample, seq: int) -> bool:
        ok, jpeg = await asyncio.to_thread(
            cv2.imencode, ".jpg", sample.image, [cv2.IMWRITE_JPEG_QUALITY, self.config.frame_extractor.jpeg_quality])
        if not ok:
            FRAMES_DROPPED.labels(task.id, "encode").inc()
            return False
        key = frame_key(self.store, task, sample.captured_at, seq)
        if not await self._upload(task, key, jpeg.tobytes()):
            return False
        height, width = sample.image.shape[:2]
        event = FrameEvent(frame_id=FrameEvent.make_id(task.id, sample.captured_at, seq), task_id=task.id,
                           camera_id=task.id, task_type=task.task_type, seq=seq, captured_at=sample.captured_at,
                           bucket=self.store.bucket, object_key=key, width=width, height=height)
        await self.producer.send(FRAMES, event, key=event.camera_id)
        FRAMES_EMITTED.labels(task.id).inc()
        CAPTURE_TO_EVENT.observe((now_ms() - sample.captured_at) / 1000)
        return True

    async def _upload(self, task: CameraTask, key: str, data: bytes) -> bool:
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            started = time.perf_counter()
            try:
                await self.store.put(key, data)
            except StoreError as error:
                log.warning("camera %s: upload attempt %d/%d failed: %s", task.id, attempt, UPLOAD_ATTEMPTS, error)
                await asyncio.sleep(0.2 * 2 ** attempt)
                continue
            UPLOAD_SECONDS.observe(time.perf_counter() - started)
            UPLOAD_BYTES.labels(task.id).inc(len(data))
            return True
        FRAMES_DROPPED.labels(task.id, "upload").inc()
        return False


async def run_extractor(config: Config) -> ExtractReport:
    """Create the topics and the bucket if missing, then run every enabled camera task to its end."""
    await ensure_topics(config)
    store = ObjectStore(config.frame_extractor.minio)
    await store.ensure_bucket()
    producer = EventProducer(config)
    await producer.start()
    try:
        return await Extractor(config, store, producer).run()
    finally:
        await producer.stop()
