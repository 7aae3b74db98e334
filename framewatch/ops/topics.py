"""`framewatch topics list | tail`: what is on the topics, decoded, and how far behind each consumer group is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from framewatch.clients.bus import (
    connect_admin,
    kafka_options,
    partitions,
    read_records,
)
from framewatch.schemas.config import Config, mask_url
from framewatch.schemas.events import DecodeError
from framewatch.schemas.topics import by_name


@dataclass
class TopicInfo:
    name: str
    partitions: int
    end_offset: int
    lag: dict[str, int]


async def list_topics(config: Config) -> list[TopicInfo]:
    admin = await connect_admin(config)
    consumer = AIOKafkaConsumer(**kafka_options(config), group_id=None)
    await consumer.start()
    try:
        names = sorted(n for n in await admin.list_topics() if not n.startswith("__"))
        counts = await partitions(admin, names)
        by_topic = {n: [TopicPartition(n, p) for p in range(counts.get(n, 0))] for n in names}
        every = [tp for tps in by_topic.values() for tp in tps]
        consumer.assign(every)  # the consumer fetches metadata only for the topics it is assigned
        ends = await consumer.end_offsets(every)
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


def without_credentials(data: Any) -> Any:
    """Camera URLs (a task on fw.tasks holds its camera's) with their credentials masked, at any depth."""
    if isinstance(data, dict):
        return {k: mask_url(v) if k == "rtsp_url" and isinstance(v, str) else without_credentials(v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [without_credentials(v) for v in data]
    return data


def decode_record(topic: str, raw: bytes | None) -> Any:
    """A record as JSON-ready data: validated against its topic's schema where framewatch knows the topic, camera
    credentials masked."""
    if raw is None:
        return None
    spec = by_name(topic)
    if spec is not None:
        try:
            return without_credentials(spec.record.decode(raw).model_dump(mode="json"))
        except DecodeError as error:
            return {"undecodable": str(error), "raw": raw.decode("utf-8", "replace")}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"raw": raw.decode("utf-8", "replace")}


async def tail(config: Config, topic: str, count: int) -> list[dict[str, Any]]:
    """The last `count` records of a topic, decoded, oldest first."""
    records = (await read_records(config, topic, last=count))[-count:]
    return [{"partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
             "key": r.key.decode("utf-8", "replace") if r.key else None, "value": decode_record(topic, r.value)}
            for r in records]
