"""A camera's recent uploads that never got their FrameEvent, announced when the camera starts.

An extractor uploads each frame, then sends its FrameEvent (`streams/camera.py`). One killed in between, or one
stopped while that send hung (its stop grace is 2 s), leaves an object no event names: no outcome will ever delete
it, and only the reconciliation sweep would, an hour later. So whoever starts a camera (another extractor once the
group's session timeout has moved the camera, the same one restarted, or a task changed) first lists the objects
of the camera's folder written in the last LOOKBACK_S, reads the camera's partition of fw.frames from a little
before the oldest of them to its end (an event is appended after its upload; fw.frames carries the broker's append
time), and announces every object no record there names: a FrameEvent as its uploader would have sent it (the
same frame id, from the camera, capture time and sequence in the key). The frame then ends like any other, with
an outcome, and retention deletes its object. Counted by `framewatch_extractor_orphan_uploads_total`.

Announcing rather than deleting is what makes this safe while two extractors run one camera for a moment: an old
owner cut off from Kafka keeps retrying its last send (the producer is idempotent and retries until delivered) and
may land it after the new owner looked. Deleting the object would leave that late event naming nothing, a frame
lost; announcing it instead makes at worst a frame delivered twice, which the pipeline already takes (a replay
after a crash does the same): the second delivery changes nothing downstream (same frame and alert ids), ends
`stale` or `failed`, and retention's second deletion is a no-op. Nothing here ever deletes an object, and no
sampled frame is lost. A clean stop needs nothing more: it leaves at most the frame whose send was cut by the stop
grace, and the extractor that takes the camera over (at once, since the stopping one leaves the group) announces it.

The lookback bounds the work of each start: one listing (keys sort by capture time within a day, so it starts at
the lookback) and, only when it finds objects, one read of a partition over a couple of minutes. A camera is taken
over within ~15 s of its extractor's death; what is older (every extractor down for minutes) is the sweep's. The
rule assumes a task's folder (`output_path`, its id by default) is its own, as retention and the alert keys do.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from framewatch.clients.bus import EventProducer, records_since
from framewatch.clients.objectstore import ObjectStore, StoreError
from framewatch.errors import Unreachable
from framewatch.schemas.events import DecodeError, FrameEvent
from framewatch.schemas.tasks import CameraTask, Freshness
from framewatch.schemas.topics import FRAMES

log = logging.getLogger("framewatch.extractor")

ORPHAN_UPLOADS = Counter("framewatch_extractor_orphan_uploads_total", "Frame objects found without a FrameEvent "
                         "when their camera started (an extractor killed between upload and event), announced then",
                         ["task"])

LOOKBACK_S = 120
APPEND_MARGIN_S = 30  # the store's clock against the broker's, and an upload's end against its event's append
RECONCILE_TIMEOUT_S = 30
FRAME_NAME = re.compile(r"(\d{13})-(\d+)\.jpg")  # <capture-ms>-<seq>.jpg


async def announce_orphans(task: CameraTask, store: ObjectStore, producer: EventProducer,
                           freshness: Freshness) -> int:
    """Announces the camera's recent uploads that no FrameEvent names; how many. Never raises for an unreachable
    store or broker: the camera starts all the same, and the sweep is still there."""
    try:
        async with asyncio.timeout(RECONCILE_TIMEOUT_S):  # a broker that is away does not hold the camera back
            recent = await recent_uploads(store, task)
            if not recent:
                return 0
            since = min(upload.written for upload in recent) - timedelta(seconds=APPEND_MARGIN_S)
            named = await announced_since(producer, task, int(since.timestamp() * 1000))
            announced = [upload for upload in recent if upload.key not in named
                         and await announce(task, store, producer, freshness, upload)]
    except (StoreError, KafkaError, Unreachable, LookupError, TimeoutError) as error:
        log.warning("camera %s: its recent uploads are not reconciled (the sweep will be): %s", task.id, error)
        return 0
    if announced:
        log.warning("camera %s: %d frames uploaded without their FrameEvent (an extractor stopped between the two) "
                    "announced now", task.id, len(announced))
    return len(announced)


@dataclass(frozen=True)
class Upload:
    key: str
    written: datetime  # by the store's clock
    captured_at: int
    seq: int


async def recent_uploads(store: ObjectStore, task: CameraTask) -> list[Upload]:
    """The camera's frame objects captured and written in the last LOOKBACK_S, in key order (capture order)."""
    start = datetime.now(UTC) - timedelta(seconds=LOOKBACK_S)
    folder = store.key("frames", task.output_path or task.id) + "/"
    after = f"{folder}{start:%Y%m%d}/{int(start.timestamp() * 1000)}"
    uploads = []
    for key, written in sorted((await store.list_modified(folder, start_after=after)).items()):
        if written is not None and written >= start and (name := FRAME_NAME.fullmatch(key.rsplit("/", 1)[-1])):
            uploads.append(Upload(key, written, int(name.group(1)), int(name.group(2))))
    return uploads


async def announced_since(producer: EventProducer, task: CameraTask, since_ms: int) -> set[str]:
    """The objects named by the camera's records on its partition of fw.frames since `since_ms`."""
    named = set()
    camera = task.id.encode()
    for record in await records_since(producer.config, FRAMES, task.id, since_ms):
        if record.key != camera:  # the partition's other cameras
            continue
        try:
            named.add(FrameEvent.decode(record.value).object_key)
        except DecodeError:
            continue
    return named


async def announce(task: CameraTask, store: ObjectStore, producer: EventProducer, freshness: Freshness,
                   upload: Upload) -> bool:
    """Sends the FrameEvent its uploader would have sent for this object; False when it is gone meanwhile (its
    event came after all, and retention deleted it) or is no JPEG."""
    try:
        image = cv2.imdecode(np.frombuffer(await store.get(upload.key), np.uint8), cv2.IMREAD_UNCHANGED)
    except StoreError:
        if await store.exists(upload.key):
            raise
        return False
    if image is None:
        log.warning("camera %s: %s is not a JPEG: left to the sweep", task.id, upload.key)
        return False
    height, width = image.shape[:2]
    await producer.send(FRAMES, FrameEvent(
        frame_id=FrameEvent.make_id(task.id, upload.captured_at, upload.seq), task_id=task.id, camera_id=task.id,
        task_type=task.task_type, seq=upload.seq, captured_at=upload.captured_at, bucket=store.bucket,
        object_key=upload.key, width=width, height=height, freshness=freshness))
    ORPHAN_UPLOADS.labels(task.id).inc()
    return True
