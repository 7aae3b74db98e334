"""The worker's pipeline, top to bottom: one small agent per step, each an `async for` over one topic.

    fw.frames ──infer──► fw.detections ──rules──► fw.alerts ──store──► PostgreSQL ─► fw.alerts-stored
        │                                  │  └─ copy the alert image to alerts/… first (dead letter when it cannot)
        └─(dropped, failed)► fw.frame-outcomes ◄──(no alert / alert)
                                 └──retain──► delete frames/… ─► fw.retention

fw.alerts-stored is published to mq_topic by `AlertPublisher` (agents/publisher.py), exactly once per alert.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import faust
from prometheus_client import Counter

from framewatch.agents.app import Resources, Topology, create_app
from framewatch.agents.housekeeping import Housekeeping
from framewatch.agents.publisher import AlertPublisher
from framewatch.agents.relocation import IMAGE_NOT_COPIED, Relocator
from framewatch.agents.retention import Retention
from framewatch.agents.rules import evaluate
from framewatch.agents.sink import AlertSink
from framewatch.agents.web import attach_web
from framewatch.schemas.config import CameraTask, Config
from framewatch.schemas.events import (
    AlertEvent,
    AlertStored,
    DeadLetter,
    DetectionEvent,
    FrameEvent,
    FrameOutcome,
    Outcome,
    now_ms,
)

ALERTS_RAISED = Counter("framewatch_rules_alerts_total", "Alerts raised", ["task_type", "rule"])
FRAMES_EVALUATED = Counter("framewatch_rules_frames_total", "Frames evaluated by the rules", ["outcome"])

RETENTION_BATCH = 500
RETENTION_WITHIN_S = 0.25


def build_worker(config: Config) -> tuple[faust.App, Topology, Resources]:
    app = create_app(config)
    topology = Topology(app, config)
    resources = Resources(config)
    app.add_dependency(resources)
    app.add_dependency(AlertPublisher(config, app.conf.id))  # fw.alerts-stored -> mq_topic, in transactions
    settings = config.ai_analysis
    sink = AlertSink(resources.alerts)
    relocator = Relocator(resources.store)
    extraction = config.frame_extractor
    retention = Retention(resources.store, settings.save_only_with_detection, extraction.frame_limit_for,
                          extraction.max_frame_age_sec)

    async def hand_on(frames: faust.StreamT[bytes], event: faust.EventT[bytes],
                      result: DetectionEvent | FrameOutcome) -> None:
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
        letter = DeadLetter(topic=topology.alerts.get_topic_name(), reason=f"relocation: {reason}",
                            key=alert.frame.camera_id, payload=alert.to_bytes().decode())
        await topology.send(topology.dead_letters, letter, key=letter.topic)
        return IMAGE_NOT_COPIED

    @app.agent(topology.detections)
    async def rules(stream: faust.StreamT[bytes]) -> None:
        async for raw in stream:
            if (event := await topology.decode(DetectionEvent, raw, topology.detections)) is None:
                continue
            frame = event.frame
            implied = CameraTask(id=frame.task_id, task_type=frame.task_type, rtsp_url="")
            task = resources.task_settings(frame.task_id, implied)
            state_key = f"{frame.camera_id}|{frame.task_type.value}"
            alert = evaluate(task, event, topology.last_alert.get(state_key), settings.alert_base_path)
            if alert is None:
                outcome = FrameOutcome(frame=frame, outcome=Outcome.NO_ALERT)
            else:
                topology.last_alert[state_key] = frame.captured_at
                ALERTS_RAISED.labels(frame.task_type.value, alert.rule).inc()
                outcome = FrameOutcome(frame=frame, outcome=Outcome.ALERT, reason=await relocate(alert))
                await topology.send(topology.alerts, alert, key=frame.camera_id)
            FRAMES_EVALUATED.labels(outcome.outcome.value).inc()
            await topology.send(topology.frame_outcomes, outcome, key=frame.camera_id)

    @app.agent(topology.alerts)
    async def store(stream: faust.StreamT[bytes]) -> None:
        size = settings.alert_batch_size if settings.alert_batch_enabled else 1
        async for batch in stream.take(size, within=settings.alert_batch_interval_sec):
            alerts = [a for raw in batch if (a := await topology.decode(AlertEvent, raw, topology.alerts))]
            await sink.store_batch(alerts)
            stored_at = now_ms()
            for alert in alerts:
                await topology.send(topology.alerts_stored, AlertStored(alert=alert, stored_at=stored_at),
                                    key=alert.frame.camera_id)

    @app.agent(topology.frame_outcomes)
    async def retain(stream: faust.StreamT[bytes]) -> None:
        async for batch in stream.take(RETENTION_BATCH, within=RETENTION_WITHIN_S):
            retention.on_outcomes(
                [o for raw in batch if (o := await topology.decode(FrameOutcome, raw, topology.frame_outcomes))])

    housekeeping = Housekeeping(config, resources.store, resources.alerts)

    @app.timer(settings.sweep_interval_sec, on_leader=True)
    async def sweep() -> None:
        for deleted in await housekeeping.run():
            await topology.send(topology.retention, deleted, key=deleted.task_id)

    @app.timer(RETENTION_WITHIN_S)
    async def delete_ended_frames() -> None:
        for deleted in await retention.delete_due():
            await topology.send(topology.retention, deleted, key=deleted.task_id)

    attach_web(app, resources)
    return app, topology, resources
