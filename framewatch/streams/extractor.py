"""The extractor: runs cameras (`streams/camera.py`) and decides which.

`ExtractorService` (`framewatch extract`) is the deployment: it publishes its config's tasks to the compacted
topic fw.tasks, joins the consumer group of all extractors over fw.tasks, and runs the cameras of the partitions
Kafka assigns it. A second extractor splits the cameras; one that dies hands its cameras to the others when its
session times out. It reports every camera on fw.cameras and stretches sampling intervals under pressure from
inference (`streams/pressure.py`).

`run_extractor` (`framewatch extract --once`, the demo and tests) runs the config's tasks directly, to the end of
their sources.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError
from mode import Service
from prometheus_client import Counter

from framewatch.clients.bus import (
    EventProducer,
    ensure_topics,
    kafka_options,
    key_text,
    latest,
)
from framewatch.clients.objectstore import ObjectStore
from framewatch.errors import FramewatchError
from framewatch.health import Readiness
from framewatch.metrics import watch_loop_lag
from framewatch.process import serve
from framewatch.schemas.config import Config
from framewatch.schemas.events import (
    CameraState,
    CameraStatus,
    DecodeError,
    TaskEvent,
    TaskOrigin,
)
from framewatch.schemas.tasks import CameraTask
from framewatch.schemas.topics import CAMERAS, TASKS
from framewatch.streams.camera import Camera, Uplink, extractor_name
from framewatch.streams.clip_uploads import CameraClips, ClipRequestReader, route_to
from framewatch.streams.pressure import Throttle
from framewatch.streams.snapshots import Snapshots

log = logging.getLogger("framewatch.extractor")

STATUS_PERIOD_S = 5.0
STOP_GRACE_S = 2.0
CRASH_RESTART_S = 5.0
MB = 1024 * 1024
CLIP_BUFFER_PER_CAMERA_MAX = 64 * MB

CAMERA_CRASHES = Counter("framewatch_extractor_camera_crashes_total", "Camera runs that raised, restarted after 5 s",
                         ["task"])


@dataclass
class CameraReport:
    task_id: str
    emitted: int = 0
    dropped: int = 0
    state: str = ""
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


async def connect_uplink(config: Config) -> Uplink:
    """Topics and bucket created if missing, a started producer, the upload bound, the cameras' stills."""
    await ensure_topics(config)
    store = ObjectStore(config.frame_extractor.minio, pool_size=config.frame_extractor.upload_concurrency)
    await store.ensure_bucket()
    producer = EventProducer(config)
    await producer.start()
    snapshots = Snapshots(store, config.framewatch.namespace, config.frame_extractor.snapshot_interval_sec)
    return Uplink(store, producer, asyncio.Semaphore(config.frame_extractor.upload_concurrency), snapshots)


@asynccontextmanager
async def open_uplink(config: Config) -> AsyncIterator[Uplink]:
    uplink = await connect_uplink(config)
    try:
        yield uplink
    finally:
        await uplink.close()


class UplinkService(Service):
    """Closes the uplink (its producer, its upload connections) once the services that depend on it have stopped."""

    def __init__(self, uplink: Uplink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.uplink = uplink

    async def on_stop(self) -> None:
        await self.uplink.close()


async def run_extractor(config: Config) -> ExtractReport:
    """Every enabled task of the config, each to the end of its source (or to an error retrying cannot fix),
    throttled or held back by what inference reports."""
    async with open_uplink(config) as uplink:
        pressure = Throttle(config.frame_extractor.max_throttle)
        listening = asyncio.create_task(pressure.follow(config))
        tasks = [t for t in config.frame_extractor.tasks if t.enabled]
        share = clip_share(config, sum(1 for t in tasks if t.clips))
        clips = {t.id: CameraClips(t, uplink, lambda: share) for t in tasks if t.clips}
        cameras = [Camera(t, config.frame_extractor, uplink, pressure,
                          recorder=clips[t.id].recorder if t.id in clips else None) for t in tasks]
        requests = ClipRequestReader(config, route_to(clips.get))
        reading = asyncio.create_task(requests.run_all(config.framewatch.task_partitions))  # it runs every task
        try:
            await asyncio.gather(*(run_with_clips(camera, clips.get(camera.task.id)) for camera in cameras))
        finally:
            listening.cancel()
            reading.cancel()
            await requests.stop()
    reports = []
    for camera in cameras:
        log.info("camera %s: %s, %d frames emitted, %d dropped", camera.task.id, camera.state.value,
                 camera.emitted, camera.dropped)
        error = camera.last_error if camera.state is CameraState.FAILED else None
        reports.append(CameraReport(camera.task.id, camera.emitted, camera.dropped, camera.state.value, error))
    return ExtractReport(reports)


async def publish_config_tasks(config: Config, producer: EventProducer) -> None:
    """The config's tasks onto fw.tasks, except those changed at run time by `framewatch tasks`, which win."""
    current = await latest(config, TASKS)
    for task in config.frame_extractor.tasks:
        raw = current.get(task.id)
        if raw is not None:
            try:
                known = TaskEvent.decode(raw)
            except DecodeError:
                known = None
            if known is not None and known.origin is TaskOrigin.COMMAND:
                if known.task != task:
                    log.warning("task %s was changed with `framewatch tasks`; this config's version is not applied",
                                task.id)
                continue
            if known is not None and known.task == task:
                continue
        await producer.send(TASKS, TaskEvent(task_id=task.id, task=task))


@dataclass
class Replay:
    end: int | None = None  # the partition's end offset when it was assigned, once known
    latest: dict[bytes | None, ConsumerRecord] = field(default_factory=dict)

    def keep(self, record: ConsumerRecord) -> None:
        known = self.latest.get(record.key)
        if known is None or record.offset > known.offset:  # a record fetched before the seek may come late
            self.latest[record.key] = record


@dataclass
class Running:
    camera: Camera
    partition: int
    runner: asyncio.Task[None]
    clips: CameraClips | None = None


class ExtractorService(Service, ConsumerRebalanceListener):
    """A mode service: started and stopped by `mode.Worker` (signals included); a background task that ends
    crashes the service, and the worker exits with status 1 for its supervisor to restart it."""

    def __init__(self, config: Config, uplink: Uplink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.uplink = uplink
        self.name = extractor_name()
        self.throttle = Throttle(config.frame_extractor.max_throttle)
        self.cameras: dict[str, Running] = {}
        self.reported: dict[str, CameraStatus] = {}
        self.replaying: dict[TopicPartition, Replay] = {}  # assigned, being read to their end
        self.owned: set[TopicPartition] = set()  # assigned and read to their end: records apply as they come
        self.joined = False  # the group has assigned this extractor its partitions (maybe none) at least once
        self.consumer = AIOKafkaConsumer(
            **kafka_options(config), group_id=config.topic("framewatch-extractors"),
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=10000, heartbeat_interval_ms=2000)  # a dead extractor's cameras move within ~10 s
        self.clip_requests = ClipRequestReader(config, route_to(self._clips_of))
        self.clip_bytes = clip_share(config, 1)

    async def on_start(self) -> None:
        await publish_config_tasks(self.config, self.uplink.producer)
        await self.clip_requests.start()
        self.consumer.subscribe([self.config.topic(TASKS.name)], listener=self)
        await self.consumer.start()

    async def readiness(self) -> dict[str, bool]:
        """What `/readyz` checks: in the group with its partitions read to their end, the store reachable."""
        return {"assigned": self.joined and not self.replaying,
                "object_store": await self.uplink.store.reachable()}

    async def on_stop(self) -> None:
        """The cameras stop (their last statuses say so) and the group is left, so the other extractors take
        the cameras over at once instead of after the session timeout."""
        await self.release(None)
        await self.consumer.stop()
        await self.clip_requests.stop()

    @Service.task
    async def _follow_tasks(self) -> None:
        while not self.should_stop:
            batches = await self.consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    await self._take(record)
            await self._end_replays()

    @Service.task
    async def _follow_clip_requests(self) -> None:
        await self.clip_requests.run()

    @Service.task
    async def _watch_loop_lag(self) -> None:
        await watch_loop_lag()

    @Service.task
    async def _follow_pressure(self) -> None:
        await self.throttle.follow(self.config)
        raise HelperEnded("the pressure follower ended: stopping the extractor")

    # -- ownership: the partitions of fw.tasks Kafka assigns this extractor ------------------------------------

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.release({tp.partition for tp in revoked})
        self.owned -= set(revoked)
        self.replaying = {}

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """A compacted topic is read whole: it is the tasks as they stand. Until a partition is read to its end,
        only each task's last record is kept, so a task changed since its first version starts once, as it is."""
        log.info("extractor %s owns fw.tasks partitions %s", self.name, sorted(tp.partition for tp in assigned))
        self.replaying = {tp: Replay() for tp in assigned}  # first: records come while this listener awaits
        self.joined = True
        self.clip_requests.follow({tp.partition for tp in assigned})
        if assigned:
            await self.consumer.seek_to_beginning(*assigned)
            for tp, end in (await self.consumer.end_offsets(assigned)).items():
                self.replaying[tp].end = end

    async def _take(self, record: ConsumerRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        if tp in self.owned:
            await self._apply(record)
        elif (replay := self.replaying.get(tp)) is not None:
            replay.keep(record)
        # else: fetched before the listener ran for its partition (aiokafka fetches for a new assignment before it
        # calls on_partitions_assigned); the seek there reads it again

    async def _end_replays(self) -> None:
        for tp, replay in list(self.replaying.items()):
            if replay.end is not None and await self.consumer.position(tp) >= replay.end:
                del self.replaying[tp]
                self.owned.add(tp)
                for record in replay.latest.values():
                    await self._apply(record)

    async def release(self, partitions: set[int] | None) -> None:
        """Stops the cameras of these partitions (all when None) before another extractor may start them."""
        for task_id, running in list(self.cameras.items()):
            if partitions is None or running.partition in partitions:
                await self._stop(task_id)

    async def _apply(self, record: ConsumerRecord) -> None:
        task_id = key_text(record.key)
        task: CameraTask | None = None
        if record.value is not None:
            try:
                task = TaskEvent.decode(record.value).task
            except DecodeError as error:
                log.error("fw.tasks holds a bad record for %r (left as it was): %s", task_id, error)
                return
        running = self.cameras.get(task_id)
        if running is not None and running.camera.task == task:
            return
        if running is not None:
            await self._stop(task_id)
        if task is not None and task.enabled:
            self._start(task, record.partition)

    def _start(self, task: CameraTask, partition: int) -> None:
        clips = CameraClips(task, self.uplink, lambda: self.clip_bytes) if task.clips else None
        camera = Camera(task, self.config.frame_extractor, self.uplink, self.throttle,
                        recorder=clips.recorder if clips is not None else None)
        runner = asyncio.create_task(run_with_clips(camera, clips), name=f"camera-{task.id}")
        running = self.cameras[task.id] = Running(camera, partition, runner, clips)
        self._share_clip_buffer()
        runner.add_done_callback(lambda _: self._ended(running))
        log.info("camera %s started (fw.tasks partition %d)", task.id, partition)
        self.clip_requests.hand_out()

    def _clips_of(self, task_id: str) -> CameraClips | None:
        running = self.cameras.get(task_id)
        return None if running is None or running.runner.done() else running.clips

    def _share_clip_buffer(self) -> None:
        """Each camera's share of the clip buffer, read by the reader threads (which never touch `cameras`)."""
        self.clip_bytes = clip_share(self.config, sum(1 for r in self.cameras.values() if r.clips is not None))

    def _ended(self, running: Running) -> None:
        """A camera whose run raised (a bug, not a camera fault: those it retries itself) starts again afresh."""
        task = running.camera.task
        if running.runner.cancelled() or (error := running.runner.exception()) is None:
            return
        CAMERA_CRASHES.labels(task.id).inc()
        log.error("camera %s crashed, restarting it in %.0fs: %r", task.id, CRASH_RESTART_S, error,
                  exc_info=error)
        asyncio.get_running_loop().call_later(CRASH_RESTART_S, self._restart, running)

    def _restart(self, crashed: Running) -> None:
        task = crashed.camera.task
        if self.cameras.get(task.id) is crashed:  # not stopped or replaced meanwhile
            self._start(task, crashed.partition)

    async def _stop(self, task_id: str) -> None:
        running = self.cameras.pop(task_id)
        self._share_clip_buffer()
        running.camera.stop()
        with suppress(asyncio.CancelledError, Exception):  # a crash was logged when it happened
            await asyncio.wait_for(running.runner, STOP_GRACE_S)  # then cancelled: its reader may be mid-read
        await self._send_status(running.camera)
        self.reported.pop(task_id, None)
        log.info("camera %s stopped", task_id)

    # -- status on fw.cameras ----------------------------------------------------------------------------------

    @Service.timer(STATUS_PERIOD_S)
    async def _report(self) -> None:
        for running in list(self.cameras.values()):
            await self._send_status(running.camera)

    async def _send_status(self, camera: Camera) -> None:
        status = camera.status(self.name, self.reported.get(camera.task.id))
        try:
            await self.uplink.producer.send(CAMERAS, status)
        except KafkaError as error:
            log.warning("camera %s: status not sent: %r", status.camera_id, error)
            return
        self.reported[camera.task.id] = status


def clip_share(config: Config, cameras: int) -> int:
    """Each camera's share of `clip_buffer_mb`, at most `CLIP_BUFFER_PER_CAMERA_MAX`."""
    return min(CLIP_BUFFER_PER_CAMERA_MAX, config.frame_extractor.clip_buffer_mb * MB // max(1, cameras))


async def run_with_clips(camera: Camera, clips: CameraClips | None) -> None:
    """The camera, and beside it the uploads of its clips, which end once the camera's last clips are announced."""
    if clips is None:
        await camera.run()
        return
    uploading = asyncio.create_task(clips.run(), name=f"clips-{camera.task.id}")
    try:
        await camera.run()
    except asyncio.CancelledError:  # stopping past its grace: the clips still waiting go unannounced
        uploading.cancel()
        raise
    finally:
        clips.close()
        try:
            await uploading
        except asyncio.CancelledError:
            uploading.cancel()
            raise


class HelperEnded(FramewatchError, RuntimeError):
    """A task the extractor cannot work without has ended; the process stops so that its supervisor restarts it."""


def serve_extractor(config: Config) -> None:
    """`framewatch extract`: connects, then runs `ExtractorService` with /metrics, /healthz and /readyz; does not
    return."""
    async def build() -> tuple[Service, Readiness]:
        uplink = await connect_uplink(config)
        service = ExtractorService(config, uplink)
        service.add_dependency(UplinkService(uplink))  # stopped after the service (the last statuses)
        return service, service.readiness

    serve(build, config.framewatch.bind_host, config.framewatch.extractor_metrics_port)
