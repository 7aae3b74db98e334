"""Kafka for the processes outside the Faust worker: topic creation and a typed event producer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import RecordMetadata

from framewatch.errors import Unreachable
from framewatch.schemas.config import Config
from framewatch.schemas.events import Event
from framewatch.schemas.topics import ALL_TOPICS, TopicSpec

log = logging.getLogger("framewatch.bus")

CONNECT_TIMEOUT_S = 10.0
TOPIC_CREATION_CHECKS = 6
TIMESTAMP_TYPE = "message.timestamp.type"
LOG_APPEND_TIME = "LogAppendTime"
DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs' config_source of a setting made on the topic itself


class BrokerUnavailable(Unreachable):
    """Kafka could not be reached at the configured address."""


def _topic_config(spec: TopicSpec | None, config: Config) -> dict[str, str]:
    settings: dict[str, str] = {}
    if spec is not None and spec.compacted:
        settings = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "600000"}
    elif spec is not None and spec.retention_ms:
        settings = {"retention.ms": str(spec.retention_ms)}
    if spec is not None and spec.log_append_time:
        settings[TIMESTAMP_TYPE] = LOG_APPEND_TIME
    if (min_insync := config.framewatch.min_insync_replicas) is not None:
        settings["min.insync.replicas"] = str(min_insync)
    return settings


def kafka_options(config: Config) -> dict[str, Any]:
    """Where Kafka is and how to reach it (TLS, SASL), for every aiokafka client framewatch makes."""
    settings = config.framewatch
    options: dict[str, Any] = {"bootstrap_servers": config.kafka_bootstrap,
                               "security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    if settings.kafka_security_protocol.startswith("SASL"):
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    return options


def partitions_for(config: Config, spec: TopicSpec) -> int:
    return config.framewatch.task_partitions if spec.shards_cameras else config.framewatch.topic_partitions


async def connect_admin(config: Config) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**kafka_options(config), request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
    except (TimeoutError, KafkaError, OSError) as error:
        await admin.close()
        raise BrokerUnavailable(f"cannot reach Kafka at {config.kafka_bootstrap}: {error or type(error).__name__}")
    return admin


async def partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """How many partitions each existing topic has."""
    described = await admin.describe_topics(names)
    return {d["topic"]: len(d["partitions"]) for d in described if d.get("error_code", 0) == 0}


async def ensure_topics(config: Config) -> None:
    """Create framewatch's topics (and the alert topic for users) with their settings, if missing; an existing
    topic that is to carry the broker's append time (fw.frames) gets it."""
    admin = await connect_admin(config)
    try:
        existing = set(await admin.list_topics())
        replicas = config.framewatch.replication_factor
        wanted = [NewTopic(config.topic(s.name), partitions_for(config, s), replicas,
                           topic_configs=_topic_config(s, config))
                  for s in ALL_TOPICS if config.topic(s.name) not in existing]
        if config.ai_analysis.mq_topic not in existing:
            wanted.append(NewTopic(config.ai_analysis.mq_topic, config.framewatch.topic_partitions, replicas,
                                   topic_configs=_topic_config(None, config)))
        for topic in wanted:
            try:
                await admin.create_topics([topic])
            except TopicAlreadyExistsError:
                pass
        for spec in ALL_TOPICS:
            if spec.log_append_time and config.topic(spec.name) in existing:
                await _stamp_log_append_time(admin, config.topic(spec.name))
    finally:
        await admin.close()


async def _stamp_log_append_time(admin: AIOKafkaAdminClient, topic: str) -> None:
    """A topic made before it was to carry the broker's append time gets it, with its other settings kept
    (AlterConfigs replaces a topic's whole set; aiokafka has no IncrementalAlterConfigs). Refused (a cluster
    whose topics framewatch may not change), it is logged: extractors' clocks are then not measured."""
    [described] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    [(error_code, message, _, _, entries)] = described.resources
    if error_code:
        _not_stamped(topic, error_code, message)
        return
    if any(name == TIMESTAMP_TYPE and value == LOG_APPEND_TIME for name, value, *_ in entries):
        return
    own = {name: value for name, value, _, source, *_ in entries if source == DYNAMIC_TOPIC_CONFIG}
    altered = await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                        configs={**own, TIMESTAMP_TYPE: LOG_APPEND_TIME})])
    for error_code, message, *_ in altered[0].resources:
        if error_code:
            _not_stamped(topic, error_code, message)


def _not_stamped(topic: str, error_code: int, message: str | None) -> None:
    log.warning("%s keeps its producers' timestamps (Kafka error %s: %s): extractors' clock offsets are not "
                "measured, and frame ages are judged on their clocks", topic, error_code, message)


class EventProducer:
    """Sends records to framewatch topics, keyed and namespaced; `start` fails fast with a clear error."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # no linger: a frame event waits for nothing before it goes (5 ms of linger were a third of the median
        # time from an extractor's send to the worker's dispatch); records that come while a request is in
        # flight still go together in the next one
        self._producer = AIOKafkaProducer(**kafka_options(config), acks="all",
                                          enable_idempotence=True, linger_ms=0, request_timeout_ms=15000)

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._producer.start(), CONNECT_TIMEOUT_S)
        except (TimeoutError, KafkaError, OSError) as error:
            await self._producer.stop()
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self.config.kafka_bootstrap}: {error or type(error).__name__}") from None

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, spec: TopicSpec, event: Event) -> RecordMetadata:
        """The record once the broker has it: where, and its timestamp (the broker's own on a LogAppendTime topic)."""
        return await self._producer.send_and_wait(self.config.topic(spec.name), event.to_bytes(),
                                                  key=spec.key_of(event))

    async def send_tombstone(self, spec: TopicSpec, key: str) -> None:
        """Deletes `key` from a compacted topic."""
        await self._producer.send_and_wait(self.config.topic(spec.name), None, key=key.encode())


async def read_records(config: Config, topic: str, last: int | None = None,
                       timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """The records on a topic now (the `last` of each partition, or all), oldest first."""
    tps = await _partitions_of(config, topic)
    async with _reader(config) as consumer:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, begins[tp] if last is None else max(begins[tp], ends[tp] - last))
        return await _read_to(consumer, ends, timeout_s)


async def _partitions_of(config: Config, topic: str) -> list[TopicPartition]:
    admin = await connect_admin(config)
    try:
        return [TopicPartition(topic, p) for p in range(await _partition_count(admin, config, topic))]
    finally:
        await admin.close()


async def _partition_count(admin: AIOKafkaAdminClient, config: Config, topic: str) -> int:
    for _ in range(TOPIC_CREATION_CHECKS):  # a topic just created takes a moment to show in the metadata
        if count := (await partitions(admin, [topic])).get(topic, 0):
            return count
        await asyncio.sleep(0.5)
    raise LookupError(f"topic {topic!r} does not exist at {config.kafka_bootstrap}")


@asynccontextmanager
async def _reader(config: Config) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer without a group, for partitions it is assigned by hand."""
    consumer = AIOKafkaConsumer(**kafka_options(config), group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def _read_to(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int],
                   timeout_s: float) -> list[ConsumerRecord]:
    """What an assigned consumer reads from its positions up to these end offsets, oldest first."""
    records: list[ConsumerRecord] = []
    async with asyncio.timeout(timeout_s):
        for tp, end in ends.items():
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                records.extend(m for m in batch.get(tp, []) if m.offset < end)
    return sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))


Backlog = dict[TopicPartition, tuple[int, int]]  # per partition: the first offset to read, the end offset


async def backlog(config: Config, group: str, topic: str) -> Backlog:
    """The records of a topic a consumer group has not committed yet: per partition, from its committed offset (the
    partition's beginning where it has none) to the end now. The committed offsets are read first, so every record
    before one is processed, and every record after it is in the range."""
    admin = await connect_admin(config)
    try:
        committed = await admin.list_consumer_group_offsets(group)
        count = await _partition_count(admin, config, topic)
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p) for p in range(count)]
    async with _reader(config) as consumer:
        begins, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    return {tp: (max(begins[tp], committed[tp].offset if tp in committed else 0), ends[tp]) for tp in tps}


async def read_backlog(config: Config, ranges: Backlog, timeout_s: float = 60.0) -> list[ConsumerRecord]:
    """The records of these ranges (`backlog`), oldest first."""
    ranges = {tp: (first, end) for tp, (first, end) in ranges.items() if first < end}
    if not ranges:
        return []
    async with _reader(config) as consumer:
        consumer.assign(list(ranges))
        for tp, (first, _) in ranges.items():
            consumer.seek(tp, first)
        return await _read_to(consumer, {tp: end for tp, (_, end) in ranges.items()}, timeout_s)


async def records_since(config: Config, spec: TopicSpec, key: str, since_ms: int,
                        timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """The records of the partition that records keyed `key` go to (the producers' default partitioner), from the
    first stamped at or after `since_ms` to the end now, oldest first: every record of that key among them."""
    every = await _partitions_of(config, config.topic(spec.name))
    tp = DefaultPartitioner()(key.encode(), every, every)
    async with _reader(config) as consumer:
        consumer.assign([tp])
        first = (await consumer.offsets_for_times({tp: since_ms}))[tp]
        if first is None:  # nothing stamped since
            return []
        consumer.seek(tp, first.offset)
        return await _read_to(consumer, await consumer.end_offsets([tp]), timeout_s)


def key_text(key: bytes | None) -> str:
    """A record's key as text; bytes that are not UTF-8 (a forged record) become U+FFFD, never an exception."""
    return key.decode("utf-8", "replace") if key else ""


async def latest(config: Config, spec: TopicSpec) -> dict[str, bytes | None]:
    """A compacted topic as it stands: the last value of every key (None for a deleted one)."""
    records = await read_records(config, config.topic(spec.name))
    return {key_text(r.key): r.value for r in records if r.key is not None}


async def follow(config: Config, spec: TopicSpec, from_beginning: bool = True) -> AsyncIterator[ConsumerRecord]:
    """Every record of every partition, without a consumer group: for state each process needs whole (the
    service registry, the task catalog) or a signal it only needs from now on (`from_beginning=False`)."""
    consumer = AIOKafkaConsumer(**kafka_options(config), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest" if from_beginning else "latest")
    consumer.subscribe([config.topic(spec.name)])
    await consumer.start()
    try:
        async for record in consumer:
            yield record
    finally:
        await consumer.stop()
