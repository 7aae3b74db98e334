"""Pressure from downstream, all real: a worker whose only algorithm service answers slowly drops a camera's
frames; the extractor hears it on fw.pressure and samples that camera less often, and samples it at its configured
rate again once the service is fast. The camera is added at run time, so the worker knows its rule from fw.tasks.
A recording, whose every frame is analysed, is held back instead of throttled."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from framewatch.clients.bus import read_records
from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import start_fleet
from framewatch.ops.tasks import camera_statuses
from framewatch.schemas.config import Config
from framewatch.schemas.events import CameraStatus, FrameOutcome
from framewatch.schemas.topics import FRAME_OUTCOMES, FRAMES
from framewatch.streams.extractor import run_extractor
from framewatch.streams.pressure import LOSSLESS_AHEAD
from tests.conftest import ROOT, SAMPLE_CLIP, free_port


def status_of(config: Config, camera: str) -> CameraStatus | None:
    return {s.camera_id: s for s in asyncio.run(camera_statuses(config))}.get(camera)


def wait_for_interval(config: Config, check: Callable[[int], bool], timeout_s: float, what: str) -> CameraStatus:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = status_of(config, "door")
        if status is not None and check(status.interval_ms):
            return status
        time.sleep(1)
    raise AssertionError(f"not within {timeout_s:.0f}s: {what}; last status {status_of(config, 'door')}")


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_camera_is_slowed_while_inference_is_behind_and_recovers(tmp_path: Path,
                                                                  stack_env: dict[str, str]) -> None:
    with start_fleet(tmp_path, stack_env, instances=1, latency_ms=300, people=1) as fleet:
        run = fleet.run
        added = subprocess.run([sys.executable, "-m", "framewatch.cli", "tasks", "-c", str(run.config_path), "add",
                                "door", "--type", "area_intrusion", "--url", str(SAMPLE_CLIP), "--interval-ms", "100",
                                "--set", "loop=true"], capture_output=True, text=True, env=run.env, cwd=ROOT,
                               timeout=60)
        assert added.returncode == 0, added.stderr
        extractor = ServiceProcess("extractor", ["extract", "-c", str(run.config_path)],
                                   {**run.env, "FRAMEWATCH_EXTRACTOR_METRICS_PORT": str(free_port())}, run.log_dir)
        try:
            # 10 frames/s against a service that takes about 3: most would be superseded in the worker
            slowed = wait_for_interval(run.config, lambda ms: ms >= 200, 40, "the camera slowed down")
            assert slowed.fps_out < 10
            fleet.control(0, latency_ms=10)
            wait_for_interval(run.config, lambda ms: ms <= 110, 60, "the camera back at 100 ms")
            cameras = httpx.get(run.stats_url.replace("/api/stats", "/api/cameras"), timeout=5).json()["cameras"]
            door = next(c for c in cameras if c["camera_id"] == "door")
            assert door["state"] == "streaming" and door["task_type"] == "area_intrusion" and door["inferred"] > 0
            metrics = httpx.get(run.metrics_url, timeout=5).text
            assert metric(metrics, 'framewatch_rules_frames_total{status="evaluated"}') > 0
            assert metric(metrics, 'framewatch_rules_frames_total{status="unknown_task"}') == 0
        finally:
            extractor.stop()
        assert "Traceback" not in extractor.log_path.read_text()


RECORDING = f"""
[frame_extractor]
realtime = false  # a recording: every frame is analysed (freshness "all"), read as fast as inference allows

[[frame_extractor.tasks]]
id = "recording"
task_type = "area_intrusion"
rtsp_url = "{SAMPLE_CLIP}"
interval_ms = 100
"""


async def sent_and_ended(config: Config) -> tuple[int, dict[str, int]]:
    frames = await read_records(config, config.topic(FRAMES.name))
    outcomes: dict[str, int] = {}
    for record in await read_records(config, config.topic(FRAME_OUTCOMES.name)):
        outcome = FrameOutcome.decode(record.value).outcome.value
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return len(frames), outcomes


def test_a_recording_waits_for_inference_instead_of_running_ahead(tmp_path: Path, stack_env: dict[str, str]) -> None:
    # 200 frames (20 s every 100 ms) against one service taking 100 ms: read freely, the clip would be on fw.frames
    # within a few seconds; held back, it stays within LOSSLESS_AHEAD frames of what inference has finished
    with start_fleet(tmp_path, stack_env, instances=1, latency_ms=100, config=RECORDING) as fleet:
        config = fleet.run.config

        async def scenario() -> tuple[list[tuple[int, int]], int, dict[str, int]]:
            extracting = asyncio.create_task(run_extractor(config))
            samples = []
            while not extracting.done():
                await asyncio.sleep(2)
                sent, ended = await sent_and_ended(config)
                samples.append((sent, sum(ended.values())))
            report = await extracting
            for _ in range(60):
                sent, ended = await sent_and_ended(config)
                if sum(ended.values()) >= report.emitted:
                    break
                await asyncio.sleep(1)
            return samples, report.emitted, ended

        samples, emitted, ended = asyncio.run(scenario())
    print("(sent, ended) every 2 s:", samples)
    assert emitted == 200 and ended == {"no_alert": 200}  # every frame, none dropped
    assert len(samples) >= 5  # the extraction took as long as inference, not a few seconds
    # sent and not yet through inference: LOSSLESS_AHEAD, plus what a report period (2 s) and Kafka lag add
    assert all(sent - done <= LOSSLESS_AHEAD + 24 for sent, done in samples), samples
