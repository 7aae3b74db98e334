"""Storage stays bounded under overload: frames arrive far faster than inference for two and a half minutes (the
backlog meets its bound within seconds: `make test` keeps within its 45 minutes with the browser tests added)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.load import FrameLoad, start_fleet
from tests.conftest import SAMPLE_JPEG

CAMERAS, FPS = 10, 5  # 50 frames/s against one 140 ms service (7.1 frames/s): 7 : 1
GRACE_S, MAX_AGE_S, SLACK_S = 5, 2, 3
DURATION_S = 150


def test_frames_under_overload_stay_bounded(tmp_path: Path, stack_env: dict[str, str]) -> None:
    with start_fleet(tmp_path, stack_env, 1, latency_ms=140) as fleet:
        config = fleet.run.config
        store = ObjectStore(config.frame_extractor.minio)

        async def scenario() -> tuple[list[tuple[float, int, int]], int]:
            load = FrameLoad(config, cameras=CAMERAS, fps_per_camera=FPS, image=SAMPLE_JPEG)
            running = asyncio.create_task(load.run(duration_s=DURATION_S))
            samples: list[tuple[float, int, int]] = []
            started = time.monotonic()
            while not running.done():
                await asyncio.sleep(10)
                samples.append((time.monotonic() - started, load.sent, len(await store.list_keys("frames/"))))
            await running
            await asyncio.sleep(GRACE_S + MAX_AGE_S + SLACK_S)
            return samples, len(await store.list_keys("frames/"))

        samples, left = asyncio.run(scenario())
    # no task keeps frames (max_frame_count has nothing to hold): what exists is what is in flight, i.e. at most
    # the frames of the last few seconds (waiting, at the detector, or in retention's grace)
    bound = CAMERAS * FPS * (GRACE_S + MAX_AGE_S + SLACK_S)
    print("objects under frames/ every 10 s:", [n for _, _, n in samples], "bound", bound, "left", left)
    assert max(n for _, _, n in samples) <= bound
    assert samples[-1][1] > 0.9 * CAMERAS * FPS * DURATION_S  # the load really ran at its rate
    late = [n for t, _, n in samples if t > DURATION_S - 30]
    early = [n for t, _, n in samples if 30 < t <= 60]
    assert max(late) <= 1.5 * max(early) + 50  # flat, not growing
    assert left == 0
