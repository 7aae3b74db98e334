"""Extractors as one consumer group over fw.tasks: two split the cameras, the survivor takes over the cameras of
one killed with SIGKILL, and `framewatch tasks` changes what runs while they run."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import namespaced_env
from framewatch.ops.tasks import camera_statuses
from framewatch.schemas.config import Config, load_config
from framewatch.schemas.events import CameraState, CameraStatus, now_ms
from tests.conftest import ROOT, SAMPLE_CLIP, free_port, write_config

CAMERAS = [f"cam-{i}" for i in range(8)]
TAKEOVER_S = 30


def config_text() -> str:
    return "".join(f'[[frame_extractor.tasks]]\nid = "{c}"\ntask_type = "区域入侵"\nrtsp_url = "{SAMPLE_CLIP}"\n'
                   f'interval_ms = 1000\nloop = true\n' for c in CAMERAS)


class Extractors:
    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.path = write_config(folder / "extractor.toml", config_text())
        self.config: Config = load_config(self.path, env)[0]
        self.processes: list[ServiceProcess] = []
        self.ports: list[int] = []  # each process's /metrics, /healthz and /readyz

    def start(self) -> ServiceProcess:
        self.ports.append(free_port())
        env = {**self.env, "FRAMEWATCH_EXTRACTOR_METRICS_PORT": str(self.ports[-1])}
        process = ServiceProcess(f"extractor-{len(self.processes)}", ["extract", "-c", str(self.path)], env,
                                 self.folder / "logs")
        self.processes.append(process)
        return process

    def statuses(self) -> dict[str, CameraStatus]:
        return {s.camera_id: s for s in asyncio.run(camera_statuses(self.config))}

    def wait_for(self, predicate: Callable[[dict[str, CameraStatus]], bool], timeout_s: float,
                 what: str) -> dict[str, CameraStatus]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            statuses = self.statuses()
            if predicate(statuses):
                return statuses
            time.sleep(1)
        logs = "\n".join(p.tail() for p in self.processes)
        raise AssertionError(f"not within {timeout_s:.0f}s: {what}; statuses: {self.statuses()}\n{logs}")

    def cli(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "framewatch.cli", *args[:1], "-c", str(self.path), *args[1:]],
                                capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def extractors(tmp_path: Path, stack_env: dict[str, str]) -> Iterator[Extractors]:
    group = Extractors(tmp_path, namespaced_env(stack_env))
    try:
        yield group
    finally:
        for process in group.processes:
            process.stop()


def streaming_since(statuses: dict[str, CameraStatus], cameras: list[str], since_ms: int) -> bool:
    return all(c in statuses and statuses[c].state is CameraState.STREAMING and statuses[c].emitted_at > since_ms
               for c in cameras)


def test_two_extractors_split_the_cameras_and_one_takes_over_when_the_other_dies(extractors: Extractors) -> None:
    first, second = extractors.start(), extractors.start()
    started = now_ms()
    statuses = extractors.wait_for(
        lambda s: streaming_since(s, CAMERAS, started) and len({s[c].extractor for c in CAMERAS}) == 2, 60,
        "all cameras streaming, on two extractors")
    owners = {s.extractor for s in statuses.values()}
    survivor = next(name for name in owners if name.endswith(f"-{second.process.pid}"))
    moved = [c for c in CAMERAS if statuses[c].extractor != survivor]
    assert moved and len(moved) < len(CAMERAS)  # a split, both ways
    assert "Traceback" not in first.log_path.read_text()
    for port in extractors.ports:  # the probes a supervisor uses
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json() == {"alive": True}
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json() == {"ready": True, "assigned": True, "object_store": True}

    first.stop(signal.SIGKILL)
    killed_at = now_ms()
    statuses = extractors.wait_for(
        lambda s: streaming_since(s, CAMERAS, killed_at) and all(s[c].extractor == survivor for c in CAMERAS),
        TAKEOVER_S, f"the survivor running {moved} too")
    assert all(statuses[c].fps_out > 0 for c in CAMERAS)
    table = extractors.cli("cameras").splitlines()
    assert table[0].split()[:3] == ["camera", "state", "fps"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert all(rows[c][1] == "streaming" and rows[c][-1] == survivor for c in CAMERAS), table


def test_tasks_changed_at_run_time_start_and_stop_cameras(extractors: Extractors) -> None:
    extractors.start()
    started = now_ms()
    extractors.wait_for(lambda s: streaming_since(s, CAMERAS, started), 60, "the config's cameras streaming")

    added = json.loads(extractors.cli("tasks", "add", "gate-2", "--type", "area_intrusion", "--url",
                                      f"file://{SAMPLE_CLIP}", "--interval-ms", "500", "--set", "loop=true",
                                      "--set", "region=[[0,0.5],[1,0.5],[1,1],[0,1]]"))
    assert added["id"] == "gate-2" and added["region"][0] == [0.0, 0.5]
    extractors.wait_for(lambda s: streaming_since(s, ["gate-2"], started), 30, "the added camera streaming")

    disabled_at = now_ms()
    extractors.cli("tasks", "disable", "cam-3")
    extractors.wait_for(lambda s: s["cam-3"].state is CameraState.STOPPED and s["cam-3"].emitted_at >= disabled_at,
                        30, "cam-3 stopped")
    listing = extractors.cli("tasks", "list")
    line = next(x for x in listing.splitlines() if x.startswith("cam-3 "))
    assert line.split()[2:5] == ["no", "1000ms", "command"]
    assert next(x for x in listing.splitlines() if x.startswith("cam-0 ")).split()[4] == "config"

    # SIGTERM stops the cameras and says so; a restarted extractor publishes its config again, but the disabled
    # task stays disabled
    stopping = now_ms()
    extractors.processes[0].stop()
    statuses = extractors.statuses()
    assert all(statuses[c].state is CameraState.STOPPED and statuses[c].emitted_at >= stopping
               for c in [*CAMERAS, "gate-2"] if c != "cam-3"), statuses
    extractors.start()
    restarted = now_ms()
    statuses = extractors.wait_for(lambda s: streaming_since(s, ["cam-0", "gate-2"], restarted), 60,
                                   "cameras back after the restart")
    assert statuses["cam-3"].emitted_at < restarted


def test_bad_task_changes_are_refused_with_the_field_named(extractors: Extractors) -> None:
    result = subprocess.run([sys.executable, "-m", "framewatch.cli", "tasks", "-c", str(extractors.path), "add",
                             "door", "--type", "区域入侵", "--url", "rtsp://user:secret@10.0.0.9/1",
                             "--set", "interval_ms=-5"],
                            capture_output=True, text=True, env=extractors.env, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "task 'door': interval_ms: Input should be greater than 0" in result.stderr
    assert "secret" not in result.stderr + result.stdout
    added = subprocess.run([sys.executable, "-m", "framewatch.cli", "tasks", "-c", str(extractors.path), "add",
                            "door", "--type", "区域入侵", "--url", "rtsp://user:secret@10.0.0.9/1",
                            "--set", "enabled=false"],
                           capture_output=True, text=True, env=extractors.env, cwd=ROOT, timeout=60)
    assert added.returncode == 0 and "rtsp://***@10.0.0.9/1" in added.stdout
    tail = subprocess.run([sys.executable, "-m", "framewatch.cli", "topics", "-c", str(extractors.path), "tail",
                           extractors.config.topic("fw.tasks")], capture_output=True, text=True, env=extractors.env,
                          cwd=ROOT, timeout=60)
    assert tail.returncode == 0 and "rtsp://***@10.0.0.9/1" in tail.stdout
    listing = extractors.cli("tasks", "list")
    assert "rtsp://***@10.0.0.9/1" in listing
    as_json = json.loads(extractors.cli("tasks", "list", "--json"))
    assert {"task_id": "door", "origin": "command"}.items() <= next(t for t in as_json if t["task_id"] == "door").items()
    assert "secret" not in added.stdout + added.stderr + tail.stdout + listing + str(as_json)
    missing = subprocess.run([sys.executable, "-m", "framewatch.cli", "tasks", "-c", str(extractors.path),
                              "update", "nobody", "--set", "interval_ms=100"],
                             capture_output=True, text=True, env=extractors.env, cwd=ROOT, timeout=60)
    assert missing.returncode == 2 and "no task 'nobody'" in missing.stderr
