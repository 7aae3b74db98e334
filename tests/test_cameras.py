"""Cameras against a real RTSP server (mediamtx, fed by PyAV publishing vtest.avi as H.264): sampling on time,
reconnecting when the server comes back, a clear state and error for every kind of bad source, the change gate."""

from __future__ import annotations

import asyncio
import functools
import http.server
import signal
import statistics
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from framewatch.clients.bus import read_records
from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.camera import start_publisher
from framewatch.schemas.config import Config, load_config
from framewatch.schemas.events import CameraState, FrameEvent
from framewatch.stack import StackHome
from framewatch.stack.mediamtx import Mediamtx, server_config
from framewatch.streams.camera import Camera
from framewatch.streams.extractor import open_uplink
from tests.conftest import SAMPLE_CLIP, Clips, free_port, free_ports, write_config


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[dict[str, Camera]]:
    """Every task of the config as a camera on one extractor's uplink, stopped on the way out."""
    async with open_uplink(config) as uplink:
        cameras = {t.id: Camera(t, config.frame_extractor, uplink) for t in config.frame_extractor.tasks}
        runners = [asyncio.create_task(camera.run()) for camera in cameras.values()]
        try:
            yield cameras
        finally:
            for camera in cameras.values():
                camera.stop()
            await asyncio.gather(*runners, return_exceptions=True)


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        await asyncio.sleep(0.1)


def camera_config(tmp_path: Path, env: dict[str, str], tasks: dict[str, str], extra: str = "") -> Config:
    body = extra + "".join(f'\n[[frame_extractor.tasks]]\nid = "{task_id}"\ntask_type = "区域入侵"\n{settings}\n'
                           for task_id, settings in tasks.items())
    config, _ = load_config(write_config(tmp_path / "cameras.toml", body), env)
    return config


@contextmanager
def publishing(clip: Path, urls: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    publisher = start_publisher(clip, urls, log)
    try:
        yield publisher
    finally:
        publisher.terminate()
        publisher.wait(10)


def packets_skipped(task: str) -> float:
    return REGISTRY.get_sample_value("framewatch_extractor_packets_skipped_total", {"task": task}) or 0.0


@pytest.fixture
def rtsp(stack_env: dict[str, str]) -> str:
    return f"rtsp://{stack_env['FRAMEWATCH_RTSP_SERVER']}"


async def test_an_rtsp_camera_is_sampled_at_its_interval(isolated_env: dict[str, str], clips: Clips, rtsp: str,
                                                         namespace: str, tmp_path: Path) -> None:
    url = f"{rtsp}/cam-{namespace}"
    config = camera_config(tmp_path, isolated_env, {"door": f'rtsp_url = "{url}"\ninterval_ms = 200'})
    skipped_before = packets_skipped("door")
    with publishing(clips.moving, [url], tmp_path / "publisher.log"):
        async with running(config) as cameras:
            door = cameras["door"]
            await wait_until(lambda: door.emitted >= 60, 40, "60 frames from the RTSP camera")
            assert door.state is CameraState.STREAMING and door.dropped == 0
            # a key frame a second: once the GOP is known, the frames after each second's last due one are skipped
            assert 0 < packets_skipped("door") - skipped_before < door.decoded / 4
    events = [FrameEvent.decode(r.value) for r in await read_records(config, config.topic("fw.frames"))]
    times = [e.captured_at for e in events]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # within 10 %: on average over the run, and for nine frames in ten
    assert abs((times[-1] - times[0]) / len(gaps) - 200) <= 20, gaps
    assert sum(1 for g in gaps if abs(g - 200) <= 20) >= 0.9 * len(gaps), gaps
    assert abs(statistics.median(gaps) - 200) <= 20
    store = ObjectStore(config.frame_extractor.minio)
    assert all([await store.exists(e.object_key) for e in events[::10]])  # no event without its object
    assert {e.width for e in events} == {768}


class PrivateRtspServer:
    """A mediamtx of this test's own, to kill without disturbing the others."""

    def __init__(self, folder: Path) -> None:
        first = free_ports(6)
        self.port = first + first % 2  # its RTP port (port + 2) must be even
        self.log = folder / "mediamtx.log"
        self.config = folder / "mediamtx.yml"
        self.config.write_text(server_config("127.0.0.1", self.port, self.port + 4, "unused"))
        self.binary = Mediamtx(StackHome.default()).binary
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


async def test_a_camera_reconnects_when_its_server_returns_and_the_others_go_on(
        isolated_env: dict[str, str], clips: Clips, namespace: str, tmp_path: Path) -> None:
    server = PrivateRtspServer(tmp_path)
    url = f"rtsp://127.0.0.1:{server.port}/cam-{namespace}"
    config = camera_config(tmp_path, isolated_env, {
        "live": f'rtsp_url = "{url}"\ninterval_ms = 200',
        "file": f'rtsp_url = "{SAMPLE_CLIP}"\ninterval_ms = 500\nloop = true',
    }, extra="[frame_extractor]\nreconnect_min_sec = 0.5\nreconnect_max_sec = 2\n")
    server.start()
    try:
        with publishing(clips.moving, [url], tmp_path / "publisher.log"):
            async with running(config) as cameras:
                live, file = cameras["live"], cameras["file"]
                await wait_until(lambda: live.emitted >= 10, 30, "the live camera streaming")
                server.kill()
                await wait_until(lambda: live.state in (CameraState.BACKOFF, CameraState.CONNECTING), 15,
                                 "the live camera noticing its server is gone")
                assert "ended" in live.last_error or "refused" in live.last_error, live.last_error
                file_before, live_before = file.emitted, live.emitted
                await asyncio.sleep(4)
                assert file.emitted >= file_before + 6 and file.state is CameraState.STREAMING
                assert live.emitted == live_before
                server.start()  # the publisher finds it again by itself, then the camera does
                await wait_until(lambda: live.emitted >= live_before + 10, 30, "the live camera back")
                assert live.state is CameraState.STREAMING and live.reconnects >= 1 and live.last_error == ""
    finally:
        server.kill()


@contextmanager
def serving(folder: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


async def test_bad_sources_get_a_state_and_a_clear_error_and_the_good_ones_go_on(  # and RTSP over UDP, and HLS
        isolated_env: dict[str, str], stack_env: dict[str, str], clips: Clips, rtsp: str, namespace: str,
        tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "camera.mjpg").write_text("404 page of a camera vendor, served as text\n")
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clips.moving.read_bytes()[: clips.moving.stat().st_size // 3])
    secure = f"{rtsp}/secure-{namespace}"
    public = f"cam-{namespace}-public"
    viewer = stack_env["FRAMEWATCH_RTSP_VIEWER"]
    with serving(web) as http_root, publishing(clips.moving, [secure, f"{rtsp}/{public}"],
                                               tmp_path / "publisher.log"):
        config = camera_config(tmp_path, isolated_env, {
            "unreachable": f'rtsp_url = "rtsp://127.0.0.1:{free_port()}/stream"',
            "wrong_path": f'rtsp_url = "{rtsp}/cam-{namespace}-nothing-here"',
            "unauthorized": f'rtsp_url = "rtsp://viewer:wrong-password@{secure.removeprefix("rtsp://")}"',
            "authorized": f'rtsp_url = "rtsp://{viewer}@{secure.removeprefix("rtsp://")}"',
            "text": f'rtsp_url = "{http_root}/camera.mjpg"',
            "truncated": f'rtsp_url = "{truncated}"',
            "good": f'rtsp_url = "{SAMPLE_CLIP}"\ninterval_ms = 500\nloop = true',
            "udp": f'rtsp_url = "{rtsp}/{public}"\nrtsp_transport = "udp"',
            "hls": f'rtsp_url = "http://{stack_env["FRAMEWATCH_HLS_SERVER"]}/{public}/index.m3u8"',
        }, extra="[frame_extractor]\nreconnect_min_sec = 0.5\nreconnect_max_sec = 2\n")
        async with running(config) as cameras:
            await wait_until(lambda: cameras["unreachable"].reconnects >= 2 and cameras["wrong_path"].reconnects >= 2
                             and all(cameras[c].emitted >= 5 for c in ("authorized", "udp", "hls"))
                             and cameras["unauthorized"].state.value == "failed",
                             30, "every camera settled")
            states = {name: (camera.state.value, camera.last_error) for name, camera in cameras.items()}
            assert cameras["good"].emitted >= 5
    assert states["unreachable"][0] in ("backoff", "connecting") and "Connection refused" in states["unreachable"][1]
    assert states["wrong_path"][0] in ("backoff", "connecting") and "404 Not Found" in states["wrong_path"][1]
    assert states["unauthorized"] == ("failed", f"rtsp://***@{secure.removeprefix('rtsp://')}: Server returned 401 "
                                                "Unauthorized (authorization failed): check the user and password "
                                                "in the camera URL")
    assert states["text"][0] == "failed" and "not a playable video" in states["text"][1]
    assert states["truncated"] == ("failed", f"{truncated}: not a playable video (Invalid data found when "
                                             "processing input)")
    assert {states[c] for c in ("authorized", "good", "udp", "hls")} == {("streaming", "")}
    assert all(viewer.split(":")[1] not in error for _, error in states.values())


async def test_change_gate_uploads_a_static_scene_a_small_fraction_of_a_moving_one(
        isolated_env: dict[str, str], clips: Clips, tmp_path: Path) -> None:
    gate = "interval_ms = 200\nchange_gate = true\nchange_heartbeat_sec = 5"
    config = camera_config(tmp_path, isolated_env, {"moving": f'rtsp_url = "{clips.moving}"\n{gate}',
                                                    "still": f'rtsp_url = "{clips.still}"\n{gate}'},
                           extra="[frame_extractor]\nrealtime = false\n")
    async with running(config) as cameras:
        await wait_until(lambda: all(c.state is CameraState.ENDED for c in cameras.values()), 60, "both clips read")
    store = ObjectStore(config.frame_extractor.minio)
    uploaded = {name: len(await store.list_keys(f"frames/{name}/")) for name in cameras}
    moving_per_s, still_per_s = uploaded["moving"] / 31.8, uploaded["still"] / 10.0  # the clips' lengths
    assert uploaded == {name: camera.emitted for name, camera in cameras.items()}
    assert uploaded["moving"] >= 0.8 * 159  # people walk through the plaza in most of its 159 samples
    assert uploaded["still"] == 2  # the first frame and the 5 s heartbeat, of 50 samples
    assert still_per_s <= 0.05 * moving_per_s
