"""A real worker against fleets of misbehaving services over real sockets: throughput, breakers, overload."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from framewatch.ops.load import (
    Fleet,
    FrameLoad,
    TopicFollower,
    inferred_per_s,
    start_fleet,
)
from framewatch.schemas.events import DetectionEvent, FrameOutcome, Outcome, now_ms
from framewatch.schemas.topics import DETECTIONS, FRAME_OUTCOMES

LATENCY_S = 0.140


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str]) -> Iterator[Fleet]:
    with start_fleet(tmp_path_factory.mktemp("six"), stack_env, 6, "[ai_analysis]\nbreaker_open_sec = 1\n") as fleet:
        yield fleet


@pytest.fixture
def one(tmp_path: Path, stack_env: dict[str, str]) -> Iterator[Fleet]:
    with start_fleet(tmp_path, stack_env, 1) as fleet:
        yield fleet


async def following(fleet: Fleet) -> TopicFollower:
    follower = TopicFollower(fleet.run.config, [DETECTIONS, FRAME_OUTCOMES])
    await follower.start()
    return follower


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
    # an idle slot costs a whole 140 ms request, so a scheduler that let slots idle would fall far below this;
    # the margin below 1 is this shared machine's noise (0.89 seen under a full CI run, 0.93 in the benchmark)
    assert achieved >= 0.85 * capacity, f"{achieved:.1f} frames/s of {capacity:.1f}"


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


async def test_overload_at_the_seeds_ratio_stays_fresh_and_bounded(one: Fleet) -> None:
    follower = await following(one)
    # 14 cameras at 7 frames/s = 98 frames/s against one 140 ms service (7.14 frames/s): 13.7 : 1
    load = FrameLoad(one.run.config, cameras=14, fps_per_camera=7)
    running = asyncio.create_task(load.run(duration_s=120))
    samples: list[tuple[float, float, int]] = []
    while not running.done():
        await asyncio.sleep(5)
        stats = one.run.stats()
        samples.append((time.monotonic(), one.worker_rss_mb(), -1 if stats is None else stats.queue_size))
        await follower.poll(0)
    await running
    stopped = now_ms()
    assert await follower.collect_until(
        lambda events: len({e.frame.frame_id for e in events if isinstance(e, FrameOutcome)}) >= load.sent,
        timeout_s=60)
    await follower.stop()
    stats = one.run.stats()

    outcomes = [e for e in follower.events if isinstance(e, FrameOutcome)]
    assert len(outcomes) == len({o.frame.frame_id for o in outcomes}) == load.sent  # each frame ends exactly once
    by_outcome = {kind: sum(o.outcome is kind for o in outcomes) for kind in Outcome}
    detections = [e for e in follower.events if isinstance(e, DetectionEvent)]
    assert by_outcome[Outcome.ALERT] + by_outcome[Outcome.NO_ALERT] == len(detections)
    assert by_outcome[Outcome.DROPPED] > 0.8 * load.sent and by_outcome[Outcome.FAILED] == 0

    # while the overload lasts: once the cameras stop, their last frames wait their turn with nothing newer
    ages = sorted(d.dispatched_at - d.frame.captured_at for d in detections
                  if d.dispatched_at is not None and d.dispatched_at <= stopped)
    p99 = ages[int(0.99 * (len(ages) - 1))]
    assert p99 < 1000, f"p99 frame age at dispatch {p99} ms"
    oldest = max(d.dispatched_at - d.frame.captured_at for d in detections if d.dispatched_at is not None)
    assert oldest <= one.run.config.ai_analysis.max_frame_age_ms
    assert max(queued for _, _, queued in samples) <= 14 and stats is not None and stats.queue_max <= 14
    early = [rss for t, rss, _ in samples if t - samples[0][0] < 30]
    late = [rss for t, rss, _ in samples if t - samples[0][0] >= 90]
    assert max(late) < max(early) + 30, f"worker memory grew from {max(early):.0f} to {max(late):.0f} MB"


def test_services_command_lists_the_fleet_with_health_and_load(six: Fleet) -> None:
    worker = f"http://127.0.0.1:{six.run.config.framewatch.worker_web_port}"
    result = subprocess.run([sys.executable, "-m", "framewatch.cli", "services", "--worker", worker],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert sorted(rows) == [f"fake-{i}" for i in range(6)]
    for service_id, (_, health, breaker, in_flight, capacity, mine, batch, *_rest) in rows.items():
        assert (health, breaker, capacity, batch) == ("healthy", "closed", "1", "1"), service_id
        assert mine in ("0", "1"), f"{service_id}: this worker's part of its capacity is {mine}"
        assert int(in_flight) in (0, 1)


def test_services_command_names_an_unreachable_worker() -> None:
    result = subprocess.run([sys.executable, "-m", "framewatch.cli", "services", "--worker", "http://127.0.0.1:9"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 3  # unreachable
    assert "cannot reach the worker at http://127.0.0.1:9/api/services" in result.stderr
