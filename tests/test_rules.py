from __future__ import annotations

from framewatch.agents.rules import alert_image_key, evaluate, inside
from framewatch.schemas.config import CameraTask, TaskType
from framewatch.schemas.events import Detection, DetectionEvent
from tests.test_events import frame

LOWER_HALF = [(0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)]


def person(x: float, y2: float, score: float = 0.9) -> Detection:
    return Detection(label="person", score=score, box=(x, y2 - 0.2, x + 0.1, y2))


def detections(*found: Detection, captured_at: int = 1_700_000_000_000) -> DetectionEvent:
    return DetectionEvent(frame=frame(captured_at=captured_at), service_id="s", inference_ms=1, detections=list(found))


def task(**kw: object) -> CameraTask:
    return CameraTask.model_validate({"id": "cam", "task_type": "区域入侵", "rtsp_url": "x", "region": LOWER_HALF,
                                      "cooldown_sec": 5, **kw})


def test_point_in_polygon() -> None:
    assert inside((0.5, 0.75), LOWER_HALF) and not inside((0.5, 0.25), LOWER_HALF)


def test_intrusion_uses_the_feet_of_the_box() -> None:
    assert evaluate(task(), detections(person(0.2, 0.45)), None, "alerts") is None
    alert = evaluate(task(), detections(person(0.2, 0.45), person(0.5, 0.8)), None, "alerts")
    assert alert is not None and alert.evidence["count"] == 1 and alert.rule == "area_intrusion"


def test_labels_and_min_score_filter() -> None:
    cat = Detection(label="cat", score=0.99, box=(0.1, 0.6, 0.2, 0.9))
    assert evaluate(task(), detections(cat), None, "alerts") is None
    assert evaluate(task(min_score=0.95), detections(person(0.5, 0.8, score=0.9)), None, "alerts") is None


def test_cooldown_on_capture_time() -> None:
    t0 = 1_700_000_000_000
    assert evaluate(task(), detections(person(0.5, 0.8), captured_at=t0 + 4_999), t0, "alerts") is None
    assert evaluate(task(), detections(person(0.5, 0.8), captured_at=t0 + 5_000), t0, "alerts") is not None


def test_people_counting_threshold() -> None:
    counting = task(task_type=TaskType.PEOPLE_COUNTING, alert_threshold=2, region=None)
    assert evaluate(counting, detections(person(0.1, 0.3)), None, "alerts") is None
    alert = evaluate(counting, detections(person(0.1, 0.3), person(0.5, 0.9)), None, "alerts")
    assert alert is not None and alert.rule == "people_count_above" and alert.evidence["count"] == 2


def test_same_frame_same_alert_id() -> None:
    one = evaluate(task(), detections(person(0.5, 0.8)), None, "alerts")
    two = evaluate(task(), detections(person(0.5, 0.8)), None, "alerts")
    assert one is not None and two is not None and one.alert_id == two.alert_id


def test_alert_key_moves_frames_to_alerts() -> None:
    key = alert_image_key("base/frames/cam/20231114/1700000000000-000000.jpg", "alerts", task(), 1_700_000_000_000)
    assert key == "base/alerts/cam/20231114/1700000000000-000000.jpg"
