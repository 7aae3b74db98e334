"""Every topic framewatch uses, with its record type and key: the one list both the edge and the agents read."""

from __future__ import annotations

from dataclasses import dataclass

from framewatch.schemas import events


@dataclass(frozen=True)
class TopicSpec:
    name: str
    record: type[events.Event]
    key: str
    compacted: bool = False
    retention_ms: int | None = None
    shards_cameras: bool = False  # its partitions share the cameras among extractors: `task_partitions` of them


HOUR_MS = 3600 * 1000
MAX_RECORD_BYTES = 1_000_000  # what a record may take: under the 1 MiB default of Kafka's brokers and producers

FRAMES = TopicSpec("fw.frames", events.FrameEvent, "camera_id", retention_ms=6 * HOUR_MS)
DETECTIONS = TopicSpec("fw.detections", events.DetectionEvent, "camera_id", retention_ms=6 * HOUR_MS)
ALERTS = TopicSpec("fw.alerts", events.AlertEvent, "camera_id", retention_ms=7 * 24 * HOUR_MS)
ALERTS_STORED = TopicSpec("fw.alerts-stored", events.AlertStored, "camera_id", retention_ms=7 * 24 * HOUR_MS)
FRAME_OUTCOMES = TopicSpec("fw.frame-outcomes", events.FrameOutcome, "camera_id", retention_ms=6 * HOUR_MS)
RETENTION = TopicSpec("fw.retention", events.RetentionEvent, "task_id", retention_ms=7 * 24 * HOUR_MS)
PUBLISHED = TopicSpec("fw.published", events.AlertPublished, "alert_id", retention_ms=24 * HOUR_MS)
COUNTS = TopicSpec("fw.counts", events.CountWindow, "task_id", retention_ms=7 * 24 * HOUR_MS)
SERVICES = TopicSpec("fw.services", events.ServiceHeartbeat, "service_id", compacted=True)
# cameras are shared among extractors by fw.tasks' partitions: more partitions, a finer split
TASKS = TopicSpec("fw.tasks", events.TaskEvent, "task_id", compacted=True, shards_cameras=True)
CAMERAS = TopicSpec("fw.cameras", events.CameraStatus, "camera_id", compacted=True)
PRESSURE = TopicSpec("fw.pressure", events.InferencePressure, "task_id", retention_ms=HOUR_MS)
DEAD_LETTERS = TopicSpec("fw.dead-letters", events.DeadLetter, "topic", retention_ms=30 * 24 * HOUR_MS)

ALL_TOPICS = (FRAMES, DETECTIONS, ALERTS, ALERTS_STORED, PUBLISHED, FRAME_OUTCOMES, RETENTION, COUNTS, SERVICES,
              TASKS, CAMERAS, PRESSURE, DEAD_LETTERS)


def by_name(name: str) -> TopicSpec | None:
    """The spec of a topic given its full name, with or without a namespace prefix."""
    for spec in ALL_TOPICS:
        if name == spec.name or name.endswith("." + spec.name):
            return spec
    return None
