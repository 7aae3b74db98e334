"""A service's capacity shared by several workers (agents/inference/capacity.py): three schedulers, each with its own
PostgreSQL session, and one capacity-2 service on a real socket that records how many requests it had at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from framewatch.agents.inference.capacity import CapacityShare
from framewatch.detector.misbehaving import MisbehavingService
from framewatch.schemas.config import Config
from framewatch.schemas.events import DetectionEvent
from tests.test_scheduler import Fleet, Harness, camera_frame, fake, fleet  # noqa: F401 (a fixture)

LATENCY_MS = 100


class Worker:
    """A scheduler and its capacity share, as a worker has them."""

    def __init__(self, config: Config, service: MisbehavingService) -> None:
        self.share = CapacityShare(config.database.dsn.get_secret_value(), config.framewatch.namespace,
                                   in_flight=lambda service_id: self.harness.scheduler.in_flight_on(service_id))
        self.harness = Harness(config, [service], self.share, max_frame_age_ms=60_000)
        self.share.on_slot = self.harness.scheduler.wake

    async def start(self) -> None:
        await self.share.start()
        await self.harness.scheduler.start()

    async def stop(self) -> None:
        await self.harness.scheduler.stop()
        await self.share.stop()
        await self.harness.client.close()

    @property
    def inferred(self) -> int:
        return sum(isinstance(r, DetectionEvent) for r in self.harness.results)

    async def feed(self, cameras: int, until: float) -> None:
        """A fresh frame per camera every 50 ms: always more than the service can take."""
        while time.monotonic() < until:
            await self.harness.submit(*(camera_frame(f"{id(self)}-{c}") for c in range(cameras)))
            await asyncio.sleep(0.05)


@pytest.fixture
async def workers(stack_config: Config, fleet: Fleet) -> AsyncIterator[tuple[MisbehavingService, list[Worker]]]:
    (service,) = await fleet(fake("gpu", capacity=2, latency_ms=LATENCY_MS))
    made = [Worker(stack_config, service) for _ in range(3)]
    for worker in made:
        await worker.start()
    yield service, made
    for worker in made:
        await worker.stop()


async def test_three_workers_never_send_a_capacity_2_service_more_than_2_and_keep_it_busy(
        workers: tuple[MisbehavingService, list[Worker]]) -> None:
    service, three = workers
    until = time.monotonic() + 8
    feeding = [asyncio.create_task(w.feed(cameras=4, until=until)) for w in three]
    await asyncio.sleep(2)  # from here on every worker has had frames waiting for a while
    before, measured_from = service.busy_seconds(), time.monotonic()
    await asyncio.sleep(5)
    after, measured_to = service.busy_seconds(), time.monotonic()
    await asyncio.gather(*feeding)

    assert service.most_concurrent <= 2, f"the service had {service.most_concurrent} requests at once"
    busy = (after - before) / (2 * (measured_to - measured_from))
    assert busy >= 0.9, f"the service was busy {busy:.0%} of the time"
    inferred = [w.inferred for w in three]
    assert min(inferred) >= 0.15 * sum(inferred), f"frames inferred per worker: {inferred}"


async def test_a_dead_workers_slots_go_to_the_others_at_once(
        workers: tuple[MisbehavingService, list[Worker]]) -> None:
    service, (first, second, third) = workers
    until = time.monotonic() + 6
    first_feeding = asyncio.create_task(first.feed(cameras=4, until=until))
    await asyncio.sleep(1.5)
    assert first.share.held("gpu") == 2, "a worker alone takes the whole capacity"
    second_feeding = asyncio.create_task(second.feed(cameras=4, until=until))
    await asyncio.sleep(1.5)
    assert second.inferred > 0, "a second worker that asks gets its turn"

    first_feeding.cancel()  # the first worker dies: it sends nothing more, and its session ends with it
    await first.harness.scheduler.stop()
    await asyncio.sleep(0.3)  # its last requests return
    connection = first.share._connection
    assert connection is not None
    connection.terminate()
    inferred_before = second.inferred
    await asyncio.sleep(1.5)
    assert second.share.held("gpu") == 2, "the dead worker's slot went to the one still asking"
    full_rate = 2 / (LATENCY_MS / 1000)
    assert second.inferred - inferred_before >= 0.7 * full_rate * 1.5
    await second_feeding
    assert service.most_concurrent <= 2
    assert third.inferred == 0 and third.share.held("gpu") == 0, "a worker with nothing to send holds no slot"
