"""A broker of a three-node cluster dies under load (`framewatch stack up --brokers 3`): topics and changelogs
replicated three times, writes acknowledged by two, and every frame sent still ends with an outcome. And a cluster
that refuses the worker's writes (fewer replicas in sync than the topics demand) while its reads go on: nothing the
worker read then is acknowledged, so a worker killed meanwhile loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from framewatch.clients.bus import DYNAMIC_TOPIC_CONFIG, connect_admin, read_records
from framewatch.ops.load import Fleet, FrameLoad, TopicFollower, start_fleet
from framewatch.schemas.config import Config
from framewatch.schemas.events import AlertEvent, FrameEvent, FrameOutcome
from framewatch.schemas.topics import ALERTS, ALERTS_STORED, DETECTIONS, FRAME_OUTCOMES, FRAMES, PUBLISHED
from framewatch.stack import LocalStack
from framewatch.stack.kafka import Kafka
from tests.conftest import SAMPLE_JPEG
from tests.test_alert_path import alerting_config, published, settle, stored

CLUSTER_CONFIG = """
[framewatch]
replication_factor = 3
min_insync_replicas = 2
"""


@pytest.fixture(scope="module")
def cluster(stack_env: dict[str, str]) -> Iterator[LocalStack]:
    """A cluster started empty: the topics of earlier runs (hundreds, never deleted here) made a killed broker's
    restart and catch-up take minutes."""
    stack = LocalStack(brokers=3)
    for broker in stack.brokers:
        broker.down()
        broker.wipe()
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


# every write of the worker needs all three replicas, and its producer gives up on a refused one after 5 s (Faust's
# default is 20 min: a commit waits for the producer's flush, so only a delivery that ends in failure can slip under
# a commit)
REFUSING_CONFIG = """
[framewatch]
replication_factor = 3
min_insync_replicas = 3
producer_request_timeout_sec = 5
"""


async def accept_with_two_replicas(config: Config, topic: str) -> None:
    """The extractors' topic keeps taking frames with a broker down; the worker's outputs do not."""
    admin = await connect_admin(config)
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic)
        [(_, _, _, _, entries)] = (await admin.describe_configs([resource]))[0].resources
        own = {name: value for name, value, _, source, *_ in entries if source == DYNAMIC_TOPIC_CONFIG}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                  configs={**own, "min.insync.replicas": "2"})])
    finally:
        await admin.close()


def test_a_worker_killed_while_its_writes_are_refused_loses_nothing(tmp_path: Path, stack_env: dict[str, str],
                                                                   cluster: LocalStack) -> None:
    prefix = "r" + uuid.uuid4().hex[:6]
    config_text = REFUSING_CONFIG + alerting_config(prefix, cameras=6)
    bootstrap = {"FRAMEWATCH_KAFKA_BOOTSTRAP": cluster.env()["FRAMEWATCH_KAFKA_BOOTSTRAP"]}
    with start_fleet(tmp_path, stack_env, 1, config_text, latency_ms=50, people=1, extra_env=bootstrap) as fleet:
        config = fleet.run.config

        async def scenario() -> None:
            await accept_with_two_replicas(config, config.topic(FRAMES.name))
            follower = TopicFollower(config, [FRAME_OUTCOMES, ALERTS])
            await follower.start()
            load = FrameLoad(config, cameras=6, fps_per_camera=2, prefix=prefix, image=SAMPLE_JPEG)
            sending = asyncio.create_task(load.run(duration_s=40))
            await asyncio.sleep(8)
            victim = cluster.brokers[1]
            kill(victim)
            await asyncio.sleep(20)  # frames read, their outputs refused, each refusal final after 5 s
            await asyncio.to_thread(fleet.run.stop_worker, signal.SIGKILL)
            await asyncio.to_thread(victim.up)
            healed_s = await until_replicated(config, timeout_s=120)
            print(f"every partition had its three replicas in sync {healed_s:.1f}s after the broker's restart")
            await asyncio.to_thread(fleet.run.start_worker)
            sent = await sending
            try:
                await follower.collect_until(lambda events: len(ended_frames(events)) >= sent, timeout_s=120)
                alert_ids = {e.alert_id for e in follower.events if isinstance(e, AlertEvent)}
                await settle(config, prefix, alert_ids)
            finally:
                await follower.stop()
            ended = ended_frames(follower.events)
            print(f"refused writes: {sent} frames sent, {len(ended)} ended, {len(alert_ids)} alerts")
            unended = await frames_on(config) - ended
            assert not unended, (f"{len(unended)} of {sent} frames never ended: acked, their outputs lost; "
                                 f"where they are: {await whereabouts(config, unended)}")
            assert alert_ids, "the detector saw people: frames alerted"
            unstored = alert_ids - set(await stored(config, prefix))
            assert not unstored, f"alerts never stored; where they are: {await whereabouts(config, unstored)}"
            counts = await published(config)
            assert {a: n for a, n in counts.items() if n != 1} == {}, "each alert published once"
            unpublished = alert_ids - set(counts)
            assert not unpublished, f"alerts never published; where they are: {await whereabouts(config, unpublished)}"

        asyncio.run(scenario())


def ended_frames(events: Sequence[object]) -> set[str]:
    return {e.frame.frame_id for e in events if isinstance(e, FrameOutcome)}


async def until_replicated(config: Config, timeout_s: float) -> float:
    """Seconds until every partition the worker writes (its topics, the group's offsets, the transactions' log) has
    all three replicas in sync again: from then on each write can be taken, and what the test checks is the
    worker's recovery, not the cluster's. A cluster that does not heal in `timeout_s` fails the test as such."""
    started = time.monotonic()
    admin = await connect_admin(config)
    try:
        while True:
            names = [t for t in await admin.list_topics()
                     if t.startswith(config.framewatch.namespace) or t in ("__consumer_offsets", "__transaction_state")]
            lagging = [f"{topic['topic']}-{p['partition']}" for topic in await admin.describe_topics(names)
                       for p in topic["partitions"] if len(p["isr"]) < len(p["replicas"])]
            if not lagging:
                return time.monotonic() - started
            assert time.monotonic() - started < timeout_s, (
                f"the cluster did not heal within {timeout_s:.0f}s of the broker's restart: {len(lagging)} "
                f"partitions short of replicas in sync, e.g. {lagging[:5]}")
            await asyncio.sleep(1)
    finally:
        await admin.close()


async def frames_on(config: Config) -> set[str]:
    return {FrameEvent.decode(r.value).frame_id for r in await read_records(config, config.topic(FRAMES.name))}


async def whereabouts(config: Config, ids: set[str]) -> dict[str, list[str]]:
    """Per id (a frame's or an alert's), each record of the worker's topics that names it, as topic-partition@offset
    with the worker group's committed offset of that partition: where it stopped."""
    admin = await connect_admin(config)
    try:
        committed = await admin.list_consumer_group_offsets(config.worker_group)
    finally:
        await admin.close()
    found: dict[str, list[str]] = {i: [] for i in ids}
    names = {config.topic(spec.name): spec.name for spec in (FRAMES, DETECTIONS, FRAME_OUTCOMES, ALERTS,
                                                             ALERTS_STORED, PUBLISHED)}
    names[config.ai_analysis.mq_topic] = "mq_topic"
    for topic, name in names.items():
        for record in await read_records(config, topic):
            for i in ids:
                if record.value and i.encode() in record.value:
                    tp = TopicPartition(record.topic, record.partition)
                    mark = committed.get(tp)
                    found[i].append(f"{name}-{record.partition}@{record.offset} "
                                    f"(committed {mark.offset if mark else None})")
    return found
