"""An extractor SIGKILLed between a frame's upload and its FrameEvent leaves nothing unannounced for long: its link to
Kafka is stalled (Toxiproxy drops every byte both ways) while the object store still takes its uploads, so each
camera uploads a frame whose event cannot leave, and then it is killed. The extractor that starts the cameras next
announces those frames within the bound; stopped cleanly itself, it leaves no upload without its event either.

Before, such an object stayed under frames/ until the hourly sweep (the chaos test found one now and then).
Only the killed extractor goes through the proxy; its successor and the checks go straight to the broker.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from framewatch.clients.bus import read_records
from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import free_port, namespaced_env
from framewatch.schemas.config import Config, load_config
from framewatch.schemas.events import FrameEvent
from framewatch.schemas.topics import FRAMES
from framewatch.stack.toxiproxy import PROXIED_KAFKA, KafkaLink
from tests.conftest import SAMPLE_CLIP, write_config

CAMERAS = 2
BOUND_S = 45  # from the successor's start: the dead one's session times out (10 s), then the cameras start
STALL_S = 3  # each camera (2 frames a second) uploads a frame whose event is stuck


def config_text(prefix: str) -> str:
    return "[frame_extractor]\nrealtime = true\n" + "".join(
        f'[[frame_extractor.tasks]]\nid = "{prefix}-{i}"\ntask_type = "area_intrusion"\nrtsp_url = "{SAMPLE_CLIP}"\n'
        f'interval_ms = 500\nloop = true\n' for i in range(CAMERAS))


async def unannounced(config: Config) -> set[str]:
    """Objects under frames/ that no FrameEvent on fw.frames names."""
    store = ObjectStore(config.frame_extractor.minio)
    objects = set(await store.list_keys(store.key("frames") + "/"))
    return objects - {FrameEvent.decode(r.value).object_key
                      for r in await read_records(config, config.topic(FRAMES.name))}


async def events_per_camera(config: Config) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in await read_records(config, config.topic(FRAMES.name)):
        camera = FrameEvent.decode(record.value).camera_id
        counts[camera] = counts.get(camera, 0) + 1
    return counts


def orphans_announced(metrics_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "framewatch_extractor_orphan_uploads_total")


def extractor(name: str, path: Path, env: dict[str, str], metrics_port: int, folder: Path) -> ServiceProcess:
    return ServiceProcess(name, ["extract", "-c", str(path)], {**env, "FRAMEWATCH_EXTRACTOR_METRICS_PORT":
                                                                str(metrics_port)}, folder / "logs")


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until `check()` holds; AssertionError after `timeout_s`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s:.0f}s: {what}"
        time.sleep(1)
    return time.monotonic() - started


def test_the_next_extractor_announces_what_a_killed_one_uploaded_without_its_event(
        tmp_path: Path, stack_env: dict[str, str]) -> None:
    env = namespaced_env(stack_env)
    path = write_config(tmp_path / "extractor.toml", config_text(env["FRAMEWATCH_NAMESPACE"]))
    config = load_config(path, env)[0]
    link = KafkaLink()
    link.clear()
    killed = extractor("killed", path, {**env, "FRAMEWATCH_KAFKA_BOOTSTRAP": PROXIED_KAFKA}, free_port(), tmp_path)
    successor: ServiceProcess | None = None
    try:
        wait_for(lambda: sum(1 for n in asyncio.run(events_per_camera(config)).values() if n >= 2) == CAMERAS,
                 60, f"frames of the {CAMERAS} cameras on fw.frames\n{killed.tail()}")
        for stream in ("upstream", "downstream"):
            link.add(f"stall-{stream}", "timeout", stream=stream, timeout=0)
        time.sleep(STALL_S)
        killed.stop(signal.SIGKILL)
        link.clear()
        left = asyncio.run(unannounced(config))
        assert left, "the kill left no upload without its event (each camera uploads one while the link stalls)"

        port = free_port()
        successor = extractor("successor", path, env, port, tmp_path)
        took_s = wait_for(lambda: not left & asyncio.run(unannounced(config)), BOUND_S,
                          f"{sorted(left)} announced\n{successor.tail()}")
        announced = orphans_announced(port)
        successor.stop(signal.SIGTERM)
        print(f"killed extractor: {len(left)} uploads without their event, announced {took_s:.0f}s after the "
              f"successor started")
        assert announced == len(left)
        assert asyncio.run(unannounced(config)) == set()  # the successor's clean stop left none either
    finally:
        link.clear()
        killed.stop(signal.SIGKILL)
        if successor is not None:
            successor.stop(signal.SIGKILL)
