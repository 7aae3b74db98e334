"""Kafka for the processes outside the Faust worker: topic creation and a typed event producer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from framewatch.errors import Unreachable
from framewatch.schemas.config import Config
from framewatch.schemas.events import Event
from framewatch.schemas.topics import ALL_TOPICS, TopicSpec

CONNECT_TIMEOUT_S = 10.0
TOPIC_CREATION_CHECKS = 6


class BrokerUnavailable(Unreachable):
    """Kafka could not be reached at the configured address."""


def _topic_config(spec: TopicSpec | None, config: Config) -> dict[str, str]:
    settings: dict[str, str] = {}
    if spec is not None and spec.compacted:
        settings = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "600000"}
    elif spec is not None and spec.retention_ms:
        settings = {"retention.ms": str(spec.retention_ms)}
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
    """Create framewatch's topics (and the alert topic for users) with their settings, if missing."""
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
    finally:
        await admin.close()


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

    async def send(self, spec: TopicSpec, event: Event) -> None:
        await self._producer.send_and_wait(self.config.topic(spec.name), event.to_bytes(), key=spec.key_of(event))

    async def send_tombstone(self, spec: TopicSpec, key: str) -> None:
        """Deletes `key` from a compacted topic."""
        await self._producer.send_and_wait(self.config.topic(spec.name), None, key=key.encode())


async def read_records(config: Config, topic: str, last: int | None = None,
                       timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """The records on a topic now (the `last` of each partition, or all), oldest first."""
    admin = await connect_admin(config)
    try:
        for _ in range(TOPIC_CREATION_CHECKS):  # a topic just created takes a moment to show in the metadata
            if count := (await partitions(admin, [topic])).get(topic, 0):
                break
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    if count == 0:
        raise LookupError(f"topic {topic!r} does not exist at {config.kafka_bootstrap}")
    consumer = AIOKafkaConsumer(**kafka_options(config), group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, begins[tp] if last is None else max(begins[tp], ends[tp] - last))
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(timeout_s):
            for tp in tps:
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    records.extend(m for m in batch.get(tp, []) if m.offset < ends[tp])
        return sorted(records, key=lambda r: (r.timestamp, r.partition, r.offset))
    finally:
        await consumer.stop()


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
