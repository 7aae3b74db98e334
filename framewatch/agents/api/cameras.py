"""/api/cameras: one row per camera, from five sources: the tasks of this worker's config, the tasks on fw.tasks
(which win), the extractors' statuses on fw.cameras, what this worker's scheduler saw of the camera's frames, and
the stored alerts. A task's id is its camera's id; a camera any source knows has a row. Each row also names the
camera's still (`snapshots/`, written by its extractor: `streams/snapshots.py`), which adds no row of its own: a
still outlives its camera by up to a day.

/api/cameras/{camera_id}/snapshot: the still's stable address, a redirect to a URL presigned now."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from faust.web import Request, Response, View

from framewatch.agents.api.routes import NotFound, Route, WebContext
from framewatch.agents.inference.scheduler import CameraSeen
from framewatch.clients.objectstore import StoreError, snapshot_folder
from framewatch.schemas.events import CameraStatus, OpenIncidents
from framewatch.schemas.queries import BadQuery, CameraRow, camera_json
from framewatch.schemas.tasks import CameraTask, safe_id

log = logging.getLogger("framewatch.web")

# a still's URL shows whatever the camera sees when it is opened, for as long as it is valid: minutes, not the day
# an alert image's URL is valid (the dashboard asks for new ones every few seconds)
SNAPSHOT_URL_EXPIRY_S = 300
STORE_UNAVAILABLE = "the object store is unavailable; try again shortly"


@dataclass(frozen=True)
class Snapshot:
    url: str
    written_at: datetime


async def cameras(context: WebContext, view: View, request: Request) -> Response:
    resources = context.resources
    alert_groups = await resources.alerts.cameras()
    rows = camera_rows(configured=resources.config.frame_extractor.tasks, published=resources.catalog.values,
                       statuses=resources.camera_states.values, activity=resources.scheduler.camera_activity(),
                       alert_groups=alert_groups, snapshots=await listed_snapshots(context),
                       incidents=resources.incidents.values, now_ms=time.time() * 1000,
                       now_monotonic_s=time.monotonic())
    return view.json({"cameras": [camera_json(row) for row in rows]})


async def listed_snapshots(context: WebContext) -> dict[str, Snapshot]:
    """Every camera's still by camera, from one listing of this namespace's stills: a request per 1000 cameras,
    where a HEAD per camera would be a request each (a thousand per refresh of the dashboard); their URLs are
    presigned here, which makes no request. None while the store does not answer: the rows go out without them."""
    store = context.resources.store
    folder = store.key(snapshot_folder(context.resources.config.framewatch.namespace)) + "/"
    try:
        listed = await store.list_modified(folder)
    except StoreError as error:
        log.warning("/api/cameras without stills: %s", error)
        return {}
    return {key.removeprefix(folder).removesuffix(".jpg"): Snapshot(presign_snapshot(context, key), written)
            for key, written in listed.items() if key.endswith(".jpg") and written is not None}


def presign_snapshot(context: WebContext, key: str) -> str:
    expiry_s = min(SNAPSHOT_URL_EXPIRY_S, context.resources.config.ai_analysis.presign_expiry_sec)
    return context.resources.store.presign(key, expiry_s)


async def camera_snapshot(context: WebContext, view: View, request: Request) -> Response:
    """The camera's still: a redirect (307) to a URL presigned now, valid a few minutes; a 404 naming the camera
    when it has none (no extractor ran it streaming in the last day, or stills are off: snapshot_interval_sec = 0)."""
    camera_id = request.match_info["camera_id"]
    try:
        safe_id(camera_id)
    except ValueError as error:
        raise BadQuery(f"camera id {camera_id[:64]!r}: {error}") from None
    store = context.resources.store
    key = store.snapshot_key(context.resources.config.framewatch.namespace, camera_id)
    try:
        found = await store.exists(key)
    except StoreError as error:
        log.warning("still of camera %s: %s", camera_id, error)  # names the endpoint: the log, not the answer
        return view.json({"error": STORE_UNAVAILABLE}, status=503)
    if not found:
        raise NotFound(f"camera {camera_id!r} has no still: its extractor writes one while the camera streams "
                       "(unless snapshot_interval_sec = 0), and the sweep deletes one a day old")
    return view.bytes(b"", status=307, headers={"Location": presign_snapshot(context, key)})


@dataclass(frozen=True)
class AlertedCamera:
    alerts: int
    task_type: str
    last_alert_at: str


def camera_rows(*, configured: Iterable[CameraTask], published: Mapping[str, CameraTask],
                statuses: Mapping[str, CameraStatus], activity: Mapping[str, CameraSeen],
                alert_groups: Iterable[Mapping[str, Any]], snapshots: Mapping[str, Snapshot],
                incidents: Mapping[str, OpenIncidents], now_ms: float, now_monotonic_s: float) -> list[CameraRow]:
    """The rows in camera order; `alert_groups` are the alert store's (camera, task, task type) counts, `incidents`
    what fw.incidents says of each camera's open incidents. `now_ms` is the wall clock (statuses' and stills' ages),
    `now_monotonic_s` the clock `CameraSeen.last_seen` is on (frames' ages)."""
    tasks = {**{task.id: task for task in configured}, **published}
    alerted = alerted_cameras(alert_groups)
    return [camera_row(camera_id, tasks.get(camera_id), statuses.get(camera_id), activity.get(camera_id),
                       alerted.get(camera_id), snapshots.get(camera_id), incidents.get(camera_id), now_ms,
                       now_monotonic_s)
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
               alerted: AlertedCamera | None, snapshot: Snapshot | None, incidents: OpenIncidents | None,
               now_ms: float, now_monotonic_s: float) -> CameraRow:
    known: dict[str, Any] = {"camera_id": camera_id, "alerts": alerted.alerts if alerted else 0,
                             "snapshot_url": snapshot.url if snapshot else None,
                             "snapshot_age_s": age_s(now_ms / 1000 - snapshot.written_at.timestamp())
                             if snapshot else None}
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
    if incidents is not None:
        known.update(open_incidents=incidents.open)
    return CameraRow.model_validate(known)


def status_fields(status: CameraStatus, now_ms: float) -> dict[str, Any]:
    return {"state": status.state, "extractor": status.extractor, "fps_in": status.fps_in, "fps_out": status.fps_out,
            "interval_ms": status.interval_ms, "reconnects": status.reconnects, "last_error": status.last_error,
            "status_age_s": age_s((now_ms - status.on_broker_clock(status.emitted_at)) / 1000),
            "clock_skew_s": None if status.clock_skew_ms is None else status.clock_skew_ms / 1000}


def age_s(seconds: float) -> float:
    """An age as shown: a tenth of a second, never negative (clocks that differ a little, a status sent "later")."""
    return round(max(0.0, seconds), 1)


ROUTES = [Route("/api/cameras", cameras), Route("/api/cameras/{camera_id}/snapshot", camera_snapshot)]
