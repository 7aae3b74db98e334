"""Rules: turn a frame's detections into at most one alert.

This slice implements counting objects inside a region, which serves area intrusion (threshold 1) and people
counting (threshold `alert_threshold`). The only state is a cooldown per camera and rule, kept by the caller in a
Faust table and measured on capture time, so a replay reaches the same decisions and the same alert ids.
"""

from __future__ import annotations

from datetime import UTC, datetime

from framewatch.schemas.config import CameraTask, TaskType
from framewatch.schemas.events import AlertEvent, Detection, DetectionEvent

COUNTING_RULES = {TaskType.AREA_INTRUSION: "area_intrusion", TaskType.PEOPLE_COUNTING: "people_count_above"}


def inside(point: tuple[float, float], polygon: list[tuple[float, float]]) -> bool:
    """Even-odd ray casting; points on an edge may fall either way."""
    x, y = point
    result = False
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            result = not result
    return result


def in_region(task: CameraTask, detections: list[Detection]) -> list[Detection]:
    return [d for d in detections if d.label in task.labels and d.score >= task.min_score
            and (task.region is None or inside(d.foot(), task.region))]


def alert_image_key(frame_key: str, alert_base: str, task: CameraTask, captured_at: int) -> str:
    """frames/<task>/<day>/<file> -> <alert_base>/<task>/<day>/<file>, keeping any base path in front."""
    prefix, _, _ = frame_key.partition("frames/")
    day = datetime.fromtimestamp(captured_at / 1000, tz=UTC).strftime("%Y%m%d")
    return f"{prefix}{alert_base}/{task.output_path or task.id}/{day}/{frame_key.rsplit('/', 1)[-1]}"


def evaluate(task: CameraTask, event: DetectionEvent, last_alert_at: int | None, alert_base: str) -> AlertEvent | None:
    """The alert this frame raises, or None (nothing found, below threshold, unsupported type, or cooling down)."""
    rule = COUNTING_RULES.get(task.task_type)
    if rule is None:
        return None
    found = in_region(task, event.detections)
    if len(found) < task.alert_threshold:
        return None
    frame = event.frame
    if last_alert_at is not None and frame.captured_at - last_alert_at < task.cooldown_sec * 1000:
        return None
    evidence = {"count": len(found), "threshold": task.alert_threshold, "service_id": event.service_id,
                "boxes": [{"label": d.label, "score": d.score, "box": list(d.box)} for d in found]}
    return AlertEvent(alert_id=AlertEvent.make_id(frame.frame_id, rule), frame=frame, rule=rule, evidence=evidence,
                      image_key=alert_image_key(frame.object_key, alert_base, task, frame.captured_at))
