"""The rows of /api/cameras from their five sources, without HTTP: which source wins, what is absent, the ages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from framewatch.agents.api.cameras import camera_rows
from framewatch.agents.inference.scheduler import CameraSeen
from framewatch.schemas.events import CameraState, CameraStatus
from framewatch.schemas.queries import camera_json
from framewatch.schemas.tasks import CameraTask, Freshness, TaskType

NOW_MS = 1_700_000_100_000.0
NOW_MONOTONIC_S = 5_000.0  # the clock CameraSeen.last_seen is on
MONDAY = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
TUESDAY = datetime(2024, 1, 2, 8, 0, tzinfo=UTC)


def task(camera_id: str, task_type: TaskType = TaskType.AREA_INTRUSION, enabled: bool = True) -> CameraTask:
    return CameraTask(id=camera_id, task_type=task_type, rtsp_url="unused", enabled=enabled)


def status(camera_id: str, emitted_at: int, clock_skew_ms: int | None = None) -> CameraStatus:
    return CameraStatus(camera_id=camera_id, extractor="x-1", state=CameraState.STREAMING, fps_in=25.0, fps_out=5.0,
                        interval_ms=200, reconnects=2, last_error="", emitted_at=emitted_at,
                        clock_skew_ms=clock_skew_ms)


def group(camera_id: str, alerts: int, last_alert_at: datetime, task_type: str = "area_intrusion") -> dict[str, Any]:
    """One row of the alert store's count per (camera, task, task type)."""
    return {"camera_id": camera_id, "task_id": camera_id, "task_type": task_type, "alerts": alerts,
            "last_alert_at": last_alert_at}


def answer(configured: Iterable[CameraTask] = (), published: Mapping[str, CameraTask] | None = None,
           statuses: Mapping[str, CameraStatus] | None = None, activity: Mapping[str, CameraSeen] | None = None,
           alert_groups: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    rows = camera_rows(configured=configured, published=published or {}, statuses=statuses or {},
                       activity=activity or {}, alert_groups=alert_groups, now_ms=NOW_MS,
                       now_monotonic_s=NOW_MONOTONIC_S)
    return [camera_json(row) for row in rows]


def test_a_camera_every_source_knows_has_every_field() -> None:
    seen = CameraSeen("door", frames=10, inferred=9, last_captured_at=int(NOW_MS) - 9_000, freshness=Freshness.ALL,
                      last_seen=NOW_MONOTONIC_S - 1.25)
    assert answer(configured=[task("door")], statuses={"door": status("door", int(NOW_MS) - 3_000)},
                  activity={"door": seen}, alert_groups=[group("door", 4, MONDAY)]) == [{
        "camera_id": "door", "task_type": "area_intrusion", "enabled": True, "alerts": 4,
        "state": "streaming", "extractor": "x-1", "fps_in": 25.0, "fps_out": 5.0, "interval_ms": 200,
        "reconnects": 2, "last_error": "", "status_age_s": 3.0, "clock_skew_s": None,
        "frames": 10, "inferred": 9, "freshness": "all", "last_frame_age_s": 1.2,
        "last_alert_at": "2024-01-01T08:00:00+00:00"}]


def test_what_no_source_knows_of_a_camera_is_absent_not_null() -> None:
    only_status, only_seen = answer(statuses={"gate": status("gate", int(NOW_MS))},
                                    activity={"yard": CameraSeen("yard", last_captured_at=int(NOW_MS))})
    assert set(only_status) == {"camera_id", "alerts", "state", "extractor", "fps_in", "fps_out", "interval_ms",
                                "reconnects", "last_error", "status_age_s", "clock_skew_s"}
    assert set(only_seen) == {"camera_id", "alerts", "frames", "inferred", "freshness", "last_frame_age_s"}
    assert only_status["alerts"] == only_seen["alerts"] == 0  # the dashboard tells a configured camera by `enabled`


def test_a_task_on_fw_tasks_wins_over_the_config() -> None:
    (row,) = answer(configured=[task("door")],
                    published={"door": task("door", TaskType.LOITERING, enabled=False)})
    assert row == {"camera_id": "door", "task_type": "loitering", "enabled": False, "alerts": 0}


def test_alert_groups_add_up_per_camera_and_their_task_type_wins() -> None:
    (row,) = answer(configured=[task("door")], alert_groups=[group("door", 3, TUESDAY, "people_counting"),
                                                             group("door", 4, MONDAY, "loitering")])
    assert row == {"camera_id": "door", "task_type": "loitering", "enabled": True, "alerts": 7,
                   "last_alert_at": "2024-01-01T08:00:00+00:00"}  # the type and time of the last group listed


def test_the_status_age_is_on_the_brokers_clock_and_the_skew_in_seconds() -> None:
    ahead = status("door", emitted_at=int(NOW_MS) + 1_500, clock_skew_ms=2_000)  # its clock 2 s ahead
    (row,) = answer(statuses={"door": ahead})
    assert (row["status_age_s"], row["clock_skew_s"]) == (0.5, 2.0)


def test_every_camera_any_source_knows_has_one_row_in_camera_order() -> None:
    rows = answer(configured=[task("d")], published={"c": task("c")}, statuses={"b": status("b", int(NOW_MS))},
                  activity={"e": CameraSeen("e")}, alert_groups=[group("a", 1, MONDAY), group("d", 1, MONDAY)])
    assert [row["camera_id"] for row in rows] == ["a", "b", "c", "d", "e"]


def test_ages_count_from_arrival_and_are_never_negative() -> None:
    """A recording read faster than real time is captured 13.2 s "from now": its frame's age is since it arrived."""
    ahead = CameraSeen("recording", frames=40, last_captured_at=int(NOW_MS) + 13_200, freshness=Freshness.ALL,
                       last_seen=NOW_MONOTONIC_S - 0.4)
    sent_later = status("recording", emitted_at=int(NOW_MS) + 3_000)  # a status from a clock ahead, no skew known
    (row,) = answer(statuses={"recording": sent_later}, activity={"recording": ahead})
    assert (row["last_frame_age_s"], row["status_age_s"]) == (0.4, 0.0)
