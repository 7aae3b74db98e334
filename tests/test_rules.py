"""The nine task types on synthetic detection sequences, with their edge cases; the tracker; incidents; replays."""

from __future__ import annotations

from typing import Any

import pytest

from framewatch.rules.engine import Evaluation, Status, alert_image_key, evaluate
from framewatch.rules.state import RuleState, StateUnreadable
from framewatch.schemas.events import AlertEvent, Detection, DetectionEvent, FrameEvent
from framewatch.schemas.geometry import inside, self_crossing
from framewatch.schemas.tasks import CameraTask, TaskType

T0 = 1_700_000_000_000  # 20 s into a minute
LOWER_HALF = [(0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)]


def person(x: float, foot_y: float, score: float = 0.9, width: float = 0.06, height: float = 0.24,
           label: str = "person", track_id: str | None = None) -> Detection:
    """A box whose bottom centre (where a person stands) is at (x, foot_y)."""
    return Detection(label=label, score=score, box=(x - width / 2, foot_y - height, x + width / 2, foot_y),
                     track_id=track_id)


def thing(label: str, x: float, y: float, size: float = 0.05, score: float = 0.9) -> Detection:
    return Detection(label=label, score=score, box=(x - size / 2, y - size / 2, x + size / 2, y + size / 2))


def task(**settings: Any) -> CameraTask:
    return CameraTask.model_validate({"id": "cam", "task_type": "区域入侵", "rtsp_url": "x", **settings})


class Camera:
    """One task's frames through the engine, with the state a Faust table would keep."""

    def __init__(self, start_ms: int = T0, **settings: Any) -> None:
        self.task = task(**settings)
        self.state = RuleState()
        self.start_ms = start_ms

    def event(self, at_s: float, *found: Detection) -> DetectionEvent:
        captured_at = self.start_ms + round(at_s * 1000)
        camera = self.task.id
        frame = FrameEvent(frame_id=FrameEvent.make_id(camera, captured_at, 0), task_id=camera, camera_id=camera,
                           task_type=self.task.task_type, seq=0, captured_at=captured_at, bucket="b",
                           object_key=f"frames/{camera}/20231114/{captured_at}-000000.jpg", width=768, height=576)
        return DetectionEvent(frame=frame, service_id="s", inference_ms=1, detections=list(found))

    def see(self, at_s: float, *found: Detection) -> Evaluation:
        # a round trip through bytes on every frame, as through the table's changelog
        result = evaluate(self.task, self.state, self.event(at_s, *found), "alerts")
        self.state = RuleState.from_bytes(self.state.to_bytes())
        return result

    def walk(self, times: list[float], where: Any) -> list[AlertEvent]:
        """Frames at `times`; `where(t)` gives each frame's detections. Returns every alert raised."""
        return [a for t in times for a in self.see(t, *where(t)).alerts]


def seconds(start: float, stop: float, step: float = 0.5) -> list[float]:
    return [round(start + i * step, 3) for i in range(int(round((stop - start) / step)) + 1)]


# geometry and settings

def test_polygons() -> None:
    assert inside((0.5, 0.75), LOWER_HALF) and not inside((0.5, 0.25), LOWER_HALF)
    assert self_crossing([(0.1, 0.1), (0.9, 0.9), (0.9, 0.1), (0.1, 0.9)]) == (0, 2)
    assert self_crossing(LOWER_HALF) is None


def test_alert_key_moves_frames_to_alerts() -> None:
    key = alert_image_key("base/frames/cam/20231114/1700000000000-000000.jpg", "alerts", task(), 1_700_000_000_000)
    assert key == "base/alerts/cam/20231114/1700000000000-000000.jpg"


# tracking

def test_tracks_follow_walkers_whose_boxes_never_overlap_between_frames() -> None:
    cam = Camera(region=LOWER_HALF)
    # two people walking towards each other at 0.08 per frame, wider than their boxes: only the motion model
    # keeps them apart when they pass
    for step in range(10):
        cam.see(step, person(0.1 + 0.08 * step, 0.8), person(0.9 - 0.08 * step, 0.7))
    ids = {t.id: t for t in cam.state.tracks}
    assert sorted(ids) == ["1", "2"]
    assert ids["1"].box[0] > 0.7 and ids["2"].box[0] < 0.2  # each kept its own direction after crossing


def test_detector_track_ids_are_used_as_they_are() -> None:
    cam = Camera()
    cam.see(0, person(0.2, 0.8, track_id="7"))
    cam.see(1, person(0.8, 0.8, track_id="7"))  # a jump the tracker would not make; the detector says it is one
    assert [t.id for t in cam.state.tracks] == ["d7"] and cam.state.tracks[0].hits == 2


def test_a_track_unseen_longer_than_the_gap_is_forgotten() -> None:
    cam = Camera(track_gap_sec=2)
    cam.see(0, person(0.5, 0.8))
    cam.see(2, person(0.5, 0.8))
    cam.see(4.5, person(0.5, 0.8))
    assert [t.id for t in cam.state.tracks] == ["2"]


def test_two_people_stepping_side_by_side_keep_their_ids() -> None:
    cam = Camera()
    cam.see(0, person(0.45, 0.8, width=0.1), person(0.53, 0.8, width=0.1))
    # both step left; the left one's old box overlaps the right one's new box most: a greedy match on the best
    # overlap first would give the left track the right person and the right track the left one
    cam.see(0.3, person(0.48, 0.8, width=0.1), person(0.41, 0.8, width=0.1))
    ids = {t.id: round((t.box[0] + t.box[2]) / 2, 2) for t in cam.state.tracks}
    assert ids == {"1": 0.41, "2": 0.48}


def test_a_walker_passing_a_hidden_person_keeps_their_track() -> None:
    cam = Camera()
    cam.see(0, person(0.5, 0.8), person(0.1, 0.8))
    for step in range(1, 9):  # the one standing at 0.5 is hidden from now on; the walker passes over that spot
        cam.see(step * 0.25, person(0.1 + 0.05 * step, 0.8))
    walker = next(t for t in cam.state.tracks if t.id == "2")
    assert walker.hits == 9 and round(walker.box[0] + walker.box[2], 2) == 1.0  # at x = 0.5 after 8 steps
    assert next(t for t in cam.state.tracks if t.id == "1").hits == 1  # the hidden one took none of them


def test_a_weak_detection_continues_a_track_but_never_starts_one() -> None:
    cam = Camera(track_score=0.6)
    cam.see(0, person(0.3, 0.8, score=0.9))
    cam.see(0.5, person(0.31, 0.8, score=0.4), person(0.7, 0.8, score=0.4))  # half hidden; a weak box elsewhere
    assert [(t.id, t.hits, t.score) for t in cam.state.tracks] == [("1", 2, 0.4)]
    cam.see(1.0)  # nobody seen: track 1 is lost
    cam.see(1.5, person(0.3, 0.8, score=0.4))  # a weak box continues only a track seen in the frame before
    assert [(t.id, t.hits) for t in cam.state.tracks] == [("1", 2)]
    cam.see(2.0, person(0.3, 0.8, score=0.9))
    assert [(t.id, t.hits) for t in cam.state.tracks] == [("1", 3)]


def test_a_track_stored_without_a_filter_carries_on() -> None:
    cam = Camera()
    cam.see(0, person(0.3, 0.8))
    stored = cam.state.model_dump(mode="json")
    del stored["tracks"][0]["motion"]  # as a worker before the Kalman filter stored it
    cam.state = RuleState.model_validate(stored)
    cam.see(0.5, person(0.32, 0.8))
    assert [(t.id, t.hits) for t in cam.state.tracks] == [("1", 2)] and len(cam.state.tracks[0].motion) == 20


# the nine types

def test_area_intrusion_is_one_alert_per_person_and_incident() -> None:
    cam = Camera(region=LOWER_HALF, cooldown_sec=5)
    assert cam.see(0, person(0.6, 0.38)).alerts == []  # feet above the region
    alerts = cam.walk(seconds(1, 8), lambda t: [person(0.2, 0.8), person(0.6, 0.38 + 0.05 * t)])
    assert [a.evidence["track_id"] for a in alerts] == ["2", "1"]  # the first one's feet enter at t = 2.5
    assert alerts[1].frame.captured_at == T0 + 2_500 and alerts[0].rule == "area_intrusion"


def test_labels_and_min_score_filter() -> None:
    cam = Camera(region=LOWER_HALF, min_score=0.95)
    assert cam.see(0, thing("cat", 0.5, 0.8), person(0.5, 0.8, score=0.9)).alerts == []
    assert len(cam.see(1, person(0.5, 0.8, score=0.96)).alerts) == 1


def test_incident_ends_when_clear_and_cooldown_holds_back_a_quick_return() -> None:
    cam = Camera(region=LOWER_HALF, cooldown_sec=10, clear_sec=1, track_gap_sec=30)
    me = "7"  # one person throughout, as the detector says: this is about incidents, not tracking
    assert len(cam.see(0, person(0.5, 0.8, track_id=me)).alerts) == 1
    assert cam.see(1, person(0.5, 0.3, track_id=me)).alerts == []  # steps out; the incident ends after clear_sec
    assert cam.see(2.5, person(0.5, 0.3, track_id=me)).alerts == [] and cam.state.incidents == {}
    assert cam.see(5, person(0.5, 0.8, track_id=me)).alerts == []  # back in within the cooldown: a new incident, no alert
    again = cam.see(10, person(0.5, 0.8, track_id=me)).alerts  # still in when the cooldown runs out: that incident alerts
    assert len(again) == 1 and again[0].evidence["incident_started_at"] == T0 + 5_000


def test_people_counting_threshold_and_minute_windows() -> None:
    cam = Camera(task_type="人数统计", alert_threshold=3, region=LOWER_HALF, cooldown_sec=0)
    crowd = [person(0.2, 0.8), person(0.5, 0.8), person(0.8, 0.8), person(0.5, 0.3)]  # one outside the region
    assert cam.see(0, *crowd[:2]).alerts == []
    raised = cam.see(1, *crowd).alerts
    assert raised[0].rule == "people_count_above" and raised[0].evidence["count"] == 3
    assert cam.see(2, *crowd).alerts == []  # the same incident
    closed = cam.see(41, person(0.2, 0.8)).windows  # the next minute closes the one these frames were in
    assert [(w.window_start, w.samples, w.people_max, w.people_mean) for w in closed] == [
        (T0 - 20_000, 3, 3, round(8 / 3, 3))]


def test_line_crossing_counts_in_and_out_and_ignores_jitter_on_the_line() -> None:
    # a vertical line at x = 0.5, drawn downwards: walking right to left is "in" (its left to its right on the image)
    cam = Camera(task_type="绊线人数统计", line=[[0.5, 0.2], [0.5, 0.9]], line_direction="in", cooldown_sec=0,
                 clear_sec=0)
    path = [0.7, 0.6, 0.52, 0.499, 0.503, 0.498, 0.45, 0.3, 0.4, 0.55, 0.6, 0.55, 0.45]  # in, out, in again
    alerts = cam.walk(list(range(len(path))), lambda t: [person(path[int(t)], 0.6)])
    assert [a.evidence["direction"] for a in alerts] == ["in", "in"]  # alerts only for the wanted direction
    assert [a.frame.captured_at - T0 for a in alerts] == [6_000, 12_000]
    assert {a.evidence["track_id"] for a in alerts} == {"1"}
    window = cam.see(60, person(0.7, 0.6)).windows[0]
    assert (window.crossed_in, window.crossed_out) == (2, 1)


def test_line_crossing_beyond_the_ends_of_the_line_does_not_count() -> None:
    cam = Camera(task_type="绊线人数统计", line=[[0.5, 0.5], [0.5, 0.9]])
    cam.walk([0, 1, 2], lambda t: [person(0.3 + 0.2 * t, 0.3)])  # passes above the line's upper end
    assert [t.hits for t in cam.state.tracks] == [3]
    window = cam.see(60).windows[0]
    assert (window.crossed_in, window.crossed_out) == (0, 0)


def test_line_crossing_cooldown_is_per_track() -> None:
    cam = Camera(task_type="绊线人数统计", line=[[0.5, 0.0], [0.5, 1.0]], cooldown_sec=30, clear_sec=0)
    alerts = cam.walk([0, 1, 2, 3], lambda t: [person(0.47 + 0.06 * (t % 2), 0.6), person(0.2 + 0.2 * t, 0.9)])
    assert sorted(a.evidence["track_id"] for a in alerts) == ["1", "2"]  # track 1 crossed 3 times, alerted once


def test_person_fall_needs_an_upright_person_lying_for_fall_sec() -> None:
    cam = Camera(task_type="人员跌倒", fall_sec=2, region=None)
    standing, lying = person(0.5, 0.8, width=0.06, height=0.3), person(0.5, 0.8, width=0.25, height=0.1)
    assert cam.walk([0, 1], lambda t: [standing]) == []
    assert cam.walk([2, 3], lambda t: [lying]) == []  # down for 1 s
    alerts = cam.walk([4, 5, 6], lambda t: [lying])
    assert len(alerts) == 1 and alerts[0].evidence["lying_sec"] == 2.0 and alerts[0].evidence["by"] == "posture"
    never_stood = Camera(task_type="人员跌倒", fall_sec=0)
    assert never_stood.walk([0, 1, 2, 3], lambda t: [lying]) == []  # a lying shape with no fall seen: a bench
    labelled = Camera(task_type="人员跌倒", fall_sec=0)
    fallen = labelled.see(0, person(0.5, 0.8, label="fall")).alerts
    assert fallen[0].evidence["by"] == "label"


def test_off_post_alerts_after_absence_and_not_a_second_before() -> None:
    post = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]
    cam = Camera(task_type="人员离岗", region=post, absence_sec=10)
    assert cam.see(0, person(0.2, 0.8)).alerts == []
    assert cam.walk(seconds(1, 9), lambda t: [person(0.8, 0.8)]) == []  # someone, but off the post
    assert cam.see(10, person(0.2, 0.8)).alerts == []  # back one second before the threshold
    assert cam.walk(seconds(11, 19.5), lambda t: []) == []
    alerts = cam.walk(seconds(20, 30), lambda t: [])
    assert len(alerts) == 1 and alerts[0].frame.captured_at == T0 + 20_000
    assert alerts[0].evidence["absent_sec"] == 10.0


def test_smoking_needs_consecutive_frames() -> None:
    cam = Camera(task_type="吸烟检测", consecutive_frames=3, min_score=0.5)
    cig = thing("cigarette", 0.5, 0.5)
    assert cam.walk([0, 1], lambda t: [cig]) == []
    assert cam.see(2, thing("cigarette", 0.5, 0.5, score=0.4)).alerts == []  # below min_score breaks the run
    assert cam.walk([3, 4], lambda t: [cig]) == []
    alerts = cam.walk([5, 6], lambda t: [cig])
    assert len(alerts) == 1 and alerts[0].evidence["frames"] == 3 and alerts[0].rule == "smoking"


def test_loitering_dwell_survives_a_short_step_out_not_a_long_one() -> None:
    cam = Camera(task_type="徘徊检测", region=LOWER_HALF, dwell_sec=10, clear_sec=2, track_gap_sec=30)
    inside_at, outside_at = person(0.5, 0.6), person(0.5, 0.45)
    # in 0..6, out 7..10 (long: the dwell restarts), in 11..20: dwell reaches 10 s at t = 21
    path = {**{t: inside_at for t in range(7)}, **{t: outside_at for t in range(7, 11)},
            **{t: inside_at for t in range(11, 23)}}
    alerts = cam.walk(list(range(23)), lambda t: [path[int(t)]])
    assert [(a.frame.captured_at - T0, a.evidence["dwell_sec"]) for a in alerts] == [(21_000, 10.0)]
    brief = Camera(task_type="徘徊检测", region=LOWER_HALF, dwell_sec=10, clear_sec=2)
    path = {t: (outside_at if t == 5 else inside_at) for t in range(11)}  # a one-frame step out
    assert [a.evidence["dwell_sec"] for a in brief.walk(list(range(11)), lambda t: [path[int(t)]])] == [10.0]


def test_loitering_is_per_track() -> None:
    cam = Camera(task_type="徘徊检测", region=LOWER_HALF, dwell_sec=5)
    alerts = cam.walk(list(range(9)), lambda t: [person(0.2, 0.8)] + ([person(0.8, 0.8)] if t >= 3 else []))
    assert [(a.evidence["track_id"], a.frame.captured_at - T0) for a in alerts] == [("1", 5_000), ("2", 8_000)]


def test_object_left_alone_and_still() -> None:
    cam = Camera(task_type="物品遗留", stationary_sec=10, track_gap_sec=5)
    bag = thing("backpack", 0.5, 0.7)
    owner = person(0.52, 0.8)
    assert cam.walk(seconds(0, 12, 1), lambda t: [bag, owner]) == []  # still, but attended
    left = cam.walk(seconds(13, 20, 1), lambda t: [bag])  # the owner walks off: it has stood still since 0
    assert [(a.frame.captured_at - T0, a.evidence["still_sec"]) for a in left] == [(13_000, 13.0)]
    alone = Camera(task_type="物品遗留", stationary_sec=10)
    assert alone.walk(seconds(0, 9, 1), lambda t: [bag]) == []
    alerts = alone.walk(seconds(10, 15, 1), lambda t: [bag])
    assert len(alerts) == 1 and alerts[0].evidence["still_sec"] == 10.0 and alerts[0].rule == "object_left"
    moving = Camera(task_type="物品遗留", stationary_sec=5)  # carried around: never still
    assert moving.walk(seconds(0, 10, 1), lambda t: [thing("suitcase", 0.1 + 0.05 * t, 0.7)]) == []


def test_no_helmet_looks_for_a_helmet_on_the_head() -> None:
    cam = Camera(task_type="安全帽检测", cooldown_sec=0)
    worker = person(0.3, 0.9, height=0.4)  # head zone: y 0.5..0.6
    helmet_on = thing("helmet", 0.3, 0.53, size=0.04)
    helmet_in_hand = thing("helmet", 0.33, 0.75, size=0.04)
    assert cam.see(0, worker, helmet_on).alerts == []
    alerts = cam.see(1, worker, helmet_in_hand).alerts
    assert [a.rule for a in alerts] == ["no_helmet"] and alerts[0].evidence["label"] == "person"
    direct = Camera(task_type="安全帽检测")
    assert len(direct.see(0, thing("no_helmet", 0.5, 0.5)).alerts) == 1


# replays and determinism

def test_same_frames_give_the_same_alerts_and_ids() -> None:
    def run() -> list[str]:
        cam = Camera(task_type="徘徊检测", dwell_sec=3)
        return [a.alert_id for a in cam.walk(list(range(8)), lambda t: [person(0.2, 0.8), person(0.1 * t, 0.9)])]
    first = run()
    assert first == run() and len(first) == 2


def test_a_replayed_frame_sends_again_what_it_sent_and_changes_nothing() -> None:
    cam = Camera(region=LOWER_HALF)
    raised = cam.see(0, person(0.5, 0.8))
    cam.see(1, person(0.5, 0.8))
    before = cam.state.to_bytes()
    replay = cam.see(0, person(0.5, 0.8))
    assert replay.status is Status.REPLAYED and replay.alerts == raised.alerts
    assert cam.see(1, person(0.5, 0.8)).alerts == [] and cam.state.to_bytes() == before


@pytest.mark.parametrize("raw,named", [(b"\x00garbage", "not JSON"), (b'{"tracks": [{"id": 1}]}', "tracks.0.label")])
def test_an_unreadable_state_says_what_is_wrong(raw: bytes, named: str) -> None:
    with pytest.raises(StateUnreadable, match=named):
        RuleState.from_bytes(raw)


def test_a_late_frame_is_skipped() -> None:
    cam = Camera(region=LOWER_HALF)
    cam.see(2, person(0.5, 0.3))
    late = cam.see(1, person(0.5, 0.8))
    assert late.status is Status.LATE and late.alerts == [] and cam.state.seen == [T0 + 2_000]


def test_every_task_type_has_a_rule() -> None:
    for task_type in TaskType:
        settings: dict[str, Any] = {"line": [[0.5, 0.0], [0.5, 1.0]]} if task_type is TaskType.LINE_CROSSING else {}
        assert Camera(task_type=task_type.value, **settings).see(0, person(0.5, 0.8)).status is Status.EVALUATED
