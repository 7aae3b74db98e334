"""Event clips, the event loop's part: a camera's clip requests handed to its recorder, and each clip it cuts uploaded
to `clips/<output_path>/<day>/<first alert id>.mp4` and announced per alert on fw.clips (`ClipReady`), with the
reason where there is no clip or a shorter one. Cutting happens in the camera's reader thread
(`streams/clips.py`); nothing here decodes, encodes or waits for the camera.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from prometheus_client import Counter, Gauge

from framewatch.clients.objectstore import StoreError
from framewatch.clients.bus import kafka_options
from framewatch.retry import Backoff, logged
from framewatch.schemas.config import Config
from framewatch.schemas.events import ClipReady, ClipRequest, DecodeError, now_ms
from framewatch.schemas.tasks import CameraTask
from framewatch.schemas.topics import CLIP_REQUESTS, CLIPS
from framewatch.streams.camera import Uplink
from framewatch.streams.clips import ClipCut, ClipRecorder

log = logging.getLogger("framewatch.extractor")

CLIPS_MADE = Counter("framewatch_extractor_clips_total", "Alerts' clips, by result: full, short (less than asked "
                     "for), none (with its reason), shared (another alert's clip covers it)", ["task", "result"])
CLIP_BUFFER_BYTES = Gauge("framewatch_extractor_clip_buffer_bytes", "Encoded packets held for event clips", ["task"])
CLIP_PACKETS_EVICTED = Gauge("framewatch_extractor_clip_packets_evicted",
                             "Packets dropped before their time for the clip buffer's byte bound, this session",
                             ["task"])
CLIP_ANNOUNCE_RETRIES = Counter("framewatch_extractor_clip_announce_retries_total",
                                "ClipReady sends the broker refused or did not confirm, sent again", ["task"])
UPLOAD_BACKOFF = Backoff(first_s=0.5, max_s=4.0, attempts=3)
# a broker away for a minute or two (while the camera runs): each send waits up to the producer's request timeout
# (15 s) besides
ANNOUNCE_BACKOFF = Backoff(first_s=1.0, max_s=8.0, attempts=8)
# clips cut and not yet uploaded, per camera: past it (uploads far behind: a store that is down), a clip's video is
# dropped at once, and its alerts are told why, so the extractor's memory holds at most this many clips a camera
CUTS_PENDING_MAX = 8
GAUGES_EVERY_S = 1.0
UPLOADED_REMEMBERED = 32  # clips whose key a later shared one may name
# how far back a partition newly assigned is read, and how long a request waits for its camera to start here: an
# extractor that takes a camera over serves the requests its last owner left (with what it has: a short pre-roll)
REQUESTS_LOOKBACK_MS = 60_000


def clip_key(uplink: Uplink, task: CameraTask, cut: ClipCut) -> str:
    day = datetime.fromtimestamp(cut.start_ms / 1000, tz=UTC).strftime("%Y%m%d")
    # the cut's start in the name: a clip cut again (by the extractor that took the camera over) never overwrites
    # the one its row names; the loser is an orphan the sweep removes
    return uplink.store.key("clips", task.output_path or task.id, day, f"{cut.clip_id}-{cut.start_ms}.mp4")


class CameraClips:
    """One camera's clips: `request` from the extractor's fw.clip-requests reader, `run` beside the camera."""

    def __init__(self, task: CameraTask, uplink: Uplink, max_bytes: Callable[[], int]) -> None:
        self.task = task
        self.uplink = uplink
        self._loop = asyncio.get_running_loop()
        self._cuts: asyncio.Queue[ClipCut | None] = asyncio.Queue()
        self._uploaded: OrderedDict[str, str] = OrderedDict()  # clip id -> its key
        self.closed = False
        self.recorder = ClipRecorder(int(task.clip_pre_sec * 1000), int(task.clip_post_sec * 1000), max_bytes,
                                     self._handed_over)

    def request(self, request: ClipRequest) -> None:
        self.recorder.request(request.alert_id, request.captured_at)

    async def run(self) -> None:
        """Until `close`: each clip cut uploaded and announced; the buffer's gauges kept current."""
        while True:
            try:
                cut = await asyncio.wait_for(self._cuts.get(), GAUGES_EVERY_S)
            except TimeoutError:
                self._report_buffer()
                continue
            if cut is None:
                return
            try:
                await self._announce(cut, await self._key_of(cut))
            except Exception as error:  # one clip's failure must not stop this camera's others
                log.error("camera %s: clip of alerts %s lost: %r", self.task.id, ", ".join(cut.alert_ids), error)

    def _report_buffer(self) -> None:
        CLIP_BUFFER_BYTES.labels(self.task.id).set(self.recorder.held_bytes)
        if (ring := self.recorder.ring) is not None:
            CLIP_PACKETS_EVICTED.labels(self.task.id).set(ring.evicted)

    def close(self) -> None:
        """The camera has stopped (its reader thread cut its last clips): `run` ends once they are announced, and
        requests are no longer taken."""
        self.closed = True
        self._cuts.put_nowait(None)

    def _handed_over(self, cut: ClipCut) -> None:
        """From the reader thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue, cut)
        except RuntimeError:  # the event loop has closed (the process is stopping): nothing will upload it
            log.warning("camera %s: clip of alerts %s not uploaded: stopping", self.task.id, ", ".join(cut.alert_ids))

    def _queue(self, cut: ClipCut) -> None:
        if cut.data is not None and self._cuts.qsize() >= CUTS_PENDING_MAX:
            log.error("camera %s: %d clips wait for their upload: the clip of alerts %s is dropped", self.task.id,
                      self._cuts.qsize(), ", ".join(cut.alert_ids))
            cut = replace(cut, data=None, reason=f"{CUTS_PENDING_MAX} clips of this camera were waiting for their "
                                                 "upload: this one was dropped")
        self._cuts.put_nowait(cut)

    async def _key_of(self, cut: ClipCut) -> tuple[str | None, str | None]:
        """The clip's key once uploaded, or None; and the reason to give with it."""
        if cut.shared:
            key = self._uploaded.get(cut.clip_id)
            return key, None if key is not None else "the clip that covers it was not uploaded"
        if cut.data is None:
            return None, cut.reason
        key = clip_key(self.uplink, self.task, cut)
        try:
            await UPLOAD_BACKOFF.call(self.uplink.store.put, lambda error: isinstance(error, StoreError),
                                      logged(log, f"camera {self.task.id}: uploading clip {key}"),
                                      key, cut.data, "video/mp4")
        except StoreError as error:
            return None, f"the clip's upload failed: {error}"
        self._uploaded[cut.clip_id] = key
        while len(self._uploaded) > UPLOADED_REMEMBERED:
            self._uploaded.popitem(last=False)
        return key, cut.reason

    def _worth_announcing_again(self, error: BaseException) -> bool:
        """A refusal is sent again while the camera runs; once it has stopped, the extractor may be stopping."""
        return isinstance(error, KafkaError) and not self.closed

    async def _announce(self, cut: ClipCut, found: tuple[str | None, str | None]) -> None:
        key, reason = found
        result = "shared" if cut.shared and key else "none" if key is None else "short" if reason else "full"
        for alert_id in cut.alert_ids:
            ready = ClipReady(alert_id=alert_id, task_id=self.task.id, camera_id=self.task.id,
                              bucket=self.uplink.store.bucket, clip_key=key, reason=reason,
                              start_at=cut.start_ms if key else None, end_at=cut.end_ms if key else None,
                              clip_bytes=len(cut.data) if key and cut.data else None)
            try:
                await ANNOUNCE_BACKOFF.call(self.uplink.producer.send, self._worth_announcing_again,
                                            logged(log, f"camera {self.task.id}: announcing the clip of alert "
                                                        f"{alert_id}", CLIP_ANNOUNCE_RETRIES.labels(self.task.id).inc),
                                            CLIPS, ready)
            except KafkaError as error:  # the clip stays; the alert says no clip came (the sweep removes it)
                log.error("camera %s: clip of alert %s not announced: %r", self.task.id, alert_id, error)
                continue
            CLIPS_MADE.labels(self.task.id, result).inc()
        if reason and key is None:
            log.warning("camera %s: no clip for alerts %s: %s", self.task.id, ", ".join(cut.alert_ids), reason)


def route_to(clips_of: Callable[[str], CameraClips | None]) -> Callable[[ClipRequest], bool]:
    """A `ClipRequestReader`'s route: the request to its task's clips, False when that camera records none here."""
    def route(request: ClipRequest) -> bool:
        clips = clips_of(request.task_id)
        if clips is None or clips.closed:
            return False
        clips.request(request)
        return True
    return route


class ClipRequestReader:
    """fw.clip-requests, read for the partitions of fw.tasks this extractor owns: both are partitioned by task id
    over `task_partitions`, so a request reaches whoever runs its camera. A request for a camera not running here
    (yet: it starts once fw.tasks is read) waits up to `REQUESTS_LOOKBACK_MS` for it."""

    def __init__(self, config: Config, route: Callable[[ClipRequest], bool]) -> None:
        self.topic = config.topic(CLIP_REQUESTS.name)
        self.route = route  # hands a request to its camera; False when the camera does not run here
        self.consumer = AIOKafkaConsumer(**kafka_options(config), group_id=None, enable_auto_commit=False)
        self.waiting: list[ClipRequest] = []
        self._rewind: set[TopicPartition] = set()  # assigned, to be read from REQUESTS_LOOKBACK_MS ago
        self._owned: set[TopicPartition] = set()  # as last assigned: one kept across a rebalance is not read again

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    def follow(self, partitions: set[int]) -> None:
        """Reads these partitions from now on: those new to it from `REQUESTS_LOOKBACK_MS` ago (found by `run`,
        so a rebalance listener calling this waits for nothing)."""
        assigned = {TopicPartition(self.topic, p) for p in partitions}
        self._rewind = (self._rewind | (assigned - self._owned)) & assigned
        self._owned = assigned
        self.consumer.assign(list(assigned))

    async def _rewind_new(self) -> None:
        rewind = set(self._rewind)
        since = {tp: now_ms() - REQUESTS_LOOKBACK_MS for tp in rewind}
        found_at = await self.consumer.offsets_for_times(since)
        self._rewind -= rewind
        for tp, found in found_at.items():
            if tp not in self.consumer.assignment():
                continue  # revoked meanwhile
            if found is None:
                await self.consumer.seek_to_end(tp)
            else:
                self.consumer.seek(tp, found.offset)

    async def run_all(self, partitions: int) -> None:
        """Started, then every partition read (an extractor that runs every task), beside the cameras."""
        await self.start()
        self.follow(set(range(partitions)))
        await self.run()

    async def run(self) -> None:
        """Until the consumer is stopped (the extractor stops)."""
        while True:
            if not self.consumer.assignment():
                await asyncio.sleep(1)
                continue
            try:
                if self._rewind:
                    await self._rewind_new()
                batches = await self.consumer.getmany(timeout_ms=1000)
            except ConsumerStoppedError:
                return
            except KafkaError as error:  # a leader moving, the broker away: requests wait on Kafka meanwhile
                log.warning("fw.clip-requests not read, trying again in 1 s: %r", error)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    try:
                        self.waiting.append(ClipRequest.decode(record.value))
                    except DecodeError as error:
                        log.error("fw.clip-requests: a bad record skipped: %s", error)
            self.hand_out()

    def hand_out(self) -> None:
        """Each waiting request to its camera; those whose camera does not run here wait, until too old."""
        oldest = now_ms() - REQUESTS_LOOKBACK_MS
        self.waiting = [r for r in self.waiting if not self.route(r) and r.captured_at >= oldest]
