"""The rows of /api/cameras from their five sources and the cameras' stills, without HTTP: which source wins, what
is absent, the ages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from framewatch.agents.api.cameras import Snapshot, camera_rows
from framewatch.agents.inference.scheduler import CameraSeen
from framewatch.schemas.events import CameraState, CameraStatus, OpenIncidents
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
           alert_groups: Iterable[Mapping[str, Any]] = (),
           snapshots: Mapping[str, Snapshot] | None = None,
           incidents: Mapping[str, OpenIncidents] | None = None) -> list[dict[str, Any]]:
    rows = camera_rows(configured=configured, published=published or {}, statuses=statuses or {},
                       activity=activity or {}, alert_groups=alert_groups, snapshots=snapshots or {},
                       incidents=incidents or {}, now_ms=NOW_MS, now_monotonic_s=NOW_MONOTONIC_S)
    return [camera_json(row) for row in rows]


def test_a_camera_every_source_knows_has_every_field() -> None:
    seen = CameraSeen("door", frames=10, inferred=9, last_captured_at=int(NOW_MS) - 9_000, freshness=Freshness.ALL,
                      last_seen=NOW_MONOTONIC_S - 1.25)
    incidents = OpenIncidents(camera_id="door", task_id="door", open=2, at=int(NOW_MS) - 5_000)
    assert answer(configured=[task("door")], statuses={"door": status("door", int(NOW_MS) - 3_000)},
                  activity={"door": seen}, alert_groups=[group("door", 4, MONDAY)],
                  incidents={"door": incidents, "gone": incidents.model_copy(update={"camera_id": "gone"})}) == [{
        "camera_id": "door", "task_type": "area_intrusion", "enabled": True, "alerts": 4,
        "state": "streaming", "extractor": "x-1", "fps_in": 25.0, "fps_out": 5.0, "interval_ms": 200,
        "reconnects": 2, "last_error": "", "status_age_s": 3.0, "clock_skew_s": None,
        "frames": 10, "inferred": 9, "freshness": "all", "last_frame_age_s": 1.2,
        "last_alert_at": "2024-01-01T08:00:00+00:00", "open_incidents": 2, "snapshot_url": None,
        "snapshot_age_s": None}]  # a camera fw.incidents alone names has no row


def test_what_no_source_knows_of_a_camera_is_absent_not_null() -> None:
    only_status, only_seen = answer(statuses={"gate": status("gate", int(NOW_MS))},
                                    activity={"yard": CameraSeen("yard", last_captured_at=int(NOW_MS))})
    still = {"snapshot_url", "snapshot_age_s"}  # always there, null without a still: the dashboard's <img> src
    assert set(only_status) == {"camera_id", "alerts", "state", "extractor", "fps_in", "fps_out", "interval_ms",
                                "reconnects", "last_error", "status_age_s", "clock_skew_s", *still}
    assert set(only_seen) == {"camera_id", "alerts", "frames", "inferred", "freshness", "last_frame_age_s", *still}
    assert only_status["alerts"] == only_seen["alerts"] == 0  # the dashboard tells a configured camera by `enabled`


def test_a_task_on_fw_tasks_wins_over_the_config() -> None:
    (row,) = answer(configured=[task("door")],
                    published={"door": task("door", TaskType.LOITERING, enabled=False)})
    assert row == {"camera_id": "door", "task_type": "loitering", "enabled": False, "alerts": 0,
                   "snapshot_url": None, "snapshot_age_s": None}


def test_alert_groups_add_up_per_camera_and_their_task_type_wins() -> None:
    (row,) = answer(configured=[task("door")], alert_groups=[group("door", 3, TUESDAY, "people_counting"),
                                                             group("door", 4, MONDAY, "loitering")])
    assert row == {"camera_id": "door", "task_type": "loitering", "enabled": True, "alerts": 7,  # the type and time
                   "last_alert_at": "2024-01-01T08:00:00+00:00",  # of the last group listed
                   "snapshot_url": None, "snapshot_age_s": None}


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


def still(age_s: float) -> Snapshot:
    return Snapshot(f"http://store/still-{age_s}", datetime.fromtimestamp(NOW_MS / 1000 - age_s, tz=UTC))


def test_a_still_gives_its_cameras_row_a_url_and_an_age_never_negative() -> None:
    door, gate = answer(configured=[task("door"), task("gate")],
                        snapshots={"door": still(4.26), "gate": still(-2.0)})  # the store's clock 2 s ahead
    assert (door["snapshot_url"], door["snapshot_age_s"]) == ("http://store/still-4.26", 4.3)
    assert (gate["snapshot_url"], gate["snapshot_age_s"]) == ("http://store/still--2.0", 0.0)


def test_a_still_alone_makes_no_row() -> None:
    """A still outlives its camera by up to a day (the sweep deletes it then): a camera no other source knows is
    gone."""
    assert [row["camera_id"] for row in answer(configured=[task("door")], snapshots={"gone": still(60)})] == ["door"]
