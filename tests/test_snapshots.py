"""Each camera's still: copied from its latest frame by the extractor (never holding a frame back), one object per
camera in its namespace's folder, served by the API as a redirect and as each /api/cameras row's URL, and swept once
a day old."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from framewatch.agents.retention.housekeeping import Housekeeping
from framewatch.clients.database import AlertStore
from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.load import Fleet, start_fleet
from framewatch.schemas.config import Config, FrameExtractorSettings, MinioSettings
from framewatch.streams.extractor import run_extractor
from framewatch.streams.snapshots import Snapshots
from tests.conftest import SAMPLE_CLIP, SAMPLE_JPEG

TOKEN = "t0ken-" + uuid.uuid4().hex
CAMERA = "still-cam"
JPEG_START = b"\xff\xd8"


def snapshots_counted(camera: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("framewatch_extractor_snapshots_total",
                                     {"task": camera, "outcome": outcome}) or 0.0


# -- without the stack ----------------------------------------------------------------------------------------------


def test_namespaces_sharing_a_bucket_have_stills_of_their_own() -> None:
    store = ObjectStore(MinioSettings(base_path="site-1"))
    keys = {store.snapshot_key(namespace, "door") for namespace in ("", "a", "b")}
    assert keys == {"site-1/snapshots/_/door.jpg", "site-1/snapshots/a/door.jpg", "site-1/snapshots/b/door.jpg"}


@pytest.mark.parametrize("interval", [0.5, -1])
def test_a_still_interval_is_off_or_at_least_a_second(interval: float) -> None:
    assert FrameExtractorSettings().snapshot_interval_sec == 5
    assert FrameExtractorSettings(snapshot_interval_sec=0).snapshot_interval_sec == 0
    with pytest.raises(ValidationError, match="snapshot_interval_sec"):
        FrameExtractorSettings(snapshot_interval_sec=interval)


async def test_a_copy_under_way_holds_no_frame_back_and_the_next_waits_for_the_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = ObjectStore(MinioSettings())
    copied: list[str] = []
    release = asyncio.Event()

    async def slow_copy(source: str, target: str) -> None:
        copied.append(source)
        await release.wait()

    monkeypatch.setattr(store, "copy", slow_copy)
    still = Snapshots(store, "ns", interval_s=3600).of("door")
    still.offer("frames/door/1.jpg")  # returns at once: the copy goes on beside the frames
    await asyncio.sleep(0)
    still.offer("frames/door/2.jpg")  # a copy under way (and none due): skipped
    release.set()
    await still.settle()
    still.offer("frames/door/3.jpg")  # none due for an hour
    await still.settle()
    assert copied == ["frames/door/1.jpg"] and still.idle
    off = Snapshots(store, "ns", interval_s=0).of("door")
    off.offer("frames/door/4.jpg")
    assert off.idle and copied == ["frames/door/1.jpg"]


# -- against the stack ----------------------------------------------------------------------------------------------


async def test_a_failed_copy_is_counted_each_time_and_logged_once_per_kind(
        stack_config: Config, caplog: pytest.LogCaptureFixture) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    snapshots = Snapshots(store, stack_config.framewatch.namespace, interval_s=1)
    camera = f"gone-{uuid.uuid4().hex[:6]}"
    before = snapshots_counted(camera, "failed")
    with caplog.at_level(logging.WARNING, "framewatch.extractor"):
        for _ in range(3):
            await snapshots.copy(camera, f"frames/{camera}/20260101/missing.jpg")  # retention deleted it first
    assert snapshots_counted(camera, "failed") - before == 3
    logged = [r.getMessage() for r in caplog.records if "still not refreshed" in r.getMessage()]
    assert len(logged) == 1 and "NoSuchKey" in logged[0]
    assert not await store.exists(store.snapshot_key(stack_config.framewatch.namespace, camera))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str]) -> Iterator[Fleet]:
    """A worker, and an extractor run in this process on the sample clip (10 frames, read as fast as it decodes)."""
    config = (f"[frame_extractor]\nrealtime = false\nsnapshot_interval_sec = 1\n[[frame_extractor.tasks]]\n"
              f'id = "{CAMERA}"\ntask_type = "area_intrusion"\nrtsp_url = "{SAMPLE_CLIP}"\ninterval_ms = 2000\n')
    with start_fleet(tmp_path_factory.mktemp("stills"), stack_env, 1, config, latency_ms=10,
                     extra_env={"FRAMEWATCH_API_TOKEN": TOKEN}) as fleet:
        report = asyncio.run(run_extractor(fleet.run.config))
        assert report.emitted == 10 and not report.failed, report
        yield fleet


def get(fleet: Fleet, path: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"http://127.0.0.1:{fleet.run.config.framewatch.worker_web_port}{path}", headers=headers,
                     timeout=10)


def test_the_extractor_keeps_a_still_the_api_redirects_to_and_lists(fleet: Fleet) -> None:
    config = fleet.run.config
    store = ObjectStore(config.frame_extractor.minio)
    key = store.snapshot_key(config.framewatch.namespace, CAMERA)
    still = asyncio.run(store.get(key))
    picture = cv2.imdecode(np.frombuffer(still, np.uint8), cv2.IMREAD_COLOR)  # the frame as it was uploaded
    assert still.startswith(JPEG_START) and picture is not None and picture.shape == (576, 768, 3)
    assert snapshots_counted(CAMERA, "ok") >= 1 and snapshots_counted(CAMERA, "failed") == 0

    redirect = get(fleet, f"/api/cameras/{CAMERA}/snapshot")
    assert redirect.status_code == 307
    followed = httpx.get(redirect.headers["Location"], timeout=10)
    assert followed.status_code == 200 and followed.headers["content-type"] == "image/jpeg"
    assert followed.content == still

    row = next(c for c in get(fleet, "/api/cameras").json()["cameras"] if c["camera_id"] == CAMERA)
    assert httpx.get(row["snapshot_url"], timeout=10).content == still
    assert isinstance(row["snapshot_age_s"], float) and 0 <= row["snapshot_age_s"] < 60


def test_a_camera_without_a_still_gets_404_naming_it_and_no_token_401(fleet: Fleet) -> None:
    missing = get(fleet, "/api/cameras/no-such-cam/snapshot")
    assert missing.status_code == 404 and "no-such-cam" in missing.json()["error"]
    assert get(fleet, f"/api/cameras/{CAMERA}/snapshot", token=None).status_code == 401
    assert get(fleet, f"/api/cameras/{CAMERA}/snapshot", token="wrong").status_code == 401


async def test_the_sweep_deletes_stills_not_rewritten_and_only_this_namespaces(stack_config: Config) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    namespace = stack_config.framewatch.namespace
    gone, streaming = store.snapshot_key(namespace, "gone"), store.snapshot_key(namespace, "streaming")
    theirs = store.snapshot_key("other-" + namespace, "gone")  # another namespace sharing the bucket
    notes = store.key(f"snapshots/{namespace}", "notes.txt")
    for key in (gone, streaming, theirs):
        await store.put(key, SAMPLE_JPEG)
    await store.put(notes, b"no still", "text/plain")
    await asyncio.sleep(2.2)
    await store.put(streaming, SAMPLE_JPEG)  # its extractor rewrote it
    events = await Housekeeping(stack_config, store, AlertStore.of(stack_config)).sweep_snapshots(older_than_s=2.0)
    assert [(e.object_key, e.task_id, e.reason) for e in events] == [(gone, "gone", "stale")]
    assert sorted(await store.list_keys("snapshots/")) == sorted([streaming, theirs, notes])
