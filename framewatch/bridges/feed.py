"""The alert feed as a bridge reads it: `mq_topic` with `read_committed`, in the bridge's own consumer group, each
message committed only after `deliver` returned (at least once; a redelivered message has the same `alert_id` and
`kind`). A bridge passes on the kinds it takes (alerts, clips); other messages are committed without delivery."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, get_args

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service
from pydantic import ValidationError

from framewatch.clients.bus import kafka_options
from framewatch.metrics import Tally
from framewatch.schemas.config import Config
from framewatch.schemas.feed import FeedKind, FeedMessage, read_message

log = logging.getLogger("framewatch.bridge")

DELIVERED: dict[FeedKind, Tally] = {
    "alert": Tally("framewatch_bridge_alerts_delivered_total", "Alerts a bridge delivered", ["bridge"]),
    "clip": Tally("framewatch_bridge_clips_delivered_total", "Alerts' clip messages a bridge delivered", ["bridge"])}
UNREADABLE = Tally("framewatch_bridge_alerts_unreadable_total", "Messages on the alert topic that are none of the "
                   "feed's kinds (skipped)", ["bridge"])
EVERY_KIND: tuple[FeedKind, ...] = get_args(FeedKind)

Deliver = Callable[[FeedMessage], Awaitable[None]]


class FeedConsumer(Service):
    def __init__(self, config: Config, bridge: str, deliver: Deliver, kinds: Collection[FeedKind] = EVERY_KIND,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bridge = bridge
        self.deliver = deliver
        self.kinds = frozenset(kinds)
        self.consumer = AIOKafkaConsumer(
            config.ai_analysis.mq_topic, **kafka_options(config), group_id=config.topic(f"framewatch-bridge-{bridge}"),
            isolation_level="read_committed", enable_auto_commit=False, auto_offset_reset="earliest")
        self.joined = False

    async def on_start(self) -> None:
        await self.consumer.start()

    async def on_stop(self) -> None:
        await self.consumer.stop()

    @Service.task
    async def _follow(self) -> None:
        while not self.should_stop:
            batches = await self.consumer.getmany(timeout_ms=1000, max_records=100)
            self.joined = self.joined or bool(self.consumer.assignment())
            for tp, records in batches.items():
                for record in records:
                    await self._one(record.value)
                await self.consumer.commit({TopicPartition(tp.topic, tp.partition): records[-1].offset + 1})

    async def _one(self, raw: bytes | None) -> None:
        try:
            message = read_message(raw or b"")
        except ValidationError as error:
            UNREADABLE.labels(self.bridge).inc()
            log.error("%s bridge: skipped a message that is none of the feed's kinds: %s", self.bridge, error)
            return
        if message.kind not in self.kinds:
            return
        await self.deliver(message)  # retries inside until delivered: nothing is committed before
        DELIVERED[message.kind].labels(self.bridge).inc()
