"""Two namespaces on one database: each worker answers with its own alerts and cameras only, the same frames make
the same alert ids in both and each stores its own, and one namespace's retention leaves the other's rows and
objects alone."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from framewatch.agents.retention.housekeeping import Housekeeping
from framewatch.clients.bus import ensure_topics
from framewatch.clients.database import AlertStore
from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.demo import PipelineRun
from framewatch.ops.load import Fleet, FrameLoad, start_fleet
from framewatch.schemas.config import Config, load_config
from framewatch.schemas.events import AlertEvent, CountWindow, FrameEvent
from framewatch.schemas.queries import CountQuery
from framewatch.schemas.tasks import Freshness, TaskType
from tests.conftest import SAMPLE_JPEG
from tests.test_alert_path import alerting_config
from tests.test_clip_retention import MP4, clip_of, stored_alert
from tests.test_retention import connected, stored_frame

CAMERAS = 2  # of each namespace's own, besides the camera both have
FRAMES_PER_CAMERA = 3  # each frame alerts: a new person every frame, no cooldown
ALERTS = (CAMERAS + 1) * FRAMES_PER_CAMERA


def request(run: PipelineRun, path: str) -> httpx.Response:
    port = run.config.framewatch.worker_web_port
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers=run.auth_headers, timeout=10)


def get(run: PipelineRun, path: str) -> Any:
    answer = request(run, path)
    answer.raise_for_status()
    return answer.json()


def frames_of(load: FrameLoad, cameras: list[str]) -> list[FrameEvent]:
    """`FRAMES_PER_CAMERA` frames of each camera, a few ms apart: the rules take a frame captured at the time of
    one they have seen for a replay."""
    made = []
    for camera in cameras * FRAMES_PER_CAMERA:
        made.append(load.frame(camera))
        time.sleep(0.002)
    return made


async def send_frames(run: PipelineRun, frames: list[FrameEvent]) -> None:
    """The frames onto the run's fw.frames, each with its object in the run's bucket, as an extractor sends them;
    each to be inferred, however many of its camera wait."""
    config = run.config
    store = ObjectStore(config.frame_extractor.minio)
    await store.ensure_bucket()
    ours = [f.model_copy(update={"bucket": store.bucket, "freshness": Freshness.ALL}) for f in frames]
    for frame in ours:
        await store.put(frame.object_key, SAMPLE_JPEG)
    await FrameLoad(config, cameras=1, fps_per_camera=1).send(ours)


def stored_alerts(run: PipelineRun, timeout_s: float = 40) -> list[dict[str, Any]]:
    """The worker's /api/alerts once it shows `ALERTS` of them (or the time runs out)."""
    for _ in range(int(timeout_s * 2)):
        alerts: list[dict[str, Any]] = get(run, "/api/alerts?limit=100")["alerts"]
        if len(alerts) >= ALERTS:
            return alerts
        time.sleep(0.5)
    return alerts


def test_each_worker_answers_with_its_own_namespace_only(tmp_path: Path, stack_env: dict[str, str]) -> None:
    own = {"a": "a" + uuid.uuid4().hex[:6], "b": "b" + uuid.uuid4().hex[:6]}
    both = "s" + uuid.uuid4().hex[:6]
    fleets: dict[str, Fleet] = {}
    with ExitStack() as stack:
        for name, prefix in own.items():
            config = alerting_config(prefix, both, cameras=CAMERAS).replace(
                "[ai_analysis]\n", "[ai_analysis]\nmax_frame_age_ms = 60000\n", 1)
            fleets[name] = stack.enter_context(start_fleet(tmp_path / name, stack_env, 1, config, latency_ms=20,
                                                           people=1))
        runs = {name: fleet.run for name, fleet in fleets.items()}
        shared_load = FrameLoad(runs["a"].config, cameras=1, fps_per_camera=1, prefix=both)
        shared = frames_of(shared_load, shared_load.cameras)  # the same frames in both namespaces
        for name, run in runs.items():
            load = FrameLoad(run.config, cameras=CAMERAS, fps_per_camera=1, prefix=own[name])
            asyncio.run(send_frames(run, frames_of(load, load.cameras) + shared))
        alerts = {name: stored_alerts(run) for name, run in runs.items()}
        cameras = {name: get(run, "/api/cameras")["cameras"] for name, run in runs.items()}
        stats = {name: get(run, "/api/stats") for name, run in runs.items()}
        on_shared = {name: get(run, f"/api/alerts?camera_id={both}-000")["alerts"] for name, run in runs.items()}
        b_only = next(a["alert_id"] for a in alerts["b"] if a["camera_id"].startswith(own["b"]))
        missing = request(runs["a"], f"/api/alerts/{b_only}")
    for name, prefix in own.items():
        configured = {task.id for task in runs[name].config.frame_extractor.tasks}  # its cameras, and both's
        alerted = {f"{prefix}-{i:03d}" for i in range(CAMERAS)} | {f"{both}-000"}
        assert len(alerts[name]) == ALERTS and {a["camera_id"] for a in alerts[name]} == alerted
        assert {c["camera_id"]: c["alerts"] for c in cameras[name]} == {
            camera: FRAMES_PER_CAMERA if camera in alerted else 0 for camera in configured}
        assert stats[name]["alerts_stored"] == ALERTS  # the shared camera's alerts too: new in this namespace
    assert {a["alert_id"] for a in on_shared["a"]} == {a["alert_id"] for a in on_shared["b"]}
    assert len(on_shared["a"]) == FRAMES_PER_CAMERA
    assert missing.status_code == 404


def other_namespace(isolated_env: dict[str, str], bucket: str | None = None) -> Config:
    """The config of the stack in a second namespace, with a bucket of its own unless one is given."""
    namespace = "t" + uuid.uuid4().hex[:10]
    other, _ = load_config(None, {**isolated_env, "FRAMEWATCH_NAMESPACE": namespace,
                                  "FRAMEWATCH_MINIO_BUCKET": bucket or f"fw-{namespace}"})
    return other


def in_bucket(alert: AlertEvent, bucket: str) -> AlertEvent:
    return alert.model_copy(update={"frame": alert.frame.model_copy(update={"bucket": bucket})})


async def test_expiry_in_one_namespace_leaves_the_others_alerts_and_objects(stack_config: Config,
                                                                            isolated_env: dict[str, str]) -> None:
    """The same alert, 40 days old, with its image and clip, in two namespaces (same id, buckets of their own):
    expiring one namespace's alerts deletes its row and objects only."""
    other = other_namespace(isolated_env)
    ours_store, theirs_store = ObjectStore(stack_config.frame_extractor.minio), ObjectStore(other.frame_extractor.minio)
    for store in (ours_store, theirs_store):
        await store.ensure_bucket()
    ours = await stored_alert(ours_store, "cam-ns", 40)
    theirs = in_bucket(ours, theirs_store.bucket)
    await theirs_store.put(theirs.image_key, SAMPLE_JPEG)
    clip = "clips/cam-ns/20261123/clip.mp4"
    for store in (ours_store, theirs_store):
        await store.put(clip, MP4, "video/mp4")
    async with connected(AlertStore.of(stack_config)) as our_alerts, connected(AlertStore.of(other)) as their_alerts:
        for alerts, alert in ((our_alerts, ours), (their_alerts, theirs)):
            assert await alerts.insert([alert]) == 1  # the same id, new in each namespace
            await alerts.store_clips([clip_of(alert, clip)])
        await Housekeeping(stack_config, ours_store, our_alerts).expire_alerts(datetime.now(UTC) - timedelta(days=30))
        assert await our_alerts.get(ours.alert_id) is None
        kept = await their_alerts.get(theirs.alert_id)
    assert kept is not None and kept["clip_key"] == clip
    assert not await ours_store.exists(ours.image_key) and not await ours_store.exists(clip)
    assert await theirs_store.exists(theirs.image_key) and await theirs_store.exists(clip)


async def test_the_sweep_keeps_a_frame_another_namespaces_alert_keeps_in_a_shared_bucket(
        stack_config: Config, isolated_env: dict[str, str]) -> None:
    """Namespaces may share a bucket: a frame the other namespace's alert row keeps as its image (its copy
    failed) is no orphan to this namespace's sweep."""
    await ensure_topics(stack_config)
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    other = other_namespace(isolated_env, bucket=store.bucket)
    orphan, their_image = [await stored_frame(store, "cam-nsweep") for _ in range(2)]
    async with connected(AlertStore.of(stack_config)) as our_alerts, connected(AlertStore.of(other)) as their_alerts:
        await their_alerts.insert([AlertEvent(alert_id=AlertEvent.make_id(their_image.frame_id, "r"),
                                              frame=their_image, rule="r", evidence={},
                                              image_key=their_image.object_key)])
        await asyncio.sleep(1.1)  # object times have a one-second resolution
        events = await Housekeeping(stack_config, store, our_alerts).sweep_frames(older_than_s=1)
    assert [e.object_key for e in events] == [orphan.object_key]
    assert await store.list_keys("frames/") == [their_image.object_key]


async def test_the_same_task_and_minute_count_in_each_namespace(stack_config: Config,
                                                                isolated_env: dict[str, str]) -> None:
    other = other_namespace(isolated_env)
    minute = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp() * 1000)
    task = "count-" + uuid.uuid4().hex[:6]

    def window(people: int) -> CountWindow:
        return CountWindow(task_id=task, camera_id=task, task_type=TaskType.PEOPLE_COUNTING, window_start=minute,
                           samples=10, people_max=people, people_mean=people, crossed_in=0, crossed_out=0)

    async with connected(AlertStore.of(stack_config)) as ours, connected(AlertStore.of(other)) as theirs:
        await ours.store_counts([window(2)])
        await theirs.store_counts([window(5)])
        await ours.store_counts([window(3)])  # a replay replaces its own namespace's minute only
        answers = [await store.counts(CountQuery(task_id=task)) for store in (ours, theirs)]
    assert [[row["people_max"] for row in rows] for rows in answers] == [[3], [5]]
