"""The worker's pipeline, top to bottom: one small agent per step, each an `async for` over one topic.

    fw.frames ──infer──► fw.detections ──rules──► fw.alerts ──store──► PostgreSQL ─► fw.alerts-stored
        │                                  │  ├─ copy the alert image to alerts/… first (dead letter when it cannot)
        │                                  │  ├─► fw.counts ──tally──► PostgreSQL (closed minutes of counting tasks)
        │                                  │  └─► fw.incidents (open incidents per camera, when their number changes)
        └─(dropped, failed)► fw.frame-outcomes ◄──(no alert / alert)
                                 └──retain──► delete frames/… ─► fw.retention

fw.alerts-stored is published to mq_topic by `AlertPublisher` (agents/alerts/publisher.py), exactly once per alert.
fw.clips (the extractors' clips) is recorded in PostgreSQL by `clips`, then announced on mq_topic, at least once.

`Pipeline` holds the agents as methods, each a short `async for` over one topic; `attach` declares them and the
timers on the app, and `build_worker` assembles app, topology, resources and pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import cast

import faust
from aiokafka.errors import KafkaError
from faust.tables.manager import TableManager
from faust.types import AgentT
from prometheus_client import Counter, Gauge, Histogram

from framewatch.agents.alerts import publisher, relocation, sink
from framewatch.agents.alerts.publisher import AlertPublisher
from framewatch.agents.alerts.relocation import IMAGE_NOT_COPIED, Relocator
from framewatch.agents.alerts.sink import AlertSink
from framewatch.agents.api.web import attach_web
from framewatch.agents.app import RebalanceWatch, create_app
from framewatch.agents.delivery import Confirmations, Delivery, all_confirmed
from framewatch.agents.faust_overrides import GroupAssignor, batches
from framewatch.agents.inference import scheduler as inference
from framewatch.agents.resources import Resources
from framewatch.agents.retention import frames
from framewatch.agents.retention.frames import Retention
from framewatch.agents.retention.housekeeping import Housekeeping
from framewatch.agents.topology import RecordTooLarge, Topology, candidate_state_key
from framewatch.metrics import Tally, watch_loop_lag
from framewatch.rules.engine import Evaluation, Status, evaluate
from framewatch.rules.state import RuleState, StateUnreadable
from framewatch.schemas.config import Config
from framewatch.schemas.events import (
    AlertEvent,
    AlertStored,
    Candidate,
    ClipReady,
    ClipRequest,
    CountWindow,
    DetectionEvent,
    Event,
    FrameEvent,
    FrameOutcome,
    InferencePressure,
    OpenIncidents,
    Outcome,
    TaskChange,
    TaskEvent,
    now_ms,
)
from framewatch.schemas.feed import ClipMessage
from framewatch.schemas.stats import WorkerStats
from framewatch.schemas.tasks import CameraTask

log = logging.getLogger("framewatch.worker")

ALERTS_RAISED = Tally("framewatch_rules_alerts_total", "Alerts raised", ["task_type", "rule"])
FRAMES_EVALUATED = Tally("framewatch_rules_frames_total", "Frames seen by the rules: evaluated, replayed, late",
                           ["status"])
EVALUATION_SECONDS = Histogram("framewatch_rules_evaluation_seconds", "Rule evaluation time per frame", ["task_type"],
                               buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1))
ACTIVE_TRACKS = Gauge("framewatch_rules_active_tracks", "Tracks followed per camera", ["camera"])
STATES_RESET = Counter("framewatch_rules_states_reset_total", "Rule states found unreadable and started afresh")
CANDIDATE_ALERTS = Counter("framewatch_rules_candidate_alerts_total",
                           "Alerts raised by candidate rule settings (to fw.shadow-alerts, never published)",
                           ["task_type"])
OPEN_INCIDENTS = Gauge("framewatch_rules_open_incidents", "Incidents open per camera", ["camera"])

COUNTS_BATCH = 100
ANNOUNCE_WITHIN_S = 60.0
UNKNOWN_TASKS_REMEMBERED = 10_000

RETENTION_WITHIN_S = 0.25
PRESSURE_PERIOD_S = 2.0
WATCH_PERIOD_S = 5.0


def outcome_of(frame: FrameEvent, result: Evaluation, relocation_reasons: list[str]) -> FrameOutcome:
    """`alert` (with `image_not_copied` when an alert image could not be copied) or `no_alert` (with `late` or
    `replayed` when the frame was not evaluated)."""
    if result.alerts:
        return FrameOutcome(frame=frame, outcome=Outcome.ALERT, reason=next(filter(None, relocation_reasons), ""))
    reason = "" if result.status is Status.EVALUATED else result.status.value
    return FrameOutcome(frame=frame, outcome=Outcome.NO_ALERT, reason=reason)


def clip_request(alert: AlertEvent, task: CameraTask) -> ClipRequest:
    frame = alert.frame
    return ClipRequest(alert_id=alert.alert_id, task_id=frame.task_id, camera_id=frame.camera_id,
                       captured_at=frame.captured_at, pre_ms=int(task.clip_pre_sec * 1000),
                       post_ms=int(task.clip_post_sec * 1000))


async def announce_clip(topology: Topology, mq_topic: str, clip: ClipReady, stored_at: int) -> Delivery:
    """The clip's message on the alert feed; one too large for a record (a forged reason) is dead-lettered, so that
    it costs only itself."""
    message = ClipMessage.of(clip, stored_at)
    try:
        return await topology.emit_encoded(mq_topic, message.camera_id.encode(), message.to_bytes(), stored_at,
                                           type(message).__name__)
    except RecordTooLarge as error:
        return await topology.dead_letter(topology.clips, f"announcement: {error}", clip.to_bytes(), clip.camera_id)


async def confirm_announcement(topology: Topology, mq_topic: str, clip: ClipReady, delivery: Delivery) -> None:
    """A clip message the alert topic refuses for good (too large for it, not authorized, a topic policy) is
    dead-lettered after `ANNOUNCE_WITHIN_S`, so fw.clips moves on: the clip is stored, /api/alerts shows it."""
    try:
        await asyncio.wait_for(delivery.confirmed(), ANNOUNCE_WITHIN_S)
    except (TimeoutError, KafkaError) as error:
        await (await topology.dead_letter(topology.clips, f"announcement refused by {mq_topic}: {error!r}",
                                          clip.to_bytes(), clip.camera_id)).confirmed()


def restore(task_id: str, raw: bytes | None) -> RuleState:
    try:
        return RuleState.from_bytes(raw)
    except StateUnreadable as error:
        log.error("task %s: its rule state is unreadable (%s); it starts afresh", task_id, error)
        STATES_RESET.inc()
        return RuleState()


class Pipeline:
    """The worker's agents and timers, in the order a frame meets them."""

    def __init__(self, topology: Topology, resources: Resources) -> None:
        config = resources.config
        self.topology = topology
        self.resources = resources
        self.settings = config.ai_analysis
        self.sink = AlertSink(resources.alerts, self.refused_by_database)
        self.shadow_sink = AlertSink(resources.alerts, partial(self.refused_by_database, shadow=True))
        self.relocator = Relocator(resources.store)
        self.retention = Retention(resources.store, self.settings.save_only_with_detection, resources.frame_limit,
                                   config.frame_extractor.max_frame_age_sec)
        self.housekeeping = Housekeeping(config, resources.store, resources.alerts)
        self.rebalance_watch = RebalanceWatch()
        self.confirmations = Confirmations()
        self.unknown_tasks: set[str] = set()
        self.agents: dict[str, AgentT] = {}

    def attach(self, app: faust.App) -> None:
        """Declares the agents (by name, for `agent.test_context()`) and the timers."""
        topology = self.topology
        for name, topic, agent in (("infer", topology.frames, self.infer), ("rules", topology.detections, self.rules),
                                   ("store", topology.alerts, self.store), ("tally", topology.counts, self.tally),
                                   ("shadow", topology.shadow_alerts, self.shadow),
                                   ("clips", topology.clips, self.clips),
                                   ("retain", topology.frame_outcomes, self.retain)):
            self.agents[name] = app.agent(topic, name=f"framewatch.{name}")(agent)
        app.timer(self.settings.sweep_interval_sec, on_leader=True)(self.sweep)
        app.timer(PRESSURE_PERIOD_S)(self.report_pressure)
        app.timer(RETENTION_WITHIN_S)(self.delete_ended_frames)
        app.timer(WATCH_PERIOD_S)(self.watch_rebalance)
        app.task(watch_loop_lag)

    # fw.frames: inference

    async def infer(self, stream: faust.StreamT[bytes]) -> None:
        """Hands frames to the scheduler; a frame's offset is acked only once its result is on its way."""
        frames = cast(faust.Stream[bytes], stream).noack()
        async for event in frames.events():
            if (frame := await self.topology.decode(FrameEvent, event.value, self.topology.frames)) is None:
                await frames.ack(event)
                continue
            await self.resources.scheduler.submit(frame, partial(self.hand_on, frames, event),
                                                  owned=partial(self.topology.owns, event.message))

    async def hand_on(self, frames: faust.StreamT[bytes], event: faust.EventT[bytes],
                      result: DetectionEvent | FrameOutcome) -> None:
        """Sends the frame's result; the frame is acked once the broker has it."""
        topology = self.topology
        try:
            if isinstance(result, DetectionEvent):
                delivery = await topology.emit(topology.detections, result)
            else:
                delivery = await topology.emit(topology.frame_outcomes, result)
        except RecordTooLarge as error:
            log.error("frame %s: %s; the frame fails", result.frame.frame_id, error)
            failed = FrameOutcome(frame=result.frame, outcome=Outcome.FAILED, reason="too_large")
            delivery = await topology.emit(topology.frame_outcomes, failed)
        await self.confirmations.ack_when_confirmed([delivery], partial(frames.ack, event),
                                                    owned=partial(topology.owns, event.message))

    # fw.detections: the rules

    async def rules(self, stream: faust.StreamT[bytes]) -> None:
        """Evaluates each frame's rule against its task's state (a table with a changelog). A frame is acked once
        the broker has every record its evaluation produced, its new state included: Faust acks a value in a
        `finally`, so a worker stopped mid-evaluation committed a frame whose alert was never sent."""
        detections = cast(faust.Stream[bytes], stream).noack()
        async for record in detections.events():
            if (event := await self.topology.decode(DetectionEvent, record.value,
                                                    self.topology.detections)) is None:
                await detections.ack(record)
                continue
            await self.confirmations.ack_when_confirmed(await self.evaluate(event), partial(detections.ack, record),
                                                        key=event.frame.task_id,
                                                        owned=partial(self.topology.owns, record.message))

    async def evaluate(self, event: DetectionEvent) -> list[Delivery]:
        """The state is saved after the frame's alerts are sent; a frame replayed after a crash sends them
        again (rules/engine.py). Returns what was sent, to be confirmed before the frame is acked."""
        topology, frame = self.topology, event.frame
        if (task := self.resources.task_settings(frame.task_id)) is None:  # not on fw.tasks, not in the config
            return [await self.unknown_task(frame)]
        record = self.resources.catalog.events.get(frame.task_id)  # its candidate: one lookup when it has none
        key = frame.task_id.encode()
        state = restore(frame.task_id, topology.rule_state.get(key))
        open_before = len(state.incidents)
        promoted = self.promoted_state(record, state)
        if promoted is not None:
            state = promoted
        result = self.apply(task, state, event)
        deliveries: list[Delivery] = []
        reasons = [await self.raise_alert(alert, task, deliveries) for alert in result.alerts]
        deliveries += [await topology.emit(topology.counts, window) for window in result.windows]
        if result.status is Status.EVALUATED or promoted is not None:
            deliveries += await self.save_live(frame, key, state, open_before)
        if promoted is not None:  # after the live state that carries it on, in the same changelog partition
            deliveries.append(await topology.save_state(candidate_state_key(frame.task_id), None))
        if record is not None and record.candidate is not None:
            deliveries += await self.try_candidate(record.candidate, event)
        FRAMES_EVALUATED.labels(result.status.value).inc()
        deliveries.append(await topology.emit(topology.frame_outcomes, outcome_of(frame, result, reasons)))
        return deliveries

    async def save_live(self, frame: FrameEvent, key: bytes, state: RuleState, open_before: int) -> list[Delivery]:
        """The live rule's new state, and the camera's open incidents on fw.incidents when their number changed (for
        every worker's /api/cameras: each evaluates only its own partitions' cameras)."""
        topology = self.topology
        deliveries = [await topology.save_state(key, state.to_bytes())]
        ACTIVE_TRACKS.labels(frame.camera_id).set(len(state.tracks))
        OPEN_INCIDENTS.labels(frame.camera_id).set(len(state.incidents))
        if len(state.incidents) != open_before:
            deliveries.append(await topology.emit(topology.incidents, OpenIncidents(
                camera_id=frame.camera_id, task_id=frame.task_id, open=len(state.incidents), at=frame.captured_at)))
        return deliveries

    def promoted_state(self, record: TaskEvent | None, live: RuleState) -> RuleState | None:
        """When the task's record says its candidate was promoted and that candidate's state is still in the table:
        the state the live rule carries on from (`RuleState.promoted`). Its key is deleted as it is carried over,
        so this happens once."""
        if record is None or (change := record.candidate_change) is None or change.change is not TaskChange.PROMOTE:
            return None
        raw = self.topology.rule_state.get(candidate_state_key(record.task_id))
        if raw is None:
            return None
        candidate = restore(record.task_id, raw)
        return candidate.promoted(live) if candidate.candidate == change.candidate.since else None

    async def try_candidate(self, candidate: Candidate, event: DetectionEvent) -> list[Delivery]:
        """The candidate's rule on the frame's detections, with its own state in the same table (as durable as the
        live one, and confirmed before the frame is acked like it; a new candidate starts afresh). Its alerts go
        to fw.shadow-alerts only, keeping the frame's image key: no image copy, no clip request, never published.
        Replayed and late frames are recognised on its own state, as on the live one."""
        topology, frame = self.topology, event.frame
        key = candidate_state_key(frame.task_id)
        state = restore(frame.task_id, topology.rule_state.get(key))
        if state.candidate != candidate.since:
            state = RuleState(candidate=candidate.since)
        result = self.apply(candidate.task, state, event)
        deliveries = [await topology.emit(topology.shadow_alerts, alert.model_copy(update={
            "image_key": frame.object_key})) for alert in result.alerts]
        if result.status is Status.EVALUATED:
            deliveries.append(await topology.save_state(key, state.to_bytes()))
        CANDIDATE_ALERTS.labels(frame.task_type.value).inc(len(result.alerts))
        return deliveries

    def apply(self, task: CameraTask, state: RuleState, event: DetectionEvent) -> Evaluation:
        with EVALUATION_SECONDS.labels(event.frame.task_type.value).time():
            return evaluate(task, state, event, self.settings.alert_base_path)

    async def raise_alert(self, alert: AlertEvent, task: CameraTask, deliveries: list[Delivery]) -> str:
        """Copies the alert image, then sends the alert and its clip request (adding what it sent to `deliveries`);
        the frame outcome's reason (the image not copied: the alert's image is then its frame's object, which it
        keeps)."""
        reason = ""
        if (failure := await self.relocator.copy_image(alert)) is not None:
            deliveries.append(await self.topology.dead_letter(self.topology.alerts, f"relocation: {failure}",
                                                              alert.to_bytes(), alert.frame.camera_id))
            alert = alert.model_copy(update={"image_key": alert.frame.object_key})
            reason = IMAGE_NOT_COPIED
        deliveries.append(await self.topology.emit(self.topology.alerts, alert))
        if task.clips:
            deliveries.append(await self.topology.emit(self.topology.clip_requests, clip_request(alert, task)))
        ALERTS_RAISED.labels(alert.frame.task_type.value, alert.rule).inc()
        return reason

    async def unknown_task(self, frame: FrameEvent) -> Delivery:
        if frame.task_id not in self.unknown_tasks:  # once per task: a camera sends several frames a second
            if len(self.unknown_tasks) >= UNKNOWN_TASKS_REMEMBERED:  # forged task ids must not grow it for ever
                self.unknown_tasks.clear()
            self.unknown_tasks.add(frame.task_id)
            log.error("task %s is neither on fw.tasks nor in this worker's config: its frames end unevaluated",
                      frame.task_id)
        FRAMES_EVALUATED.labels("unknown_task").inc()
        outcome = FrameOutcome(frame=frame, outcome=Outcome.NO_ALERT, reason="unknown_task")
        return await self.topology.emit(self.topology.frame_outcomes, outcome)

    # fw.alerts and fw.counts: PostgreSQL

    async def store(self, stream: faust.StreamT[bytes]) -> None:
        """Alerts into PostgreSQL in batches, then announced on fw.alerts-stored for publishing; the batch is acked
        once the broker has every announcement (sent in order, confirmed side by side)."""
        topology = self.topology
        size = self.settings.alert_batch_size if self.settings.alert_batch_enabled else 1
        async for batch in batches(stream, size, self.settings.alert_batch_interval_sec):
            alerts = [a for raw in batch if (a := await topology.decode(AlertEvent, raw, topology.alerts))]
            stored = await self.sink.store_batch(alerts)
            stored_at = now_ms()
            await all_confirmed([await topology.emit(topology.alerts_stored, AlertStored(alert=alert,
                                                                                         stored_at=stored_at))
                                 for alert in stored])

    async def tally(self, stream: faust.StreamT[bytes]) -> None:
        """Closed minutes of the counting tasks into PostgreSQL, where /api/counts reads them."""
        topology = self.topology
        async for batch in batches(stream, COUNTS_BATCH, self.settings.alert_batch_interval_sec):
            windows = [w for raw in batch if (w := await topology.decode(CountWindow, raw, topology.counts))]
            await self.sink.store_counts(windows)

    async def clips(self, stream: faust.StreamT[bytes]) -> None:
        """Each alert's clip (or why it has none) into PostgreSQL, where /api/alerts reads it, then announced on the
        alert feed (a ClipMessage, keyed by camera as the alerts are); the batch is acked once the broker has every
        announcement. Not in the publisher's transactions: at least once, and an alert's clip message may come
        before the alert's own."""
        topology = self.topology
        async for batch in batches(stream, COUNTS_BATCH, self.settings.alert_batch_interval_sec):
            stored = await self.sink.store_clips([c for raw in batch if (c := await topology.decode(ClipReady, raw,
                                                                                                    topology.clips))])
            stored_at = now_ms()
            mq_topic = self.settings.mq_topic
            announced = [(clip, await announce_clip(topology, mq_topic, clip, stored_at)) for clip in stored]
            await asyncio.gather(*(confirm_announcement(topology, mq_topic, clip, delivery)
                                   for clip, delivery in announced))

    async def shadow(self, stream: faust.StreamT[bytes]) -> None:
        """Candidates' alerts (`framewatch tasks try`) into PostgreSQL's shadow_alerts, in batches as `store` does;
        nothing is announced, copied or published."""
        topology = self.topology
        async for batch in batches(stream, COUNTS_BATCH, self.settings.alert_batch_interval_sec):
            await self.shadow_sink.store_shadow([a for raw in batch if (a := await topology.decode(
                AlertEvent, raw, topology.shadow_alerts))])

    async def refused_by_database(self, record: Event, reason: str, shadow: bool = False) -> None:
        """A record PostgreSQL refused for its data: kept on fw.dead-letters with the reason."""
        topology = self.topology
        source = topology.shadow_alerts if shadow else {AlertEvent: topology.alerts, ClipReady: topology.clips}.get(
            type(record), topology.counts)
        await (await topology.dead_letter(source, f"database: {reason}", record.to_bytes(),
                                          record.event_id)).confirmed()

    # fw.frame-outcomes: retention

    async def retain(self, stream: faust.StreamT[bytes]) -> None:
        """Schedules each ended frame's deletion; its outcome is acked once the object is gone (a worker that
        dies first reads the outcome again and deletes it then)."""
        outcomes = cast(faust.Stream[bytes], stream).noack()
        async for event in outcomes.events():
            raw = event.value
            if (outcome := await self.topology.decode(FrameOutcome, raw, self.topology.frame_outcomes)) is None:
                await outcomes.ack(event)
                continue
            await self.retention.on_outcome(outcome, partial(outcomes.ack, event))

    async def delete_ended_frames(self) -> None:
        for deleted in await self.retention.delete_due():
            if deleted.event is not None:
                await self.topology.send(self.topology.retention, deleted.event)
            for ack in deleted.acks:
                await ack()

    async def sweep(self) -> None:
        """The leader's sweep of what slipped through, and the maximum ages."""
        for deleted in await self.housekeeping.run():
            await self.topology.send(self.topology.retention, deleted)

    # to the extractors

    async def report_pressure(self) -> None:
        """Per task, what inference received and dropped: the extractor slows cameras whose frames are dropped."""
        period_ms = int(PRESSURE_PERIOD_S * 1000)
        await all_confirmed([await self.topology.emit(self.topology.pressure, InferencePressure(
            task_id=task_id, period_ms=period_ms, received=seen.received, dropped=seen.dropped, ended=seen.ended))
            for task_id, seen in self.resources.scheduler.take_pressure().items()])

    async def watch_rebalance(self) -> None:
        self.rebalance_watch.observe(self.topology.app.rebalancing)

    async def readiness(self) -> dict[str, bool]:
        """What `/readyz` checks: the group's assignment settled, the rule state recovered, the stores reachable."""
        app = self.topology.app
        return {"assigned": not app.rebalancing, "recovered": cast(TableManager, app.tables).recovery.completed.is_set(),
                "database": await self.resources.alerts.reachable(),
                "object_store": await self.resources.store.reachable()}

    def stats(self) -> WorkerStats:
        """This worker's figures now: what `/api/stats` answers."""
        scheduler = self.resources.scheduler
        return WorkerStats(
            partitions_assigned=len(self.topology.app.consumer.assignment()),
            services_alive=len(self.resources.registry.alive()),
            requests=inference.REQUESTS.total(), responses=inference.RESPONSES.total(),
            failures=inference.FAILURES.total(), queue_size=scheduler.queued, queue_max=scheduler.waiting_max,
            max_size=scheduler.max_waiting, in_flight=scheduler.in_flight,
            processed_total=inference.FRAMES_DONE.total(outcome="inferred"),
            dropped_total=inference.FRAMES_DONE.total(outcome="dropped"),
            failed_total=inference.FRAMES_DONE.total(outcome="failed"),
            frames_evaluated=FRAMES_EVALUATED.total(), alerts_raised=ALERTS_RAISED.total(),
            alerts_relocated=relocation.COPIED.total(), relocation_dead_letters=relocation.DEAD.total(),
            alerts_stored=sink.ALERTS_STORED.total(), alerts_published=publisher.PUBLISHED_TOTAL.total(),
            frames_deleted=frames.DELETED.total(),
            freshness={camera: seen.freshness.value for camera, seen in scheduler.cameras.items()})


def build_worker(config: Config) -> tuple[faust.App, Topology, Resources, Pipeline]:
    app = create_app(config)
    topology = Topology(app, config)
    resources = Resources(config)
    resources.capacity.membership = GroupAssignor.of(app).current
    app.add_dependency(resources)
    app.add_dependency(AlertPublisher(config, app.conf.id))  # fw.alerts-stored -> mq_topic, in transactions
    pipeline = Pipeline(topology, resources)
    pipeline.attach(app)
    attach_web(app, resources, pipeline.stats, pipeline.readiness)
    return app, topology, resources, pipeline
