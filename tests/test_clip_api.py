"""Each alert's clip in the query API and on the dashboard, from one real pipeline: the sample clip (looped) as a file
source read by `framewatch extract`, the reference HOG detector and a worker. `/api/alerts` gives each alert's clip
status; `/api/alerts/{id}/clip` redirects to the MP4 once it is there and says why not before; the dashboard plays
it in Chromium."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from framewatch.clients.database import AlertStore
from framewatch.ops.demo import PipelineRun, ServiceProcess
from framewatch.ops.load import free_port, namespaced_env
from framewatch.schemas.events import AlertEvent, ClipReady, FrameEvent, now_ms
from framewatch.schemas.queries import NO_EXTRACTOR_ANSWERED
from tests.browser import dump_dom
from tests.conftest import SAMPLE_CLIP, write_config
from tests.test_events import frame

PRE_S, POST_S = 2, 2
GOP_S, FRAME_S = 2.0, 0.1  # samples/plaza-20s.mp4: a key frame every 2 s, 10 frames a second
TOKEN = "t0ken-" + uuid.uuid4().hex


def config_text(task_id: str) -> str:
    # the lowest 40 %: people stepping in around 5 s and 13 s into the sample, apart from the others, so that
    # clips hold one alert's seconds (overlapping alerts share a longer clip)
    return (f'[[frame_extractor.tasks]]\nid = "{task_id}"\ntask_type = "area_intrusion"\nrtsp_url = "{SAMPLE_CLIP}"\n'
            f"loop = true\ninterval_ms = 500\ncooldown_sec = 4\nregion = [[0, 0.6], [1, 0.6], [1, 1], [0, 1]]\n"
            f"clip_pre_sec = {PRE_S}\nclip_post_sec = {POST_S}\n")


@dataclass(frozen=True)
class ClipRun:
    run: PipelineRun
    task_id: str

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.run.config.framewatch.worker_web_port}"

    def get(self, path: str, token: str | None = TOKEN, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.origin + path, params=params, headers=headers, timeout=10)

    def alerts(self) -> list[dict[str, Any]]:
        answer = self.get("/api/alerts", camera_id=self.task_id, limit=100)
        answer.raise_for_status()
        alerts: list[dict[str, Any]] = answer.json()["alerts"]
        return alerts


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def span_s(clip: dict[str, Any]) -> float:
    """From the clip's first frame to its last, as the API says."""
    return seconds(clip["end_at"]) - seconds(clip["start_at"])


def has_its_own_clip(alert: dict[str, Any]) -> bool:
    """A full clip no other alert extended: from the key frame before its pre-roll to the end of its post-roll."""
    clip = alert["clip"]
    return clip["status"] == "ready" and span_s(clip) <= PRE_S + POST_S + GOP_S + FRAME_S


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str]) -> Iterator[ClipRun]:
    """The pipeline until an alert has its own clip; then the extractor stops, the detector and worker stay."""
    env = namespaced_env(stack_env, FRAMEWATCH_API_TOKEN=TOKEN, FRAMEWATCH_DETECTOR_PORT=str(free_port()))
    task_id = f"clip-api-{env['FRAMEWATCH_NAMESPACE']}"
    folder = tmp_path_factory.mktemp("clip-api")
    path = write_config(folder / "clips.toml", config_text(task_id))
    clips = ClipRun(PipelineRun(path, env, folder / "logs"), task_id)
    clips.run.start()
    try:
        extractor = ServiceProcess("extractor", ["extract", "-c", str(path)],
                                   {**env, "FRAMEWATCH_EXTRACTOR_METRICS_PORT": str(free_port())}, folder / "logs")
        try:
            deadline = time.monotonic() + 75
            while not any(has_its_own_clip(a) for a in clips.alerts()):
                assert time.monotonic() < deadline, f"no alert has its own clip: {clips.alerts()}\n{extractor.tail()}"
                time.sleep(1)
        finally:
            extractor.stop()
        yield clips
    finally:
        clips.run.stop()


def test_each_alert_says_where_its_clip_is_or_why_there_is_none(pipeline: ClipRun) -> None:
    alerts = pipeline.alerts()
    for alert in alerts:
        clip = alert["clip"]
        captured = seconds(alert["captured_at"])
        if clip["status"] in ("ready", "short"):
            assert clip["clip_url"] == f"/api/alerts/{alert['alert_id']}/clip" and clip["clip_bytes"] > 0, clip
            assert seconds(clip["start_at"]) <= captured <= seconds(clip["end_at"]), (alert["captured_at"], clip)
            assert (clip["reason"] is None) == (clip["status"] == "ready"), "a short clip says why"
        else:
            assert clip["status"] in ("none", "pending") and clip["clip_url"] is clip["presigned_url"] is None, clip
            assert (clip["reason"] is None) == (clip["status"] == "pending"), "no clip says why"
    own = next(a for a in alerts if has_its_own_clip(a))
    captured, clip = seconds(own["captured_at"]), own["clip"]
    assert seconds(clip["start_at"]) <= captured - PRE_S and seconds(clip["end_at"]) >= captured + POST_S - FRAME_S
    one = pipeline.get(f"/api/alerts/{own['alert_id']}").json()["clip"]
    assert {**one, "presigned_url": None} == {**clip, "presigned_url": None}


def test_the_clips_address_redirects_to_a_fresh_url_of_the_mp4(pipeline: ClipRun) -> None:
    alert = next(a for a in pipeline.alerts() if a["clip"]["status"] == "ready")
    redirect = pipeline.get(alert["clip"]["clip_url"])
    assert redirect.status_code == 302 and "X-Amz-Signature=" in redirect.headers["location"]
    mp4 = httpx.get(redirect.headers["location"], timeout=10).content
    assert len(mp4) == alert["clip"]["clip_bytes"] and mp4[4:8] == b"ftyp"
    assert pipeline.get(alert["clip"]["clip_url"], token=None).status_code == 401
    assert pipeline.get(f"/api/alerts/{uuid.uuid4()}/clip").status_code == 404
    assert pipeline.get("/api/alerts/not-a-uuid/clip").status_code == 400


def alert_at(camera_id: str, captured_at: int) -> AlertEvent:
    shot = frame(captured_at=captured_at).model_copy(update={"camera_id": camera_id, "task_id": camera_id})
    shot = shot.model_copy(update={"frame_id": FrameEvent.make_id(camera_id, captured_at, 0)})
    return AlertEvent(alert_id=AlertEvent.make_id(shot.frame_id, "area_intrusion"), frame=shot,
                      rule="area_intrusion", evidence={}, image_key=f"alerts/{camera_id}/{captured_at}.jpg")


async def store_alerts(pipeline: ClipRun, alerts: list[AlertEvent], clips: list[ClipReady]) -> None:
    store = AlertStore.of(pipeline.run.config)
    await store.connect()
    try:
        await store.insert(alerts)
        await store.store_clips(clips)
    finally:
        await store.close()


def test_an_alert_without_its_clip_gets_404_naming_the_status_and_the_reason(pipeline: ClipRun) -> None:
    camera = f"{pipeline.task_id}-unknown"  # a task the worker does not know: 5 s of post-roll, then a minute
    pending, late, refused = (alert_at(camera, now_ms() - age_s * 1000) for age_s in (0, 600, 1))
    refusal = ClipReady(alert_id=refused.alert_id, task_id=camera, camera_id=camera,
                        bucket=pipeline.run.config.frame_extractor.minio.bucket, reason="the camera's codec: mjpeg")
    asyncio.run(store_alerts(pipeline, [pending, late, refused], [refusal]))
    for alert, status, reason in ((pending, "pending", None), (late, "none", NO_EXTRACTOR_ANSWERED),
                                  (refused, "none", "the camera's codec: mjpeg")):
        answer = pipeline.get(f"/api/alerts/{alert.alert_id}/clip")
        assert answer.status_code == 404 and answer.json()["status"] == status, answer.text
        assert answer.json()["reason"] == reason and alert.alert_id in answer.json()["error"]
        assert pipeline.get(f"/api/alerts/{alert.alert_id}").json()["clip"]["status"] == status


def dashboard_dom(pipeline: ClipRun, profile: Path) -> str:
    """The dashboard for the pipeline's camera as headless Chromium leaves it after 10 s of its own time."""
    return dump_dom(f"{pipeline.origin}/?token={TOKEN}&camera_id={pipeline.task_id}", profile)


def players(dom: str) -> dict[str, dict[str, str]]:
    """Each alert card's `<video>` attributes, by alert id (an empty dict: the card has none)."""
    found = {}
    for alert_id, card in re.findall(r'<figure class="alert" data-alert-id="([0-9a-f-]+)".*?>(.*?)</figure>', dom,
                                     flags=re.S):
        video = re.search(r"<video([^>]*)>", card)
        found[alert_id] = dict(re.findall(r'([\w-]+)="([^"]*)"', video[1])) if video else {}
    return found


def test_the_dashboard_plays_each_alerts_clip_in_chromium(pipeline: ClipRun, tmp_path: Path) -> None:
    alerts = {a["alert_id"]: a for a in pipeline.alerts()[:24]}  # the dashboard shows the newest 24
    shown = players(dashboard_dom(pipeline, tmp_path))
    assert set(shown) == set(alerts)
    for alert_id, video in shown.items():
        clip = alerts[alert_id]["clip"]
        if clip["status"] not in ("ready", "short"):
            assert not video, "no player without a clip"
            continue
        assert int(video.get("data-ready-state", "0")) >= 1, ("the clip's metadata loaded", video)
        assert "controls" in video and "muted" in video and video["preload"] == "metadata"
        # the MP4 lasts from its first frame to the end of its last one
        assert span_s(clip) <= float(video["data-duration"]) <= span_s(clip) + 2 * FRAME_S + 0.1, (video, clip)
    own = next(i for i, a in alerts.items() if has_its_own_clip(a))
    duration_s = float(shown[own]["data-duration"])
    assert abs(duration_s - (PRE_S + POST_S)) <= GOP_S + FRAME_S, "within one GOP of pre + post"
