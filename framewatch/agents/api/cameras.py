"""/api/cameras: one row per camera, from five sources: the tasks of this worker's config, the tasks on fw.tasks
(which win), the extractors' statuses on fw.cameras, what this worker's scheduler saw of the camera's frames, and
the stored alerts. A task's id is its camera's id; a camera any source knows has a row."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from faust.web import Request, Response, View

from framewatch.agents.api.routes import Route, WebContext
from framewatch.agents.inference.scheduler import CameraSeen
from framewatch.schemas.events import CameraStatus
from framewatch.schemas.queries import CameraRow, camera_json
from framewatch.schemas.tasks import CameraTask


async def cameras(context: WebContext, view: View, request: Request) -> Response:
    resources = context.resources
    alert_groups = await resources.alerts.cameras()
    rows = camera_rows(configured=resources.config.frame_extractor.tasks, published=resources.catalog.values,
                       statuses=resources.camera_states.values, activity=resources.scheduler.camera_activity(),
                       alert_groups=alert_groups, now_ms=time.time() * 1000, now_monotonic_s=time.monotonic())
    return view.json({"cameras": [camera_json(row) for row in rows]})


@dataclass(frozen=True)
class AlertedCamera:
    alerts: int
    task_type: str
    last_alert_at: str


def camera_rows(*, configured: Iterable[CameraTask], published: Mapping[str, CameraTask],
                statuses: Mapping[str, CameraStatus], activity: Mapping[str, CameraSeen],
                alert_groups: Iterable[Mapping[str, Any]], now_ms: float, now_monotonic_s: float) -> list[CameraRow]:
    """The rows in camera order; `alert_groups` are the alert store's (camera, task, task type) counts. `now_ms` is
    the wall clock (statuses' ages), `now_monotonic_s` the clock `CameraSeen.last_seen` is on (frames' ages)."""
    tasks = {**{task.id: task for task in configured}, **published}
    alerted = alerted_cameras(alert_groups)
    return [camera_row(camera_id, tasks.get(camera_id), statuses.get(camera_id), activity.get(camera_id),
                       alerted.get(camera_id), now_ms, now_monotonic_s)
            for camera_id in sorted(tasks.keys() | statuses.keys() | activity.keys() | alerted.keys())]


def alerted_cameras(alert_groups: Iterable[Mapping[str, Any]]) -> dict[str, AlertedCamera]:
    """Per camera: its groups' alerts added up, with the task type and last alert time of its last group listed."""
    alerted: dict[str, AlertedCamera] = {}
    for group in alert_groups:
        earlier = alerted.get(group["camera_id"])
        alerted[group["camera_id"]] = AlertedCamera(alerts=group["alerts"] + (earlier.alerts if earlier else 0),
                                                    task_type=group["task_type"],
                                                    last_alert_at=group["last_alert_at"].isoformat())
    return alerted


def camera_row(camera_id: str, task: CameraTask | None, status: CameraStatus | None, seen: CameraSeen | None,
               alerted: AlertedCamera | None, now_ms: float, now_monotonic_s: float) -> CameraRow:
    known: dict[str, Any] = {"camera_id": camera_id, "alerts": alerted.alerts if alerted else 0}
    if task is not None:
        known.update(task_type=task.task_type.value, enabled=task.enabled)
    if status is not None:
        known.update(status_fields(status, now_ms))
    if seen is not None:
        # from the frame's arrival, not its capture: a recording read faster than real time is captured "later"
        known.update(frames=seen.frames, inferred=seen.inferred, freshness=seen.freshness,
                     last_frame_age_s=age_s(now_monotonic_s - seen.last_seen))
    if alerted is not None:
        known.update(task_type=alerted.task_type, last_alert_at=alerted.last_alert_at)
    return CameraRow.model_validate(known)


def status_fields(status: CameraStatus, now_ms: float) -> dict[str, Any]:
    return {"state": status.state, "extractor": status.extractor, "fps_in": status.fps_in, "fps_out": status.fps_out,
            "interval_ms": status.interval_ms, "reconnects": status.reconnects, "last_error": status.last_error,
            "status_age_s": age_s((now_ms - status.on_broker_clock(status.emitted_at)) / 1000),
            "clock_skew_s": None if status.clock_skew_ms is None else status.clock_skew_ms / 1000}


def age_s(seconds: float) -> float:
    """An age as shown: a tenth of a second, never negative (clocks that differ a little, a status sent "later")."""
    return round(max(0.0, seconds), 1)


ROUTES = [Route("/api/cameras", cameras)]
