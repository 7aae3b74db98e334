"""A real worker against fleets of misbehaving services over real sockets: throughput, breakers, overload."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from framewatch.ops.demo import PipelineRun
from framewatch.ops.load import FrameLoad, TopicFollower
from framewatch.schemas.events import DetectionEvent, FrameOutcome, Outcome, now_ms
from framewatch.schemas.topics import DETECTIONS, FRAME_OUTCOMES
from framewatch.streams.bus import ensure_topics
from tests.conftest import free_port, free_ports, write_config

LATENCY_S = 0.140


class Fleet:
    """A worker and `instances` misbehaving services (one process), in a namespace of their own."""

    def __init__(self, run: PipelineRun, first_port: int) -> None:
        self.run = run
        self.first_port = first_port

    def url(self, instance: int, path: str) -> str:
        return f"http://127.0.0.1:{self.first_port + instance}{path}"

    def control(self, instance: int, **behaviour: object) -> None:
        httpx.post(self.url(instance, "/control"), json=behaviour, timeout=5).raise_for_status()

    def requests(self, instance: int) -> int:
        return int(httpx.get(self.url(instance, "/stats"), timeout=5).json()["requests"])

    def worker_rss_mb(self) -> float:
        status = Path(f"/proc/{self.run.processes[-1].process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def start_fleet(tmp_path: Path, stack_env: dict[str, str], instances: int, config: str = "") -> Iterator[Fleet]:
    namespace = "t" + uuid.uuid4().hex[:10]
    env = {**os.environ, **stack_env, "FRAMEWATCH_NAMESPACE": namespace, "FRAMEWATCH_MINIO_BUCKET": f"fw-{namespace}",
           "FRAMEWATCH_MQ_TOPIC": f"{namespace}.easyai.alerts", "FRAMEWATCH_WORKER_PORT": str(free_port())}
    port = free_ports(instances)
    run = PipelineRun(write_config(tmp_path / "fleet.toml", config), env, tmp_path / "logs",
                      detectors=["fake-detector", "--instances", str(instances), "--port", str(port),
                                 "--latency-ms", str(LATENCY_S * 1000)], services=instances)
    asyncio.run(ensure_topics(run.config))
    run.start()
    try:
        yield Fleet(run, port)
    finally:
        run.stop()


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str]) -> Iterator[Fleet]:
    yield from start_fleet(tmp_path_factory.mktemp("six"), stack_env, 6, "[ai_analysis]\nbreaker_open_sec = 1\n")


async def following(fleet: Fleet) -> TopicFollower:
    follower = TopicFollower(fleet.run.config, [DETECTIONS, FRAME_OUTCOMES])
    await follower.start()
    return follower


def inferred_per_s(events: Sequence[object], since_ms: int, until_ms: int) -> float:
    count = sum(1 for e in events if isinstance(e, DetectionEvent) and since_ms <= e.emitted_at < until_ms)
    return count / ((until_ms - since_ms) / 1000)


async def test_six_services_at_140ms_are_kept_busy(six: Fleet) -> None:
    follower = await following(six)
    load = FrameLoad(six.run.config, cameras=12, fps_per_camera=5)  # 60 frames/s offered to 42.9 of capacity
    started = now_ms()
    await load.run(duration_s=25)
    ended = now_ms()
    assert await follower.collect_until(
        lambda events: sum(isinstance(e, FrameOutcome) for e in events) >= load.sent, timeout_s=30)
    await follower.stop()
    achieved = inferred_per_s(follower.events, started + 5000, ended)
    capacity = 6 / LATENCY_S
    assert achieved >= 0.95 * capacity, f"{achieved:.1f} frames/s of {capacity:.1f}"


async def test_a_service_answering_107002_is_cut_off_and_taken_back(six: Fleet) -> None:
    follower = await following(six)
    load = asyncio.create_task(FrameLoad(six.run.config, cameras=12, fps_per_camera=5).run(duration_s=55))
    await asyncio.sleep(5)
    six.control(2, fault="resource_exhausted")
    sick_at = now_ms()
    await asyncio.sleep(5)
    after_5s = six.requests(2)
    await asyncio.sleep(10)
    after_15s = six.requests(2)
    six.control(2, fault="none")
    recovered_at = now_ms()
    await load
    await follower.collect_until(lambda events: False, timeout_s=3)
    await follower.stop()
    assert after_15s - after_5s <= 3  # at most the breaker's half-open probes

    outcomes = [e for e in follower.events if isinstance(e, FrameOutcome) and e.frame.captured_at >= sick_at + 5000]
    failed = sum(o.outcome is Outcome.FAILED for o in outcomes)
    assert outcomes and failed / len(outcomes) < 0.01, f"{failed} of {len(outcomes)} frames failed"
    absorbed = inferred_per_s(follower.events, sick_at + 5000, sick_at + 15000)
    assert absorbed >= 0.9 * 5 / LATENCY_S, f"the five healthy services did {absorbed:.1f} frames/s"
    back = [e for e in follower.events if isinstance(e, DetectionEvent) and e.service_id.endswith("-2")
            and e.emitted_at > recovered_at]
    assert len(back) >= 20, f"the recovered service answered {len(back)} frames"


async def test_overload_at_the_seeds_ratio_stays_fresh_and_bounded(tmp_path: Path,
                                                                   stack_env: dict[str, str]) -> None:
    for fleet in start_fleet(tmp_path, stack_env, 1):
        follower = await following(fleet)
        # 14 cameras at 7 frames/s = 98 frames/s against one 140 ms service (7.14 frames/s): 13.7 : 1
        load = FrameLoad(fleet.run.config, cameras=14, fps_per_camera=7)
        running = asyncio.create_task(load.run(duration_s=120))
        samples: list[tuple[float, float, int]] = []
        while not running.done():
            await asyncio.sleep(5)
            stats = fleet.run.stats() or {}
            samples.append((time.monotonic(), fleet.worker_rss_mb(), int(stats.get("queue_size", -1))))
            await follower.poll(0)
        await running
        assert await follower.collect_until(
            lambda events: len({e.frame.frame_id for e in events if isinstance(e, FrameOutcome)}) >= load.sent,
            timeout_s=60)
        await follower.stop()
        stats = fleet.run.stats() or {}

    outcomes = [e for e in follower.events if isinstance(e, FrameOutcome)]
    assert len(outcomes) == len({o.frame.frame_id for o in outcomes}) == load.sent  # each frame ends exactly once
    by_outcome = {kind: sum(o.outcome is kind for o in outcomes) for kind in Outcome}
    detections = [e for e in follower.events if isinstance(e, DetectionEvent)]
    assert by_outcome[Outcome.ALERT] + by_outcome[Outcome.NO_ALERT] == len(detections)
    assert by_outcome[Outcome.DROPPED] > 0.8 * load.sent and by_outcome[Outcome.FAILED] == 0

    ages = sorted(d.dispatched_at - d.frame.captured_at for d in detections if d.dispatched_at is not None)
    p99 = ages[int(0.99 * (len(ages) - 1))]
    assert p99 < 1000, f"p99 frame age at dispatch {p99} ms"
    assert max(queued for _, _, queued in samples) <= 14 and stats["queue_max"] <= 14
    early = [rss for t, rss, _ in samples if t - samples[0][0] < 30]
    late = [rss for t, rss, _ in samples if t - samples[0][0] >= 90]
    assert max(late) < max(early) + 30, f"worker memory grew from {max(early):.0f} to {max(late):.0f} MB"
