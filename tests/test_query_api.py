"""The query API on a running worker: filters, cursor pagination, validation, bearer auth, presigned images."""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cv2
import httpx
import numpy as np
import pytest

from framewatch.ops.load import Fleet, FrameLoad, start_fleet
from framewatch.schemas.tasks import TaskType
from tests.browser import dump_dom, screenshot
from tests.conftest import SAMPLE_JPEG
from tests.test_alert_path import settle_stored

TOKEN = "t0ken-" + uuid.uuid4().hex
INDIA = "Asia/Kolkata"  # 5:30 ahead of UTC: its local times differ from this machine's in any zone of whole hours


def tasks(prefix: str, task_type: str) -> str:
    return "".join(f'[[frame_extractor.tasks]]\nid = "{prefix}-{i:03d}"\ntask_type = "{task_type}"\n'
                   f'rtsp_url = "unused"\ncooldown_sec = 0\n' for i in range(3))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str]) -> Iterator[tuple[Fleet, str]]:
    prefix = "q" + uuid.uuid4().hex[:6]
    config = tasks(f"{prefix}a", "area_intrusion") + tasks(f"{prefix}p", "people_counting")
    with start_fleet(tmp_path_factory.mktemp("api"), stack_env, 2, config, latency_ms=10, people=1,
                     extra_env={"FRAMEWATCH_API_TOKEN": TOKEN}) as fleet:
        async def load() -> None:
            runs = [FrameLoad(fleet.run.config, 3, 2, prefix=f"{prefix}a", image=SAMPLE_JPEG),
                    FrameLoad(fleet.run.config, 3, 2, prefix=f"{prefix}p", image=SAMPLE_JPEG,
                              task_type=TaskType.PEOPLE_COUNTING)]
            intrusion, _ = await asyncio.gather(*(r.run(duration_s=5) for r in runs))
            # every intrusion frame holds new people (a new incident each); the count stays above the threshold,
            # one incident per counting camera
            await settle_stored(fleet.run.config, prefix, intrusion + 3)

        asyncio.run(load())
        yield fleet, prefix


def get(fleet: Fleet, path: str, token: str | None = TOKEN, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    port = fleet.run.config.framewatch.worker_web_port
    return httpx.get(f"http://127.0.0.1:{port}{path}", params=params, headers=headers, timeout=10)


def all_pages(fleet: Fleet, **params: Any) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = get(fleet, "/api/alerts", **params, **({"cursor": cursor} if cursor else {})).json()
        alerts.extend(page["alerts"])
        if (cursor := page["next_cursor"]) is None:
            return alerts


def test_pages_cover_every_alert_once_newest_first(api: tuple[Fleet, str]) -> None:
    fleet, prefix = api
    alerts = [a for a in all_pages(fleet, limit=7) if a["camera_id"].startswith(prefix)]
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids)) == 33  # 3 cameras x 2 frames/s x 5 s, each frame an alert; 3 counting
    times = [a["captured_at"] for a in alerts]
    assert times == sorted(times, reverse=True)


def test_filters_select_what_they_name(api: tuple[Fleet, str]) -> None:
    fleet, prefix = api
    camera = f"{prefix}a-001"
    by_camera = all_pages(fleet, camera_id=camera)
    assert len(by_camera) == 10 and {a["camera_id"] for a in by_camera} == {camera}
    counting = all_pages(fleet, task_type="人数统计")
    assert {a["task_type"] for a in counting} == {"people_counting"} and len(counting) >= 3
    rule = by_camera[0]["rule"]
    assert {a["rule"] for a in all_pages(fleet, rule=rule)} == {rule}
    middle = sorted(a["captured_at"] for a in by_camera)[5]
    newer = all_pages(fleet, camera_id=camera, since=middle)
    older = all_pages(fleet, camera_id=camera, until=middle)
    assert (len(newer), len(older)) == (5, 5)


def test_one_alert_and_its_presigned_image(api: tuple[Fleet, str]) -> None:
    fleet, prefix = api
    listed = get(fleet, "/api/alerts", camera_id=f"{prefix}p-000", limit=1).json()["alerts"][0]
    alert = get(fleet, f"/api/alerts/{listed['alert_id']}").json()
    assert alert["alert_id"] == listed["alert_id"] and alert["evidence"]["count"] == 1
    image = httpx.get(alert["image_url"], timeout=10)
    assert image.status_code == 200 and image.content == SAMPLE_JPEG
    assert get(fleet, f"/api/alerts/{uuid.uuid4()}").status_code == 404


def test_cameras_lists_configured_and_seen_cameras(api: tuple[Fleet, str]) -> None:
    fleet, prefix = api
    cameras = {c["camera_id"]: c for c in get(fleet, "/api/cameras").json()["cameras"]}
    camera = cameras[f"{prefix}a-002"]
    assert camera["alerts"] == 10 and camera["frames"] == 10 and camera["task_type"] == "area_intrusion"
    assert camera["open_incidents"] >= 1  # the person is still there: no frame after the last closed anything


@pytest.mark.parametrize("params,named", [
    ({"limit": "0"}, "limit"), ({"limit": "many"}, "limit"), ({"since": "yesterday"}, "since"),
    ({"task_type": "juggling"}, "task_type"), ({"cursor": "not-a-cursor"}, "cursor"), ({"colour": "red"}, "colour"),
])
def test_bad_parameters_get_400_naming_them(api: tuple[Fleet, str], params: dict[str, str], named: str) -> None:
    answer = get(api[0], "/api/alerts", **params)
    assert answer.status_code == 400 and named in answer.json()["error"]


def test_counts_want_a_task_and_valid_times(api: tuple[Fleet, str]) -> None:
    assert "task_id: Field required" in get(api[0], "/api/counts").json()["error"]
    assert "since" in get(api[0], "/api/counts", task_id="x", since="yesterday").json()["error"]
    assert get(api[0], "/api/counts", task_id="no-such-task").json() == {"counts": []}


def test_a_bad_alert_id_gets_400(api: tuple[Fleet, str]) -> None:
    answer = get(api[0], "/api/alerts/not-a-uuid")
    assert answer.status_code == 400 and "not-a-uuid" in answer.json()["error"]


@pytest.mark.parametrize("path", ["/api/alerts", "/api/cameras", "/api/stats", "/api/services", "/api/counts"])
def test_the_api_wants_the_token(api: tuple[Fleet, str], path: str) -> None:
    params = {"task_id": "x"} if path == "/api/counts" else {}
    assert get(api[0], path, token=None, **params).status_code == 401
    assert get(api[0], path, token="wrong", **params).status_code == 401
    assert get(api[0], path, **params).status_code == 200


def test_an_alert_image_has_a_stable_address_redirecting_to_a_fresh_presigned_url(api: tuple[Fleet, str]) -> None:
    fleet, prefix = api
    (alert,) = get(fleet, "/api/alerts", limit=1, camera_id=f"{prefix}a-000").json()["alerts"]
    redirect = get(fleet, f"/api/alerts/{alert['alert_id']}/image")
    assert redirect.status_code == 302 and "X-Amz-Signature=" in redirect.headers["location"]
    assert httpx.get(redirect.headers["location"], timeout=10).content == SAMPLE_JPEG
    assert get(fleet, f"/api/alerts/{alert['alert_id']}/image", token=None).status_code == 401
    assert get(fleet, f"/api/alerts/{uuid.uuid4()}/image").status_code == 404


def test_probes_answer_without_the_token_and_name_each_check(api: tuple[Fleet, str]) -> None:
    assert get(api[0], "/healthz", token=None).json() == {"alive": True}
    ready = get(api[0], "/readyz", token=None)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "assigned": True, "recovered": True, "database": True,
                            "object_store": True}
    stats = get(api[0], "/api/stats").json()
    assert stats["alerts_stored"] > 0 and stats["frames_evaluated"] >= stats["alerts_raised"] > 0


def alert_ids(dom: str) -> list[str]:
    return re.findall(r'data-alert-id="([0-9a-f-]+)"', dom)


def test_dashboard_shows_the_alerts_and_their_images_in_chromium(api: tuple[Fleet, str], tmp_path: Path) -> None:
    fleet, prefix = api
    camera = f"{prefix}a-000"
    port = fleet.run.config.framewatch.worker_web_port
    newest = {a["alert_id"] for a in get(fleet, "/api/alerts", limit=24, camera_id=camera).json()["alerts"]}
    page = dump_dom(f"http://127.0.0.1:{port}/?token={TOKEN}&camera_id={camera}", tmp_path)
    shown = set(alert_ids(page))
    loaded = re.findall(r'<img [^>]*data-loaded="(\d)"', page)
    assert shown == newest and len(shown) == 10  # the page's filters come from its URL too
    assert loaded == ["1"] * 10  # every image fetched from its presigned URL
    assert f"<td>{camera}</td>" in page
    drawn = re.findall(r'class="frame" data-boxes="(\d+)"', page)
    assert len(drawn) == 10 and all(int(n) >= 1 for n in drawn), "each intrusion's box drawn over its image"
    assert re.search(r'<span>person( [0-9.]+)?</span>', page), "with its label"
    charts = re.search(r'<div id="counts">.*?</div>', page, flags=re.S)
    assert f'data-task="{prefix}p-000"' in page, f"a counts chart per counting task: {charts and charts[0]}"

    shot = tmp_path / "dashboard.png"
    screenshot(f"http://127.0.0.1:{port}/?token={TOKEN}&camera_id={camera}", tmp_path, shot)
    pixels = cv2.imread(str(shot))
    assert pixels is not None, "chromium wrote no screenshot"
    box_colour = np.all(np.abs(pixels.astype(int) - (85, 45, 255)) <= 12, axis=2)  # #ff2d55, in BGR
    assert box_colour.sum() > 500, f"the boxes are on the screenshot ({box_colour.sum()} pixels of their colour)"


def test_dashboard_shows_local_times_and_pages_back_to_older_alerts_in_chromium(api: tuple[Fleet, str],
                                                                                tmp_path: Path) -> None:
    fleet, prefix = api
    camera = f"{prefix}a-001"
    origin = f"http://127.0.0.1:{fleet.run.config.framewatch.worker_web_port}/"
    newest_first = all_pages(fleet, camera_id=camera)
    first = dump_dom(f"{origin}?token={TOKEN}&camera_id={camera}&limit=4", tmp_path, time_zone=INDIA)
    assert alert_ids(first) == [a["alert_id"] for a in newest_first[:4]]
    captured_at = newest_first[0]["captured_at"]
    local = datetime.fromisoformat(captured_at).astimezone(ZoneInfo(INDIA)).strftime("%Y-%m-%d %H:%M:%S")
    assert re.search(rf'<time datetime="{re.escape(captured_at)}"[^>]*>{local} \((just now|\d+ (s|min|h|d) ago)\)'
                     rf'</time>', first), f"{captured_at} as India's local time, {local}, with its age"

    older = re.search(r'<a id="older" href="([^"]+)"', first)
    assert older, "a link to the older alerts"
    second = dump_dom(f"{origin}{html.unescape(older[1])}&token={TOKEN}", tmp_path)  # what a click loads
    assert alert_ids(second) == [a["alert_id"] for a in newest_first[4:8]]
    assert re.search(r'<a id="newest" href="[^"]+">', second), "and back to the newest"


def listening_addresses(pid: int) -> set[str]:
    """host:port of every TCP socket the process listens on (from /proc: its socket inodes, then the tables)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                if width == 8:
                    host = ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    host = "::1" if address == "0" * 24 + "01000000" else ("::" if set(address) == {"0"} else address)
                found.add(f"{host}:{int(port, 16)}")
    return found


def test_by_default_the_worker_and_the_services_listen_on_loopback_only(api: tuple[Fleet, str]) -> None:
    fleet, _ = api
    for process in fleet.run.processes:  # the algorithm services' process, then the worker
        listening = listening_addresses(process.process.pid)
        assert listening, f"the {process.name} listens somewhere"
        assert all(address.split(":")[0] in ("127.0.0.1", "::1") for address in listening), (process.name, listening)


@pytest.mark.parametrize("path", ["/router/", "/table/", "/graph/", "/stats/"])
def test_fausts_own_pages_are_off(api: tuple[Fleet, str], path: str) -> None:
    fleet, _ = api
    assert get(fleet, path, token=None).status_code == 404
