"""An alert topic that refuses some alerts for good (here the site's `max.message.bytes`; a missing write ACL is the
same): none of them is marked published or counted as published, each goes to fw.dead-letters with the broker's
reason after three refusals, and the partition moves on. Before, every refused alert was marked published."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from aiokafka.admin import NewTopic

from framewatch.clients.bus import EventProducer, connect_admin, read_records
from framewatch.ops.load import FrameLoad, start_fleet
from framewatch.schemas.config import Config, load_config
from framewatch.schemas.events import AlertStored, ClipReady, DeadLetter, FrameOutcome
from framewatch.schemas.topics import CLIPS, FRAME_OUTCOMES
from tests.conftest import SAMPLE_JPEG
from tests.test_alert_path import alerting_config, metric, stored

MAX_MESSAGE_BYTES = 512  # what the site's alert topic takes: less than any alert message


def test_alerts_the_alert_topic_refuses_are_dead_lettered_not_marked_published(tmp_path: Path,
                                                                                 stack_env: dict[str, str]) -> None:
    prefix = "r" + uuid.uuid4().hex[:6]
    mq_topic = f"r{uuid.uuid4().hex[:10]}.easyai.alerts"

    async def create_alert_topic() -> None:
        config, _ = load_config(None, stack_env)
        admin = await connect_admin(config)
        try:
            await admin.create_topics([NewTopic(mq_topic, 4, 1,
                                                topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)})])
        finally:
            await admin.close()

    asyncio.run(create_alert_topic())
    with start_fleet(tmp_path, stack_env, 1, alerting_config(prefix, cameras=2), latency_ms=20, people=1,
                     extra_env={"FRAMEWATCH_MQ_TOPIC": mq_topic}) as fleet:
        config = fleet.run.config

        async def scenario() -> None:
            rows, letters = await load_until_dead_lettered(config, prefix)
            published = await read_records(config, mq_topic)
            markers = await read_records(config, config.topic("fw.published"))
            metrics = httpx.get(fleet.run.metrics_url, timeout=10).text
            print(f"refusing alert topic: {len(rows)} stored, {len(published)} published, {len(letters)} "
                  f"dead-lettered, {len(markers)} marked published")
            assert len(rows) >= 8
            assert markers == [] and published == [], "nothing marked published that the alert topic refused"
            assert set(letters) == set(rows), "each refused alert on fw.dead-letters"
            for letter in letters.values():
                assert mq_topic in letter.reason and "MessageSizeTooLarge" in letter.reason, letter.reason
            assert metric(metrics, "framewatch_publisher_alerts_published_total") == 0
            assert metric(metrics, f'framewatch_publisher_alerts_refused_total{{reason="MessageSizeTooLargeError",'
                                   f'topic="{mq_topic}"}}') == len(rows)
            await clip_announcement_dead_lettered(config, next(iter(rows)), mq_topic)

        asyncio.run(scenario())


async def clip_announcement_dead_lettered(config: Config, alert_id: str, mq_topic: str) -> None:
    """An alert's clip recorded while the alert topic refuses its announcement: the clip is stored, the
    announcement dead-lettered, and fw.clips moves on (the clips agent does not retry it for ever)."""
    producer = EventProducer(config)
    await producer.start()
    try:
        await producer.send(CLIPS, ClipReady(alert_id=alert_id, task_id="cam", camera_id="cam", bucket="b",
                                             reason="no clip: " + "x" * MAX_MESSAGE_BYTES))  # more than it takes
    finally:
        await producer.stop()
    for _ in range(60):
        letters = [DeadLetter.decode(r.value) for r in await read_records(config, config.topic("fw.dead-letters"))]
        if any(letter.reason.startswith(f"announcement refused by {mq_topic}") for letter in letters):
            return
        await asyncio.sleep(1)
    raise AssertionError("the clip's announcement was not dead-lettered")


async def refused(config: Config) -> dict[str, DeadLetter]:
    """The alerts dead-lettered for the alert topic's refusal, by id."""
    letters = [DeadLetter.decode(r.value) for r in await read_records(config, config.topic("fw.dead-letters"))]
    return {AlertStored.decode(letter.payload.encode()).alert.alert_id: letter for letter in letters
            if letter.reason.startswith("refused by")}


async def load_until_dead_lettered(config: Config, prefix: str) -> tuple[dict[str, str], dict[str, DeadLetter]]:
    """Alerts raised for 8 s, then until every stored alert is dead-lettered (after three refusals each): the rows
    and the dead letters. The rest of the pipeline is not held up meanwhile: every frame sent has ended."""
    sent = await FrameLoad(config, cameras=2, fps_per_camera=1, prefix=prefix, image=SAMPLE_JPEG).run(duration_s=8)
    for _ in range(90):
        rows = await stored(config, prefix)
        if rows and set(rows) <= set(await refused(config)):
            break
        await asyncio.sleep(1)
    outcomes = {FrameOutcome.decode(r.value).frame.frame_id
                for r in await read_records(config, config.topic(FRAME_OUTCOMES.name))}
    assert len(outcomes) == sent, f"{sent - len(outcomes)} of {sent} frames never ended while the alert topic refused"
    return rows, await refused(config)


def test_alerts_for_an_alert_topic_that_is_gone_are_dead_lettered_not_waited_for(tmp_path: Path,
                                                                               stack_env: dict[str, str]) -> None:
    """The alert topic deleted after the worker made it: each alert is refused at once (the broker, reached, has
    no such topic), not after the producer's 40 s wait for its metadata, and dead-lettered after three tries."""
    prefix = "u" + uuid.uuid4().hex[:6]
    with start_fleet(tmp_path, stack_env, 1, alerting_config(prefix, cameras=2), latency_ms=20, people=1) as fleet:
        config = fleet.run.config
        mq_topic = config.ai_analysis.mq_topic

        async def scenario() -> None:
            admin = await connect_admin(config)
            try:
                await admin.delete_topics([mq_topic])
            finally:
                await admin.close()
            rows, letters = await load_until_dead_lettered(config, prefix)
            markers = await read_records(config, config.topic("fw.published"))
            metrics = httpx.get(fleet.run.metrics_url, timeout=10).text
            print(f"alert topic gone: {len(rows)} stored, {len(letters)} dead-lettered, {len(markers)} marked published")
            assert len(rows) >= 8 and set(letters) == set(rows)
            assert markers == [], "nothing marked published"
            assert all(f"{mq_topic} does not exist" in letter.reason for letter in letters.values())
            assert metric(metrics, f'framewatch_publisher_alerts_refused_total{{reason="UnknownAlertTopic",'
                                   f'topic="{mq_topic}"}}') == len(rows)

        asyncio.run(scenario())
