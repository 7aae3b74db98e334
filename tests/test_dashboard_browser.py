"""The dashboard driven as an operator drives it: Debian's Chromium through Debian's chromedriver (Selenium), against
one real worker, one real extractor and the local stack for the whole module. A click marks an alert false and the
precision on the page changes; a missed event added through the form is counted; a region drawn with the mouse over
the camera's still is saved to fw.tasks, answered by the API and used for the next frames; a region that crosses
itself is refused with the field named beside the editor and nothing is written; the live view shows each camera's
still (or says it has none), state, fps and last error.

Three cameras: `reviewed` is fed frames directly (a known number of alerts to judge) and its extractor cannot open
it; `zoned` (area intrusion) and `lined` (line crossing) are the sample clip, looped, read by the extractor, which
keeps their stills. The fake detector sees one person at the left edge of every frame, a new one each frame: with no
region, every frame of `zoned` alerts; no track lives two frames, so none crosses `lined`'s line.

With FRAMEWATCH_SCREENSHOTS=1 the tests also save the screenshots the README shows (docs/dashboard-review.png,
docs/dashboard-live.png, docs/dashboard-zone.png); without it nothing under docs/ is touched."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cv2
import httpx
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver import Chrome
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import Fleet, FrameLoad, free_port, start_fleet
from framewatch.ops.tasks import current_tasks
from framewatch.schemas.stats import WorkerStats
from framewatch.schemas.tasks import CameraTask
from tests.browser import webdriver_chrome
from tests.conftest import ROOT, SAMPLE_CLIP
from tests.test_alert_path import alerting_config, settle_stored

TOKEN = "t0ken-" + uuid.uuid4().hex
SCREENSHOTS = ROOT / "docs" if os.environ.get("FRAMEWATCH_SCREENSHOTS") else None
WAIT_S = 20.0

Points = list[tuple[float, float]]
# the fake detector's person stands at the left edge (box x 0..0.08, feet at (0.04, 0.6)): a region on the right
# half of the picture leaves it outside
RIGHT_HALF: Points = [(0.55, 0.15), (0.9, 0.15), (0.9, 0.85), (0.55, 0.85)]
BOW_TIE: Points = [(0.55, 0.15), (0.9, 0.85), (0.9, 0.15), (0.55, 0.85)]  # edge 0-1 crosses edge 2-3


LINE: Points = [(0.3, 0.2), (0.3, 0.9)]


def config_text(prefix: str) -> str:
    """`reviewed` as test_alert_path's alerting cameras are (their source opens nothing), `zoned` and `lined` the
    sample clip; a still every 2 s."""
    clip = f'rtsp_url = "{SAMPLE_CLIP}"\nloop = true\ninterval_ms = 500\nclips = false\n'
    zoned = f'[[frame_extractor.tasks]]\nid = "{prefix}-zone"\ntask_type = "area_intrusion"\n{clip}cooldown_sec = 0\n'
    lined = (f'[[frame_extractor.tasks]]\nid = "{prefix}-line"\ntask_type = "line_crossing"\n{clip}'
             f'line = {json.dumps(LINE)}\n')
    return "[frame_extractor]\nsnapshot_interval_sec = 2\n" + alerting_config(prefix, cameras=1) + zoned + lined


def still_jpeg() -> bytes:
    """The sample clip's first frame (vtest.avi's plaza): the picture of every frame sent to `reviewed`."""
    video = cv2.VideoCapture(str(SAMPLE_CLIP))
    try:
        ok, picture = video.read()
    finally:
        video.release()
    assert ok, f"{SAMPLE_CLIP} gave no frame"
    return bytes(cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 85])[1])


@dataclass
class Desk:
    """The worker, its two cameras and the browser."""

    fleet: Fleet
    prefix: str
    browser: Chrome

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.fleet.run.config.framewatch.worker_web_port}"

    @property
    def reviewed(self) -> str:
        return f"{self.prefix}-000"

    @property
    def zoned(self) -> str:
        return f"{self.prefix}-zone"

    @property
    def lined(self) -> str:
        return f"{self.prefix}-line"

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.origin + path, params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    def camera(self, camera_id: str) -> dict[str, Any]:
        return next((c for c in self.get("/api/cameras").json()["cameras"] if c["camera_id"] == camera_id), {})

    def stats(self) -> WorkerStats:
        return WorkerStats.model_validate(self.get("/api/stats").json())

    def open(self, query: str = "", view: str = "review") -> None:
        """The page loaded afresh (going to the address it shows, but for the hash, would only scroll)."""
        self.browser.get("about:blank")
        self.browser.get(f"{self.origin}/?{query}#{view}")

    def find(self, selector: str) -> WebElement:
        return self.browser.find_element(By.CSS_SELECTOR, selector)

    def text(self, selector: str) -> str:
        return self.find(selector).text

    def until(self, holds: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
        """Until `holds()` is truthy. The page redraws its tables every few seconds, so an element found a moment
        ago may be gone: `holds` finds its elements again each time, and a missing or stale one is a no yet."""
        wait: WebDriverWait[Chrome] = WebDriverWait(
            self.browser, timeout_s, poll_frequency=0.2,
            ignored_exceptions=[StaleElementReferenceException, NoSuchElementException])
        wait.until(lambda _: holds(), f"waited {timeout_s:.0f} s for {what}")


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str]) -> Iterator[Desk]:
    """One worker and one extractor for the module: `reviewed` has 6 alerts (2 frames a second for 3 s), `zoned`
    and `lined` stream and have their stills; one Chromium holds the token for its tab."""
    prefix = "d" + uuid.uuid4().hex[:6]
    folder = tmp_path_factory.mktemp("desk")
    with start_fleet(folder, stack_env, 1, config_text(prefix), latency_ms=10, people=1,
                     extra_env={"FRAMEWATCH_API_TOKEN": TOKEN}) as fleet:
        extractor = ServiceProcess("extractor", ["extract", "-c", str(fleet.run.config_path)],
                                   {**fleet.run.env, "FRAMEWATCH_EXTRACTOR_METRICS_PORT": str(free_port())},
                                   folder / "logs")
        browser = webdriver_chrome(folder / "chromium")
        try:
            desk = Desk(fleet, prefix, browser)
            load = FrameLoad(fleet.run.config, cameras=1, fps_per_camera=2, prefix=prefix, image=still_jpeg())
            sent = asyncio.run(load.run(duration_s=3))
            asyncio.run(settle_stored(fleet.run.config, desk.reviewed, sent))
            deadline = time.monotonic() + 60
            while not (desk.camera(desk.zoned).get("snapshot_url") and desk.camera(desk.lined).get("snapshot_url")):
                assert extractor.alive() and time.monotonic() < deadline, f"no still:\n{extractor.tail()}"
                time.sleep(0.5)
            desk.open(f"token={TOKEN}")  # the page keeps the token for the tab
            yield desk
        finally:
            browser.quit()
            extractor.stop()


def screenshot(desk: Desk, name: str, height: int = 1000) -> None:
    """docs/<name>, when FRAMEWATCH_SCREENSHOTS asks for them; the window is `height` tall for it."""
    if SCREENSHOTS is None:
        return
    desk.browser.set_window_size(1280, height)
    try:
        assert desk.browser.save_screenshot(str(SCREENSHOTS / name)), name
    finally:
        desk.browser.set_window_size(1280, 1000)


# -- reviews --------------------------------------------------------------------------------------------------------


PRECISION_COLUMNS = ["camera", "rule", "alerts", "reviewed", "confirmed", "false", "missed", "precision"]


def precision_row(desk: Desk) -> dict[str, str]:
    """The reviewed camera's line of the precision table, as shown ({} before it is drawn)."""
    shown = [cell.text for cell in
             desk.browser.find_elements(By.CSS_SELECTOR, f'#precision tr[data-camera="{desk.reviewed}"] td')]
    return dict(zip(PRECISION_COLUMNS, shown)) if len(shown) == len(PRECISION_COLUMNS) else {}


def click_verdict(desk: Desk, alert_id: str, verdict: str) -> None:
    desk.find(f'.alert[data-alert-id="{alert_id}"] button[data-verdict="{verdict}"]').click()


def test_marking_an_alert_false_on_the_page_changes_the_precision_shown(desk: Desk) -> None:
    alerts = desk.get("/api/alerts", camera_id=desk.reviewed, limit=24).json()["alerts"]
    assert len(alerts) == 6 and all(a["review"] is None for a in alerts)
    desk.open(f"camera_id={desk.reviewed}")
    desk.until(lambda: len(desk.browser.find_elements(By.CSS_SELECTOR, ".alert")) == 6, "the alert cards")
    desk.until(lambda: precision_row(desk), "the camera's precision line")
    before = precision_row(desk)
    assert (before["alerts"], before["reviewed"], before["precision"]) == ("6", "0", "-"), before

    confirmed, wrong = alerts[0]["alert_id"], alerts[1]["alert_id"]
    click_verdict(desk, confirmed, "true")
    desk.until(lambda: precision_row(desk).get("precision") == "1.00", "precision 1.00 after a true")
    click_verdict(desk, wrong, "false")
    desk.until(lambda: precision_row(desk).get("precision") == "0.50", "precision 0.50 after a false")
    after = precision_row(desk)
    assert (after["reviewed"], after["confirmed"], after["false"]) == ("2", "1", "1"), after
    card = desk.find(f'.alert[data-alert-id="{wrong}"]')
    assert card.get_attribute("data-verdict") == "false"
    assert "chosen" in (card.find_element(By.CSS_SELECTOR, 'button[data-verdict="false"]').get_attribute("class")
                        or "")
    assert desk.get(f"/api/alerts/{wrong}").json()["review"]["verdict"] == "false"
    desk.until(lambda: all(image.get_attribute("data-loaded") == "1"
                           for image in desk.browser.find_elements(By.CSS_SELECTOR, ".alert img")),
               "the alert images")
    screenshot(desk, "dashboard-review.png", height=1450)


def test_a_missed_event_added_through_the_form_is_counted(desk: Desk) -> None:
    loaded = datetime.now(UTC).replace(microsecond=0)
    desk.open(f"camera_id={desk.reviewed}")
    desk.until(lambda: precision_row(desk), "the camera's precision line")
    missed_before = int(precision_row(desk)["missed"])
    # the form starts on the page's camera, its rule, and now (to the second, in the browser's local time)
    desk.until(lambda: Select(desk.find("#missed-camera")).first_selected_option.text == desk.reviewed,
               "the page's camera in the form")
    assert Select(desk.find("#missed-rule")).first_selected_option.text == "area_intrusion"
    note = "a man at the gate " + uuid.uuid4().hex[:6]
    desk.find("#missed-note").send_keys(note)
    desk.find("#missed-add").click()
    desk.until(lambda: desk.text("#missed-status"), "the form's answer")
    assert desk.text("#missed-status").startswith(f"added: area_intrusion on {desk.reviewed} at "), \
        desk.text("#missed-status")
    desk.until(lambda: precision_row(desk).get("missed") == str(missed_before + 1), "the missed event counted")
    [event] = [m for m in desk.get("/api/missed", camera_id=desk.reviewed).json()["missed"] if m["note"] == note]
    assert (event["task_type"], event["rule"], event["reporter"]) == ("area_intrusion", "area_intrusion", "api")
    assert loaded - timedelta(seconds=1) <= datetime.fromisoformat(event["captured_at"]) <= datetime.now(UTC)


# -- live -----------------------------------------------------------------------------------------------------------


def tile(desk: Desk, camera_id: str) -> WebElement:
    return desk.find(f'#live .tile[data-camera="{camera_id}"]')


def test_the_live_view_shows_each_cameras_still_state_fps_and_error(desk: Desk) -> None:
    desk.open("live_every=2", view="live")
    desk.until(lambda: all(tile(desk, camera).get_attribute("data-still") == "shown"
                           for camera in (desk.zoned, desk.lined)), "the streaming cameras' stills")
    streaming = tile(desk, desk.zoned)
    image = streaming.find_element(By.CSS_SELECTOR, "img")
    assert desk.browser.execute_script("return arguments[0].naturalWidth", image) == 768  # vtest.avi's frame
    assert streaming.find_element(By.CSS_SELECTOR, ".state").text == "streaming"
    assert streaming.find_element(By.CSS_SELECTOR, ".fps").text.endswith(" fps")
    assert streaming.find_element(By.CSS_SELECTOR, ".still-age").text.startswith("still ")
    first = image.get_attribute("src")
    desk.until(lambda: tile(desk, desk.zoned).find_element(By.CSS_SELECTOR, "img").get_attribute("src") != first,
               "the still asked for again", timeout_s=10)
    # the camera the extractor cannot open: its state and error, and no still
    desk.until(lambda: tile(desk, desk.reviewed).find_element(By.CSS_SELECTOR, ".last-error").text,
               "the failing camera's error")
    down = tile(desk, desk.reviewed)
    assert down.get_attribute("data-still") == "none"
    assert down.find_element(By.CSS_SELECTOR, ".no-still").text == "no still from this camera yet"
    assert down.find_element(By.CSS_SELECTOR, ".state").text in ("connecting", "backoff", "failed")
    # the camera alerted on (a person in every frame, none after) has its incidents open: fw.incidents says so
    desk.until(lambda: desk.camera(desk.reviewed).get("open_incidents"), "the alerted camera's open incidents")
    opened = desk.camera(desk.reviewed)["open_incidents"]
    desk.until(lambda: tile(desk, desk.reviewed).find_element(By.CSS_SELECTOR, ".incidents").text
               == f"· open incidents: {opened}", "its open incidents on its tile")
    screenshot(desk, "dashboard-live.png", height=620)


# -- zones ----------------------------------------------------------------------------------------------------------


def overlay(desk: Desk) -> WebElement:
    return desk.find("#zone-overlay")


def click_at(desk: Desk, points: Points) -> None:
    """A click at each point of the still, in order (Selenium's offsets are from the element's centre)."""
    still = overlay(desk)
    width, height = still.size["width"], still.size["height"]
    actions = ActionChains(desk.browser)
    for x, y in points:
        actions.move_to_element_with_offset(still, round((x - 0.5) * width), round((y - 0.5) * height)).click()
    actions.perform()


def drawn(desk: Desk) -> list[list[float]]:
    """The editor's points, normalised, as it will save them."""
    return list(json.loads(overlay(desk).get_attribute("data-points") or "[]"))


def near(points: list[list[float]], expected: Points) -> bool:
    """Within 2 pixels of the 600 the still is tall."""
    return len(points) == len(expected) and all(abs(a - b) <= 2 / 600 for p, q in zip(points, expected)
                                                for a, b in zip(p, q))


def open_zone_editor(desk: Desk, task_id: str) -> None:
    desk.open(f"zone={task_id}", view="zones")
    desk.until(lambda: desk.find("#zone-stage").get_attribute("data-still") == "shown",
               "the camera's still under the editor")


def on_tasks(desk: Desk, task_id: str) -> CameraTask:
    """The task as fw.tasks has it (read from the topic, not from the worker)."""
    task = asyncio.run(current_tasks(desk.fleet.run.config))[task_id].task
    assert task is not None
    return task


def region_on_tasks(desk: Desk) -> list[list[float]] | None:
    region = on_tasks(desk, desk.zoned).region
    return None if region is None else [list(point) for point in region]


def test_a_region_drawn_with_the_mouse_is_saved_to_fw_tasks_and_used_for_the_next_frames(desk: Desk) -> None:
    assert desk.get(f"/api/tasks/{desk.zoned}").json()["region"] is None  # the whole frame: every frame alerts
    open_zone_editor(desk, desk.zoned)
    assert drawn(desk) == []
    click_at(desk, [RIGHT_HALF[0], RIGHT_HALF[1], (0.95, 0.5)])
    # the third point dragged to its place; a fifth added, picked and removed
    still = overlay(desk)
    dx, dy = (RIGHT_HALF[2][0] - 0.95) * still.size["width"], (RIGHT_HALF[2][1] - 0.5) * still.size["height"]
    ActionChains(desk.browser).drag_and_drop_by_offset(desk.find('#zone-overlay .handle[data-index="2"]'),
                                                       round(dx), round(dy)).perform()
    click_at(desk, [RIGHT_HALF[3], (0.7, 0.95)])
    desk.find('#zone-overlay .handle[data-index="4"]').click()
    desk.find("#zone-remove").click()
    points = drawn(desk)
    assert near(points, RIGHT_HALF), points
    assert len(desk.browser.find_elements(By.CSS_SELECTOR, "#zone-overlay polygon.area")) == 1
    screenshot(desk, "dashboard-zone.png", height=850)

    alerting = desk.stats().alerts_raised
    desk.until(lambda: desk.stats().alerts_raised >= alerting + 2, "the whole frame alerting")
    desk.find("#zone-save").click()
    # the answer comes once the worker's view of fw.tasks holds the change: the frames evaluated from now use it
    desk.until(lambda: desk.text("#zone-status").startswith("saved"), "saved")
    before = desk.stats()
    assert desk.text("#zone-error") == ""
    assert region_on_tasks(desk) == points
    assert desk.get(f"/api/tasks/{desk.zoned}").json()["region"] == points
    assert json.loads(desk.text("#zone-points")) == {"region": points}

    # the person at the left edge is outside the region now: the next frames raise nothing (nor do `lined`'s)
    desk.until(lambda: desk.stats().frames_evaluated >= before.frames_evaluated + 4, "the next frames evaluated")
    assert desk.stats().alerts_raised == before.alerts_raised, "an alert outside the region"


def test_a_region_that_crosses_itself_is_refused_naming_the_field_and_nothing_is_written(desk: Desk) -> None:
    saved = desk.get(f"/api/tasks/{desk.zoned}").json()["region"]
    on_tasks = region_on_tasks(desk)
    open_zone_editor(desk, desk.zoned)
    desk.find("#zone-clear").click()
    click_at(desk, BOW_TIE)
    desk.find("#zone-save").click()
    desk.until(lambda: desk.text("#zone-error"), "the error beside the editor")
    error = desk.text("#zone-error")
    assert "region: the region crosses itself" in error, error
    assert desk.text("#zone-status") == ""
    assert near(drawn(desk), BOW_TIE), "the drawing is kept, to be corrected"
    assert desk.get(f"/api/tasks/{desk.zoned}").json()["region"] == saved
    assert region_on_tasks(desk) == on_tasks


def test_a_crossing_lines_end_moved_and_its_direction_changed_are_saved(desk: Desk) -> None:
    open_zone_editor(desk, desk.lined)
    assert near(drawn(desk), LINE)
    assert len(desk.browser.find_elements(By.CSS_SELECTOR, "#zone-overlay line.arrow")) == 2  # both ways: a default
    click_at(desk, [(0.7, 0.5)])
    assert near(drawn(desk), LINE), "a line has two ends: a click adds none"
    still = overlay(desk)
    ActionChains(desk.browser).drag_and_drop_by_offset(desk.find('#zone-overlay .handle[data-index="1"]'),
                                                       round(0.5 * still.size["width"]), 0).perform()
    Select(desk.find("#zone-direction")).select_by_value("in")
    assert len(desk.browser.find_elements(By.CSS_SELECTOR, "#zone-overlay line.arrow")) == 1
    line = drawn(desk)
    assert near(line, [LINE[0], (0.8, 0.9)]), line
    desk.find("#zone-save").click()
    desk.until(lambda: desk.text("#zone-status").startswith("saved"), "saved")
    task = on_tasks(desk, desk.lined)
    assert task.line is not None and [list(point) for point in task.line] == line
    assert task.line_direction.value == "in"
    answer = desk.get(f"/api/tasks/{desk.lined}").json()
    assert (answer["line"], answer["line_direction"]) == (line, "in")


# -- candidate ------------------------------------------------------------------------------------------------------


def candidate_command(desk: Desk, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "framewatch.cli", "tasks", "-c", str(desk.fleet.run.config_path),
                           *args], capture_output=True, text=True, env=desk.fleet.run.env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_candidate_view_shows_what_a_candidate_changes_and_says_when_there_is_none(desk: Desk) -> None:
    desk.open(f"trial={desk.lined}", view="trial")
    desk.until(lambda: desk.text("#trial-none").startswith("no candidate: "), "no candidate said")
    candidate_command(desk, "try", desk.lined, "--set", "cooldown_sec=7", "--by", "tester")
    try:  # the view asks again every 10 s
        desk.until(lambda: "(running) by tester" in desk.text("#trial-head"), "the candidate shown", timeout_s=30)
        assert desk.text('#trial-changes tr[data-setting="cooldown_sec"]').split()[-1] == "7"
        assert desk.text('#trial-sides tr[data-side="candidate"]').split()[0] == "candidate"
    finally:
        candidate_command(desk, "drop", desk.lined, "--by", "tester")
