"""The worker's pipeline, top to bottom: one small agent per step, each an `async for` over one topic.

    fw.frames ──infer──► fw.detections ──rules──► fw.alerts ──store──► PostgreSQL ─► fw.alerts-stored
        │                                  │  ├─ copy the alert image to alerts/… first (dead letter when it cannot)
        │                                  │  └─► fw.counts ──tally──► PostgreSQL (closed minutes of counting tasks)
        └─(dropped, failed)► fw.frame-outcomes ◄──(no alert / alert)
                                 └──retain──► delete frames/… ─► fw.retention

fw.alerts-stored is published to mq_topic by `AlertPublisher` (agents/alerts/publisher.py), exactly once per alert.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import cast

import faust
from prometheus_client import Counter, Gauge, Histogram

from framewatch.agents.alerts.publisher import AlertPublisher
from framewatch.agents.alerts.relocation import IMAGE_NOT_COPIED, Relocator
from framewatch.agents.alerts.sink import AlertSink
from framewatch.agents.api.web import attach_web
from framewatch.agents.app import RebalanceWatch, Resources, Topology, create_app
from framewatch.agents.retention.frames import Retention
from framewatch.agents.retention.housekeeping import Housekeeping
from framewatch.rules.engine import Evaluation, Status, evaluate
from framewatch.rules.state import RuleState, StateUnreadable
from framewatch.schemas.config import Config
from framewatch.schemas.events import (
    AlertEvent,
    AlertStored,
    CountWindow,
    DeadLetter,
    DetectionEvent,
    Event,
    FrameEvent,
    FrameOutcome,
    InferencePressure,
    Outcome,
    now_ms,
)
from framewatch.schemas.topics import MAX_RECORD_BYTES

log = logging.getLogger("framewatch.worker")

ALERTS_RAISED = Counter("framewatch_rules_alerts_total", "Alerts raised", ["task_type", "rule"])
FRAMES_EVALUATED = Counter("framewatch_rules_frames_total", "Frames seen by the rules: evaluated, replayed, late",
                           ["status"])
EVALUATION_SECONDS = Histogram("framewatch_rules_evaluation_seconds", "Rule evaluation time per frame", ["task_type"],
                               buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1))
ACTIVE_TRACKS = Gauge("framewatch_rules_active_tracks", "Tracks followed per camera", ["camera"])
STATES_RESET = Counter("framewatch_rules_states_reset_total", "Rule states found unreadable and started afresh")
OPEN_INCIDENTS = Gauge("framewatch_rules_open_incidents", "Incidents open per camera", ["camera"])

COUNTS_BATCH = 100
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


def build_worker(config: Config) -> tuple[faust.App, Topology, Resources]:
    app = create_app(config)
    topology = Topology(app, config)
    resources = Resources(config)
    app.add_dependency(resources)
    app.add_dependency(AlertPublisher(config, app.conf.id))  # fw.alerts-stored -> mq_topic, in transactions
    settings = config.ai_analysis

    async def dead_letter(record: Event, reason: str) -> None:
        """A record PostgreSQL refused for its data: kept on fw.dead-letters with the reason."""
        source = topology.alerts if isinstance(record, AlertEvent) else topology.counts
        letter = DeadLetter.of(source.get_topic_name(), f"database: {reason}", record.to_bytes(), record.event_id)
        await topology.send(topology.dead_letters, letter, key=letter.topic)

    sink = AlertSink(resources.alerts, dead_letter)
    relocator = Relocator(resources.store)
    extraction = config.frame_extractor
    retention = Retention(resources.store, settings.save_only_with_detection, resources.frame_limit,
                          extraction.max_frame_age_sec)

    async def hand_on(frames: faust.StreamT[bytes], event: faust.EventT[bytes],
                      result: DetectionEvent | FrameOutcome) -> None:
        if isinstance(result, DetectionEvent) and (size := len(result.to_bytes())) > MAX_RECORD_BYTES:
            log.error("frame %s: its detections take %d bytes, more than a record may (%d): the frame fails",
                      result.frame.frame_id, size, MAX_RECORD_BYTES)
            result = FrameOutcome(frame=result.frame, outcome=Outcome.FAILED, reason="too_large")
        target = topology.detections if isinstance(result, DetectionEvent) else topology.frame_outcomes
        await topology.send(target, result, key=result.frame.camera_id)
        await frames.ack(event)

    @app.agent(topology.frames)
    async def infer(stream: faust.StreamT[bytes]) -> None:
        """Hands frames to the scheduler; a frame's offset is acked only once its result is on its way."""
        frames = cast(faust.Stream[bytes], stream).noack()
        async for event in frames.events():
            if (frame := await topology.decode(FrameEvent, event.value, topology.frames)) is None:
                await frames.ack(event)
                continue
            await resources.scheduler.submit(frame, partial(hand_on, frames, event))

    async def relocate(alert: AlertEvent) -> str:
        """Copies the alert image before the alert goes out; the outcome's reason when it could not."""
        if (reason := await relocator.copy_image(alert)) is None:
            return ""
        letter = DeadLetter.of(topology.alerts.get_topic_name(), f"relocation: {reason}", alert.to_bytes(),
                               alert.frame.camera_id)
        await topology.send(topology.dead_letters, letter, key=letter.topic)
        return IMAGE_NOT_COPIED

    async def raise_alert(alert: AlertEvent) -> str:
        """Copies the image and sends the alert; the frame outcome's reason."""
        reason = await relocate(alert)
        await topology.send(topology.alerts, alert, key=alert.frame.camera_id)
        ALERTS_RAISED.labels(alert.frame.task_type.value, alert.rule).inc()
        return reason

    def restore(task_id: str, raw: bytes | None) -> RuleState:
        try:
            return RuleState.from_bytes(raw)
        except StateUnreadable as error:
            log.error("task %s: its rule state is unreadable (%s); it starts afresh", task_id, error)
            STATES_RESET.inc()
            return RuleState()

    unknown_tasks: set[str] = set()

    async def unknown_task(frame: FrameEvent) -> None:
        if frame.task_id not in unknown_tasks:  # once per task: a camera sends several frames a second
            if len(unknown_tasks) >= UNKNOWN_TASKS_REMEMBERED:  # forged task ids must not grow the set for ever
                unknown_tasks.clear()
            unknown_tasks.add(frame.task_id)
            log.error("task %s is neither on fw.tasks nor in this worker's config: its frames end unevaluated",
                      frame.task_id)
        FRAMES_EVALUATED.labels("unknown_task").inc()
        outcome = FrameOutcome(frame=frame, outcome=Outcome.NO_ALERT, reason="unknown_task")
        await topology.send(topology.frame_outcomes, outcome, key=frame.camera_id)

    @app.agent(topology.detections)
    async def rules(stream: faust.StreamT[bytes]) -> None:
        """Evaluates each frame's rule against its task's state (a table with a changelog). The state is saved
        after the frame's alerts are sent; a frame replayed after a crash sends them again (rules/engine.py)."""
        async for raw in stream:
            if (event := await topology.decode(DetectionEvent, raw, topology.detections)) is None:
                continue
            frame = event.frame
            if (task := resources.task_settings(frame.task_id)) is None:  # not on fw.tasks, not in the config
                await unknown_task(frame)
                continue
            key = frame.task_id.encode()
            state = restore(frame.task_id, topology.rule_state.get(key))
            with EVALUATION_SECONDS.labels(frame.task_type.value).time():
                result = evaluate(task, state, event, settings.alert_base_path)
            reasons = [await raise_alert(alert) for alert in result.alerts]
            for window in result.windows:
                await topology.send(topology.counts, window, key=window.task_id)
            if result.status is Status.EVALUATED:
                topology.rule_state[key] = state.to_bytes()
                ACTIVE_TRACKS.labels(frame.camera_id).set(len(state.tracks))
                OPEN_INCIDENTS.labels(frame.camera_id).set(len(state.incidents))
            FRAMES_EVALUATED.labels(result.status.value).inc()
            await topology.send(topology.frame_outcomes, outcome_of(frame, result, reasons), key=frame.camera_id)

    @app.agent(topology.alerts)
    async def store(stream: faust.StreamT[bytes]) -> None:
        size = settings.alert_batch_size if settings.alert_batch_enabled else 1
        async for batch in stream.take(size, within=settings.alert_batch_interval_sec):
            alerts = [a for raw in batch if (a := await topology.decode(AlertEvent, raw, topology.alerts))]
            stored = await sink.store_batch(alerts)
            stored_at = now_ms()
            for alert in stored:
                await topology.send(topology.alerts_stored, AlertStored(alert=alert, stored_at=stored_at),
                                    key=alert.frame.camera_id)

    @app.agent(topology.counts)
    async def tally(stream: faust.StreamT[bytes]) -> None:
        """Closed minutes of the counting tasks into PostgreSQL, where /api/counts reads them."""
        async for batch in stream.take(COUNTS_BATCH, within=settings.alert_batch_interval_sec):
            windows = [w for raw in batch if (w := await topology.decode(CountWindow, raw, topology.counts))]
            await sink.store_counts(windows)

    @app.agent(topology.frame_outcomes)
    async def retain(stream: faust.StreamT[bytes]) -> None:
        """Schedules each ended frame's deletion; its outcome is acked once the object is gone (a worker that
        dies first reads the outcome again and deletes it then)."""
        outcomes = cast(faust.Stream[bytes], stream).noack()
        async for event in outcomes.events():
            if (outcome := await topology.decode(FrameOutcome, event.value, topology.frame_outcomes)) is None:
                await outcomes.ack(event)
                continue
            await retention.on_outcome(outcome, partial(outcomes.ack, event))

    housekeeping = Housekeeping(config, resources.store, resources.alerts)

    @app.timer(settings.sweep_interval_sec, on_leader=True)
    async def sweep() -> None:
        for deleted in await housekeeping.run():
            await topology.send(topology.retention, deleted, key=deleted.task_id)

    @app.timer(PRESSURE_PERIOD_S)
    async def report_pressure() -> None:
        """Per task, what inference received and dropped: the extractor slows cameras whose frames are dropped."""
        for task_id, seen in resources.scheduler.take_pressure().items():
            report = InferencePressure(task_id=task_id, period_ms=int(PRESSURE_PERIOD_S * 1000),
                                       received=seen.received, dropped=seen.dropped, ended=seen.ended)
            await topology.send(topology.pressure, report, key=task_id)

    @app.timer(RETENTION_WITHIN_S)
    async def delete_ended_frames() -> None:
        for deleted in await retention.delete_due():
            if deleted.event is not None:
                await topology.send(topology.retention, deleted.event, key=deleted.event.task_id)
            for ack in deleted.acks:
                await ack()

    rebalance_watch = RebalanceWatch()

    @app.timer(WATCH_PERIOD_S)
    async def watch_rebalance() -> None:
        rebalance_watch.observe(app.rebalancing)

    attach_web(app, resources)
    return app, topology, resources
