"""The worker's topics and tables, declared once, and the one way records leave the agents.

Topics carry raw bytes; agents decode them with `Topology.decode`, which turns a bad record into a dead letter
with its reason instead of ending the agent (robinhood/faust#586).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TypeVar, cast

import faust
from aiokafka.errors import MessageSizeTooLargeError
from faust.types.tuples import Message

from framewatch.agents.dead_letters import dead_letter
from framewatch.agents.delivery import SEND_BACKOFF, SEND_RETRIES, Delivery, Enqueue
from framewatch.agents.faust_overrides import InFlightSafeConsumer
from framewatch.errors import FramewatchError
from framewatch.retry import logged
from framewatch.schemas import topics
from framewatch.schemas.config import Config
from framewatch.schemas.events import DecodeError, Event
from framewatch.schemas.topics import MAX_RECORD_BYTES, TopicSpec

log = logging.getLogger("framewatch.worker")

E = TypeVar("E", bound=Event)


def _too_large(error: BaseException | None) -> bool:
    """A record Kafka will never take, however often it is sent (Faust wraps the producer's error)."""
    while error is not None:
        if isinstance(error, MessageSizeTooLargeError):
            return True
        error = error.__cause__
    return False


def candidate_state_key(task_id: str) -> bytes:
    """The rule-state table's key of a task's candidate (`framewatch tasks try`): beside the live state (whose key
    is the task id), written in the same changelog partition. No task id holds a '/'."""
    return f"{task_id}/candidate".encode()


class RecordTooLarge(FramewatchError):
    """A record larger than Kafka takes (`MAX_RECORD_BYTES`): sending it again cannot help."""


class Topology:
    """Every topic and table of the worker, declared once; `emit` (and `send`, which waits for the broker) is the
    one way records leave the agents, and `save_state` the one way the rule state changes."""

    def __init__(self, app: faust.App, config: Config) -> None:
        self.app = app
        self.config = config
        self.specs: dict[str, TopicSpec] = {}  # by the topic's full name
        self.frames = self._topic(topics.FRAMES)
        self.detections = self._topic(topics.DETECTIONS)
        self.alerts = self._topic(topics.ALERTS)
        self.shadow_alerts = self._topic(topics.SHADOW_ALERTS)
        self.alerts_stored = self._topic(topics.ALERTS_STORED)
        self.frame_outcomes = self._topic(topics.FRAME_OUTCOMES)
        self.retention = self._topic(topics.RETENTION)
        self.counts = self._topic(topics.COUNTS)
        self.pressure = self._topic(topics.PRESSURE)
        self.clip_requests = self._topic(topics.CLIP_REQUESTS)
        self.clips = self._topic(topics.CLIPS)
        self.incidents = self._topic(topics.INCIDENTS)
        self.dead_letters = self._topic(topics.DEAD_LETTERS)
        # task id (bytes) -> RuleState as bytes: tracks, incidents, cooldowns, the open count window (rules/state.py);
        # a candidate's state beside it (`candidate_state_key`)
        min_insync = config.framewatch.min_insync_replicas
        self.rule_state = app.Table("rule-state", key_type=bytes, value_type=bytes, partitions=self.partitions,
                                    extra_topic_configs={} if min_insync is None else
                                    {"min.insync.replicas": str(min_insync)})

    def _topic(self, spec: TopicSpec) -> faust.TopicT:
        self.specs[self.config.topic(spec.name)] = spec
        partitions = self.config.framewatch.task_partitions if spec.shards_cameras else self.partitions
        return self.app.topic(self.config.topic(spec.name), key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", partitions=partitions)

    @property
    def partitions(self) -> int:
        return self.config.framewatch.topic_partitions

    async def send(self, topic: faust.TopicT, event: Event) -> None:
        """`emit`, then wait until the broker has the record."""
        await (await self.emit(topic, event)).confirmed()

    async def emit(self, topic: faust.TopicT, event: Event) -> Delivery:
        """Hands the record to the producer with the key its topic's spec gives and the event's `emitted_at` as its
        timestamp (an alert's is when it was raised, not when its image was copied: agents/batches.py); what is
        returned is confirmed once the broker has it. A record of the wrong type is a TypeError, one too large
        `RecordTooLarge`, both before anything is sent."""
        name = topic.get_topic_name()
        return await self.emit_encoded(name, self.specs[name].key_of(event), event.to_bytes(), event.emitted_at,
                                       type(event).__name__)

    async def emit_encoded(self, name: str, key: bytes, value: bytes, timestamp_ms: int, what: str) -> Delivery:
        """`emit` of a record already encoded (a `what`), to any topic: the worker's own, or one it only writes to
        (the alert feed's clip messages on `mq_topic`)."""
        if len(value) > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"a {what} of {len(value)} bytes for {name}: more than a record may take "
                                 f"({MAX_RECORD_BYTES})")
        enqueue = partial(self._produce, name, key, value, timestamp_ms / 1000, None)
        return Delivery(name, await self._until_buffered(enqueue, name), enqueue, self._worth_resending)

    async def save_state(self, key: bytes, value: bytes | None) -> Delivery:
        """Sets a task's rule state in the table and on its changelog (raw bytes both, in the partition of the
        record being handled), straight to the producer: Faust's own path buffers the changelog write and no one
        waits for it. Sent again after a refusal, it is the key's newest state that goes, never an older one.
        None deletes the key (a tombstone: a recovering worker deletes it too)."""
        table = self.rule_state
        if value is None:
            table.data.pop(key, None)
        else:
            table.data[key] = value
        name = table.changelog_topic.get_topic_name()
        partition = handled_partition()

        async def enqueue() -> asyncio.Future[object]:
            return await self._produce(name, key, table.data.get(key, value), time.time(), partition)

        return Delivery(name, await self._until_buffered(enqueue, name), enqueue, self._worth_resending)

    def _worth_resending(self, error: BaseException) -> bool:
        return not _too_large(error) and not self.app.should_stop

    async def _until_buffered(self, enqueue: Enqueue, name: str) -> asyncio.Future[object]:
        return await SEND_BACKOFF.call(enqueue, self._worth_resending,
                                       logged(log, f"sending to {name}", SEND_RETRIES.labels(name).inc))

    async def _produce(self, name: str, key: bytes, value: bytes | None, timestamp_s: float,
                       partition: int | None) -> asyncio.Future[object]:
        # to the app's producer itself: `topic.send` first awaits Faust's `maybe_start_producer`, which yields to
        # the event loop on every call (a stampede guard), so the producer sent each record of a burst (a stored
        # batch's announcements) in a request of its own, one broker round trip after the other
        producer = self.app.producer
        await producer.maybe_start()
        future = await producer.send(name, key, value, partition=partition, timestamp=timestamp_s, headers=None)
        return cast("asyncio.Future[object]", future)

    async def dead_letter(self, topic: faust.TopicT, reason: str, record: bytes, key: str | None = None) -> Delivery:
        """Keeps a record framewatch could not handle on fw.dead-letters, with the reason."""
        return await self.emit(self.dead_letters, dead_letter(topic.get_topic_name(), reason, record, key))

    async def decode(self, record: type[E], raw: bytes, topic: faust.TopicT) -> E | None:
        try:
            return record.decode(raw)
        except DecodeError as error:
            await (await self.dead_letter(topic, str(error), raw)).confirmed()
            return None

    def owns(self, message: Message) -> bool:
        """Whether this worker still owns the partition the record was read from (always, outside a worker's
        consumer: in an agent's test context)."""
        consumer = self.app.consumer
        return not isinstance(consumer, InFlightSafeConsumer) or consumer.owns(message)


def handled_partition() -> int:
    """The partition of the record being handled, the one the rule state's changelog shares (the table is
    partitioned as fw.detections). Not Faust's `Table.partition_for_key`: it first compares the two topics' partition
    counts in the consumer's metadata, and raised PartitionsMismatch while a changelog just created had none there
    yet (on a three-broker cluster: the rules agent crashed, and the frame it held was passed over)."""
    event = faust.current_event()
    if event is None:
        raise TypeError("a rule state saved outside the handling of a record")
    return event.message.partition
