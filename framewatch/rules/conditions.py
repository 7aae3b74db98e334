"""The nine task types as conditions: each looks at one frame (its detections and the tracks they continue, with
what the state remembers) and returns the findings that hold now, keyed by what they are about (a track, or the
scene). Turning findings into incidents and alerts is the engine's job, the same for every type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from framewatch.rules.state import RuleState, Track
from framewatch.schemas.events import Detection
from framewatch.schemas.geometry import (
    Box,
    Point,
    centre,
    contains,
    grown,
    inside,
    overlaps,
    segments_cross,
    side,
)
from framewatch.schemas.tasks import (
    FALL_LABELS,
    NO_HELMET_LABELS,
    PERSON,
    CameraTask,
    TaskType,
)

SCENE = "scene"
LINE_DEAD_ZONE = 0.005  # a foot this close to the line keeps the side it had: no counts from jitter on the line
UPRIGHT_RATIO = 0.8  # box width / height (in pixels) below which a person stands
LYING_RATIO = 1.2  # and above which a person lies
HEAD_SHARE = 0.25  # the top of a person's box where a helmet is looked for


@dataclass
class Scene:
    task: CameraTask
    state: RuleState
    now: int  # capture time, ms
    aspect: float  # frame width / height: boxes are normalised, postures are judged in pixels
    detections: list[Detection]  # everything the detector found above min_score
    tracks: list[Track]  # the tracks of watched labels seen in this frame

    def in_region(self, point: Point) -> bool:
        return self.task.region is None or inside(point, self.task.region)

    def tracks_in_region(self) -> list[Track]:
        return [t for t in self.tracks if self.in_region(t.foot())]

    def sec(self, since: int | None) -> float:
        return 0.0 if since is None else round((self.now - since) / 1000, 3)


@dataclass(frozen=True)
class Finding:
    key: str
    evidence: dict[str, Any]


def described(track: Track) -> dict[str, Any]:
    return {"track_id": track.id, "label": track.label, "score": track.score, "box": list(track.box)}


def people_count(scene: Scene) -> list[Finding]:
    present = scene.tracks_in_region()
    if scene.state.window is not None:
        window = scene.state.window
        window.people_sum += len(present)
        window.people_max = max(window.people_max, len(present))
    if len(present) < scene.task.alert_threshold:
        return []
    return [Finding(SCENE, {"count": len(present), "threshold": scene.task.alert_threshold,
                            "objects": [described(t) for t in present]})]


def line_crossing(scene: Scene) -> list[Finding]:
    assert scene.task.line is not None  # validated with the task
    a, b = scene.task.line
    length = ((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5
    wanted = scene.task.line_direction
    found = []
    for track in scene.tracks:
        foot = track.foot()
        offset = side(a, b, foot) / length
        if abs(offset) < LINE_DEAD_ZONE:
            continue
        now_side = 1 if offset > 0 else -1
        crossed = (track.side == -now_side and track.side_point is not None
                   and segments_cross(track.side_point, foot, a, b))
        track.side, track.side_point = now_side, foot
        if not crossed:
            continue
        direction = "in" if now_side > 0 else "out"
        if scene.state.window is not None:
            if direction == "in":
                scene.state.window.crossed_in += 1
            else:
                scene.state.window.crossed_out += 1
        if wanted.value in ("both", direction):
            found.append(Finding(track.id, {"direction": direction, **described(track)}))
    return found


def person_fall(scene: Scene) -> list[Finding]:
    found = []
    for track in scene.tracks:
        if not scene.in_region(track.foot()):
            continue
        x1, y1, x2, y2 = track.box
        ratio = (x2 - x1) * scene.aspect / max(y2 - y1, 1e-6)
        by_label = track.label in FALL_LABELS
        track.upright_seen = track.upright_seen or (track.label == PERSON and ratio < UPRIGHT_RATIO)
        lying = by_label or (track.upright_seen and ratio > LYING_RATIO)
        track.lying_since = (track.lying_since or scene.now) if lying else None
        if lying and scene.now - (track.lying_since or scene.now) >= scene.task.fall_sec * 1000:
            found.append(Finding(track.id, {"lying_sec": scene.sec(track.lying_since),
                                            "by": "label" if by_label else "posture", **described(track)}))
    return found


def off_post(scene: Scene) -> list[Finding]:
    state = scene.state
    present = scene.tracks_in_region()
    if present or state.present_at is None:
        state.present_at = scene.now
    if scene.now - state.present_at < scene.task.absence_sec * 1000:
        return []
    return [Finding(SCENE, {"absent_sec": scene.sec(state.present_at), "threshold_sec": scene.task.absence_sec})]


def smoking(scene: Scene) -> list[Finding]:
    seen = scene.tracks_in_region()
    scene.state.streak = scene.state.streak + 1 if seen else 0
    if scene.state.streak < scene.task.consecutive_frames:
        return []
    return [Finding(SCENE, {"frames": scene.state.streak, "objects": [described(t) for t in seen]})]


def area_intrusion(scene: Scene) -> list[Finding]:
    return [Finding(t.id, described(t)) for t in scene.tracks_in_region()]


def loitering(scene: Scene) -> list[Finding]:
    found = []
    for track in scene.tracks:
        if scene.in_region(track.foot()):
            track.inside_since = track.inside_since or scene.now
            track.outside_since = None
        elif track.inside_since is not None:
            track.outside_since = track.outside_since or scene.now
            if scene.now - track.outside_since > scene.task.clear_sec * 1000:
                track.inside_since = track.outside_since = None
        if track.outside_since is None and track.inside_since is not None \
                and scene.now - track.inside_since >= scene.task.dwell_sec * 1000:
            found.append(Finding(track.id, {"dwell_sec": scene.sec(track.inside_since), **described(track)}))
    return found


def object_left(scene: Scene) -> list[Finding]:
    people = [d.box for d in scene.detections if d.label == PERSON]
    found = []
    for track in scene.tracks:
        x1, y1, x2, y2 = track.box
        middle = centre(track.box)
        tolerance = 0.25 * max(x2 - x1, y2 - y1, 0.04)
        if track.anchor is None or abs(middle[0] - track.anchor[0]) + abs(middle[1] - track.anchor[1]) > tolerance:
            track.anchor, track.still_since = middle, scene.now
        attended = any(overlaps(grown(track.box, 1.0), person) for person in people)
        if (not attended and scene.in_region(track.foot())
                and scene.now - (track.still_since or scene.now) >= scene.task.stationary_sec * 1000):
            found.append(Finding(track.id, {"still_sec": scene.sec(track.still_since), **described(track)}))
    return found


def no_helmet(scene: Scene) -> list[Finding]:
    helmets = [d.box for d in scene.detections if d.label in scene.task.helmet_labels]
    found = []
    for track in scene.tracks:
        if track.label in scene.task.helmet_labels or not scene.in_region(track.foot()):
            continue
        if track.label in NO_HELMET_LABELS or not any(_on_head(track, h) for h in helmets):
            found.append(Finding(track.id, described(track)))
    return found


def _on_head(track: Track, helmet: Box) -> bool:
    x1, y1, x2, y2 = track.box
    head = track.box if track.label != PERSON else (x1, y1, x2, y1 + HEAD_SHARE * (y2 - y1))
    return contains(grown(head, 0.25), centre(helmet))


Condition = Callable[[Scene], list[Finding]]

CONDITIONS: dict[TaskType, tuple[str, Condition]] = {  # task type -> (rule name, condition)
    TaskType.PEOPLE_COUNTING: ("people_count_above", people_count),
    TaskType.LINE_CROSSING: ("line_crossed", line_crossing),
    TaskType.PERSON_FALL: ("person_fall", person_fall),
    TaskType.OFF_POST: ("off_post", off_post),
    TaskType.SMOKING: ("smoking", smoking),
    TaskType.AREA_INTRUSION: ("area_intrusion", area_intrusion),
    TaskType.LOITERING: ("loitering", loitering),
    TaskType.OBJECT_LEFT: ("object_left", object_left),
    TaskType.NO_HELMET: ("no_helmet", no_helmet),
}
