"""The query API's inputs and answers: filters validated with errors that name the parameter, keyset
pagination by (captured_at, alert_id), image and clip URLs presigned when the answer is built, each alert's clip
status, the rows of /api/cameras, a task as the API shows it and the body that changes its zone; reviews: their
filters, the bodies of their POSTs, missed events, and precision from reviews per rule and per camera."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from framewatch.errors import BadInput, describe
from framewatch.schemas.config import mask_url
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


class Verdict(StrEnum):
    """An operator's verdict on an alert."""

    TRUE = "true"  # it happened
    FALSE = "false"  # a false positive
    REVIEWED = "reviewed"  # seen, neither confirmed nor refuted


class CameraRuleQuery(TimeRangeQuery):
    """Filters of rows about a camera's rule at a capture time: alerts and missed events (same column names)."""

    time_column = "captured_at"

    camera_id: str | None = None
    task_type: TaskType | None = None
    rule: str | None = None

    _text = field_validator("camera_id", "rule", mode="before")(plain_text)

    @field_validator("task_type", mode="before")
    @classmethod
    def _task_type(cls, value: object) -> TaskType | None:
        return None if value is None else parse_task_type(value)

    def filters(self) -> list[tuple[str, list[Any]]]:
        equal = (("camera_id", self.camera_id), ("task_type", self.task_type and self.task_type.value),
                 ("rule", self.rule))
        return [(f"{c} = ?", [v]) for c, v in equal if v is not None]


def has_review(condition: str = "") -> str:
    """Whether the alert of the row at hand (in a query of the alerts table, unaliased) has a review (`r`), one
    that meets `condition` when given."""
    return ("EXISTS (SELECT 1 FROM alert_reviews r WHERE r.namespace = alerts.namespace "
            f"AND r.alert_id = alerts.alert_id{f' AND {condition}' if condition else ''})")


class AlertQuery(CameraRuleQuery):
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: Cursor | None = None
    reviewed: bool | None = Field(default=None, description="whether it has a verdict (any)")
    verdict: Verdict | None = None

    @field_validator("cursor", mode="before")
    @classmethod
    def _cursor(cls, value: object) -> Cursor | None:
        return None if value is None or isinstance(value, Cursor) else Cursor.decode(str(value))

    def filters(self) -> list[tuple[str, list[Any]]]:
        found = super().filters()
        if self.reviewed is not None:
            found.append((has_review() if self.reviewed else f"NOT {has_review()}", []))
        if self.verdict is not None:
            found.append((has_review("r.verdict = ?"), [self.verdict.value]))
        if self.cursor is not None:
            found.append(("(captured_at, alert_id) < (?, ?)", [self.cursor.captured_at, self.cursor.alert_id]))
        return found


class MissedQuery(CameraRuleQuery):
    """Missed events, newest first."""

    limit: int = Field(default=50, ge=1, le=MAX_PAGE)


class PrecisionQuery(CameraRuleQuery):
    """Precision from reviews, of the alerts and missed events captured in a time range."""


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
            "image_key": row["image_key"], "image_url": image_url, "clip": clip.model_dump(mode="json"),
            "rule_version": row["rule_version"], "detector": row["detector"], "model": row["model"],
            "review": review_json(row) if row.get("verdict") is not None else None}


def review_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """An alert's review, from a row with `alert_id`, `verdict`, `reviewer` and `reviewed_at`."""
    return {"alert_id": str(row["alert_id"]), "verdict": row["verdict"], "reviewer": row["reviewer"],
            "reviewed_at": row["reviewed_at"].isoformat()}


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
    # from fw.incidents (the worker evaluating the camera writes it when the number changes)
    open_incidents: int | None = Field(default=None, ge=0, description="incidents the camera's rule has open")
    # from the object store: the still the camera's extractor rewrites (always present, null without one)
    snapshot_url: str | None = Field(default=None, description="a presigned URL of the camera's latest still, "
                                     "valid a few minutes (an <img> cannot send the token)")
    snapshot_age_s: float | None = Field(default=None, description="since the still was written (the store's time "
                                         "of writing, on this worker's clock)")


def camera_json(row: CameraRow) -> dict[str, Any]:
    return row.model_dump(mode="json", exclude_unset=True)


# -- tasks --------------------------------------------------------------------------------------------------------


def task_json(task: CameraTask) -> dict[str, Any]:
    """A task as the API and `framewatch tasks` show it: every setting, credentials in the camera URL masked."""
    return {**task.model_dump(mode="json"), "rtsp_url": mask_url(task.rtsp_url)}


MAX_ZONE_POINTS = 256  # a region is tested against every detection of every frame: a bound on what one PUT costs


class ZoneBody(BaseModel):
    """`PUT /api/tasks/{id}/zone`: the fields of the task's zone, by CameraTask's own names, each optional:
    `region` (a polygon, [[x, y], …], at least 3 points, not crossing itself; null: the whole frame), `line` (the
    crossing line, [[x, y], [x, y]]) and `line_direction` (`in`, `out` or `both`). Coordinates are normalised:
    x from the picture's left edge (0) to its right (1), y from its top (0) to its bottom (1). Only the size of a
    region is checked here; what the values must be is checked with the whole task (`schemas.tasks.changed`), as
    `framewatch tasks update` checks it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: list[Any] | None = Field(default=None, max_length=MAX_ZONE_POINTS)
    line: Any = None
    line_direction: Any = None

    def changes(self) -> dict[str, Any]:
        """The fields the body gives (a null among them), as changes to the task."""
        if not self.model_fields_set:
            raise BadQuery("body: give region, or line and line_direction")
        return self.model_dump(include=self.model_fields_set)


# -- reviews ------------------------------------------------------------------------------------------------------


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], body: bytes) -> Body:
    """A request's JSON body as `model`, or a BadQuery naming the field that is wrong."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise BadQuery(describe(error, "body")) from None


class ReviewBody(BaseModel):
    """`POST /api/alerts/{id}/review`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict: Verdict


class BulkReviewBody(ReviewBody):
    """`POST /api/reviews`: one verdict for many alerts."""

    alert_ids: list[uuid.UUID] = Field(min_length=1, max_length=MAX_PAGE)


class MissedEventBody(BaseModel):
    """`POST /api/missed`: an event the rules did not alert on. Without `task_type` and `rule`, those of the
    camera's task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera_id: str = Field(min_length=1)
    captured_at: datetime = Field(description="when it happened: ISO 8601 or ms since the epoch")
    task_type: TaskType | None = None
    rule: str | None = None
    note: str = ""

    _text = field_validator("camera_id", "rule", "note", mode="before")(plain_text)

    @field_validator("captured_at", mode="before")
    @classmethod
    def _time(cls, value: object) -> datetime:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError("not a time (ISO 8601, or milliseconds since the epoch)")
        return parse_time(value)

    @field_validator("task_type", mode="before")
    @classmethod
    def _task_type(cls, value: object) -> TaskType | None:
        return None if value is None else parse_task_type(value)


def missed_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"event_id": str(row["event_id"]), "camera_id": row["camera_id"], "task_type": row["task_type"],
            "rule": row["rule"], "captured_at": row["captured_at"].isoformat(), "note": row["note"],
            "reporter": row["reporter"], "reported_at": row["reported_at"].isoformat()}


class Precision(BaseModel):
    """A rule's figures from reviews, on one camera or all: `precision` is confirmed / (confirmed + false), null
    before any alert is judged true or false."""

    camera_id: str | None = Field(default=None, description="absent: every camera's")
    task_type: str
    rule: str
    alerts: int = 0
    reviewed: int = Field(default=0, description="alerts with a verdict (any)")
    confirmed: int = 0
    false: int = 0
    missed: int = Field(default=0, description="events the rule did not alert on, added by an operator")

    @property
    def precision(self) -> float | None:
        judged = self.confirmed + self.false
        return round(self.confirmed / judged, 3) if judged else None

    def answer(self) -> dict[str, Any]:
        return {**self.model_dump(exclude_none=True), "precision": self.precision}


FIGURES = ("alerts", "reviewed", "confirmed", "false", "missed")


def precision_tables(alert_counts: list[Mapping[str, Any]],
                     missed_counts: list[Mapping[str, Any]]) -> tuple[list[Precision], list[Precision]]:
    """(per rule, per camera and rule), from rows of (camera_id, task_type, rule) with the figures they have:
    `alerts`, `reviewed`, `confirmed`, `false` (the alerts') or `missed` (the missed events'). Sorted by name."""
    table: dict[tuple[bool, str, str, str], Precision] = {}
    for row in [*alert_counts, *missed_counts]:
        figures = {name: row[name] for name in FIGURES if name in row}
        for camera in (None, row["camera_id"]):
            key = (camera is not None, camera or "", row["task_type"], row["rule"])
            known = table.get(key) or Precision(camera_id=camera, task_type=row["task_type"], rule=row["rule"])
            table[key] = known.model_copy(update={name: getattr(known, name) + n for name, n in figures.items()})
    ordered = [table[key] for key in sorted(table)]
    return [p for p in ordered if p.camera_id is None], [p for p in ordered if p.camera_id is not None]
