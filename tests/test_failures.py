"""Bad input gets a clear error naming what was wrong, and nothing else is lost."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from framewatch.agents.inference import Inference
from framewatch.agents.registry import ServiceRegistry
from framewatch.schemas.config import Config, TaskType, load_config
from framewatch.schemas.contract import INFER_PATH
from framewatch.schemas.events import (
    DetectionEvent,
    FrameOutcome,
    Outcome,
    ServiceHeartbeat,
)
from framewatch.streams.extractor import run_extractor
from framewatch.streams.objectstore import ObjectStore
from tests.conftest import ROOT, SAMPLE_CLIP, write_config
from tests.test_events import frame


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_broker_is_named(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.toml", f"[[frame_extractor.tasks]]\nid='a'\ntask_type='区域入侵'\n"
                                               f"rtsp_url='{SAMPLE_CLIP}'\n")
    result = subprocess.run([sys.executable, "-m", "framewatch.cli", "extract", "-c", str(config)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "FRAMEWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
                                 "FRAMEWATCH_EXTRACTOR_METRICS_PORT": str(free_port())})
    assert result.returncode == 2
    assert f"framewatch: error: cannot reach Kafka at 127.0.0.1:{port}" in result.stderr


async def test_missing_video_file_fails_its_camera_only(isolated_env: dict[str, str], tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", f"""
[frame_extractor]
realtime = false
[[frame_extractor.tasks]]
id = "gone"
task_type = "区域入侵"
rtsp_url = "{tmp_path / 'no-such-clip.mp4'}"
[[frame_extractor.tasks]]
id = "plaza"
task_type = "区域入侵"
rtsp_url = "{SAMPLE_CLIP}"
interval_ms = 2000
""")
    config, _ = load_config(path, isolated_env)
    report = await run_extractor(config)
    store = ObjectStore(config.frame_extractor.minio)
    cameras = {c.task_id: c for c in report.cameras}
    assert cameras["gone"].error == f"{tmp_path / 'no-such-clip.mp4'}: no such video file"
    assert cameras["plaza"].error is None and cameras["plaza"].emitted == 10
    assert len(await store.list_keys("frames/plaza/")) == 10


class MisbehavingService:
    """A real HTTP server speaking the contract, answering what a test tells it to."""

    def __init__(self, answer: Callable[[], web.Response]) -> None:
        self.answer = answer
        self.port = free_port()
        self.calls = 0

    async def handle(self, _: web.Request) -> web.Response:
        self.calls += 1
        return self.answer()

    def heartbeat(self, service_id: str) -> ServiceHeartbeat:
        return ServiceHeartbeat(service_id=service_id, endpoint=f"http://127.0.0.1:{self.port}",
                                task_types=[TaskType.AREA_INTRUSION], capacity=1)


@pytest.fixture
async def serve() -> AsyncIterator[object]:
    runners: list[web.AppRunner] = []

    async def start(service: MisbehavingService) -> MisbehavingService:
        app = web.Application()
        app.router.add_post(INFER_PATH, service.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", service.port).start()
        runners.append(runner)
        return service

    yield start
    for runner in runners:
        await runner.cleanup()


def inference_with(config: Config, *heartbeats: ServiceHeartbeat) -> Inference:
    registry = ServiceRegistry(config)
    for heartbeat in heartbeats:
        registry.observe(heartbeat)
    return Inference(config, registry, ObjectStore(config.frame_extractor.minio))


async def test_detector_down_ends_the_frame_as_failed(stack_config: Config) -> None:
    down = ServiceHeartbeat(service_id="down", endpoint=f"http://127.0.0.1:{free_port()}",
                            task_types=[TaskType.AREA_INTRUSION], capacity=1)
    inference = inference_with(stack_config, down)
    result = await inference.infer(frame())
    await inference.close()
    assert isinstance(result, FrameOutcome)
    assert (result.outcome, result.reason) == (Outcome.FAILED, "connect")


@pytest.mark.parametrize("answer,reason", [
    (lambda: web.json_response({"error": {"code": 107002, "message": "CUDA out of memory"}}), "resource_exhausted"),
    (lambda: web.Response(text="<html>oops</html>", status=502), "http_5xx"),
    (lambda: web.json_response({"results": [{"frame_id": "x", "detections": [{"label": "person", "score": 7}]}]}),
     "malformed"),
])
async def test_bad_answers_are_classified_and_retried_elsewhere(stack_config: Config, serve, answer,  # type: ignore
                                                                reason: str) -> None:
    bad = await serve(MisbehavingService(answer))
    good_frame = frame()
    good = await serve(MisbehavingService(lambda: web.json_response(
        {"results": [{"frame_id": good_frame.frame_id, "detections": []}]})))
    inference = inference_with(stack_config, bad.heartbeat("bad"))
    failed = await inference.infer(good_frame)
    assert isinstance(failed, FrameOutcome) and failed.reason == reason and bad.calls == 1  # one try, no storm

    inference.registry.observe(good.heartbeat("good"))
    bad.calls = 0
    results = [await inference.infer(good_frame) for _ in range(4)]
    await inference.close()
    assert all(isinstance(r, DetectionEvent) and r.service_id == "good" for r in results)
    assert bad.calls <= 4 and good.calls == 4
