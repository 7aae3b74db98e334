"""One camera on an extractor: a reader thread decodes, samples, gates and encodes; the event loop uploads each
JPEG and only then emits its FrameEvent; a session that fails is retried with backoff until the camera is stopped.

    reader thread: Source.frames ─► change gate ─► JPEG ─► Handoff (bounded, drops its oldest)
    event loop:    Handoff ─► upload to frames/<output_path>/<day>/<ms>-<seq>.jpg ─► FrameEvent on fw.frames
                   ─► every snapshot_interval_sec, beside the frames: copied to the camera's still (snapshots.py)

A camera whose every frame must be analysed (`freshness = "all"`) waits, before each upload, while it is too far
ahead of inference (streams/pressure.py); its reader thread then waits on the full hand-off, and decoding pauses.

States (`CameraState`): connecting ─► streaming ─► backoff ─► connecting …; failed for errors retrying cannot
fix (it waits for its task to change), ended when a file reaches its end.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import av
import cv2
import numpy as np
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram

from framewatch.clients.bus import EventProducer
from framewatch.clients.objectstore import ObjectStore, StoreError
from framewatch.retry import Backoff, logged
from framewatch.schemas.config import FrameExtractorSettings, mask_url
from framewatch.schemas.events import CameraState, CameraStatus, FrameEvent, now_ms
from framewatch.schemas.tasks import CameraTask, Freshness
from framewatch.schemas.topics import FRAMES
from framewatch.streams.clips import ClipRecorder
from framewatch.streams.clock import BrokerClock
from framewatch.streams.gate import ChangeGate
from framewatch.streams.handoff import Handoff
from framewatch.streams.pressure import LOSSLESS_AHEAD, Throttle
from framewatch.streams.reconcile import announce_orphans
from framewatch.streams.snapshots import Snapshots
from framewatch.streams.source import DueFrame, Source, SourceError, SourceSettings

log = logging.getLogger("framewatch.extractor")

# every camera has a reader thread of its own: OpenCV's pool, on top, woke its threads for each small image (the
# gate's blur) and spent more CPU waking them than the blur itself
cv2.setNumThreads(1)

FRAMES_DECODED = Counter("framewatch_extractor_frames_decoded_total", "Frames decoded from sources", ["task"])
FRAMES_SAMPLED = Counter("framewatch_extractor_frames_sampled_total", "Frames due at the sampling interval",
                         ["task"])
FRAMES_GATED = Counter("framewatch_extractor_frames_gated_total", "Sampled frames the change gate held back",
                       ["task"])
FRAMES_EMITTED = Counter("framewatch_extractor_frames_emitted_total", "Frames uploaded, then sent to fw.frames",
                         ["task"])
FRAMES_DROPPED = Counter("framewatch_extractor_frames_dropped_total", "Sampled frames not emitted, by reason",
                         ["task", "reason"])
CORRUPT_PACKETS = Counter("framewatch_extractor_corrupt_packets_total", "Packets the decoder refused (skipped)",
                          ["task"])
PACKETS_SKIPPED = Counter("framewatch_extractor_packets_skipped_total", "Packets dropped undecoded: no due frame "
                          "needed them (key frames only, or a GOP's rest after its last due frame)", ["task"])
UPLOAD_BYTES = Counter("framewatch_extractor_upload_bytes_total", "JPEG bytes uploaded", ["task"])
UPLOAD_SECONDS = Histogram("framewatch_extractor_upload_seconds", "Time to upload one JPEG",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
CAPTURE_TO_EVENT = Histogram("framewatch_extractor_capture_to_event_seconds", "Capture to FrameEvent sent",
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
CAMERA_UP = Gauge("framewatch_extractor_camera_up", "1 while a camera is streaming", ["task"])
LAST_FRAME = Gauge("framewatch_extractor_last_frame_timestamp_seconds", "When the camera's last frame was captured "
                   "(the age of its last frame: time() minus this)", ["task"])
CAMERA_STATE = Gauge("framewatch_extractor_camera_state", "1 for the state a camera is in", ["task", "state"])
CAMERA_ERRORS = Counter("framewatch_extractor_camera_errors_total", "Source sessions that failed",
                        ["task", "reason"])
RECONNECTS = Counter("framewatch_extractor_reconnects_total", "Sessions started again after a failure", ["task"])
SAMPLING_INTERVAL = Gauge("framewatch_extractor_sampling_interval_seconds",
                          "Sampling interval in force (stretched while inference is behind)", ["task"])
KEYFRAMES_ONLY = Gauge("framewatch_extractor_keyframes_only", "1 while only key frames are decoded", ["task"])
FRAMES_AHEAD = Gauge("framewatch_extractor_frames_ahead", "Frames of a lossless camera sent and not yet through "
                     "inference", ["task"])
HELD_BACK = Counter("framewatch_extractor_held_back_seconds_total", "Time a lossless camera waited for inference",
                    ["task"])

UPLOAD_BACKOFF = Backoff(first_s=0.4, max_s=1.6, attempts=3)  # the store's client itself does not retry


@dataclass(frozen=True)
class Sample:
    jpeg: bytes
    stream_ms: int
    captured_at: int
    width: int
    height: int


def extractor_name() -> str:
    """This extractor process, as fw.cameras and its metrics name it."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Uplink:
    """Where samples go, shared by every camera of an extractor: the store, the producer, an upload bound, the
    cameras' stills, and the offset of this host's clock to the broker's, measured from the frames sent."""

    store: ObjectStore
    producer: EventProducer
    uploads: asyncio.Semaphore
    snapshots: Snapshots
    clock: BrokerClock = field(default_factory=lambda: BrokerClock(extractor_name()))

    async def close(self) -> None:
        await self.producer.stop()
        self.store.close()


def reconnect_backoff(settings: FrameExtractorSettings) -> Backoff:
    """The waits between a camera's failed sessions: `reconnect_min_sec` doubling up to `reconnect_max_sec`, times a
    random 0.5–1 (cameras that failed together do not return together)."""
    return Backoff(first_s=settings.reconnect_min_sec, max_s=settings.reconnect_max_sec, jitter=0.5)


def frame_key(store: ObjectStore, task: CameraTask, captured_at: int, seq: int) -> str:
    day = datetime.fromtimestamp(captured_at / 1000, tz=UTC).strftime("%Y%m%d")
    return store.key("frames", task.output_path or task.id, day, f"{captured_at}-{seq:06d}.jpg")


def bgr(frame: av.VideoFrame) -> np.ndarray:
    """The frame as OpenCV's BGR, by swscale on this thread: with its default threads it starts and stops two
    threads per frame, 60 % more CPU for the same pixels. (OpenCV's own conversion is faster still, but its
    chroma is not interpolated, and the detector's findings on the test clip change with it.)"""
    return frame.reformat(format="bgr24", threads=1).to_ndarray()


def encode_jpeg(due: DueFrame, quality: int) -> Sample | None:
    image = bgr(due.frame)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return None
    return Sample(jpeg.tobytes(), due.stream_ms, due.captured_at, due.frame.width, due.frame.height)


class Camera:
    def __init__(self, task: CameraTask, settings: FrameExtractorSettings, uplink: Uplink,
                 pressure: Throttle | None = None, recorder: ClipRecorder | None = None) -> None:
        """`pressure`: what inference reports (fw.pressure); without it the camera is neither throttled nor held
        back. `recorder`: holds the camera's packets for event clips (streams/clips.py)."""
        self.task = task
        self.recorder = recorder
        self.settings = settings
        self.uplink = uplink
        self.snapshot = uplink.snapshots.of(task.id)
        self.pressure = pressure
        self.lossless = settings.freshness_for(task) is Freshness.ALL
        self.state = CameraState.CONNECTING
        self.last_error = ""
        self.reconnects = 0
        self.decoded = 0
        self.emitted = 0
        self.not_sent = 0  # upload or Kafka failed (the event loop counts these)
        self.pushed_out = 0  # by newer samples in the hand-off (the reader thread counts these)
        self.last_frame_at: int | None = None
        self.keyframes_only = False
        self.created_at = now_ms()
        self._seq = 0
        self._stop = threading.Event()
        self._stopped = asyncio.Event()

    @property
    def freshness(self) -> Freshness:
        return Freshness.ALL if self.lossless else Freshness.LATEST

    @property
    def dropped(self) -> int:
        return self.not_sent + self.pushed_out

    @property
    def base_interval_ms(self) -> int:
        return self.settings.interval_for(self.task)

    def interval_ms(self) -> float:
        return self.base_interval_ms * (self.pressure.factor(self.task.id) if self.pressure else 1.0)

    def source_settings(self) -> SourceSettings:
        return SourceSettings(self.task.rtsp_url, self.task.rtsp_transport, self.settings.open_timeout_sec,
                              self.settings.read_timeout_sec, self.task.decode, self.settings.realtime,
                              self.task.loop)

    # -- the session loop ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until stopped, a file ends, or an error retrying cannot fix; transient errors back off and retry. First,
        what an earlier run of the camera uploaded and never announced is announced (streams/reconcile.py)."""
        failures = 0
        try:
            await announce_orphans(self.task, self.uplink.store, self.uplink.producer, self.freshness)
            while not self._stop.is_set():
                self._set_state(CameraState.CONNECTING)
                started = time.monotonic()
                error = await self._session()
                if self._stop.is_set():
                    break
                if error is None:
                    self._set_state(CameraState.ENDED)
                    return
                self.last_error = str(error)
                CAMERA_ERRORS.labels(self.task.id, "permanent" if error.permanent else "transient").inc()
                if error.permanent:
                    log.error("camera %s failed: %s (it waits for its task to change)", self.task.id, error)
                    self._set_state(CameraState.FAILED)
                    return
                failures = 1 if time.monotonic() - started >= self.settings.reconnect_max_sec else failures + 1
                delay = reconnect_backoff(self.settings).wait_s(failures)
                log.warning("camera %s: %s; reconnecting in %.1fs", self.task.id, error, delay)
                self._set_state(CameraState.BACKOFF)
                try:
                    await asyncio.wait_for(self._stopped.wait(), delay)
                except TimeoutError:
                    self.reconnects += 1
                    RECONNECTS.labels(self.task.id).inc()
            self._set_state(CameraState.STOPPED)
        finally:
            self._stop.set()  # cancelled: the reader thread ends too
            CAMERA_UP.labels(self.task.id).set(0)
            await self.snapshot.settle()

    def stop(self) -> None:
        self._stop.set()
        self._stopped.set()

    async def _session(self) -> SourceError | None:
        """One connection: the reader thread feeds the hand-off, this drains it; the reader's error, if any."""
        loop = asyncio.get_running_loop()
        settings = self.source_settings()
        live = not settings.is_file or settings.realtime
        handoff: Handoff[Sample] = Handoff(loop, self.settings.handoff_size, None if live else self._stop)
        outcome: list[SourceError] = []
        source = Source(settings, self.interval_ms, self._stop, self.recorder)
        opened = functools.partial(loop.call_soon_threadsafe, self._set_state, CameraState.STREAMING)
        reader = threading.Thread(target=self._read, args=(source, handoff, outcome, opened), daemon=True,
                                  name=f"camera-{self.task.id}")
        reader.start()
        counted = (0, 0, 0)
        while (sample := await handoff.get()) is not None:
            counted = self._count(source, counted)
            self.keyframes_only = source.keyframes_only
            KEYFRAMES_ONLY.labels(self.task.id).set(int(self.keyframes_only))
            SAMPLING_INTERVAL.labels(self.task.id).set(self.interval_ms() / 1000)
            if not self._stop.is_set():
                await self._emit(sample)
        self._count(source, counted)
        return outcome[0] if outcome else None

    def _read(self, source: Source, handoff: Handoff[Sample], outcome: list[SourceError],
              opened: Callable[[], object]) -> None:
        """The reader thread: decode, sample, gate, encode, hand off. Never blocks on the event loop."""
        task = self.task
        gate = ChangeGate(task.change_min_area, task.change_heartbeat_sec * 1000) if task.change_gate else None
        try:
            for due in source.frames(on_open=opened):
                FRAMES_SAMPLED.labels(task.id).inc()
                if gate is not None and not gate.admits(due.frame, due.stream_ms):
                    FRAMES_GATED.labels(task.id).inc()
                    continue
                sample = encode_jpeg(due, self.settings.jpeg_quality)
                if sample is None:
                    FRAMES_DROPPED.labels(task.id, "encode").inc()
                elif handoff.put(sample) is not None:
                    FRAMES_DROPPED.labels(task.id, "handoff_full").inc()
                    self.pushed_out += 1
        except SourceError as error:
            outcome.append(error)
        except Exception as error:  # a bug or a PyAV surprise must not leave the camera silent
            log.exception("camera %s: the reader stopped unexpectedly", task.id)
            outcome.append(SourceError(f"{mask_url(task.rtsp_url)}: unexpected {type(error).__name__}: {error}"))
        finally:
            handoff.close()

    def _count(self, source: Source, counted: tuple[int, int, int]) -> tuple[int, int, int]:
        """Adds what the source read since `counted` (its frames decoded, packets skipped and packets corrupt) to
        the metrics; returns its counts now. Only the reader thread writes them."""
        now = source.decoded, source.skipped, source.corrupt
        FRAMES_DECODED.labels(self.task.id).inc(now[0] - counted[0])
        PACKETS_SKIPPED.labels(self.task.id).inc(now[1] - counted[1])
        CORRUPT_PACKETS.labels(self.task.id).inc(now[2] - counted[2])
        self.decoded += now[0] - counted[0]
        return now

    def _set_state(self, state: CameraState) -> None:
        if state is CameraState.STREAMING:
            self.last_error = ""
        self.state = state
        CAMERA_UP.labels(self.task.id).set(1 if state is CameraState.STREAMING else 0)
        for each in CameraState:
            CAMERA_STATE.labels(self.task.id, each.value).set(1 if each is state else 0)

    # -- upload, then emit --------------------------------------------------------------------------------------

    async def _wait_for_inference(self) -> None:
        """A lossless camera sends on only while it is less than LOSSLESS_AHEAD frames ahead of inference."""
        if self.pressure is None or not self.lossless:
            return
        ahead = self.pressure.ahead(self.task.id, self.emitted)
        FRAMES_AHEAD.labels(self.task.id).set(ahead)
        if ahead < LOSSLESS_AHEAD:
            return
        started = time.monotonic()
        room = asyncio.create_task(self.pressure.room(self.task.id, self.emitted))
        stopped = asyncio.create_task(self._stopped.wait())
        await asyncio.wait([room, stopped], return_when=asyncio.FIRST_COMPLETED)
        room.cancel()
        stopped.cancel()
        HELD_BACK.labels(self.task.id).inc(time.monotonic() - started)

    async def _emit(self, sample: Sample) -> None:
        await self._wait_for_inference()
        seq = self._seq
        self._seq += 1
        key = frame_key(self.uplink.store, self.task, sample.captured_at, seq)
        if not await self._upload(key, sample.jpeg):
            self.not_sent += 1
            return
        event = FrameEvent(frame_id=FrameEvent.make_id(self.task.id, sample.captured_at, seq), task_id=self.task.id,
                           camera_id=self.task.id, task_type=self.task.task_type, seq=seq,
                           captured_at=sample.captured_at, bucket=self.uplink.store.bucket, object_key=key,
                           width=sample.width, height=sample.height,
                           freshness=self.freshness,
                           clock_offset_ms=self.uplink.clock.offset_ms)
        sent_at = now_ms()
        try:
            delivered = await self.uplink.producer.send(FRAMES, event)
        except KafkaError as error:
            log.warning("camera %s: frame %s not sent: %r", self.task.id, event.frame_id, error)
            FRAMES_DROPPED.labels(self.task.id, "kafka").inc()
            self.not_sent += 1
            await self._forget(key)
            return
        self.uplink.clock.observe(sent_at, now_ms(), delivered)
        self.snapshot.offer(key)  # a frame sent: its object stays at least until its outcome
        self.emitted += 1
        self.last_frame_at = sample.captured_at
        LAST_FRAME.labels(self.task.id).set(sample.captured_at / 1000)
        FRAMES_EMITTED.labels(self.task.id).inc()
        CAPTURE_TO_EVENT.observe((now_ms() - sample.captured_at) / 1000)

    async def _forget(self, key: str) -> None:
        """Deletes the object of a frame that was never announced (no outcome will ever delete it); one the store
        does not delete now is left to the reconciliation sweep."""
        try:
            await self.uplink.store.delete(key)
        except StoreError as error:
            log.warning("camera %s: unsent frame %s left for the sweep: %s", self.task.id, key, error)

    async def _upload(self, key: str, data: bytes) -> bool:
        try:
            await UPLOAD_BACKOFF.call(self._put, lambda error: isinstance(error, StoreError),
                                      logged(log, f"camera {self.task.id}: uploading {key}"), key, data)
        except StoreError as error:
            log.error("camera %s: frame dropped, its upload failed %d times: %s", self.task.id,
                      UPLOAD_BACKOFF.attempts, error)
            FRAMES_DROPPED.labels(self.task.id, "upload").inc()
            return False
        UPLOAD_BYTES.labels(self.task.id).inc(len(data))
        return True

    async def _put(self, key: str, data: bytes) -> None:
        started = time.perf_counter()
        async with self.uplink.uploads:
            await self.uplink.store.put(key, data)
        UPLOAD_SECONDS.observe(time.perf_counter() - started)

    # -- what `framewatch cameras` shows ------------------------------------------------------------------------

    def status(self, extractor: str, since: CameraStatus | None) -> CameraStatus:
        """This camera now; rates since the previous status (`since`), or since the camera started."""
        since_ms, decoded, emitted = (self.created_at, 0, 0) if since is None else (
            since.emitted_at, since.decoded, since.emitted)
        period_s = max(0.001, (now_ms() - since_ms) / 1000)
        fps_in = max(0, self.decoded - decoded) / period_s
        fps_out = max(0, self.emitted - emitted) / period_s
        return CameraStatus(camera_id=self.task.id, extractor=extractor, state=self.state, fps_in=round(fps_in, 2),
                            fps_out=round(fps_out, 2), interval_ms=max(1, round(self.interval_ms())),
                            last_frame_at=self.last_frame_at, reconnects=self.reconnects, last_error=self.last_error,
                            decoded=self.decoded, emitted=self.emitted, clock_skew_ms=self.uplink.clock.skew_ms)
