"""A detector slower than a rebalance: frames in flight at a worker whose partitions move to a new worker.

The old owner waits `wait_empty_s` (15 s) for them, then hands the partitions over; the new owner reads those
frames again, drops them as stale, and retention deletes their objects 5 s later. The old owner's results, coming
back after that, are discarded: no frame ends twice, no alert is raised on an image already deleted
(`image_not_copied`), and every stored alert has its image.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from pathlib import Path

import httpx

from framewatch.clients.bus import read_records
from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import FrameLoad, free_port, start_fleet
from framewatch.schemas.config import Config
from framewatch.schemas.events import DetectionEvent, FrameEvent, FrameOutcome, Outcome
from framewatch.schemas.topics import DETECTIONS, FRAME_OUTCOMES, FRAMES
from tests.conftest import SAMPLE_JPEG
from tests.test_alert_path import alerting_config, metric, missing_images, stored
from tests.test_broker_link import committed

CAMERAS = 8
LATENCY_MS = 45_000  # past the second worker's start, the 15 s hand-over and retention's 5 s grace
LOAD_S = 10


def slow_config(prefix: str) -> str:
    """The detector takes one frame at a time and answers it after LATENCY_MS; every inferred frame raises an
    alert."""
    return alerting_config(prefix, cameras=CAMERAS).replace(
        "[ai_analysis]\n", f"[ai_analysis]\ninfer_timeout_sec = {LATENCY_MS / 1000 + 30}\n")


def fenced(metrics_url: str) -> float:
    return metric(httpx.get(metrics_url, timeout=5).text, "framewatch_inference_results_fenced_total")


def wait_for_partitions(port: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/stats", timeout=2).json()["partitions_assigned"] > 0:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the second worker (port {port}) got no partitions within {timeout_s:.0f}s")


async def frame_ends(config: Config) -> tuple[set[str], set[str]]:
    """Frames inferred (a DetectionEvent) and frames ended before the rules (dropped or failed)."""
    detected = {DetectionEvent.decode(r.value).frame.frame_id
                for r in await read_records(config, config.topic(DETECTIONS.name))}
    outcomes = [FrameOutcome.decode(r.value) for r in await read_records(config, config.topic(FRAME_OUTCOMES.name))]
    return detected, {o.frame.frame_id for o in outcomes if o.outcome in (Outcome.DROPPED, Outcome.FAILED)}


async def unended(config: Config, ended: set[str]) -> str:
    """Where the frames without an end are, and how far the workers' group has committed."""
    where = sorted((r.partition, r.offset) for r in await read_records(config, config.topic(FRAMES.name))
                   if FrameEvent.decode(r.value).frame_id not in ended)
    frames = config.topic(FRAMES.name)
    commits = {p: o for (t, p), o in (await committed(config, f"{config.framewatch.namespace}-framewatch")).items()
               if t == frames}
    return f"(partition, offset) {where}, committed {commits}"


def test_results_coming_back_after_a_hand_over_are_discarded_and_no_alert_lacks_its_image(
        tmp_path: Path, stack_env: dict[str, str]) -> None:
    prefix = "h" + uuid.uuid4().hex[:6]
    with start_fleet(tmp_path, stack_env, 1, slow_config(prefix), latency_ms=LATENCY_MS, people=1) as fleet:
        config, run = fleet.run.config, fleet.run
        second_port = free_port()
        second = ServiceProcess("worker-second", ["worker", "-c", str(run.config_path)],
                                {**run.env, "FRAMEWATCH_WORKER_PORT": str(second_port)}, run.log_dir)
        try:
            async def scenario() -> None:
                load = FrameLoad(config, cameras=CAMERAS, fps_per_camera=1, prefix=prefix, image=SAMPLE_JPEG)
                await load.run(duration_s=LOAD_S)  # a frame is in flight at the first worker
                await asyncio.to_thread(wait_for_partitions, second_port)
                frames = {FrameEvent.decode(r.value).frame_id
                          for r in await read_records(config, config.topic(FRAMES.name))}
                deadline = time.monotonic() + LATENCY_MS / 1000 + 90
                while time.monotonic() < deadline:  # every frame ended, the slow answer back
                    detected, dropped = await frame_ends(config)
                    if detected | dropped >= frames and await asyncio.to_thread(fenced, run.metrics_url) > 0:
                        break
                    await asyncio.sleep(1)
                await asyncio.sleep(5)  # any alert the old owner would raise on those frames
                detected, dropped = await frame_ends(config)
                outcomes = [FrameOutcome.decode(r.value)
                            for r in await read_records(config, config.topic(FRAME_OUTCOMES.name))]
                rows = await stored(config, prefix)
                discarded = await asyncio.to_thread(fenced, run.metrics_url)
                print(f"slow hand-over: {len(frames)} frames, {len(detected)} inferred, {discarded:.0f} results "
                      f"discarded by the old owner, {len(rows)} alerts stored, outcome reasons "
                      f"{dict(collections.Counter(o.reason for o in outcomes))}")
                assert detected | dropped >= frames, f"frames without an end: {await unended(config, detected | dropped)}"
                assert detected & dropped == set(), "inferred by the old owner, dropped by the new one"
                assert [o for o in outcomes if o.reason == "image_not_copied"] == []
                assert await missing_images(config, list(rows.values())) == []
                assert discarded > 0, "the old owner had results of revoked partitions to discard"

            asyncio.run(scenario())
        finally:
            second.stop()
