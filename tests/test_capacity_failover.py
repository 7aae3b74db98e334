"""PostgreSQL fails over under saturation (agents/inference/capacity.py, agents/membership.py): four workers (real
processes, one consumer group) keep a capacity-8 service busy while PostgreSQL (an instance of this test's own, so
the shared stack's is left alone) is stopped with `pg_ctl stop -m immediate` and started again. The service, on a
real socket in this process, records how many requests it has at once; it must never have more than 8, and the
workers must keep it busy meanwhile (their parts of the capacity, split by the group's membership, add up to it).

FRAMEWATCH_PG_OUTAGE_SECONDS sets how long PostgreSQL stays down (60 by default: twice the 30 s after which the
workers used to count themselves alone).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from framewatch.clients.bus import ensure_topics
from framewatch.detector.misbehaving import MisbehavingService, serve
from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import FrameLoad, free_port, namespaced_env
from framewatch.schemas.config import Config, load_config
from framewatch.stack import StackHome
from framewatch.stack.postgres import Postgres
from tests.conftest import write_config
from tests.test_scheduler import fake

WORKERS = 4
CAPACITY = 8
LATENCY_MS = 1000
CAMERAS = 16  # 3 to 5 on each of fw.frames' 4 partitions, at 1 fps: more than each worker's part (2) can take
OUTAGE_S = float(os.environ.get("FRAMEWATCH_PG_OUTAGE_SECONDS", "60"))
WINDOW_S = 5.0
GRACE_S = 10.0  # infer_timeout_sec: after the loss, a worker keeps to the slots it held this long


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own (the stack's code, another port and data folder). Its folder is not under
    pytest's: a pytest session starting meanwhile makes that private again, and pg_ctl's account then cannot
    reach the server's files."""
    with tempfile.TemporaryDirectory(prefix="framewatch-pg-") as folder:
        server = Postgres(StackHome(Path(folder)))
        server.port = free_port()
        server.up()
        yield server
        pg_ctl(server, "stop", "-m", "immediate")


def pg_ctl(server: Postgres, *args: str) -> str:
    """pg_ctl on the server's data folder, as the account that runs it; what it said, or what it said went wrong."""
    done = subprocess.run([server._bin("pg_ctl"), *args, "-D", str(server.data)], capture_output=True, text=True,
                          **server.identity())
    return done.stdout if done.returncode == 0 else f"failed ({done.returncode}): {done.stdout} {done.stderr}"


@dataclass
class Window:
    """What the service had in one stretch of time: the most requests at once, and how busy its slots were."""
    phase: str
    peak: int
    busy: float


@dataclass
class Recorder:
    service: MisbehavingService
    phase: str = "coordinated"
    windows: list[Window] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            self.service.most_concurrent = self.service.concurrent
            busy_before, started = self.service.busy_seconds(), time.monotonic()
            await asyncio.sleep(WINDOW_S)
            busy = (self.service.busy_seconds() - busy_before) / (CAPACITY * (time.monotonic() - started))
            self.windows.append(Window(self.phase, self.service.most_concurrent, busy))

    def of(self, phase: str) -> list[Window]:
        return [w for w in self.windows if w.phase == phase]


@dataclass
class Group:
    config: Config
    workers: list[ServiceProcess]
    ports: list[int]

    async def metric(self, name: str) -> list[float]:
        """The metric's value on each worker (the sum over its labels)."""
        async with httpx.AsyncClient(timeout=5) as client:
            texts = [(await client.get(f"http://127.0.0.1:{port}/metrics")).text for port in self.ports]
        return [sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                    if sample.name == name) for text in texts]

    async def wait_formed(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for worker in self.workers:
                assert worker.alive(), f"{worker.name} exited:\n{worker.tail()}"
            try:
                if await self.metric("framewatch_worker_group_members") == [WORKERS] * WORKERS:
                    return
            except httpx.HTTPError:
                pass  # not answering yet
            await asyncio.sleep(1)
        raise AssertionError(f"the group did not form within {timeout_s:.0f}s:\n{self.workers[0].tail()}")


@pytest.fixture
async def service() -> AsyncIterator[MisbehavingService]:
    made = fake("gpu", capacity=CAPACITY, latency_ms=LATENCY_MS)
    runner: web.AppRunner = await serve(made)
    yield made
    await runner.cleanup()


@pytest.fixture
async def group(tmp_path: Path, stack_env: dict[str, str], postgres: Postgres,
                service: MisbehavingService) -> AsyncIterator[Group]:
    env = namespaced_env(stack_env, FRAMEWATCH_POSTGRES_DSN=postgres.dsn())
    path = write_config(tmp_path / "failover.toml", f"""
[ai_analysis]
max_frame_age_ms = 10000
[[ai_analysis.services]]
id = "gpu"
endpoint = "{service.endpoint}"
capacity = {CAPACITY}
""")
    config = load_config(path, env)[0]
    await ensure_topics(config)
    ports = [free_port() for _ in range(WORKERS)]
    workers = [ServiceProcess(f"worker-{i}", ["worker", "-c", str(path)], {**env, "FRAMEWATCH_WORKER_PORT": str(port)},
                              tmp_path / "logs") for i, port in enumerate(ports)]
    yield Group(config, workers, ports)
    for worker in workers:  # all at once: each takes a few seconds to leave
        os.killpg(worker.process.pid, signal.SIGTERM)
    await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in workers))


async def test_a_postgresql_failover_under_saturation_never_sends_a_service_more_than_its_capacity(
        group: Group, postgres: Postgres, service: MisbehavingService) -> None:
    started = time.monotonic()
    await group.wait_formed()
    print(f"\nthe group of {WORKERS} formed in {time.monotonic() - started:.0f}s")
    load = asyncio.create_task(FrameLoad(group.config, cameras=CAMERAS, fps_per_camera=1).run(3600))
    recorder = Recorder(service)
    recording = asyncio.create_task(recorder.run())
    try:
        await asyncio.sleep(3 * WINDOW_S)
        stopping = time.monotonic()
        said = await asyncio.to_thread(pg_ctl, postgres, "stop", "-m", "immediate")
        print(f"pg_ctl stop -m immediate ({time.monotonic() - stopping:.1f}s): {said.strip()}")
        assert postgres.pid() is None, said
        recorder.phase = "outage"
        await asyncio.sleep(OUTAGE_S)
        during = await group.metric("framewatch_capacity_coordinated")
        parts = await group.metric("framewatch_capacity_part")
        await asyncio.to_thread(postgres.up)
        recorder.phase = "back"
        await asyncio.sleep(3 * WINDOW_S)
        after = await group.metric("framewatch_capacity_coordinated")
    finally:
        recording.cancel()
        load.cancel()
    for window in recorder.windows:
        print(f"{window.phase:12} at most {window.peak} requests at once, {window.busy:.0%} busy")
    peak = max(w.peak for w in recorder.windows)
    assert peak <= CAPACITY, f"the service had {peak} requests at once (capacity {CAPACITY})"
    # not by sending nothing: saturated before, kept busy by the parts during the outage (after the first
    # request timeout, while the workers keep to the slots they held) and after
    outage = recorder.of("outage")[int(GRACE_S // WINDOW_S) + 1:]
    assert min(w.busy for w in recorder.of("coordinated")[1:]) >= 0.8
    assert min(w.busy for w in outage) >= 0.8, [w.busy for w in outage]
    assert during == [0] * WORKERS, f"workers that noticed nothing: {during}"
    assert parts == [CAPACITY / WORKERS] * WORKERS, f"each worker's part of the capacity: {parts}"
    assert after == [1] * WORKERS, f"workers back on PostgreSQL: {after}"
