"""A per-camera multi-object tracker: greedy association of detections to tracks, on the overlap of each track's
box moved by its velocity (a constant-velocity model, because at a few frames per second a walking person's boxes
in consecutive frames barely overlap), with a centre-distance gate for the misses.

When the detector returns track ids, they are used as they are. Track ids are numbered per camera in order of
appearance, so the same detections give the same ids on every run.
"""

from __future__ import annotations

from framewatch.rules.state import RuleState, Track
from framewatch.schemas.events import Detection
from framewatch.schemas.geometry import Box, centre, distance, iou, overlaps

MIN_IOU = 0.2
MAX_JUMP = 1.0  # in box sizes: how far a centre may move between matched frames when boxes do not overlap
VELOCITY_SMOOTHING = 0.5


def predicted(track: Track, now: int) -> Box:
    dt = (now - track.last_seen) / 1000
    dx, dy = track.velocity[0] * dt, track.velocity[1] * dt
    x1, y1, x2, y2 = track.box
    return x1 + dx, y1 + dy, x2 + dx, y2 + dy


def affinity(label: str, guess: Box, detection: Detection) -> float:
    """> 0 when the detection may continue a track of `label` now at `guess`; higher is a better match."""
    if label != detection.label:
        return 0.0
    box = detection.box
    if overlaps(guess, box) and (overlap := iou(guess, box)) >= MIN_IOU:
        return overlap
    reach = MAX_JUMP * max(guess[2] - guess[0], guess[3] - guess[1])
    gap = distance(centre(guess), centre(box))
    return 0.0 if gap > reach else MIN_IOU * (1 - gap / reach) * 0.5


def follow(track: Track, detection: Detection, now: int) -> None:
    dt = (now - track.last_seen) / 1000
    if dt > 0:
        (ox, oy), (nx, ny) = centre(track.box), centre(detection.box)
        vx, vy = (nx - ox) / dt, (ny - oy) / dt
        a = VELOCITY_SMOOTHING
        track.velocity = (a * vx + (1 - a) * track.velocity[0], a * vy + (1 - a) * track.velocity[1])
    track.box, track.score, track.last_seen, track.hits = detection.box, detection.score, now, track.hits + 1


def update_tracks(state: RuleState, detections: list[Detection], now: int, gap_ms: int) -> list[Track]:
    """Moves `state.tracks` on to this frame; returns the tracks seen in it (new ones included)."""
    tracks = [t for t in state.tracks if now - t.last_seen <= gap_ms]
    by_id = {t.id: t for t in tracks}
    current: list[Track] = []
    unmatched: list[Detection] = []
    for detection in detections:
        if detection.track_id is None:
            unmatched.append(detection)
        elif (known := by_id.get(f"d{detection.track_id}")) is not None:
            follow(known, detection, now)
            current.append(known)
        else:
            current.append(_new(tracks, f"d{detection.track_id}", detection, now))
    candidates = [t for t in tracks if t.last_seen < now]
    guesses = [predicted(t, now) for t in candidates]
    pairs = sorted(((score, ti, di) for ti, (t, guess) in enumerate(zip(candidates, guesses))
                    for di, d in enumerate(unmatched) if (score := affinity(t.label, guess, d)) > 0), reverse=True)
    taken_tracks: set[int] = set()
    taken_detections: set[int] = set()
    for _, ti, di in pairs:
        if ti in taken_tracks or di in taken_detections:
            continue
        taken_tracks.add(ti)
        taken_detections.add(di)
        follow(candidates[ti], unmatched[di], now)
        current.append(candidates[ti])
    for di, detection in enumerate(unmatched):
        if di not in taken_detections:
            current.append(_new(tracks, str(state.next_track), detection, now))
            state.next_track += 1
    state.tracks = tracks
    return current


def _new(tracks: list[Track], track_id: str, detection: Detection, now: int) -> Track:
    track = Track(id=track_id, label=detection.label, box=detection.box, score=detection.score, first_seen=now,
                  last_seen=now)
    tracks.append(track)
    return track
