"""A task's zone changed through the API (the dashboard's zone editor): validated as `framewatch tasks update`
validates it, written to fw.tasks, answered with the task; refused naming the field, unknown tasks 404, no token
401."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from framewatch.ops.load import Fleet, start_fleet
from framewatch.ops.tasks import add_task, current_tasks
from framewatch.schemas.events import TaskOrigin
from framewatch.schemas.queries import MAX_ZONE_POINTS, BadQuery, ZoneBody, parse_body, task_json
from framewatch.schemas.tasks import BadTask, CameraTask, TaskType, changed

TOKEN = "t0ken-" + uuid.uuid4().hex
ALICE = "alice-" + uuid.uuid4().hex
AREA, LINE = "zone-area", "zone-line"
SECRET_URL = "rtsp://admin:hunter2@10.0.0.7/stream"
BOW_TIE: list[list[float]] = [[0, 0], [1, 1], [1, 0], [0, 1]]  # its first and third edges cross
LOWER_HALF: list[list[float]] = [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]


# -- without the stack ----------------------------------------------------------------------------------------------


def area_task() -> CameraTask:
    return CameraTask(id=AREA, task_type=TaskType.AREA_INTRUSION, rtsp_url=SECRET_URL, cooldown_sec=3)


def test_a_zone_body_gives_the_fields_it_names_a_null_among_them() -> None:
    assert parse_body(ZoneBody, b'{"region": null}').changes() == {"region": None}
    assert parse_body(ZoneBody, b'{"line": [[0.5, 0], [0.5, 1]], "line_direction": "in"}').changes() == {
        "line": [[0.5, 0], [0.5, 1]], "line_direction": "in"}


@pytest.mark.parametrize("body,named", [
    (b"{}", "give region"), (b'{"cooldown_sec": 0}', "cooldown_sec"), (b"[]", "body"), (b"not json", "body"),
    (b'{"region": "lower half"}', "region"), (f'{{"region": {[[0, 0]] * (MAX_ZONE_POINTS + 1)}}}'.encode(), "region"),
])
def test_a_bad_zone_body_is_refused_naming_the_field(body: bytes, named: str) -> None:
    with pytest.raises(BadQuery, match=named):
        parse_body(ZoneBody, body).changes()


def test_a_change_is_validated_with_the_whole_task_as_tasks_update_validates_it() -> None:
    task = area_task()
    assert changed(task, {"region": LOWER_HALF}) == task.model_copy(
        update={"region": [tuple(p) for p in LOWER_HALF]})
    with pytest.raises(BadTask, match="task 'zone-area': region: the region crosses itself: edge 0-1 crosses edge 2-3"):
        changed(task, {"region": BOW_TIE})
    with pytest.raises(BadTask, match="region: .*normalised"):
        changed(task, {"region": [[0, 0], [2, 0], [0, 1]]})
    with pytest.raises(BadTask, match="line_direction"):
        changed(task, {"line_direction": "sideways"})
    with pytest.raises(BadTask, match="id cannot change"):
        changed(task, {"id": "other"})


def test_a_task_is_shown_with_its_camera_credentials_masked() -> None:
    shown = task_json(area_task())
    assert "hunter2" not in shown["rtsp_url"] and shown["id"] == AREA and shown["region"] is None


# -- a running worker -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str]) -> Iterator[Fleet]:
    """A worker; its tasks are on fw.tasks, as `framewatch tasks add` puts them (no extractor runs them)."""
    with start_fleet(tmp_path_factory.mktemp("zones"), stack_env, 1, f'[framewatch.api_tokens]\nalice = "{ALICE}"\n',
                     latency_ms=10, extra_env={"FRAMEWATCH_API_TOKEN": TOKEN}) as fleet:
        config = fleet.run.config
        asyncio.run(add_task(config, area_task().model_dump(exclude_unset=True)))
        asyncio.run(add_task(config, {"id": LINE, "task_type": "line_crossing", "rtsp_url": SECRET_URL,
                                      "line": [[0.3, 0], [0.3, 1]]}))
        deadline = time.monotonic() + 15
        while call(fleet, "GET", f"/api/tasks/{LINE}").status_code != 200:  # the worker follows fw.tasks
            assert time.monotonic() < deadline, "the worker never saw the tasks on fw.tasks"
            time.sleep(0.2)
        yield fleet


def call(fleet: Fleet, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"http://127.0.0.1:{fleet.run.config.framewatch.worker_web_port}{path}",
                         json=body, headers=headers, timeout=20)


def on_fw_tasks(fleet: Fleet, task_id: str) -> tuple[CameraTask | None, TaskOrigin]:
    event = asyncio.run(current_tasks(fleet.run.config))[task_id]
    return event.task, event.origin


def test_a_region_saved_is_on_fw_tasks_and_answered_by_get(fleet: Fleet) -> None:
    saved = call(fleet, "PUT", f"/api/tasks/{AREA}/zone", {"region": LOWER_HALF}, token=ALICE)
    assert saved.status_code == 200, saved.text
    assert saved.json()["region"] == LOWER_HALF and saved.json()["cooldown_sec"] == 3  # the rest as it was
    task, origin = on_fw_tasks(fleet, AREA)
    assert task is not None and task.region == [tuple(p) for p in LOWER_HALF] and origin is TaskOrigin.COMMAND
    shown = call(fleet, "GET", f"/api/tasks/{AREA}").json()  # this worker's view has caught up with its write
    assert shown == saved.json() and "hunter2" not in shown["rtsp_url"]
    assert f"task {AREA}: zone changed by alice" in fleet.run.processes[-1].log_path.read_text()


def test_a_line_and_its_direction_saved(fleet: Fleet) -> None:
    saved = call(fleet, "PUT", f"/api/tasks/{LINE}/zone", {"line": [[0.6, 0], [0.4, 1]], "line_direction": "in"})
    assert saved.status_code == 200, saved.text
    assert (saved.json()["line"], saved.json()["line_direction"]) == ([[0.6, 0], [0.4, 1]], "in")
    task, _ = on_fw_tasks(fleet, LINE)
    assert task is not None and task.line == ((0.6, 0), (0.4, 1)) and task.line_direction == "in"


@pytest.mark.parametrize("task_id,body,named", [
    (AREA, {"region": BOW_TIE}, "region: the region crosses itself"),
    (AREA, {"region": [[0, 0], [1, 0]]}, "region: a region needs at least 3 points"),
    (LINE, {"line": None}, "line: a line_crossing task needs a line"),
    (LINE, {"line_direction": "sideways"}, "line_direction"),
    (AREA, {"cooldown_sec": 0}, "cooldown_sec"),
])
def test_a_bad_zone_gets_400_naming_the_field_and_nothing_is_written(fleet: Fleet, task_id: str,
                                                                     body: dict[str, Any], named: str) -> None:
    before = on_fw_tasks(fleet, task_id)
    refused = call(fleet, "PUT", f"/api/tasks/{task_id}/zone", body)
    assert refused.status_code == 400 and named in refused.json()["error"], refused.text
    assert on_fw_tasks(fleet, task_id) == before


def test_an_unknown_task_gets_404_and_a_missing_or_wrong_token_401(fleet: Fleet) -> None:
    for method, suffix, body in (("GET", "", None), ("PUT", "/zone", {"region": LOWER_HALF})):
        unknown = call(fleet, method, f"/api/tasks/no-such-task{suffix}", body)
        assert unknown.status_code == 404 and "no-such-task" in unknown.json()["error"]
        for token in (None, "wrong"):
            assert call(fleet, method, f"/api/tasks/{AREA}{suffix}", body, token=token).status_code == 401
