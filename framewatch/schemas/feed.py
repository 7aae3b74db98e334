"""The alert feed: what framewatch publishes on `mq_topic` (default `easyai.alerts`): one message per alert
(`AlertMessage`, `kind` "alert") and, once an alert's clip is recorded, one about its clip (`ClipMessage`, `kind`
"clip": the clip's key, or why there is none).

This is the contract with integrators: `framewatch schemas export DIR` writes the JSON Schema of each kind
(`AlertMessage.schema.json`, `ClipMessage.schema.json`) and of the feed as a whole (`FeedMessage.schema.json`: one
of the two), the README documents them field by field. Messages are JSON, keyed by camera id. `version` changes
only when a field changes meaning or goes away; new optional fields may appear within a version (the alert's
`rule_version`, `detector` and `model` did, in version 1).

Alerts are published in Kafka transactions: read them with `isolation.level=read_committed` to see each alert
exactly once. Clip messages are sent by the worker once the clip is recorded in PostgreSQL, at least once: one may
come before its alert's message and may come again (deduplicate on `alert_id` within the kind; a message with a
`clip_key` replaces one without, never the other way round, as the alert's row does).

Why the clip is a second kind of message in version 1, rather than a field of the alert or a version 2: a field
would hold the alert back for its clip's post-roll, and an alert is never delayed by its clip. Alert messages only
gain `kind`, an optional field, as the version allows: a message without it is an alert, so a consumer written
before clips and the schema it was written against still take every alert message. A clip message lacks the
alert's required fields, so a consumer that validates what it reads (against the `AlertMessage` schema of any
release) skips it, as the bridges of the release before clips do; one that takes every message for an alert
unchecked must now skip `kind` "clip". Version 2 would have made every consumer change for a message it may
ignore."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from framewatch.schemas.events import AlertStored, ClipReady
from framewatch.schemas.tasks import TaskType

FEED_VERSION: Literal[1] = 1
FeedKind = Literal["alert", "clip"]
ClipStatus = Literal["ready", "short", "none"]


class AlertMessage(BaseModel):
    """One alert on the alert topic."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="framewatch alert message")

    version: Literal[1] = Field(default=FEED_VERSION, description="the feed's version")
    kind: Literal["alert"] = Field(default="alert", description="what the message announces: an alert (absent "
                                                                "from the messages of releases before clips)")
    alert_id: str = Field(description="UUID, the same for the same frame and rule on every replay: deduplicate on it")
    camera_id: str = Field(description="the camera (the task's id unless it says otherwise); the message key")
    task_id: str = Field(description="the task whose rule raised the alert")
    task_type: TaskType = Field(description="one of the nine task types")
    rule: str = Field(description="the rule that fired, e.g. area_intrusion, loitering, line_crossing")
    captured_at: int = Field(description="ms since the epoch when the camera captured the frame")
    emitted_at: int = Field(description="ms since the epoch when the rule raised the alert")
    stored_at: int = Field(description="ms since the epoch when PostgreSQL stored it")
    evidence: dict[str, Any] = Field(description="what the rule saw: boxes (normalised x1, y1, x2, y2), labels, "
                                                 "scores, track ids, durations; keys depend on the rule")
    bucket: str = Field(description="the S3 bucket holding the alert image")
    image_key: str = Field(description="the alert image's object key; GET /api/alerts/{alert_id}/image on the "
                                       "worker redirects to a fresh presigned URL for it")
    rule_version: str | None = Field(default=None, description="a short hash of the task's rule settings that "
                                     "raised it: alerts of one version came from the same settings (absent from "
                                     "the messages of releases before versions, null for alerts raised by them)")
    detector: str | None = Field(default=None, description="the id of the algorithm service whose detections "
                                 "raised it (absent before versions)")
    model: str | None = Field(default=None, description="the model that service reported answering with; null when "
                              "it reports none (absent before versions)")

    @classmethod
    def of(cls, stored: AlertStored) -> AlertMessage:
        alert, frame = stored.alert, stored.alert.frame
        return cls(alert_id=alert.alert_id, camera_id=frame.camera_id, task_id=frame.task_id,
                   task_type=frame.task_type, rule=alert.rule, captured_at=frame.captured_at,
                   emitted_at=alert.emitted_at, stored_at=stored.stored_at, evidence=alert.evidence,
                   bucket=frame.bucket, image_key=alert.image_key, rule_version=alert.rule_version,
                   detector=alert.detector, model=alert.model)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ClipMessage(BaseModel):
    """An alert's clip on the alert topic, sent once the clip (or why there is none) is recorded."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="framewatch clip message")

    version: Literal[1] = Field(default=FEED_VERSION, description="the feed's version")
    kind: Literal["clip"] = Field(description="what the message announces: an alert's clip")
    alert_id: str = Field(description="the alert the clip is for (several alerts may share one clip); deduplicate "
                                      "on it: a message with a clip_key replaces one without, never the other way")
    camera_id: str = Field(description="the alert's camera; the message key")
    task_id: str = Field(description="the alert's task")
    status: ClipStatus = Field(description="ready: the clip covers the seconds asked for; short: a clip, shorter "
                                           "than asked (reason says why); none: no clip (reason says why)")
    bucket: str = Field(description="the S3 bucket holding the clip")
    clip_key: str | None = Field(description="the clip's object key (an MP4), null when there is none; GET "
                                             "/api/alerts/{alert_id}/clip on the worker redirects to a fresh "
                                             "presigned URL for it")
    start_at: int | None = Field(description="ms since the epoch when its first frame was captured")
    end_at: int | None = Field(description="ms since the epoch when its last frame was captured")
    clip_bytes: int | None = Field(ge=0, description="the clip's size in bytes")
    reason: str | None = Field(description="why the clip is short or missing; null for a ready clip")
    stored_at: int = Field(description="ms since the epoch when PostgreSQL recorded it")

    @classmethod
    def of(cls, clip: ClipReady, stored_at: int) -> ClipMessage:
        status: ClipStatus = "none" if clip.clip_key is None else "short" if clip.reason else "ready"
        return cls(kind="clip", alert_id=clip.alert_id, camera_id=clip.camera_id, task_id=clip.task_id,
                   status=status, bucket=clip.bucket, clip_key=clip.clip_key, start_at=clip.start_at,
                   end_at=clip.end_at, clip_bytes=clip.clip_bytes, reason=clip.reason, stored_at=stored_at)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


FeedMessage = AlertMessage | ClipMessage


def kind_of(message: Any) -> str:
    """A message's kind, read from its JSON object or its model: one without a kind is an alert."""
    kind = message.get("kind", "alert") if isinstance(message, dict) else getattr(message, "kind", "alert")
    return str(kind)


FEED: TypeAdapter[FeedMessage] = TypeAdapter(
    Annotated[Annotated[AlertMessage, Tag("alert")] | Annotated[ClipMessage, Tag("clip")], Discriminator(kind_of)])


def read_message(raw: bytes | str) -> FeedMessage:
    """A message of the feed, of whichever kind it says; a pydantic ValidationError when it is none of them."""
    return FEED.validate_json(raw)


def feed_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas `framewatch schemas export` writes for the feed: each kind, and the feed as a whole."""
    feed = {"title": "framewatch alert feed message",
            "description": "an alert, or an alert's clip (kind: clip); a message without kind is an alert",
            **FEED.json_schema()}
    return {"AlertMessage": AlertMessage.model_json_schema(), "ClipMessage": ClipMessage.model_json_schema(),
            "FeedMessage": feed}
