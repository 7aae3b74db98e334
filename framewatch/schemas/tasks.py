"""A camera task: its source, its sampling and the settings of its rule, validated with errors that name the field.

The nine task types accept the seed system's Chinese names as aliases. Labels are checked against a vocabulary
(COCO's 80 classes and the safety labels below) so a typo fails at load time, not silently at run time; a task whose
detector speaks other labels declares them in `extra_labels`. `validated` and `changed` are the one way a task is
checked, whoever changes it (`framewatch tasks`, the dashboard's zone editor through the API).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from framewatch.errors import BadInput, describe
from framewatch.schemas.geometry import Point, self_crossing


class TaskType(StrEnum):
    PEOPLE_COUNTING = "people_counting"
    LINE_CROSSING = "line_crossing"
    PERSON_FALL = "person_fall"
    OFF_POST = "off_post"
    SMOKING = "smoking"
    AREA_INTRUSION = "area_intrusion"
    LOITERING = "loitering"
    OBJECT_LEFT = "object_left"
    NO_HELMET = "no_helmet"


TASK_TYPE_ALIASES: dict[str, TaskType] = {
    "人数统计": TaskType.PEOPLE_COUNTING,
    "绊线人数统计": TaskType.LINE_CROSSING,
    "人员跌倒": TaskType.PERSON_FALL,
    "人员离岗": TaskType.OFF_POST,
    "吸烟检测": TaskType.SMOKING,
    "区域入侵": TaskType.AREA_INTRUSION,
    "徘徊检测": TaskType.LOITERING,
    "物品遗留": TaskType.OBJECT_LEFT,
    "安全帽检测": TaskType.NO_HELMET,
}


def parse_task_type(value: object) -> TaskType:
    if isinstance(value, TaskType):
        return value
    text = str(value).strip()
    if text in TASK_TYPE_ALIASES:
        return TASK_TYPE_ALIASES[text]
    try:
        return TaskType(text.lower().replace("-", "_").replace(" ", "_"))
    except ValueError:
        known = ", ".join([*TaskType, *TASK_TYPE_ALIASES])
        raise ValueError(f"unknown task type {text!r}; known: {known}") from None


def parse_task_types(value: object) -> list[TaskType]:
    if not isinstance(value, list):
        raise ValueError("must be a list of task type names")
    return [parse_task_type(v) for v in value]


TaskTypes = Annotated[list[TaskType], BeforeValidator(parse_task_types)]

PERSON = "person"
FALL_LABELS = frozenset({"fall", "fallen_person"})
NO_HELMET_LABELS = frozenset({"no_helmet", "no_hardhat"})
SAFETY_LABELS = frozenset({"head", "helmet", "hardhat", "smoking", "cigarette", "face", "vest", "fire", "smoke",
                           *FALL_LABELS, *NO_HELMET_LABELS})
COCO_LABELS = frozenset(["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic_light", "fire_hydrant", "stop_sign", "parking_meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports_ball", "kite", "baseball_bat", "baseball_glove", "skateboard", "surfboard", "tennis_racket", "bottle", "wine_glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot_dog", "pizza", "donut", "cake", "chair", "couch", "potted_plant", "bed", "dining_table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell_phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy_bear", "hair_drier", "toothbrush"])
KNOWN_LABELS = COCO_LABELS | SAFETY_LABELS

# what each rule watches when a task names no labels
DEFAULT_LABELS: dict[TaskType, list[str]] = {
    TaskType.PERSON_FALL: [PERSON, "fall"],
    TaskType.SMOKING: ["smoking", "cigarette"],
    TaskType.OBJECT_LEFT: ["backpack", "handbag", "suitcase"],
    TaskType.NO_HELMET: [PERSON, "head", "no_helmet"],
}

_SAFE_ID = re.compile(r"^[\w\-.]{1,64}$", re.UNICODE)


def safe_id(value: str) -> str:
    if not _SAFE_ID.match(value) or value in {".", ".."}:
        raise ValueError("must be 1-64 letters, digits, '_', '-' or '.' (it becomes part of object keys)")
    return value


def _normalised(points: list[Point], what: str) -> None:
    if any(not (0.0 <= c <= 1.0) for point in points for c in point):
        raise ValueError(f"{what} coordinates are normalised and must lie in 0..1")


class LineDirection(StrEnum):
    """`in` is a crossing from the left of the line's first→second point to its right, as seen on the image."""

    IN = "in"
    OUT = "out"
    BOTH = "both"


class DecodeMode(StrEnum):
    """`auto` decodes key frames only when the sampling interval is at least a GOP; `all` always decodes every
    frame (to compare costs, or for streams whose key frames are not a regular cadence)."""

    AUTO = "auto"
    ALL = "all"


class Freshness(StrEnum):
    """Which frames inference spends its time on. `latest`: the freshest of each camera; older waiting frames are
    superseded and frames past `max_frame_age_ms` dropped (live cameras). `all`: every sampled frame is inferred
    and evaluated, in order, and a full queue holds the stream back instead (recorded video)."""

    LATEST = "latest"
    ALL = "all"


def is_file_source(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


class RtspTransport(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class CameraTask(BaseModel):
    """One camera analysed by one rule. Unknown keys are kept aside and reported by `config check`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    obsolete: ClassVar[dict[str, str]] = {}

    id: str
    task_type: TaskType
    rtsp_url: str = Field(description="any source PyAV opens: rtsp://, rtmp://, http(s)://, or a file path")
    interval_ms: int | None = Field(default=None, gt=0)
    output_path: str | None = None
    enabled: bool = True
    max_frame_count: int | None = Field(default=None, ge=0)
    # ingest settings
    rtsp_transport: RtspTransport = Field(default=RtspTransport.TCP, description="how rtsp:// sources carry RTP")
    loop: bool = Field(default=False, description="a file source starts again at its end (demos, benchmarks)")
    decode: DecodeMode = DecodeMode.AUTO
    freshness: Freshness | None = Field(default=None, description="latest or all; by default all for files read "
                                        "with realtime = false, latest otherwise")
    change_gate: bool = Field(default=False, description="skip sampled frames too like the last one sent")
    change_min_area: float = Field(default=0.005, gt=0, le=1,
                                   description="share of the picture that must change for a frame to be sent")
    change_heartbeat_sec: float = Field(default=10.0, gt=0, description="a frame is sent at least this often")
    # rule settings
    clips: bool = Field(default=True, description="each alert comes with a clip of the seconds around it")
    clip_pre_sec: float = Field(default=5.0, ge=0, le=30, description="seconds of the clip before the alert's frame")
    clip_post_sec: float = Field(default=5.0, ge=0, le=30, description="seconds of the clip after the alert's frame")
    region: list[Point] | None = Field(default=None, description="polygon in normalised coordinates; whole frame if absent")
    line: tuple[Point, Point] | None = Field(default=None, description="trip line for line_crossing, two points")
    line_direction: LineDirection = Field(default=LineDirection.BOTH, description="crossings that raise alerts")
    labels: list[str] | None = Field(default=None, description="what the rule watches; a default per task type")
    extra_labels: list[str] = Field(default=[], description="labels of this task's detector beyond the vocabulary")
    helmet_labels: list[str] = ["helmet", "hardhat"]
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    alert_threshold: int = Field(default=1, ge=1, description="objects in the region that make an alert")
    dwell_sec: float = Field(default=10.0, gt=0, description="loitering: time one track stays in the region")
    absence_sec: float = Field(default=30.0, gt=0, description="off_post: time the post region is empty")
    stationary_sec: float = Field(default=30.0, gt=0, description="object_left: time an object stays put")
    fall_sec: float = Field(default=2.0, ge=0, description="person_fall: time a fallen person stays down")
    consecutive_frames: int = Field(default=3, ge=1, description="smoking: frames in a row with the label")
    cooldown_sec: float = Field(default=10.0, ge=0.0, description="no second alert per camera, rule and track")
    clear_sec: float = Field(default=2.0, ge=0.0, description="an incident ends when its condition is false so long")
    track_gap_sec: float = Field(default=2.0, gt=0, description="a track unseen this long is forgotten")
    track_score: float = Field(default=0.5, ge=0.0, le=1.0, description="a detection scoring less (but at least "
                               "min_score) only continues a track seen in the previous frame, never starts one")

    @field_validator("task_type", mode="before")
    @classmethod
    def _task_type(cls, value: object) -> TaskType:
        return parse_task_type(value)

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return safe_id(value)

    @field_validator("region")
    @classmethod
    def _polygon(cls, value: list[Point] | None) -> list[Point] | None:
        if value is None:
            return None
        if len(value) < 3:
            raise ValueError("a region needs at least 3 points")
        _normalised(value, "region")
        if (crossing := self_crossing(value)) is not None:
            i, j = crossing
            raise ValueError(f"the region crosses itself: edge {i}-{i + 1} crosses edge {j}-{(j + 1) % len(value)}")
        return value

    @field_validator("line")
    @classmethod
    def _line(cls, value: tuple[Point, Point] | None) -> tuple[Point, Point] | None:
        if value is not None:
            _normalised(list(value), "line")
            if value[0] == value[1]:
                raise ValueError("a line needs two different points")
        return value

    @field_validator("extra_labels")
    @classmethod
    def _extra_labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if not re.fullmatch(r"[a-z0-9_]{1,40}", label):
                raise ValueError(f"label {label!r} must be 1-40 lower-case letters, digits or '_'")
        return value

    @model_validator(mode="after")
    def _check(self) -> CameraTask:
        if self.output_path is None:
            object.__setattr__(self, "output_path", self.id)
        elif not _SAFE_ID.match(self.output_path) or self.output_path in {".", ".."}:
            raise ValueError(f"output_path {self.output_path!r} must be a single safe path segment")
        if self.task_type is TaskType.LINE_CROSSING and self.line is None:
            raise ValueError("line: a line_crossing task needs a line, e.g. line = [[0.5, 0.0], [0.5, 1.0]]")
        known = KNOWN_LABELS | set(self.extra_labels)
        for field in ("labels", "helmet_labels"):
            for label in getattr(self, field) or []:
                if label not in known:
                    close = difflib.get_close_matches(label, known, n=1, cutoff=0.8)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise ValueError(f"{field}: unknown label {label!r}; {hint}"
                                     "a label your detector has beyond the vocabulary goes in extra_labels")
        return self

    @property
    def watched(self) -> frozenset[str]:
        """The labels the rule watches."""
        return frozenset(self.labels if self.labels is not None else DEFAULT_LABELS.get(self.task_type, [PERSON]))


class BadTask(BadInput):
    """Values a task cannot have; the message names the task and the field."""


def validated(values: Mapping[str, Any]) -> CameraTask:
    try:
        return CameraTask.model_validate(values)
    except ValidationError as error:
        raise BadTask(f"task {values.get('id')!r}: {describe(error, 'task')}") from None


def changed(task: CameraTask, changes: Mapping[str, Any]) -> CameraTask:
    """`task` with `changes` (field: value) applied, validated as a whole: a region is checked against the task's
    type and labels as they will stand, not alone."""
    if "id" in changes and changes["id"] != task.id:
        raise BadTask("a task's id cannot change; add a new task and remove this one")
    return validated({**task.model_dump(exclude_unset=True), **changes})
