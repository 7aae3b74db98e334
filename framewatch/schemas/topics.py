"""Every topic framewatch uses, with its record type and key: the one list both the edge and the agents read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from framewatch.schemas import events


@dataclass(frozen=True)
class TopicSpec:
    name: str
    record: type[events.Event]
    key: Callable[[Any], str]  # the record's key: what decides its partition (and, compacted, what it replaces)
    compacted: bool = False
    retention_ms: int | None = None
    shards_cameras: bool = False  # its partitions share the cameras among extractors: `task_partitions` of them
    # stamped by the broker's clock when appended (message.timestamp.type=LogAppendTime): its producers' acks tell
    # them the broker's time, from which an extractor measures its clock's offset (streams/clock.py)
    log_append_time: bool = False

    def key_of(self, record: events.Event) -> bytes:
        """The record's key; a record of another type is a programming error, named before anything is sent."""
        if not isinstance(record, self.record):
            raise TypeError(f"{self.name} carries {self.record.__name__} records, not {type(record).__name__}")
        return str(self.key(record)).encode()


HOUR_MS = 3600 * 1000
MAX_RECORD_BYTES = 1_000_000  # what a record may take: under the 1 MiB default of Kafka's brokers and producers

BY_FRAME_CAMERA = attrgetter("frame.camera_id")  # every frame's records go where its camera's frames go

FRAMES = TopicSpec("fw.frames", events.FrameEvent, attrgetter("camera_id"), retention_ms=6 * HOUR_MS,
                   log_append_time=True)
DETECTIONS = TopicSpec("fw.detections", events.DetectionEvent, BY_FRAME_CAMERA, retention_ms=6 * HOUR_MS)
ALERTS = TopicSpec("fw.alerts", events.AlertEvent, BY_FRAME_CAMERA, retention_ms=7 * 24 * HOUR_MS)
# the alerts of candidate rule settings (`framewatch tasks try`): stored in shadow_alerts, never published
SHADOW_ALERTS = TopicSpec("fw.shadow-alerts", events.AlertEvent, BY_FRAME_CAMERA, retention_ms=7 * 24 * HOUR_MS)
ALERTS_STORED = TopicSpec("fw.alerts-stored", events.AlertStored, attrgetter("alert.frame.camera_id"),
                          retention_ms=7 * 24 * HOUR_MS)
FRAME_OUTCOMES = TopicSpec("fw.frame-outcomes", events.FrameOutcome, BY_FRAME_CAMERA, retention_ms=6 * HOUR_MS)
RETENTION = TopicSpec("fw.retention", events.RetentionEvent, attrgetter("task_id"), retention_ms=7 * 24 * HOUR_MS)
PUBLISHED = TopicSpec("fw.published", events.AlertPublished, attrgetter("alert_id"), retention_ms=24 * HOUR_MS)
COUNTS = TopicSpec("fw.counts", events.CountWindow, attrgetter("task_id"), retention_ms=7 * 24 * HOUR_MS)
SERVICES = TopicSpec("fw.services", events.ServiceHeartbeat, attrgetter("service_id"), compacted=True)
# cameras are shared among extractors by fw.tasks' partitions: more partitions, a finer split
TASKS = TopicSpec("fw.tasks", events.TaskEvent, attrgetter("task_id"), compacted=True, shards_cameras=True)
CAMERAS = TopicSpec("fw.cameras", events.CameraStatus, attrgetter("camera_id"), compacted=True)
INCIDENTS = TopicSpec("fw.incidents", events.OpenIncidents, attrgetter("camera_id"), compacted=True)
PRESSURE = TopicSpec("fw.pressure", events.InferencePressure, attrgetter("task_id"), retention_ms=HOUR_MS)
# by task id over `task_partitions`, as fw.tasks: the extractor that owns a task's partition there reads its requests
CLIP_REQUESTS = TopicSpec("fw.clip-requests", events.ClipRequest, attrgetter("task_id"), retention_ms=HOUR_MS,
                          shards_cameras=True)
CLIPS = TopicSpec("fw.clips", events.ClipReady, attrgetter("camera_id"), retention_ms=7 * 24 * HOUR_MS)
DEAD_LETTERS = TopicSpec("fw.dead-letters", events.DeadLetter, attrgetter("topic"), retention_ms=30 * 24 * HOUR_MS)

ALL_TOPICS = (FRAMES, DETECTIONS, ALERTS, SHADOW_ALERTS, ALERTS_STORED, PUBLISHED, FRAME_OUTCOMES, RETENTION, COUNTS,
              SERVICES, TASKS, CAMERAS, INCIDENTS, PRESSURE, CLIP_REQUESTS, CLIPS, DEAD_LETTERS)


def by_name(name: str) -> TopicSpec | None:
    """The spec of a topic given its full name, with or without a namespace prefix."""
    for spec in ALL_TOPICS:
        if name == spec.name or name.endswith("." + spec.name):
            return spec
    return None
