"""The alert feed: what framewatch publishes on `mq_topic` (default `easyai.alerts`), one message per alert.

This is the contract with integrators: `framewatch schemas export DIR` writes its JSON Schema
(`AlertMessage.schema.json`), the README documents it field by field. Messages are JSON, keyed by camera id, in
Kafka transactions: read them with `isolation.level=read_committed` to see each alert exactly once. `version` changes
only when a field changes meaning or goes away; new optional fields may appear within a version."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from framewatch.schemas.events import AlertStored
from framewatch.schemas.tasks import TaskType

FEED_VERSION: Literal[1] = 1


class AlertMessage(BaseModel):
    """One alert on the alert topic."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="framewatch alert message")

    version: Literal[1] = Field(default=FEED_VERSION, description="the feed's version")
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

    @classmethod
    def of(cls, stored: AlertStored) -> AlertMessage:
        alert, frame = stored.alert, stored.alert.frame
        return cls(alert_id=alert.alert_id, camera_id=frame.camera_id, task_id=frame.task_id,
                   task_type=frame.task_type, rule=alert.rule, captured_at=frame.captured_at,
                   emitted_at=alert.emitted_at, stored_at=stored.stored_at, evidence=alert.evidence,
                   bucket=frame.bucket, image_key=alert.image_key)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
