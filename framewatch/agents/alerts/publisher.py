"""The publisher: every stored alert reaches the alert topic once, in order per camera, whatever crashes.

fw.alerts-stored may carry an alert twice (the sink re-announces a batch it replays after a crash), so the
publisher remembers what it published on fw.published and skips repeats. The alert message, its fw.published
marker and the consumer offset go in one Kafka transaction: after a crash either all three happened or none
did, so a consumer reading the alert topic with `isolation.level=read_committed` sees each alert exactly once.
aiokafka commits a transaction even when a record sent in it was refused, so the transaction is committed only once
every send in it is confirmed; a refusal aborts it. An alert the alert topic refuses for a reason retrying cannot
change (too large for it, not authorized, a topic policy, a topic the broker does not have) goes to
fw.dead-letters with the reason after `REFUSALS_MAX` refusals, so its partition moves on.

With several workers a partition of fw.alerts-stored moves between them, and aiokafka has no KIP-447 fencing by
consumer generation. So each partition has a transactional producer of its own, its transactional id derived from
the partition alone (`<group>-<topic>-<partition>`): whoever takes the partition over starts that producer, which
aborts the previous owner's open transaction and fences it (its commit fails), and only then reads the markers.
Each partition's hand-over is an owner with an explicit state (ownership.py).
This is a plain aiokafka consume-transform-produce loop rather than a Faust agent because Faust's own
exactly-once mode would switch the whole worker to transactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from mode import Service
from prometheus_client import Counter, Gauge

from framewatch.agents.alerts.ownership import NotOwned, PartitionOwner, PartitionOwners
from framewatch.agents.dead_letters import dead_letter
from framewatch.clients.bus import (
    BrokerUnavailable,
    connect_admin,
    kafka_options,
    key_text,
    partitions,
)
from framewatch.metrics import Tally
from framewatch.retry import Backoff, logged
from framewatch.schemas.config import Config
from framewatch.schemas.events import (
    AlertPublished,
    AlertStored,
    DecodeError,
)
from framewatch.schemas.feed import AlertMessage
from framewatch.schemas.topics import ALERTS_STORED, DEAD_LETTERS, PUBLISHED

log = logging.getLogger("framewatch.publisher")

PUBLISHED_TOTAL = Tally("framewatch_publisher_alerts_published_total", "Alerts published to the alert topic")
REPEATS = Counter("framewatch_publisher_repeats_skipped_total", "Stored alerts already published (replays)")
ABORTED = Counter("framewatch_publisher_transactions_aborted_total", "Publish transactions aborted and retried")
REMEMBERED = Gauge("framewatch_publisher_remembered_ids", "Published alert ids kept to skip repeats")

REFUSED = Counter("framewatch_publisher_alerts_refused_total",
                  "Alerts the alert topic refused for good, dead-lettered instead of published", ["topic", "reason"])
DEAD_LETTERED = Counter("framewatch_publisher_dead_letters_total",
                        "Records of fw.alerts-stored kept on fw.dead-letters (unreadable, or refused for good)")


class UnknownAlertTopic(UnknownTopicOrPartitionError):
    """The broker, reached, has no such topic (deleted, or never made where framewatch may not make topics). Not
    aiokafka's own UnknownTopicOrPartitionError, which it also raises when it could not reach the broker at all."""


# what the broker (or the client, before sending) will refuse however often the record is sent again
LASTING_REFUSALS = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError,
                    TopicAuthorizationFailedError, PolicyViolationError, InvalidTopicError, UnknownAlertTopic)
REFUSALS_MAX = 3  # a lasting refusal is tried this often, in case the site fixes the topic meanwhile
Sent = list["asyncio.Future[Any]"]


@dataclass
class Batch:
    """What one transaction did, counted once it is committed."""
    published: set[str] = field(default_factory=set)  # alert ids
    refused: list[str] = field(default_factory=list)  # the refusal of each alert dead-lettered for it
    dead_letters: int = 0

PUBLISH_RETRY_MS = 10
MAX_RECORDS = 500  # a transaction's alerts at most
BURST_MS = 5
HANDOVER_FAILURES = Counter("framewatch_publisher_handover_failures_total",
                            "Failed attempts to take partitions over (start their producers, read the markers)")

HANDOVER_WAIT_S = 20.0
MARKERS_READ_S = 30.0
HANDOVER_BACKOFF = Backoff(first_s=1.0, max_s=15.0)
HANDOVER_ERRORS = (KafkaError, BrokerUnavailable, OSError, TimeoutError)
DEDUP_WINDOW_MS = 24 * 3600 * 1000  # fw.published keeps a day; replays happen within minutes


class _Handover(ConsumerRebalanceListener):
    def __init__(self, publisher: AlertPublisher) -> None:
        self.publisher = publisher
        self.owners = publisher.owners

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.owners.settled.clear()
        # a transaction under way ends before its partition goes, or is left to the next owner, whose producer
        # aborts and fences it
        if not await self.owners.release([tp.partition for tp in revoked], HANDOVER_WAIT_S):
            log.warning("a publish transaction outlasted %.0fs: handing its partitions over anyway", HANDOVER_WAIT_S)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.owners.settled.clear()
        try:  # nothing is published until it succeeds; another worker may have published for these
            await HANDOVER_BACKOFF.call(self.owners.take_over, self._worth_retrying,
                                        logged(log, "taking over fw.alerts-stored partitions", HANDOVER_FAILURES.inc),
                                        [tp.partition for tp in assigned], self.publisher.remember_published)
        except HANDOVER_ERRORS:
            if not self.publisher.should_stop:
                raise
        self.owners.settled.set()

    def _worth_retrying(self, error: BaseException) -> bool:
        return isinstance(error, HANDOVER_ERRORS) and not self.publisher.should_stop


class AlertPublisher(Service):
    def __init__(self, config: Config, app_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.group_id = f"{app_id}-publisher"
        self.source = config.topic(ALERTS_STORED.name)
        self.markers = config.topic(PUBLISHED.name)
        self.published: dict[str, int] = {}
        self.owners = PartitionOwners(self._new_producer)  # one per fw.alerts-stored partition this worker owns
        self._consumer: AIOKafkaConsumer | None = None

    async def on_start(self) -> None:
        self._consumer = AIOKafkaConsumer(**kafka_options(self.config), group_id=self.group_id,
                                          enable_auto_commit=False, auto_offset_reset="earliest",
                                          isolation_level="read_committed")
        await self.consumer.start()
        self.consumer.subscribe([self.source], listener=_Handover(self))

    async def on_stop(self) -> None:
        if self._consumer is not None:
            try:  # revokes the partitions: their producers stop
                await asyncio.wait_for(self._consumer.stop(), HANDOVER_WAIT_S + 10)
            except TimeoutError:
                log.warning("the publisher's consumer did not stop within %.0fs", HANDOVER_WAIT_S + 10)
        await self.owners.release(self.owners.partitions(), wait_s=0)

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "publisher not started"
        return self._consumer

    def transactional_id(self, partition: int) -> str:
        return f"{self.group_id}-{self.source}-{partition}"

    def _new_producer(self, partition: int) -> AIOKafkaProducer:
        # a transaction begun right after the last commit may be told CONCURRENT_TRANSACTIONS while the broker
        # writes the last one's markers; the default 100 ms backoff before asking again was most of an alert's
        # stored -> published time
        return AIOKafkaProducer(**kafka_options(self.config), linger_ms=5, retry_backoff_ms=PUBLISH_RETRY_MS,
                                transactional_id=self.transactional_id(partition))

    async def _take_again(self, tp: TopicPartition) -> None:
        """After being fenced: the partition is ours again only if the group still says so, and then with what
        the other worker published meanwhile."""
        await self.owners.release([tp.partition], wait_s=0)
        if tp in self.consumer.assignment():
            await self.owners.take_over([tp.partition], self.remember_published)

    async def remember_published(self) -> None:
        """Read fw.published to its end (committed records only): the ids not to publish again."""
        admin = await connect_admin(self.config)
        try:
            count = (await partitions(admin, [self.markers]))[self.markers]
        finally:
            await admin.close()
        reader = AIOKafkaConsumer(**kafka_options(self.config), group_id=None,
                                  enable_auto_commit=False, isolation_level="read_committed")
        await reader.start()
        try:
            tps = [TopicPartition(self.markers, p) for p in range(count)]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            deadline = time.monotonic() + MARKERS_READ_S
            for tp in tps:
                while await reader.position(tp) < ends[tp]:
                    if time.monotonic() > deadline:  # the caller retries; better than waiting in silence
                        raise KafkaTimeoutError(f"reading {self.markers} to its end took over {MARKERS_READ_S:.0f}s")
                    for record in (await reader.getmany(tp, timeout_ms=1000)).get(tp, []):
                        if record.key is not None:
                            self.published[key_text(record.key)] = record.timestamp
        finally:
            await reader.stop()
        self._forget_old()

    def _forget_old(self) -> None:
        horizon = int(time.time() * 1000) - DEDUP_WINDOW_MS
        self.published = {k: t for k, t in self.published.items() if t >= horizon}
        REMEMBERED.set(len(self.published))

    @Service.task
    async def _publish(self) -> None:
        while not self.should_stop:
            batches = await self.consumer.getmany(timeout_ms=500, max_records=MAX_RECORDS)
            if not batches:
                continue
            await self._gather_burst(batches)
            await self.owners.settled.wait()
            # each partition has a producer, so their transactions run side by side: one after another, a batch
            # spread over ten partitions waited ten commits for its last alert
            await asyncio.gather(*(self._publish_partition(owner, tp, records)
                                   for tp, records in batches.items()
                                   if (owner := self.owners.ready(tp.partition)) is not None))

    async def _gather_burst(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """The sink announces a stored batch in a few fetches; what follows within BURST_MS joins this transaction
        (a transaction costs several broker round trips: one per fetch made the last of a batch wait several)."""
        count = sum(len(records) for records in batches.values())
        while count < MAX_RECORDS and (more := await self.consumer.getmany(timeout_ms=BURST_MS,
                                                                           max_records=MAX_RECORDS - count)):
            for tp, records in more.items():
                batches.setdefault(tp, []).extend(records)
                count += len(records)

    async def _publish_partition(self, owner: PartitionOwner, tp: TopicPartition, records: list[Any]) -> None:
        try:
            batch = await self._publish_batch(owner, tp, records)
        except NotOwned as error:  # revoked meanwhile: its records are its next owner's
            log.info("nothing published on fw.alerts-stored partition %d: %s", tp.partition, error)
            return
        except KafkaError as error:
            ABORTED.inc()
            log.warning("publish transaction on fw.alerts-stored partition %d aborted, will retry: %r",
                        tp.partition, error)
            self.consumer.seek(tp, records[0].offset)
            if isinstance(error, ProducerFenced):  # another worker took the partition over while we were out
                await self._take_again(tp)
            return
        owner.committed(record.offset for record in records)
        self.published.update(dict.fromkeys(batch.published, int(time.time() * 1000)))
        PUBLISHED_TOTAL.inc(len(batch.published))
        DEAD_LETTERED.inc(batch.dead_letters)
        for refusal in batch.refused:
            REFUSED.labels(self.config.ai_analysis.mq_topic, refusal).inc()
        REMEMBERED.set(len(self.published))

    @Service.timer(3600)
    async def _forget_hourly(self) -> None:
        self._forget_old()

    async def _publish_batch(self, owner: PartitionOwner, tp: TopicPartition, records: list[Any]) -> Batch:
        """One transaction: each alert's message and marker (or, once refused for good `REFUSALS_MAX` times, its
        dead letter), then the offsets, committed only once the broker has confirmed every record in it."""
        batch = Batch()
        async with owner.transaction() as producer:
            sent = [(record, await self._publish_one(owner, producer, record, batch)) for record in records]
            await self._confirm(owner, sent)
            await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group_id)
        return batch

    async def _confirm(self, owner: PartitionOwner, sent: list[tuple[Any, Sent]]) -> None:
        """Raises the first refusal (the transaction aborts), counting the lasting ones against their record."""
        results = await asyncio.gather(*(asyncio.gather(*futures) for _, futures in sent), return_exceptions=True)
        refused = [(record, result) for (record, _), result in zip(sent, results, strict=True)
                   if isinstance(result, BaseException)]
        for record, error in refused:
            if isinstance(error, LASTING_REFUSALS):
                times, _ = owner.refusals.get(record.offset, (0, error))
                owner.refusals[record.offset] = (times + 1, error)
        if refused:
            raise refused[0][1]

    async def _publish_one(self, owner: PartitionOwner, producer: AIOKafkaProducer, record: Any,
                           batch: Batch) -> Sent:
        """Hands the record's messages to the producer; what comes back resolves once the broker has them. A
        refusal the client raises at once (a record larger than it sends) comes back the same way."""
        try:
            stored = AlertStored.decode(record.value)
        except DecodeError as error:
            batch.dead_letters += 1
            return [await self._dead_letter(owner, producer, record, str(error))]
        alert = stored.alert
        if alert.alert_id in self.published or alert.alert_id in batch.published:
            REPEATS.inc()
            return []
        mq_topic = self.config.ai_analysis.mq_topic
        times, refusal = owner.refusals.get(record.offset, (0, None))
        if refusal is not None and times >= REFUSALS_MAX:
            batch.refused.append(type(refusal).__name__)
            batch.dead_letters += 1
            return [await self._dead_letter(owner, producer, record, f"refused by {mq_topic}: {refusal}",
                                            alert.frame.camera_id)]
        try:
            if not await self._alert_topic_known(producer):
                raise UnknownAlertTopic(f"{mq_topic} does not exist")
            message = await producer.send(mq_topic, AlertMessage.of(stored).to_bytes(),
                                          key=alert.frame.camera_id.encode())
        except LASTING_REFUSALS as error:
            message = asyncio.get_running_loop().create_future()
            message.set_exception(error)
        marker = AlertPublished(alert_id=alert.alert_id, camera_id=alert.frame.camera_id)
        batch.published.add(alert.alert_id)
        return [message, await producer.send(self.markers, marker.to_bytes(), key=PUBLISHED.key_of(marker))]

    async def _alert_topic_known(self, producer: AIOKafkaProducer) -> bool:
        """Whether the broker has the alert topic: the producer's metadata names it, or, when it does not, metadata
        fetched now (a send to a missing topic would wait `request_timeout_ms` for it, then fail the way it fails
        when the broker is away). A broker that cannot be reached says nothing: the send waits for it as ever."""
        mq_topic = self.config.ai_analysis.mq_topic
        if producer.client.cluster.partitions_for_topic(mq_topic) is not None:
            return True
        try:
            metadata = await producer.client.fetch_all_metadata()
        except KafkaError:
            return True
        return mq_topic in metadata.topics()

    async def _dead_letter(self, owner: PartitionOwner, producer: AIOKafkaProducer, record: Any, reason: str,
                           key: str | None = None) -> asyncio.Future[Any]:
        """Sends the record's dead letter in this transaction; it is built (counted and logged) once, however often
        its transaction is tried."""
        letter = owner.letters.get(record.offset)
        if letter is None:
            letter = owner.letters[record.offset] = dead_letter(self.source, reason, record.value, key)
        future: asyncio.Future[Any] = await producer.send(self.config.topic(DEAD_LETTERS.name), letter.to_bytes(),
                                                          key=DEAD_LETTERS.key_of(letter))
        return future
