"""Event records: the only things that travel between framewatch's processes.

Every record carries a schema version, an id that makes reprocessing idempotent, the time its frame was
captured and the time it was emitted (so staleness and lag are measurable). On the wire: JSON via orjson.
Agents consume raw bytes and call `decode`, so a bad record becomes a dead letter, never a dead agent.
"""

from __future__ import annotations

import math
import time
import uuid
from enum import StrEnum
from typing import Any, Literal, Self, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from framewatch.errors import BadInput, describe
from framewatch.schemas.geometry import Point, foot
from framewatch.schemas.tasks import CameraTask, Freshness, TaskType

SCHEMA_VERSION: Literal[1] = 1
ID_NAMESPACE = uuid.UUID("6f1c0e62-4c55-4d0e-9a57-1f1f3e0f7a11")

E = TypeVar("E", bound="Event")


class DecodeError(BadInput):
    """Bytes on a topic that are not a valid record of the expected kind."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def stable_id(*parts: str) -> str:
    """The same parts give the same id, in every process, on every run."""
    return str(uuid.uuid5(ID_NAMESPACE, "\x1f".join(parts)))


def unset(value: object) -> bool:
    """`exclude_if` of the fields added after the first release: optional, and written only when set, so that a
    worker or extractor of an earlier release (records are `extra="forbid"`) still reads the records that do not use
    them during an upgrade."""
    return value is None


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    emitted_at: int = Field(default_factory=now_ms, description="ms since the epoch when this record was made")

    @property
    def event_id(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def decode(cls, raw: bytes | None) -> Self:
        if raw is None:
            raise DecodeError(f"{cls.__name__}: empty record")
        try:
            return cls.model_validate(orjson.loads(raw))
        except orjson.JSONDecodeError as error:
            raise DecodeError(f"{cls.__name__}: not JSON ({error})") from None
        except ValidationError as error:
            raise DecodeError(f"{cls.__name__}: {describe(error, 'record')}") from None


class FrameEvent(Event):
    """A sampled frame whose JPEG is already in the object store."""

    frame_id: str
    task_id: str
    camera_id: str
    task_type: TaskType
    seq: int = Field(ge=0)
    captured_at: int = Field(description="ms since the epoch at capture")
    bucket: str
    object_key: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    freshness: Freshness = Field(default=Freshness.LATEST, description="all: infer and evaluate it, in order, "
                                 "however late; latest: a newer frame of the camera may supersede it")
    clock_offset_ms: int = Field(default=0, description="the broker's clock minus the extractor's when it was "
                                 "sent (measured from fw.frames' append times; 0: not measured): captured_at + "
                                 "clock_offset_ms is the capture time on the broker's clock")

    @property
    def event_id(self) -> str:
        return self.frame_id

    @property
    def captured_on_broker_clock(self) -> int:
        return self.captured_at + self.clock_offset_ms

    def age_ms(self, now: int | None = None) -> int:
        """Since capture, on the broker's clock (which workers share, by NTP): a skewed extractor's frames are
        neither stale at birth nor forever fresh."""
        return (now_ms() if now is None else now) - self.captured_on_broker_clock

    @staticmethod
    def make_id(camera_id: str, captured_at: int, seq: int) -> str:
        return stable_id("frame", camera_id, str(captured_at), str(seq))


MAX_DETECTIONS = 1000  # per frame
MAX_LABEL_CHARS = 64
MAX_TRACK_ID_CHARS = 128
MAX_ATTRIBUTES_BYTES = 4096
BOX_OVERHANG = 1.0  # a box may hang off the frame by up to a frame's size: clamped to it; further means pixels


def _without_nul(value: str) -> str:
    return value.replace("\x00", "")  # PostgreSQL's jsonb cannot hold U+0000


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return _without_nul(value)
    if isinstance(value, dict):
        return {_without_nul(str(k)): _strip_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_nul(v) for v in value]
    return value


class Detection(BaseModel):
    """One detected object. Bounds are part of the contract: a label of 1..64 characters, a track id of at most
    128, a box of finite normalised coordinates with x1 <= x2 and y1 <= y2 (a box hanging off the frame, by at
    most the frame's size, is clamped to it), attributes of at most 4 KiB as JSON; NUL characters are removed from strings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(min_length=1, max_length=MAX_LABEL_CHARS)
    score: float = Field(ge=0.0, le=1.0)
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2, normalised to 0..1")
    track_id: str | None = Field(default=None, max_length=MAX_TRACK_ID_CHARS)
    attributes: dict[str, Any] = {}

    @field_validator("label", "track_id", mode="before")
    @classmethod
    def _strings(cls, value: object) -> object:
        return _without_nul(value) if isinstance(value, str) else value

    @field_validator("box")
    @classmethod
    def _box(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if not all(math.isfinite(v) for v in box):
            raise ValueError(f"box coordinates must be finite numbers, got {list(box)}")
        if not all(-BOX_OVERHANG <= v <= 1 + BOX_OVERHANG for v in box):
            raise ValueError(f"box coordinates are normalised to 0..1 (pixels are not), got {list(box)}")
        if box[0] > box[2] or box[1] > box[3]:
            raise ValueError(f"a box is x1, y1, x2, y2 with x1 <= x2 and y1 <= y2, got {list(box)}")
        x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in box)
        return (x1, y1, x2, y2)

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, attributes: dict[str, Any]) -> dict[str, Any]:
        try:
            encoded = orjson.dumps(attributes)
        except TypeError as error:
            raise ValueError(f"attributes must be JSON: {error}") from None
        if len(encoded) > MAX_ATTRIBUTES_BYTES:
            raise ValueError(f"attributes take {len(encoded)} bytes as JSON, more than {MAX_ATTRIBUTES_BYTES}")
        return _strip_nul(attributes) if b"\\u0000" in encoded else attributes

    def foot(self) -> Point:
        return foot(self.box)


class DetectionEvent(Event):
    frame: FrameEvent
    service_id: str
    inference_ms: float = Field(ge=0, description="the request's round trip, seen from the worker")
    service_ms: float | None = Field(default=None, ge=0, description="time inside the service, as it reports it")
    dispatched_at: int | None = Field(default=None, description="ms since the epoch when the request left")
    batch_size: int = Field(default=1, ge=1)
    detections: list[Detection] = Field(max_length=MAX_DETECTIONS)
    model: str | None = Field(default=None, exclude_if=unset, max_length=128, description="the model that answered, as the service "
                              "reports it (schemas/contract.py); None when it does not")

    @property
    def event_id(self) -> str:
        return self.frame.frame_id


class AlertEvent(Event):
    alert_id: str
    frame: FrameEvent
    rule: str
    evidence: dict[str, Any]
    image_key: str = Field(description="where the alert image lives once relocated")
    rule_version: str | None = Field(default=None, exclude_if=unset, description="the version of the rule settings that raised it "
                                     "(rules/versions.py); None in alerts raised before versions")
    detector: str | None = Field(default=None, exclude_if=unset, description="the id of the algorithm service whose detections "
                                 "raised it")
    model: str | None = Field(default=None, exclude_if=unset, description="the model that service reported; None when it did not")

    @property
    def event_id(self) -> str:
        return self.alert_id

    @staticmethod
    def make_id(frame_id: str, rule: str) -> str:
        return stable_id("alert", frame_id, rule)


class CountWindow(Event):
    """A closed minute of a counting task, on the stream's own clock: people in the region, line crossings."""

    task_id: str
    camera_id: str
    task_type: TaskType
    window_start: int = Field(description="ms since the epoch, a whole minute")
    window_sec: int = 60
    samples: int = Field(ge=0, description="frames evaluated in the minute")
    people_max: int = Field(ge=0)
    people_mean: float = Field(ge=0)
    crossed_in: int = Field(ge=0)
    crossed_out: int = Field(ge=0)

    @property
    def event_id(self) -> str:
        return stable_id("count", self.task_id, str(self.window_start))


class Outcome(StrEnum):
    ALERT = "alert"
    NO_ALERT = "no_alert"
    DROPPED = "dropped"
    FAILED = "failed"


class FrameOutcome(Event):
    """How a frame's journey ended; retention deletes the object of every outcome but `alert`."""

    frame: FrameEvent
    outcome: Outcome
    reason: str = ""

    @property
    def event_id(self) -> str:
        return self.frame.frame_id


class ServiceHeartbeat(Event):
    service_id: str = Field(min_length=1, max_length=128)
    endpoint: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=512,
                          description="http(s)://host:port[/prefix]")
    task_types: list[TaskType]
    capacity: int = Field(ge=1, le=1024, description="concurrent requests the service can take")
    max_batch: int = Field(default=1, ge=1, le=256)
    version: str = Field(default="", max_length=128)

    @property
    def event_id(self) -> str:
        return f"{self.service_id}@{self.emitted_at}"


class TaskOrigin(StrEnum):
    CONFIG = "config"  # published by an extractor from its config file at start
    COMMAND = "command"  # `framewatch tasks add|update|disable`: an extractor's config never overwrites it


class Candidate(BaseModel):
    """Rule settings tried beside a task's live ones (`framewatch tasks try`): the rules agent evaluates them on the
    same detections with a state of their own, and their alerts go to the shadow topic only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: CameraTask = Field(description="the task as it would stand with the candidate's settings")
    changes: dict[str, Any] = Field(description="the rule settings it changes, as validated")
    by: str = Field(description="who started it")
    since: int = Field(description="ms since the epoch when it started: its identity (a new try starts afresh)")


class TaskChange(StrEnum):
    TRY = "try"
    PROMOTE = "promote"
    DROP = "drop"


class CandidateChange(BaseModel):
    """What happened to a task's candidate in this record, by whom and when (fw.tasks keeps it until the task's
    next record): the candidate itself rides along, so what a promoted or dropped one did can still be compared."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    change: TaskChange
    by: str
    at: int = Field(description="ms since the epoch")
    candidate: Candidate = Field(description="the candidate tried, promoted or dropped")


class TaskEvent(Event):
    """A camera task as it stands now (compacted topic fw.tasks, keyed by task id); `task` None deletes it.

    A candidate rides in the task's own record rather than in one of its own: the live settings and the candidate
    are one compacted value, so a promotion is one write that every follower sees whole (never both rules live,
    never neither), and extractors, which compare the task alone, restart no camera for a candidate."""

    task_id: str
    task: CameraTask | None
    origin: TaskOrigin = TaskOrigin.CONFIG
    candidate: Candidate | None = Field(default=None, exclude_if=unset)
    candidate_change: CandidateChange | None = Field(default=None, exclude_if=unset)

    @property
    def event_id(self) -> str:
        return f"{self.task_id}@{self.emitted_at}"


class CameraState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"  # waiting to reconnect after an error that retrying may fix
    FAILED = "failed"  # an error retrying cannot fix (401, not a video): waits for the task to change
    ENDED = "ended"  # a file source reached its end
    STOPPED = "stopped"  # disabled, removed, or moved to another extractor


class CameraStatus(Event):
    """How one camera is doing, from the extractor running it (compacted topic fw.cameras, keyed by camera)."""

    camera_id: str
    extractor: str
    state: CameraState
    fps_in: float = Field(ge=0, description="frames decoded per second, over the last report period")
    fps_out: float = Field(ge=0, description="FrameEvents sent per second, over the last report period")
    interval_ms: int = Field(gt=0, description="the sampling interval in force, stretched under pressure")
    last_frame_at: int | None = Field(default=None, description="capture time of the last frame sent")
    reconnects: int = Field(default=0, ge=0)
    last_error: str = ""
    decoded: int = Field(default=0, ge=0, description="frames decoded since the camera started on this extractor")
    emitted: int = Field(default=0, ge=0, description="FrameEvents sent since the camera started on this extractor")
    clock_skew_ms: int | None = Field(default=None, description="the extractor's clock minus the broker's "
                                      "(negative: behind); None until measured")

    @property
    def event_id(self) -> str:
        return f"{self.camera_id}@{self.emitted_at}"

    def on_broker_clock(self, extractor_ms: int) -> int:
        """One of this status's times (`emitted_at`, `last_frame_at`), read on the broker's clock."""
        return extractor_ms - (self.clock_skew_ms or 0)


class OpenIncidents(Event):
    """How many incidents a camera's rule has open, from the worker evaluating it, written when the number changes
    (compacted topic fw.incidents, keyed by camera): every worker's /api/cameras shows every camera's, though each
    evaluates only its own partitions' cameras."""

    camera_id: str
    task_id: str
    open: int = Field(ge=0)
    at: int = Field(description="capture time of the frame that changed it, ms since the epoch")

    @property
    def event_id(self) -> str:
        return f"{self.camera_id}@{self.at}"


class InferencePressure(Event):
    """What inference made of one task's frames over a period (fw.pressure): the extractor's credit signal."""

    task_id: str
    period_ms: int = Field(gt=0)
    received: int = Field(ge=0, description="frames that reached the scheduler")
    dropped: int = Field(ge=0, description="superseded or stale: frames sampled for nothing")
    ended: int = Field(default=0, ge=0, description="frames whose inference ended (inferred, dropped or failed)")

    @property
    def event_id(self) -> str:
        return f"{self.task_id}@{self.emitted_at}"


class RetentionEvent(Event):
    bucket: str
    object_key: str
    task_id: str
    reason: str

    @property
    def event_id(self) -> str:
        return stable_id("retention", self.bucket, self.object_key)


class AlertStored(Event):
    """An alert committed to the database: the publisher's only input, so nothing unstored is published."""

    alert: AlertEvent
    stored_at: int

    @property
    def event_id(self) -> str:
        return self.alert.alert_id


class AlertPublished(Event):
    """An alert's message is on the alert topic: written in the same Kafka transaction as the message itself."""

    alert_id: str
    camera_id: str

    @property
    def event_id(self) -> str:
        return self.alert_id


def alert_id_of(value: str) -> str:
    """An alert id as it is written everywhere (a UUID), or a ValueError."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("not an alert id (a UUID)") from None


class ClipRequest(Event):
    """An alert wants the seconds around it: sent by the rules agent to fw.clip-requests, partitioned like fw.tasks
    (by task id), so the extractor that runs the camera reads it."""

    alert_id: str
    task_id: str
    camera_id: str
    captured_at: int
    pre_ms: int = Field(ge=0)
    post_ms: int = Field(ge=0)

    _alert_id = field_validator("alert_id")(alert_id_of)

    @property
    def event_id(self) -> str:
        return stable_id("clip-request", self.alert_id)


class ClipReady(Event):
    """An alert's clip is in the object store (`clip_key`), or there is none (`clip_key` None, `reason` says why);
    a clip shorter than asked for has both. Several alerts of one camera may share one clip."""

    alert_id: str
    task_id: str
    camera_id: str
    bucket: str
    clip_key: str | None = None
    start_at: int | None = Field(default=None, description="capture time of its first frame, ms since the epoch")
    end_at: int | None = Field(default=None, description="capture time of its last frame")
    clip_bytes: int | None = Field(default=None, ge=0)
    reason: str | None = None

    _alert_id = field_validator("alert_id")(alert_id_of)

    @property
    def event_id(self) -> str:
        return stable_id("clip", self.alert_id)


MAX_LETTER_PAYLOAD = 64 * 1024  # characters of the record a dead letter keeps: it must fit in a Kafka message
MAX_LETTER_REASON = 2048


class DeadLetter(Event):
    topic: str
    reason: str
    key: str | None
    payload: str = Field(description="the record as received, decoded as UTF-8 with replacement; its first 64 KiB")
    payload_bytes: int | None = Field(default=None, description="the record's whole size")

    @classmethod
    def of(cls, topic: str, reason: str, record: bytes | str | None, key: str | None = None) -> DeadLetter:
        """The dead letter of a record, cut to a size any broker takes."""
        raw = record.encode() if isinstance(record, str) else (record or b"")
        text = raw[:MAX_LETTER_PAYLOAD].decode("utf-8", "replace") if record is not None else "(no value)"
        cut = reason if len(reason) <= MAX_LETTER_REASON else reason[:MAX_LETTER_REASON] + "…"
        return cls(topic=topic, reason=cut, key=key, payload=text, payload_bytes=len(raw))

    @property
    def event_id(self) -> str:
        return stable_id("dead", self.topic, self.payload)


ALL_EVENTS: tuple[type[Event], ...] = (FrameEvent, DetectionEvent, AlertEvent, FrameOutcome, ServiceHeartbeat,
                                       TaskEvent, CameraStatus, InferencePressure, RetentionEvent, AlertStored,
                                       AlertPublished, CountWindow, DeadLetter, ClipRequest, ClipReady, OpenIncidents)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every record, for topic inspection tools and consumers in other languages."""
    return {event.__name__: event.model_json_schema() for event in ALL_EVENTS}
