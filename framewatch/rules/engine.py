"""The rule engine: a frame's detections and its task's state in; alerts, closed count windows and the next state out.

The same for all nine types: detections above `min_score` with a watched label continue tracks; the task type's
condition finds what holds now; a finding opens an incident (or continues the open one with the same key), and an
incident raises one alert, when the cooldown of its key allows, and ends once its condition has been false for
`clear_sec`. Everything is measured on capture time and alert ids derive from frame, rule and key, so the same
frames give the same alerts with the same ids on every run.

A frame the state has already seen (a replay after a crash) changes nothing and sends again what it sent the first
time; a frame older than the last one seen (results can overtake each other) is skipped as late.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from framewatch.rules.conditions import CONDITIONS, Finding, Scene
from framewatch.rules.state import Incident, Output, RuleState, Window
from framewatch.rules.tracking import update_tracks
from framewatch.rules.versions import rule_version
from framewatch.schemas.events import (
    AlertEvent,
    CountWindow,
    DetectionEvent,
    FrameEvent,
)
from framewatch.schemas.tasks import CameraTask, TaskType

MINUTE_MS = 60_000
COUNTING = frozenset({TaskType.PEOPLE_COUNTING, TaskType.LINE_CROSSING})


class Status(StrEnum):
    EVALUATED = "evaluated"
    REPLAYED = "replayed"
    LATE = "late"


@dataclass
class Evaluation:
    status: Status
    alerts: list[AlertEvent] = field(default_factory=list)
    windows: list[CountWindow] = field(default_factory=list)


def alert_image_key(frame_key: str, alert_base: str, task: CameraTask, captured_at: int) -> str:
    """frames/<task>/<day>/<file> -> <alert_base>/<task>/<day>/<file>, keeping any base path in front."""
    prefix, _, _ = frame_key.partition("frames/")
    day = datetime.fromtimestamp(captured_at / 1000, tz=UTC).strftime("%Y%m%d")
    return f"{prefix}{alert_base}/{task.output_path or task.id}/{day}/{frame_key.rsplit('/', 1)[-1]}"


def evaluate(task: CameraTask, state: RuleState, event: DetectionEvent, alert_base: str) -> Evaluation:
    """Evaluates one frame against `state`, which it updates in place (unless the frame is replayed or late)."""
    frame = event.frame
    now = frame.captured_at
    if now in state.seen:
        return _replayed(state, now)
    if state.seen and now < state.seen[-1]:
        return Evaluation(Status.LATE)
    windows = _roll_window(task, state, frame)
    detections = [d for d in event.detections if d.score >= task.min_score]
    watched = [d for d in detections if d.label in task.watched]
    tracks = update_tracks(state, watched, now, int(task.track_gap_sec * 1000), task.track_score)
    rule, condition = CONDITIONS[task.task_type]
    findings = condition(Scene(task, state, now, frame.width / frame.height, detections, tracks))
    alerts = [_alert(task, event, rule, finding, incident, alert_base)
              for finding, incident in _incidents(task, state, findings, now)]
    state.remember(now)
    state.outputs += [Output(captured_at=now, topic="alerts", record=a.model_dump(mode="json")) for a in alerts]
    state.outputs += [Output(captured_at=now, topic="counts", record=w.model_dump(mode="json")) for w in windows]
    return Evaluation(Status.EVALUATED, alerts, windows)


def _replayed(state: RuleState, now: int) -> Evaluation:
    sent = [o for o in state.outputs if o.captured_at == now]
    return Evaluation(Status.REPLAYED, [AlertEvent.model_validate(o.record) for o in sent if o.topic == "alerts"],
                      [CountWindow.model_validate(o.record) for o in sent if o.topic == "counts"])


def _incidents(task: CameraTask, state: RuleState, findings: list[Finding],
               now: int) -> list[tuple[Finding, Incident]]:
    """Opens, continues and ends incidents; returns the findings that raise an alert, with their incident."""
    cooldown_ms = task.cooldown_sec * 1000
    raised = []
    for finding in findings:
        incident = state.incidents.setdefault(finding.key, Incident(opened_at=now, last_true_at=now))
        incident.last_true_at = now
        last = state.last_alert.get(finding.key)
        if not incident.alerted and (last is None or now - last >= cooldown_ms):
            incident.alerted = True
            state.last_alert[finding.key] = now
            raised.append((finding, incident))
    found = {f.key for f in findings}
    state.incidents = {key: incident for key, incident in state.incidents.items()
                       if key in found or now - incident.last_true_at < task.clear_sec * 1000}
    state.last_alert = {key: at for key, at in state.last_alert.items()
                        if now - at < cooldown_ms or key in state.incidents}
    return raised


def _alert(task: CameraTask, event: DetectionEvent, rule: str, finding: Finding, incident: Incident,
           alert_base: str) -> AlertEvent:
    frame = event.frame
    evidence = {"subject": finding.key, "incident_started_at": incident.opened_at, "service_id": event.service_id,
                **finding.evidence}
    return AlertEvent(alert_id=AlertEvent.make_id(frame.frame_id, f"{rule}/{finding.key}"), frame=frame, rule=rule,
                      evidence=evidence, image_key=alert_image_key(frame.object_key, alert_base, task,
                                                                   frame.captured_at),
                      rule_version=rule_version(task), detector=event.service_id, model=event.model)


def _roll_window(task: CameraTask, state: RuleState, frame: FrameEvent) -> list[CountWindow]:
    """Opens the frame's minute for a counting task; the minute it leaves behind is closed and returned."""
    if task.task_type not in COUNTING:
        return []
    start = frame.captured_at // MINUTE_MS * MINUTE_MS
    closed = []
    window = state.window
    if window is not None and window.start != start:
        closed.append(CountWindow(task_id=frame.task_id, camera_id=frame.camera_id, task_type=task.task_type,
                                  window_start=window.start, samples=window.samples, people_max=window.people_max,
                                  people_mean=round(window.people_sum / max(window.samples, 1), 3),
                                  crossed_in=window.crossed_in, crossed_out=window.crossed_out))
    if window is None or closed:
        window = state.window = Window(start=start)
    window.samples += 1
    return closed
