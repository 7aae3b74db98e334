"""The Faust app: its topics and tables in one place, and the resources its agents share.

Topics carry raw bytes; agents decode them with `Topology.decode`, which turns a bad record into a dead letter
with its reason instead of ending the agent (robinhood/faust#586).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from typing import Any, TypeVar, cast

import faust
from aiokafka.errors import MessageSizeTooLargeError
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP
from faust.types.tuples import Message
from faust.types.transports import TransportT
from mode import Service
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from framewatch.agents.batches import WorkerStream
from framewatch.agents.dead_letters import dead_letter
from framewatch.agents.catalog import camera_states, task_catalog
from framewatch.agents.delivery import SEND_BACKOFF, SEND_RETRIES, Delivery, Enqueue
from framewatch.agents.inference.capacity import CapacityShare
from framewatch.agents.inference.client import ServiceClient
from framewatch.agents.inference.registry import ServiceRegistry
from framewatch.agents.inference.scheduler import InferenceScheduler
from framewatch.agents.membership import GroupAssignor
from framewatch.clients.bus import kafka_options
from framewatch.clients.database import AlertStore
from framewatch.clients.objectstore import ObjectStore
from framewatch.errors import FramewatchError
from framewatch.process import StopsWithinDeadline
from framewatch.retry import logged
from framewatch.schemas import topics
from framewatch.schemas.config import Config
from framewatch.schemas.events import DecodeError, Event
from framewatch.schemas.tasks import CameraTask
from framewatch.schemas.topics import MAX_RECORD_BYTES, TopicSpec

log = logging.getLogger("framewatch.worker")

WAIT_EMPTY_S = 15.0  # within the stop deadline, and well within the 10 s session timeout's rebalance patience

REBALANCE_STALL_S = 120.0  # a rebalance that lasts this long will not end by itself: exit, to be restarted
REBALANCING = Gauge("framewatch_worker_rebalancing", "1 while the worker's consumer group is rebalancing")
STALE_ACKS = Counter("framewatch_worker_stale_acks_total",
                     "Acks of records read before their partition was revoked, dropped (the new owner reads them again)")
REBALANCE_WAITS_ABANDONED = Counter("framewatch_worker_rebalance_waits_abandoned_total",
                                    "Rebalances or stops that handed partitions over with records still in flight")

E = TypeVar("E", bound=Event)


def _too_large(error: BaseException | None) -> bool:
    """A record Kafka will never take, however often it is sent (Faust wraps the producer's error)."""
    while error is not None:
        if isinstance(error, MessageSizeTooLargeError):
            return True
        error = error.__cause__
    return False


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
        self.alerts_stored = self._topic(topics.ALERTS_STORED)
        self.frame_outcomes = self._topic(topics.FRAME_OUTCOMES)
        self.retention = self._topic(topics.RETENTION)
        self.counts = self._topic(topics.COUNTS)
        self.pressure = self._topic(topics.PRESSURE)
        self.dead_letters = self._topic(topics.DEAD_LETTERS)
        # task id (bytes) -> RuleState as bytes: tracks, incidents, cooldowns, the open count window (rules/state.py)
        min_insync = config.framewatch.min_insync_replicas
        self.rule_state = app.Table("rule-state", key_type=bytes, value_type=bytes, partitions=self.partitions,
                                    extra_topic_configs={} if min_insync is None else
                                    {"min.insync.replicas": str(min_insync)})

    def _topic(self, spec: TopicSpec) -> faust.TopicT:
        self.specs[self.config.topic(spec.name)] = spec
        return self.app.topic(self.config.topic(spec.name), key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", partitions=self.partitions)

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
        key = self.specs[name].key_of(event)
        value = event.to_bytes()
        if len(value) > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"a {type(event).__name__} of {len(value)} bytes for {name}: more than a record "
                                 f"may take ({MAX_RECORD_BYTES})")
        enqueue = partial(self._produce, name, key, value, event.emitted_at / 1000, None)
        return Delivery(name, await self._until_buffered(enqueue, name), enqueue, self._worth_resending)

    async def save_state(self, key: bytes, value: bytes) -> Delivery:
        """Sets a task's rule state in the table and on its changelog (raw bytes both, in the partition of the
        record being handled), straight to the producer: Faust's own path buffers the changelog write and no one
        waits for it. Sent again after a refusal, it is the key's newest state that goes, never an older one."""
        table = self.rule_state
        table.data[key] = value
        name = table.changelog_topic.get_topic_name()
        partition = table.partition_for_key(key)

        async def enqueue() -> asyncio.Future[object]:
            return await self._produce(name, key, table.data.get(key, value), time.time(), partition)

        return Delivery(name, await self._until_buffered(enqueue, name), enqueue, self._worth_resending)

    def _worth_resending(self, error: BaseException) -> bool:
        return not _too_large(error) and not self.app.should_stop

    async def _until_buffered(self, enqueue: Enqueue, name: str) -> asyncio.Future[object]:
        return await SEND_BACKOFF.call(enqueue, self._worth_resending,
                                       logged(log, f"sending to {name}", SEND_RETRIES.labels(name).inc))

    async def _produce(self, name: str, key: bytes, value: bytes, timestamp_s: float,
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


class Resources(Service):
    """What the agents share: the object store, the alert store, the service registry, the inference scheduler,
    the tasks and camera states as the extractors publish them."""

    def __init__(self, config: Config, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.config = config
        self.store = ObjectStore(config.frame_extractor.minio)
        self.alerts = AlertStore(config.database.dsn.get_secret_value())
        self.registry = ServiceRegistry(config)
        self.catalog = task_catalog(config)  # fw.tasks
        self.camera_states = camera_states(config)  # fw.cameras
        self.client = ServiceClient(config, self.store, regions=self.region_of)
        # each service's capacity, shared with the other workers (slots are PostgreSQL advisory locks)
        self.capacity = CapacityShare(config.database.dsn.get_secret_value(), config.framewatch.namespace,
                                      in_flight=lambda service_id: self.scheduler.in_flight_on(service_id),
                                      request_timeout_s=config.ai_analysis.infer_timeout_sec)
        self.scheduler = InferenceScheduler(config, self.registry, self.client, self.capacity)
        self.capacity.on_slot = self.scheduler.wake

    async def on_start(self) -> None:
        await self.store.ensure_bucket()
        await self.alerts.connect()
        await self.registry.start()
        await self.catalog.start()
        await self.camera_states.start()
        await self.capacity.start()
        await self.scheduler.start()

    async def on_stop(self) -> None:
        await self.scheduler.stop()
        await self.capacity.stop()
        await self.camera_states.stop()
        await self.catalog.stop()
        await self.registry.stop()
        await self.client.close()
        await self.alerts.close()

    def region_of(self, task_id: str) -> list[tuple[float, float]] | None:
        task = self.task_settings(task_id)
        return None if task is None else task.region

    def frame_limit(self, task_id: str) -> int:
        return self.config.frame_extractor.frame_limit(self.task_settings(task_id))

    def task_settings(self, task_id: str) -> CameraTask | None:
        """A task's rule settings as fw.tasks has them, else as this worker's config declares them, else None."""
        try:
            return self.catalog.values.get(task_id) or self.config.task(task_id)
        except KeyError:
            return None


class InFlightSafeConsumer(kafka_driver.Consumer):
    """Faust's consumer, committing a partition only below every record still in flight.

    Faust's own `_new_offset` checks for a gap at the head of the acked offsets only while the partition has a
    committed offset other than 0, and then one offset too far (with 5 committed and 6 acked while 5 is in flight
    it commits 7). The infer agent acks out of order, so that commit would lose the frame in flight at a crash or
    rebalance (tests/test_worker_consumer.py)."""

    wait_empty_s = WAIT_EMPTY_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # a partition's last revocation: the consumer generation (Faust's `message.generation_id`, the group's
        # generation when the record was fetched) of the records it ended
        self._revoked_in: dict[TP, int] = {}

    def owns(self, message: Message) -> bool:
        """Whether the record's partition has stayed this worker's since the record was read. Faust revokes every
        partition at each rebalance; one assigned again is read again from its committed offset, so a record
        read before is in the hands of the new reading, here or elsewhere."""
        return (message.generation_id or 0) > self._revoked_in.get(message.tp, -1)

    def ack(self, message: Message) -> bool:
        """Faust's, except for a record read before its partition was last revoked: its ack is dropped. Once the
        revocation's commit is made, the partition is another ownership's (whoever has it reads the record
        again); counted, that ack could commit past a record the new ownership has not handled yet (Faust
        commits one offset past an unacked head: see `_new_offset`)."""
        if not self.owns(message):
            message.acked = True
            STALE_ACKS.inc()
            return False
        acked: bool = super().ack(message)
        return acked

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust's (which waits for the records in flight and commits), then the revoked partitions' records
        still in flight belong to no one here: they are forgotten, and acks still to come for them dropped."""
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._revoked_in[tp] = self.app.consumer_generation_id
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
        self._unacked_messages -= {message for message in self._unacked_messages if message.tp in revoked}

    async def perform_seek(self) -> None:
        """Faust's, which seeks each assigned partition to its committed offset, then the agents' partitions that
        have none (or 0) to their start, as `consumer_auto_offset_reset = "earliest"` says: aiokafka seeks
        only to a committed offset above 0 and leaves such a partition where its last fetch got to, so one assigned
        back to this worker skipped the records read before the rebalance and never handled (Faust empties its
        agents' buffers at a revocation): they stayed unhandled, and its commits stalled below them."""
        await super().perform_seek()
        agents_topics = self.app.topics.acking_topics
        for tp in self.assignment():
            if tp.topic in agents_topics and not self._committed_offset.get(tp):
                await self.seek(tp, 0)  # below the log's start (retention), the earliest reset applies

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if acked and (oldest := self._oldest_in_flight(tp)) is not None and oldest < min(acked):
            return None
        offset: int | None = super()._new_offset(tp)
        return offset

    def _oldest_in_flight(self, tp: TP) -> int | None:
        return min((message.offset for message in self._unacked_messages if message.tp == tp), default=None)

    async def wait_empty(self) -> None:
        """Faust's, with a deadline: a rebalance (or a stop) waits for the records in flight at most
        `wait_empty_s`, then hands the partitions over anyway (whoever takes them reads those records again).
        Faust's own waits for ever, and swallows the cancellation that would end it: one record that is never
        acknowledged (its result could not be sent while the broker was away) kept a worker out of its group."""
        deadline = time.monotonic() + self.wait_empty_s
        while not self.should_stop and self._unacked_messages:
            if time.monotonic() >= deadline:
                REBALANCE_WAITS_ABANDONED.inc()
                log.warning("%d records still in flight after %.0fs: handing their partitions over anyway",
                            len(self._unacked_messages), self.wait_empty_s)
                break
            await self.commit()
            if not self._unacked_messages:
                break
            await self._wait_for_ack(timeout=1)
            self._clean_unacked_messages()
        await self.commit_and_end_transactions()


class KafkaTransport(kafka_driver.Transport):
    Consumer = InFlightSafeConsumer


class WorkerApp(faust.App):
    def _new_transport(self) -> TransportT:
        return KafkaTransport(self.conf.broker_consumer, self)


class Worker(StopsWithinDeadline, faust.Worker):
    """Faust's worker, stopped within 25 s of SIGTERM or SIGINT whatever it waits on (a consumer that
    cannot reach the broker waits for minutes). Records not yet acknowledged are read again by whoever takes the
    partitions over."""


class ConsumerCollector(Collector):
    """Faust's own figures of the worker's consumer, for Prometheus: the lag per partition (end offset minus
    committed offset, as Faust's monitor tracks them) and the rebalances so far."""

    def __init__(self) -> None:
        self.app: faust.App | None = None
        REGISTRY.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected only once a worker is watched: nothing to declare before

    def collect(self) -> Iterator[Metric]:
        if self.app is None:
            return
        monitor = self.app.monitor
        lag = GaugeMetricFamily("framewatch_worker_consumer_lag", "Records not yet committed, per partition read",
                                labels=["topic", "partition"])
        for tp, end in list(monitor.tp_end_offsets.items()):
            if (committed := monitor.tp_committed_offsets.get(tp)) is not None:
                lag.add_metric([tp.topic, str(tp.partition)], max(0, end - committed))
        yield lag
        yield CounterMetricFamily("framewatch_worker_rebalances", "Consumer group rebalances this worker went "
                                  "through", value=self.app.rebalancing_count)


CONSUMER = ConsumerCollector()


class RebalanceWatch:
    """Ends the process (status 3) when its consumer has been rebalancing for `limit_s`: a consumer that cannot
    rejoin its group would otherwise stall silently while the process looks alive; its supervisor restarts it."""

    def __init__(self, limit_s: float = REBALANCE_STALL_S) -> None:
        self.limit_s = limit_s
        self.since: float | None = None

    def observe(self, rebalancing: bool) -> None:
        REBALANCING.set(int(rebalancing))
        now = time.monotonic()
        if not rebalancing:
            self.since = None
        elif self.since is None:
            self.since = now
        elif now - self.since >= self.limit_s:
            log.error("the worker has been rebalancing for %.0fs and cannot rejoin its group: exiting (status 3) "
                      "so that its supervisor starts it afresh", now - self.since)
            logging.shutdown()
            os._exit(3)


def broker_credentials(config: Config) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """Faust's form of the config's Kafka security settings (the other clients take `kafka_options`)."""
    settings = config.framewatch
    ssl_context = kafka_options(config).get("ssl_context")
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=settings.kafka_sasl_password.get_secret_value(),
                                     ssl_context=ssl_context, mechanism=settings.kafka_sasl_mechanism)
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(ssl_context)
    return None


def create_app(config: Config) -> faust.App:
    app = WorkerApp(
        config.worker_group,
        broker=[f"kafka://{address}" for address in config.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(config),
        store="memory://",
        datadir=config.framewatch.data_dir or tempfile.mkdtemp(prefix="framewatch-worker-"),
        web_port=config.framewatch.worker_web_port,
        web_host=config.framewatch.bind_host,
        web_bind=config.framewatch.bind_host,  # where it listens (web_host only names it): loopback by default
        # Faust's own pages (/router/, /table/, /graph/, /stats/) would answer without the API token
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        topic_partitions=config.framewatch.topic_partitions,
        topic_replication_factor=config.framewatch.replication_factor,  # its changelogs' too
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_request_timeout=config.framewatch.producer_request_timeout_sec,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        broker_session_timeout=10.0,  # a crashed worker's partitions move within 10 s, not Faust's default 60
        stream_wait_empty=True,
        Stream=WorkerStream,  # batches whose wait starts at their first value
        PartitionAssignor=GroupAssignor,  # the group's membership, for capacity without PostgreSQL
    )
    return app
