"""Synthetic load for the inference path, and a follower that reads what comes out: tests and `bench/` use both.

`FrameLoad` plays the extractor's part: frame events at a steady rate over N cameras, straight onto fw.frames
(their objects need not exist: misbehaving services never fetch them, and deleting a missing key is a no-op).
`TopicFollower` reads the events that land on some topics from the moment it starts. `start_fleet` runs a
worker against a fleet of misbehaving services.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from framewatch.clients.bus import (
    connect_admin,
    ensure_topics,
    kafka_options,
    partitions,
)
from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.demo import PipelineRun
from framewatch.ops.table import text_table
from framewatch.schemas.config import Config
from framewatch.schemas.events import (
    DecodeError,
    DetectionEvent,
    Event,
    FrameEvent,
    now_ms,
)
from framewatch.schemas.tasks import TaskType
from framewatch.schemas.topics import FRAMES, TopicSpec, by_name

log = logging.getLogger("framewatch.load")


class FrameLoad:
    def __init__(self, config: Config, cameras: int, fps_per_camera: float, prefix: str = "load",
                 task_type: TaskType = TaskType.AREA_INTRUSION, image: bytes | None = None) -> None:
        """With `image`, every frame's object is uploaded before its event is sent, as the extractor does."""
        self.config = config
        self.image = image
        self.store = ObjectStore(config.frame_extractor.minio) if image is not None else None
        self.cameras = [f"{prefix}-{i:03d}" for i in range(cameras)]
        self.interval_s = 1 / fps_per_camera
        self.task_type = task_type
        self.sent = 0
        self._seq = 0

    def frame(self, camera: str) -> FrameEvent:
        self._seq += 1
        captured = now_ms()
        return FrameEvent(frame_id=FrameEvent.make_id(camera, captured, self._seq), task_id=camera, camera_id=camera,
                          task_type=self.task_type, seq=self._seq, captured_at=captured,
                          bucket=self.config.frame_extractor.minio.bucket,
                          object_key=f"frames/{camera}/load-{self._seq}.jpg", width=640, height=480)

    async def send(self, frames: list[FrameEvent]) -> None:
        """These frame events, at once (their objects are the caller's business)."""
        producer = AIOKafkaProducer(**kafka_options(self.config), acks="all")
        await producer.start()
        try:
            for frame in frames:
                await producer.send_and_wait(self.config.topic(FRAMES.name), frame.to_bytes(),
                                             key=frame.camera_id.encode())
            self.sent += len(frames)
        finally:
            await producer.stop()

    async def run(self, duration_s: float) -> int:
        """Every camera sends a frame each interval (cameras spread evenly over it) for `duration_s`."""
        producer = AIOKafkaProducer(**kafka_options(self.config), acks="all", linger_ms=0)  # as an extractor's
        await producer.start()
        topic = self.config.topic(FRAMES.name)
        step = self.interval_s / len(self.cameras)
        if self.store is not None:
            await self.store.ensure_bucket()
        started = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        try:
            tick = 0
            while (due := started + tick * step) < started + duration_s:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                camera = self.cameras[tick % len(self.cameras)]
                frame = self.frame(camera)
                if self.store is not None and self.image is not None:
                    await self.store.put(frame.object_key, self.image)
                pending.append(await producer.send(topic, frame.to_bytes(), key=camera.encode()))
                tick += 1
                self.sent += 1
                if len(pending) >= 200:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            return tick
        finally:
            await producer.stop()


class TopicFollower:
    """Every event that lands on the given topics after `start`, decoded."""

    def __init__(self, config: Config, specs: list[TopicSpec]) -> None:
        self.config = config
        self.topics = [config.topic(spec.name) for spec in specs]
        self.consumer = AIOKafkaConsumer(**kafka_options(config), group_id=None,
                                         enable_auto_commit=False)
        self.events: list[Event] = []
        self.undecodable = 0

    async def start(self) -> None:
        admin = await connect_admin(self.config)
        try:
            counts = await partitions(admin, self.topics)
        finally:
            await admin.close()
        await self.consumer.start()
        assigned = [TopicPartition(t, p) for t in self.topics for p in range(counts[t])]
        self.consumer.assign(assigned)
        await self.consumer.seek_to_end(*assigned)
        for tp in assigned:
            await self.consumer.position(tp)  # fixes the starting point now, before any load is sent

    async def stop(self) -> None:
        try:
            await self.consumer.stop()
        except KafkaError as error:  # a broker it last fetched from is gone: nothing of ours is lost
            log.warning("follower stopped with an error: %r", error)
        except asyncio.CancelledError:  # aiokafka's fetcher, cancelled mid-error, lets its cancellation out
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.warning("follower stopped while its fetcher was failing")

    async def poll(self, timeout_s: float = 0.5) -> list[Event]:
        batches = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=5000)
        fresh: list[Event] = []
        for tp, records in batches.items():
            spec = by_name(tp.topic)
            assert spec is not None, tp.topic
            for record in records:
                try:
                    fresh.append(spec.record.decode(record.value))
                except DecodeError:
                    self.undecodable += 1  # a poison record some test sent on purpose
        self.events.extend(fresh)
        return fresh

    async def collect_until(self, done: Any, timeout_s: float) -> bool:
        """Poll until `done(self.events)` holds; False when the time runs out first."""
        deadline = time.monotonic() + timeout_s
        while not done(self.events):
            if time.monotonic() > deadline:
                return False
            await self.poll()
        return True


def inferred_per_s(events: Sequence[object], since_ms: int, until_ms: int) -> float:
    count = sum(1 for e in events if isinstance(e, DetectionEvent) and since_ms <= e.emitted_at < until_ms)
    return count / ((until_ms - since_ms) / 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports."""
    while True:
        first = random.randrange(20000, 30000)
        sockets = []
        try:
            for port in range(first, first + count):
                sockets.append(socket.socket())
                sockets[-1].bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


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


def namespaced_env(stack_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The stack's addresses, plus a namespace, bucket, alert topic and worker port of a run's own."""
    namespace = "t" + uuid.uuid4().hex[:10]
    return {**os.environ, **stack_env, "FRAMEWATCH_NAMESPACE": namespace, "FRAMEWATCH_MINIO_BUCKET": f"fw-{namespace}",
            "FRAMEWATCH_MQ_TOPIC": f"{namespace}.easyai.alerts", "FRAMEWATCH_WORKER_PORT": str(free_port()), **extra}


@contextmanager
def start_fleet(folder: Path, stack_env: dict[str, str], instances: int, config: str = "",
                latency_ms: float = 140.0, people: int = 0,
                extra_env: dict[str, str] | None = None) -> Iterator[Fleet]:
    """A worker in a namespace of its own, and `instances` misbehaving services answering in `latency_ms`."""
    env = namespaced_env(stack_env, **(extra_env or {}))
    port = free_ports(instances)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "fleet.toml"
    config_path.write_text(config, encoding="utf-8")
    run = PipelineRun(config_path, env, folder / "logs",
                      detectors=["fake-detector", "--instances", str(instances), "--port", str(port),
                                 "--latency-ms", str(latency_ms), "--people", str(people)], services=instances)
    asyncio.run(ensure_topics(run.config))
    run.start()
    try:
        yield Fleet(run, port)
    finally:
        run.stop()


def scrape_histogram(url: str, name: str) -> dict[float, float]:
    """A Prometheus histogram's cumulative buckets (upper bound -> count) at `url`, summed over its labels."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        return histogram_buckets(answer.read().decode(), name)


def histogram_buckets(text: str, name: str) -> dict[float, float]:
    """The histogram `name`'s cumulative buckets in Prometheus' text format, summed over its labels."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def histogram_quantile(buckets: dict[float, float], q: float, since: dict[float, float] | None = None) -> float | None:
    """From cumulative buckets (less those of an earlier scrape, `since`), interpolating within the bucket as
    Prometheus' histogram_quantile does; None when nothing was observed."""
    counts = {bound: count - (since or {}).get(bound, 0.0) for bound, count in buckets.items()}
    total = counts.get(float("inf"), 0.0)
    if total == 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in sorted(counts.items()):
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def print_table(rows: list[tuple[str, Any, str]]) -> None:
    """A benchmark's figures for reading: name, value, goal."""
    print("\n" + "\n".join(text_table(["figure", "value", "goal"], rows, right={1})))


def machine_cores() -> dict[str, int]:
    """The machine's size as a benchmark saw it: the CPUs it has, and those this process may run on."""
    return {"cpu_count": os.cpu_count() or 1, "available": len(os.sched_getaffinity(0))}


def print_figures(figures: dict[str, Any], json_path: Path | None) -> None:
    """A benchmark's figures and the cores it had, as JSON, on stdout and, when asked, in a file."""
    text = json.dumps({**figures, "cores": machine_cores()}, indent=2)
    print(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")
