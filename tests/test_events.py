from __future__ import annotations

import orjson
import pytest

from framewatch.schemas.events import (
    ALL_EVENTS,
    AlertEvent,
    DecodeError,
    Detection,
    DetectionEvent,
    FrameEvent,
    FrameOutcome,
    Outcome,
    TaskEvent,
    json_schemas,
)
from framewatch.schemas.tasks import TaskType


def frame(seq: int = 0, captured_at: int = 1_700_000_000_000) -> FrameEvent:
    return FrameEvent(frame_id=FrameEvent.make_id("cam", captured_at, seq), task_id="cam", camera_id="cam",
                      task_type=TaskType.AREA_INTRUSION, seq=seq, captured_at=captured_at, bucket="b",
                      object_key=f"frames/cam/20231114/{captured_at}-{seq:06d}.jpg", width=768, height=576)


def test_round_trip_keeps_every_field() -> None:
    event = DetectionEvent(frame=frame(), service_id="s", inference_ms=12.5,
                           detections=[Detection(label="person", score=0.9, box=(0.1, 0.2, 0.3, 0.4))])
    assert DetectionEvent.decode(event.to_bytes()) == event
    assert orjson.loads(event.to_bytes())["schema_version"] == 1


def test_fields_added_after_the_first_release_are_written_only_when_set() -> None:
    """A worker of an earlier release (records forbid unknown keys) reads a detection whose service reported no
    model, and a task record without a candidate, during an upgrade."""
    detection = DetectionEvent(frame=frame(), service_id="s", inference_ms=1.0, detections=[])
    assert "model" not in orjson.loads(detection.to_bytes()) and DetectionEvent.decode(detection.to_bytes()) == detection
    reported = detection.model_copy(update={"model": "yolov8n"})
    assert orjson.loads(reported.to_bytes())["model"] == "yolov8n"
    tasks = TaskEvent(task_id="cam", task=None)
    assert set(orjson.loads(tasks.to_bytes())) == {"schema_version", "emitted_at", "task_id", "task", "origin"}


def test_ids_are_deterministic() -> None:
    assert frame().frame_id == frame().frame_id != frame(seq=1).frame_id
    a = AlertEvent.make_id(frame().frame_id, "area_intrusion")
    assert a == AlertEvent.make_id(frame().frame_id, "area_intrusion") != AlertEvent.make_id(frame().frame_id, "x")


@pytest.mark.parametrize("raw,needle", [
    (b"not json", "not JSON"),
    (b'{"frame": 1}', "frame"),
    (None, "empty record"),
])
def test_decode_errors_name_the_problem(raw: bytes | None, needle: str) -> None:
    with pytest.raises(DecodeError, match=needle):
        FrameOutcome.decode(raw)


def test_unknown_schema_version_is_rejected() -> None:
    data = orjson.loads(FrameOutcome(frame=frame(), outcome=Outcome.NO_ALERT).to_bytes())
    data["schema_version"] = 2
    with pytest.raises(DecodeError, match="schema_version"):
        FrameOutcome.decode(orjson.dumps(data))


def test_json_schema_for_every_record() -> None:
    schemas = json_schemas()
    assert set(schemas) == {e.__name__ for e in ALL_EVENTS}
    assert {"frame_id", "captured_at", "emitted_at", "schema_version"} <= set(schemas["FrameEvent"]["properties"])
    assert "alert_id" in schemas["AlertEvent"]["required"]
