"""The query API's inputs and answers: filters validated with errors that name the parameter, keyset
pagination by (captured_at, alert_id), image and clip URLs presigned when the answer is built, each alert's clip
status, the rows of /api/cameras."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from framewatch.errors import BadInput, describe
from framewatch.schemas.events import CameraState
from framewatch.schemas.tasks import CameraTask, Freshness, TaskType, parse_task_type

MAX_PAGE = 500


class BadQuery(BadInput):
    """A query parameter framewatch cannot use; the message names it."""


class Cursor(BaseModel):
    captured_at: datetime
    alert_id: uuid.UUID

    def encode(self) -> str:
        return base64.urlsafe_b64encode(self.model_dump_json().encode()).decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            return cls.model_validate_json(base64.urlsafe_b64decode(text.encode()))
        except (ValidationError, binascii.Error, ValueError):
            raise BadQuery("cursor: not a cursor this API returned") from None


def parse_time(value: str) -> datetime:
    """ISO 8601 (naive means UTC) or milliseconds since the epoch."""
    try:
        if value.isdigit():
            return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"not a time: {value[:40]!r} (ISO 8601, or milliseconds since the epoch)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


MAX_TEXT = 256


def plain_text(value: object) -> object:
    """A text parameter PostgreSQL can compare: no NUL, at most 256 characters."""
    if isinstance(value, str) and ("\x00" in value or len(value) > MAX_TEXT):
        raise ValueError(f"must be at most {MAX_TEXT} characters, without NUL")
    return value


class TimeRangeQuery(BaseModel):
    """Query parameters with a time range; built from a request's parameters with errors that name them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    time_column: ClassVar[str]

    since: datetime | None = None
    until: datetime | None = None

    @field_validator("since", "until", mode="before")
    @classmethod
    def _time(cls, value: object) -> datetime | None:
        return None if value is None or isinstance(value, datetime) else parse_time(str(value))

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Self:
        try:
            return cls.model_validate(dict(params))
        except BadQuery:
            raise
        except ValidationError as error:
            raise BadQuery(describe(error, "query")) from None

    def filters(self) -> list[tuple[str, list[Any]]]:
        """(clause with a ? per value, values) beyond the time range."""
        raise NotImplementedError

    def where(self) -> tuple[str, list[Any]]:
        """The SQL filter and its arguments ($1, $2, ...)."""
        clauses: list[str] = []
        args: list[Any] = []
        bounds = [(f"{self.time_column} >= ?", self.since), (f"{self.time_column} < ?", self.until)]
        for clause, values in self.filters() + [(c, [v]) for c, v in bounds if v is not None]:
            for value in values:
                args.append(value)
                clause = clause.replace("?", f"${len(args)}", 1)
            clauses.append(clause)
        return (" AND ".join(clauses) or "TRUE"), args


class CountQuery(TimeRangeQuery):
    """The closed minutes of one counting task, newest first."""

    time_column = "window_start"

    task_id: str
    limit: int = Field(default=60, ge=1, le=MAX_PAGE)

    _text = field_validator("task_id", mode="before")(plain_text)

    def filters(self) -> list[tuple[str, list[Any]]]:
        return [("task_id = ?", [self.task_id])]


class AlertQuery(TimeRangeQuery):
    time_column = "captured_at"

    camera_id: str | None = None
    task_type: TaskType | None = None
    rule: str | None = None
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: Cursor | None = None

    _text = field_validator("camera_id", "rule", mode="before")(plain_text)

    @field_validator("task_type", mode="before")
    @classmethod
    def _task_type(cls, value: object) -> TaskType | None:
        return None if value is None else parse_task_type(value)

    @field_validator("cursor", mode="before")
    @classmethod
    def _cursor(cls, value: object) -> Cursor | None:
        return None if value is None or isinstance(value, Cursor) else Cursor.decode(str(value))

    def filters(self) -> list[tuple[str, list[Any]]]:
        equal = (("camera_id", self.camera_id), ("task_type", self.task_type and self.task_type.value),
                 ("rule", self.rule))
        found: list[tuple[str, list[Any]]] = [(f"{c} = ?", [v]) for c, v in equal if v is not None]
        if self.cursor is not None:
            found.append(("(captured_at, alert_id) < (?, ?)", [self.cursor.captured_at, self.cursor.alert_id]))
        return found


class ClipStatus(StrEnum):
    READY = "ready"
    SHORT = "short"  # ready, but shorter than asked for: the reason says why
    NONE = "none"  # no clip: the reason says why
    PENDING = "pending"  # no answer from an extractor yet

    @property
    def made(self) -> bool:
        """Whether there is a clip to play."""
        return self in (ClipStatus.READY, ClipStatus.SHORT)


CLIP_PATH = "/api/alerts/{alert_id}/clip"
# how long after its post-roll an alert's clip may still come (an extractor's clip waits for its post-roll, then
# for the remux and the upload); past that, a missing answer means none will come
CLIP_GRACE = timedelta(seconds=60)
DEFAULT_CLIP_POST_SEC: float = CameraTask.model_fields["clip_post_sec"].default
NO_EXTRACTOR_ANSWERED = "no extractor answered"
CLIPS_OFF = "clips are off for this task"


def clip_status(row: Mapping[str, Any], task: CameraTask | None, now: datetime) -> tuple[ClipStatus, str | None]:
    """An alert's clip status and its reason, from the alert row joined with its `alert_clips` row (absent:
    `clip_answered` false) and the task's settings as this worker knows them (None: an unknown task)."""
    if row["clip_answered"]:
        if row["clip_key"] is not None:
            return (ClipStatus.SHORT, row["clip_reason"]) if row["clip_reason"] else (ClipStatus.READY, None)
        return ClipStatus.NONE, row["clip_reason"] or "the extractor gave no reason"
    if task is not None and not task.clips:
        return ClipStatus.NONE, CLIPS_OFF
    post_sec = DEFAULT_CLIP_POST_SEC if task is None else task.clip_post_sec
    if now > row["captured_at"] + timedelta(seconds=post_sec) + CLIP_GRACE:
        return ClipStatus.NONE, NO_EXTRACTOR_ANSWERED
    return ClipStatus.PENDING, None


class ClipAnswer(BaseModel):
    """An alert's clip in `/api/alerts`: its status, and where it is once there is one."""

    model_config = ConfigDict(frozen=True)

    status: ClipStatus
    reason: str | None = Field(description="why it is short or missing")
    start_at: str | None = Field(description="capture time of its first frame, ISO 8601")
    end_at: str | None = Field(description="capture time of its last frame, ISO 8601")
    clip_bytes: int | None
    clip_url: str | None = Field(description="the clip's stable address on this API: a redirect to a fresh URL")
    presigned_url: str | None = Field(description="a URL of the clip itself, valid for presign_expiry_sec from when "
                                                  "the answer was built (for players that cannot send the token)")


def clip_answer(row: Mapping[str, Any], task: CameraTask | None, now: datetime,
                presign: Callable[[str], str]) -> ClipAnswer:
    status, reason = clip_status(row, task, now)
    return ClipAnswer(status=status, reason=reason, start_at=_iso(row["clip_start_at"]),
                      end_at=_iso(row["clip_end_at"]), clip_bytes=row["clip_bytes"],
                      clip_url=CLIP_PATH.format(alert_id=row["alert_id"]) if status.made else None,
                      presigned_url=presign(row["clip_key"]) if status.made else None)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def alert_json(row: Mapping[str, Any], image_url: str, clip: ClipAnswer) -> dict[str, Any]:
    evidence = row["evidence"]
    return {"alert_id": str(row["alert_id"]), "frame_id": str(row["frame_id"]), "camera_id": row["camera_id"],
            "task_id": row["task_id"], "task_type": row["task_type"], "rule": row["rule"],
            "captured_at": row["captured_at"].isoformat(), "stored_at": row["stored_at"].isoformat(),
            "evidence": orjson.loads(evidence) if isinstance(evidence, str) else evidence,
            "image_key": row["image_key"], "image_url": image_url, "clip": clip.model_dump(mode="json")}


def count_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"task_id": row["task_id"], "camera_id": row["camera_id"], "task_type": row["task_type"],
            "window_start": row["window_start"].isoformat(), "window_sec": row["window_sec"],
            "samples": row["samples"], "people_max": row["people_max"], "people_mean": round(row["people_mean"], 3),
            "crossed_in": row["crossed_in"], "crossed_out": row["crossed_out"]}


class CameraRow(BaseModel):
    """One camera of `/api/cameras`. A field no source knows of the camera is absent from the answer, not null:
    the dashboard tells a configured camera by `enabled`."""

    model_config = ConfigDict(extra="forbid")

    camera_id: str
    task_type: str | None = Field(default=None, description="the task's, or that of the camera's last alerts")
    enabled: bool | None = Field(default=None, description="only for a task of the config or fw.tasks")
    alerts: int = Field(default=0, description="stored alerts")
    # from the camera's extractor (fw.cameras)
    state: CameraState | None = None
    extractor: str | None = None
    fps_in: float | None = None
    fps_out: float | None = None
    interval_ms: int | None = None
    reconnects: int | None = None
    last_error: str | None = None
    status_age_s: float | None = Field(default=None, description="since the status was sent, on the broker's clock")
    clock_skew_s: float | None = Field(default=None, description="the extractor's clock minus the broker's")
    # from this worker's inference scheduler
    frames: int | None = None
    inferred: int | None = None
    freshness: Freshness | None = None
    last_frame_age_s: float | None = Field(default=None, description="since this worker received the last frame")
    # from the alert store
    last_alert_at: str | None = None


def camera_json(row: CameraRow) -> dict[str, Any]:
    return row.model_dump(mode="json", exclude_unset=True)
