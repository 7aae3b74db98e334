"""`framewatch topics list | tail`: what is on the topics, decoded, and how far behind each consumer group is."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from framewatch.schemas.config import Config
from framewatch.schemas.events import DecodeError
from framewatch.schemas.topics import by_name
from framewatch.streams.bus import connect_admin, partitions


@dataclass
class TopicInfo:
    name: str
    partitions: int
    end_offset: int
    lag: dict[str, int]


async def list_topics(config: Config) -> list[TopicInfo]:
    admin = await connect_admin(config)
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        names = sorted(n for n in await admin.list_topics() if not n.startswith("__"))
        counts = await partitions(admin, names)
        by_topic = {n: [TopicPartition(n, p) for p in range(counts.get(n, 0))] for n in names}
        ends = await consumer.end_offsets([tp for tps in by_topic.values() for tp in tps])
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group, _ in await admin.list_consumer_groups():
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        infos = []
        for name, tps in by_topic.items():
            lag = {group: sum(ends[tp] - offsets[tp] for tp in tps if tp in offsets)
                   for group, offsets in committed.items() if any(tp in offsets for tp in tps)}
            infos.append(TopicInfo(name, len(tps), sum(ends[tp] for tp in tps), lag))
        return infos
    finally:
        await consumer.stop()
        await admin.close()


def decode_record(topic: str, raw: bytes | None) -> Any:
    """A record as JSON-ready data: validated against its topic's schema where framewatch knows the topic."""
    if raw is None:
        return None
    spec = by_name(topic)
    if spec is not None:
        try:
            return spec.record.decode(raw).model_dump(mode="json")
        except DecodeError as error:
            return {"undecodable": str(error), "raw": raw.decode("utf-8", "replace")}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"raw": raw.decode("utf-8", "replace")}


async def tail(config: Config, topic: str, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The last `count` records of each partition, oldest first."""
    admin = await connect_admin(config)
    try:
        count = (await partitions(admin, [topic])).get(topic, 0)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(count)]
        if not tps:
            raise LookupError(f"topic {topic!r} does not exist at {config.kafka_bootstrap}")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - count))
        records: list[dict[str, Any]] = []
        pending = {tp for tp in tps if ends[tp] > begins[tp]}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while pending and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                for message in messages:
                    records.append({"partition": tp.partition, "offset": message.offset,
                                    "key": message.key.decode("utf-8", "replace") if message.key else None,
                                    "timestamp": message.timestamp, "value": decode_record(topic, message.value)})
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        records.sort(key=lambda r: (r["timestamp"], r["partition"], r["offset"]))
        return records[-count:]
    finally:
        await consumer.stop()
