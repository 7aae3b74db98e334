"""The publisher's message: what a consumer of the alert topic gets, complete without asking us."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from framewatch.schemas.events import AlertStored

PUBLISHED = Counter("framewatch_publisher_alerts_published_total", "Alerts published to the alert topic")

PAYLOAD_VERSION = 1


def payload(stored: AlertStored) -> dict[str, Any]:
    alert = stored.alert
    frame = alert.frame
    return {"version": PAYLOAD_VERSION, "alert_id": alert.alert_id, "camera_id": frame.camera_id,
            "task_id": frame.task_id, "task_type": frame.task_type.value, "rule": alert.rule,
            "captured_at": frame.captured_at, "emitted_at": alert.emitted_at, "stored_at": stored.stored_at,
            "evidence": alert.evidence, "bucket": frame.bucket, "image_key": alert.image_key}
