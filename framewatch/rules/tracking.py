"""Per-camera multi-object tracking in ByteTrack's manner, on a constant-velocity Kalman filter per track.

For each frame:

1. every track not yet seen in this frame is predicted to its capture time by its filter (`motion`): at a few
   frames a second a walking person's boxes in consecutive frames barely overlap, their predictions do;
2. detections scoring at least `track_score` are assigned to the tracks seen in the previous frame, then those
   left to the tracks lost for a while (a matching cascade, as DeepSORT's: a recent track's prediction is the
   surer one), each in one global assignment (Hungarian, `linear_sum_assignment`) of the most total affinity;
3. weaker detections (below `track_score`) are assigned the same way to the tracks of the previous frame still
   unmatched: a person half hidden, whose score dropped, keeps their track, and a weak box never starts one;
4. the strong detections left start tracks. A track unseen for `gap_ms` is forgotten.

Affinity is the overlap of the detection with the prediction; a detection that does not overlap it enough may
still continue the track, with a small affinity, when its centre lies within the filter's gate (the 99 % ellipse
of where the filter expects the centre, which widens the longer a track goes unseen).

When the detector returns track ids, they are used as they are. Track ids are numbered per camera in order of
appearance, so the same detections give the same ids on every run.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from framewatch.rules import motion
from framewatch.rules.state import RuleState, Track
from framewatch.schemas.events import Detection

MIN_IOU = 0.2
GATE = 9.21  # chi-squared, 2 degrees of freedom, 99 %: the squared Mahalanobis distance a centre may be off


def affinities(labels: list[str], expected: list[motion.Motion], detections: list[Detection]) -> np.ndarray:
    """Track (row) by detection (column): > 0 where the detection may continue the track of that label whose
    filter, predicted to now, is `expected`; higher is a better match."""
    guesses = np.array([motion.box_of(e) for e in expected])[:, None, :]
    detected = np.array([d.box for d in detections])
    boxes = detected[None, :, :]
    overlap = (np.clip(np.minimum(guesses[..., 2], boxes[..., 2]) - np.maximum(guesses[..., 0], boxes[..., 0]), 0, None)
               * np.clip(np.minimum(guesses[..., 3], boxes[..., 3]) - np.maximum(guesses[..., 1], boxes[..., 1]), 0, None))
    areas = ((guesses[..., 2] - guesses[..., 0]) * (guesses[..., 3] - guesses[..., 1])
             + (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
    iou = overlap / np.maximum(areas - overlap, 1e-12)
    off = motion.centre_distances(expected, detected)
    near = np.where(off <= GATE, MIN_IOU * (1 - off / GATE) / 2, 0.0)
    same_label = np.array(labels)[:, None] == np.array([d.label for d in detections])[None, :]
    return np.where(same_label, np.where(iou >= MIN_IOU, iou, near), 0.0)


def update_tracks(state: RuleState, detections: list[Detection], now: int, gap_ms: int,
                  track_score: float) -> list[Track]:
    """Moves `state.tracks` on to this frame; returns the tracks seen in it (new ones included)."""
    previous_frame = state.seen[-1] if state.seen else None
    tracks = [t for t in state.tracks if now - t.last_seen <= gap_ms]
    current = [_by_detector(tracks, d, now) for d in detections if d.track_id is not None]
    untracked = [d for d in detections if d.track_id is None]
    recent = [t for t in tracks if t.last_seen == previous_frame and t.last_seen < now]
    lost = [t for t in tracks if t.last_seen != previous_frame and t.last_seen < now]
    strong = [d for d in untracked if d.score >= track_score]
    followed, recent, strong = _assign(recent, strong, now)
    found_again, _, strong = _assign(lost, strong, now)
    kept, _, _ = _assign(recent, [d for d in untracked if d.score < track_score], now)
    current += followed + found_again + kept
    for detection in strong:
        current.append(_new(tracks, str(state.next_track), detection, now))
        state.next_track += 1
    state.tracks = tracks
    return current


def _assign(tracks: list[Track], detections: list[Detection],
            now: int) -> tuple[list[Track], list[Track], list[Detection]]:
    """Continues tracks with detections, the pairing of most total affinity; returns the tracks continued, the
    tracks left and the detections left."""
    if not tracks or not detections:
        return [], tracks, detections
    expected = [motion.predict(_motion(t), (now - t.last_seen) / 1000) for t in tracks]
    scores = affinities([t.label for t in tracks], expected, detections)
    rows, columns = linear_sum_assignment(scores, maximize=True)
    pairs = [(r, c) for r, c in zip(rows.tolist(), columns.tolist()) if scores[r, c] > 0]
    for r, c in pairs:
        _follow(tracks[r], detections[c], now)
    taken_tracks, taken_detections = {r for r, _ in pairs}, {c for _, c in pairs}
    return ([tracks[r] for r, _ in pairs], [t for i, t in enumerate(tracks) if i not in taken_tracks],
            [d for i, d in enumerate(detections) if i not in taken_detections])


def _follow(track: Track, detection: Detection, now: int) -> None:
    track.motion = motion.correct(motion.predict(_motion(track), (now - track.last_seen) / 1000), detection.box)
    track.box, track.score, track.last_seen, track.hits = detection.box, detection.score, now, track.hits + 1


def _by_detector(tracks: list[Track], detection: Detection, now: int) -> Track:
    track_id = f"d{detection.track_id}"
    known = next((t for t in tracks if t.id == track_id), None)
    if known is None:
        return _new(tracks, track_id, detection, now)
    _follow(known, detection, now)
    return known


def _motion(track: Track) -> motion.Motion:
    return track.motion or motion.start(track.box)  # a track stored before filters were kept starts one


def _new(tracks: list[Track], track_id: str, detection: Detection, now: int) -> Track:
    track = Track(id=track_id, label=detection.label, box=detection.box, score=detection.score, first_seen=now,
                  last_seen=now, motion=motion.start(detection.box))
    tracks.append(track)
    return track
