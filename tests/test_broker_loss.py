"""A broker of a three-node cluster dies under load (`framewatch stack up --brokers 3`): topics and changelogs
replicated three times, writes acknowledged by two, and every frame sent still ends with an outcome."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from framewatch.clients.bus import connect_admin
from framewatch.ops.load import Fleet, FrameLoad, TopicFollower, start_fleet
from framewatch.schemas.events import FrameOutcome
from framewatch.schemas.topics import FRAME_OUTCOMES
from framewatch.stack import LocalStack
from framewatch.stack.kafka import Kafka

CLUSTER_CONFIG = """
[framewatch]
replication_factor = 3
min_insync_replicas = 2
"""


@pytest.fixture(scope="module")
def cluster(stack_env: dict[str, str]) -> Iterator[LocalStack]:
    stack = LocalStack(brokers=3)
    stack.up()
    yield stack
    for broker in stack.brokers:
        broker.down()


@pytest.fixture
def fleet(tmp_path: Path, stack_env: dict[str, str], cluster: LocalStack) -> Iterator[Fleet]:
    bootstrap = cluster.env()["FRAMEWATCH_KAFKA_BOOTSTRAP"]
    with start_fleet(tmp_path, stack_env, 2, CLUSTER_CONFIG, latency_ms=50,
                     extra_env={"FRAMEWATCH_KAFKA_BOOTSTRAP": bootstrap}) as fleet:
        yield fleet


def kill(broker: Kafka) -> None:
    pid = broker.pid()
    assert pid is not None, f"{broker.name} is not running"
    os.killpg(pid, signal.SIGKILL)


async def test_frames_survive_a_broker_killed_under_load(fleet: Fleet, cluster: LocalStack) -> None:
    config = fleet.run.config
    admin = await connect_admin(config)
    try:
        described = await admin.describe_topics([config.topic(FRAME_OUTCOMES.name)])
    finally:
        await admin.close()
    assert all(len(p["replicas"]) == 3 for p in described[0]["partitions"]), "topics are replicated three times"

    follower = TopicFollower(config, [FRAME_OUTCOMES])
    await follower.start()
    load = FrameLoad(config, cameras=6, fps_per_camera=4)
    sending = asyncio.create_task(load.run(duration_s=30))
    await asyncio.sleep(10)
    victim = cluster.brokers[1]
    kill(victim)
    sent = await sending
    try:
        ended = await follower.collect_until(
            lambda events: len({e.frame.frame_id for e in events if isinstance(e, FrameOutcome)}) >= sent,
            timeout_s=120)
    finally:
        await follower.stop()
        await asyncio.to_thread(victim.up)  # the cluster whole again for what follows
    outcomes = {e.frame.frame_id for e in follower.events if isinstance(e, FrameOutcome)}
    assert ended, f"{sent - len(outcomes)} of {sent} frames sent never ended"
    assert fleet.run.processes[-1].alive(), "the worker lived through the broker's death"
