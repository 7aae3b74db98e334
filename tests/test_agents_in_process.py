"""The worker's agents in this process, through Faust's `agent.test_context()`: the rules agent's glue (state
loaded, rule evaluated, image copied, records sent, state saved) and the store agent's (a batch into PostgreSQL,
then announced for publishing), against the real MinIO and PostgreSQL. What the agents send to Kafka is recorded
at `Topology._produce`, where every record leaves them, and confirmed or refused there (the worker-process tests
cover Kafka itself)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka.errors import NotEnoughReplicasError

from framewatch.agents.pipeline import Pipeline, build_worker
from framewatch.agents.resources import Resources
from framewatch.agents.topology import Topology, candidate_state_key
from framewatch.rules.state import RuleState
from framewatch.rules.versions import rule_version
from framewatch.schemas.config import load_config
from framewatch.schemas.events import (
    AlertEvent,
    AlertStored,
    Candidate,
    CandidateChange,
    DeadLetter,
    Detection,
    DetectionEvent,
    Event,
    FrameEvent,
    FrameOutcome,
    Outcome,
    TaskChange,
    TaskEvent,
)
from framewatch.schemas.tasks import TaskType, changed
from tests.conftest import SAMPLE_JPEG, write_config

CONFIG = """[ai_analysis]
alert_batch_size = 10
alert_batch_interval_sec = 0.2
[[frame_extractor.tasks]]
id = "{task}"
task_type = "area_intrusion"
rtsp_url = "unused"
cooldown_sec = 0
"""


@dataclass
class Sent:
    """What the agents hand the producer, by topic name without the namespace (the rule state's changelog as
    "rule-state"), in order; each confirmed at once, unless `answer` holds or refuses it."""
    records: dict[str, list[Event | bytes]] = field(default_factory=dict)
    answers: list[asyncio.Future[object]] = field(default_factory=list)
    # decides each record's delivery: None confirms it at once, an exception refuses it, "hold" leaves it pending
    answer: Callable[[str, Event | bytes], BaseException | str | None] = lambda topic, record: None

    def producer(self, topology: Topology) -> Callable[..., Awaitable[asyncio.Future[object]]]:
        async def produce(name: str, key: bytes, value: bytes, timestamp_s: float,
                          partition: int | None) -> asyncio.Future[object]:
            spec = topology.specs.get(name)
            topic, record = ("rule-state", value) if spec is None else (spec.name, spec.record.decode(value))
            self.records.setdefault(topic, []).append(record)
            future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            self.answers.append(future)
            if isinstance(answer := self.answer(topic, record), BaseException):
                future.set_exception(answer)
            elif answer is None:
                future.set_result(None)
            return future
        return produce

    async def wait_for(self, topic: str, count: int, timeout_s: float = 30) -> list[Event | bytes]:
        async with asyncio.timeout(timeout_s):
            while len(self.records.get(topic, [])) < count:
                await asyncio.sleep(0.02)
        return self.records[topic]


@dataclass
class InProcessWorker:
    task: str  # the one task of its config, an area intrusion over the whole frame
    topology: Topology
    resources: Resources
    pipeline: Pipeline
    sent: Sent


@pytest.fixture
async def worker(tmp_path: Path, isolated_env: dict[str, str], namespace: str) -> AsyncIterator[InProcessWorker]:
    task = f"{namespace}-gate"
    config, _ = load_config(write_config(tmp_path / "framewatch.toml", CONFIG.format(task=task)), isolated_env)
    app, topology, resources, pipeline = build_worker(config)
    app.finalize()
    sent = Sent()
    topology._produce = sent.producer(topology)  # type: ignore[method-assign,assignment]
    await resources.store.ensure_bucket()
    await resources.alerts.connect()
    yield InProcessWorker(task, topology, resources, pipeline, sent)
    await resources.alerts.close()


def detections(worker: InProcessWorker, seq: int, boxes: list[tuple[float, float, float, float]]) -> DetectionEvent:
    captured_at, task = 1_700_000_000_000 + seq * 200, worker.task
    frame = FrameEvent(frame_id=FrameEvent.make_id(task, captured_at, seq), task_id=task, camera_id=task,
                       task_type=TaskType.AREA_INTRUSION, seq=seq, captured_at=captured_at,
                       bucket=worker.resources.store.bucket, object_key=f"frames/{task}/{captured_at}-{seq}.jpg",
                       width=640, height=480)
    return DetectionEvent(frame=frame, service_id="hog", inference_ms=5.0,
                          detections=[Detection(label="person", score=0.9, box=box) for box in boxes])


async def test_the_rules_agent_copies_the_image_sends_the_alert_and_outcome_and_saves_the_state(
        worker: InProcessWorker) -> None:
    empty = detections(worker, 0, [])
    person = detections(worker, 1, [(0.4, 0.3, 0.5, 0.8)])
    await worker.resources.store.put(person.frame.object_key, SAMPLE_JPEG)
    rules = worker.pipeline.agents["rules"]
    async with rules.test_context() as agent:
        await agent.put(empty.to_bytes())
        await agent.put(person.to_bytes())
        outcomes = await worker.sent.wait_for("fw.frame-outcomes", 2)
        assert [(o.frame.seq, o.outcome) for o in outcomes if isinstance(o, FrameOutcome)] == [
            (0, Outcome.NO_ALERT), (1, Outcome.ALERT)]
        (alert,) = worker.sent.records["fw.alerts"]
        assert isinstance(alert, AlertEvent) and alert.frame == person.frame and alert.rule == "area_intrusion"
        assert await worker.resources.store.get(alert.image_key) == SAMPLE_JPEG, "the image is copied first"
        state = RuleState.from_bytes(worker.topology.rule_state[worker.task.encode()])
        assert len(state.tracks) == 1 and person.frame.captured_at in state.seen

        await agent.put(person.to_bytes())  # the same frame again (a replay after a crash): no second state change
        await worker.sent.wait_for("fw.frame-outcomes", 3)
        assert RuleState.from_bytes(worker.topology.rule_state[worker.task.encode()]) == state


async def test_a_frame_the_rules_agent_did_not_finish_is_not_acked(worker: InProcessWorker) -> None:
    """The worker stops while the broker has not confirmed the frame's alert: the frame comes again to the next
    owner. On the agent that acked a buffered send, it was acked."""
    person = detections(worker, 1, [(0.4, 0.3, 0.5, 0.8)])
    await worker.resources.store.put(person.frame.object_key, SAMPLE_JPEG)
    worker.sent.answer = lambda topic, record: "hold" if topic == "fw.alerts" else None
    async with worker.pipeline.agents["rules"].test_context() as agent:
        evaluated = await agent.put(detections(worker, 0, []).to_bytes())
        interrupted = await agent.put(person.to_bytes(), wait=False)
        await worker.sent.wait_for("fw.frame-outcomes", 2)
        await wait_until(lambda: evaluated.message.acked)
        await asyncio.sleep(0.3)
        assert not interrupted.message.acked  # evaluated, its outcome and state sent, its alert not yet confirmed
        alert_delivery = next(f for f in worker.sent.answers if not f.done())
        alert_delivery.set_result(None)
        await wait_until(lambda: interrupted.message.acked)


async def test_a_record_the_broker_refused_is_sent_again_before_its_frame_is_acked(worker: InProcessWorker) -> None:
    """A refused alert (a leader moving, `min.insync.replicas` unmet) goes to the producer again; the frame is acked
    only once it is confirmed. A refused state write sends the task's newest state."""
    refused: set[str] = set()

    def refuse_once(topic: str, record: Event | bytes) -> BaseException | None:
        if topic in ("fw.alerts", "rule-state") and topic not in refused:
            refused.add(topic)
            return NotEnoughReplicasError()
        return None
    worker.sent.answer = refuse_once
    person = detections(worker, 1, [(0.4, 0.3, 0.5, 0.8)])
    await worker.resources.store.put(person.frame.object_key, SAMPLE_JPEG)
    async with worker.pipeline.agents["rules"].test_context() as agent:
        frame = await agent.put(person.to_bytes(), wait=False)
        alerts = await worker.sent.wait_for("fw.alerts", 2, timeout_s=10)
        states = await worker.sent.wait_for("rule-state", 2, timeout_s=10)
        await wait_until(lambda: frame.message.acked)
    assert alerts[0] == alerts[1] and isinstance(alerts[0], AlertEvent)
    assert states[1] == worker.topology.rule_state[worker.task.encode()]


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_the_rules_agent_dead_letters_what_it_cannot_read_and_goes_on(worker: InProcessWorker) -> None:
    rules = worker.pipeline.agents["rules"]
    async with rules.test_context() as agent:
        await agent.put(b'{"not": "detections"}')
        await agent.put(detections(worker, 0, []).to_bytes())
        await worker.sent.wait_for("fw.frame-outcomes", 1)
    (letter,) = worker.sent.records["fw.dead-letters"]
    assert isinstance(letter, DeadLetter) and "DetectionEvent" in letter.reason and letter.topic.endswith(
        "fw.detections")


async def test_the_store_agent_writes_a_batch_once_and_announces_each_alert(worker: InProcessWorker) -> None:
    alerts = [AlertEvent(alert_id=AlertEvent.make_id(d.frame.frame_id, "area_intrusion"), frame=d.frame,
                         rule="area_intrusion", evidence={"seq": d.frame.seq}, image_key=f"alerts/{d.frame.seq}.jpg")
              for d in (detections(worker, seq, []) for seq in range(3))]
    store = worker.pipeline.agents["store"]
    async with store.test_context() as agent:
        for alert in alerts + alerts[:1]:  # the first one twice: a replay
            await agent.put(alert.to_bytes(), wait=False)
        announced = await worker.sent.wait_for("fw.alerts-stored", 3)
    # a repeat in a later batch is announced again (the publisher skips it): every alert, none other
    assert {a.alert.alert_id for a in announced if isinstance(a, AlertStored)} == {a.alert_id for a in alerts}
    for alert in alerts:
        row = await worker.resources.alerts.get(alert.alert_id)
        assert row is not None and row["camera_id"] == worker.task
    async with worker.resources.alerts.pool.acquire() as connection:
        assert await connection.fetchval("SELECT count(*) FROM alerts WHERE camera_id = $1", worker.task) == 3


async def test_a_candidate_runs_beside_the_live_rule_into_the_shadow_topic_and_is_carried_on_when_promoted(
        worker: InProcessWorker) -> None:
    """The live rule watches the whole frame, the candidate the right half: the candidate's alert goes to
    fw.shadow-alerts only, with the frame's own image and no clip request, and its state beside the live one.
    Promoted, its state becomes the live state (the candidate's key deleted): the person both rules alerted on is
    not alerted again."""
    live = worker.resources.config.task(worker.task)
    candidate = Candidate(task=changed(live, {"region": [(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)]}),
                          changes={}, by="ana", since=1)
    catalog = worker.resources.catalog
    catalog.values[worker.task] = live
    catalog.events[worker.task] = TaskEvent(task_id=worker.task, task=live, candidate=candidate)
    left, right = (0.1, 0.3, 0.2, 0.8), (0.7, 0.3, 0.8, 0.8)
    frames = [detections(worker, 1, [left]), detections(worker, 2, [left, right])]
    for frame in frames:
        await worker.resources.store.put(frame.frame.object_key, SAMPLE_JPEG)
    rules = worker.pipeline.agents["rules"]
    async with rules.test_context() as agent:
        for frame in frames:
            await agent.put(frame.to_bytes())
        await worker.sent.wait_for("fw.frame-outcomes", 2)
        (shadow,) = worker.sent.records["fw.shadow-alerts"]
        assert isinstance(shadow, AlertEvent) and shadow.frame == frames[1].frame
        assert shadow.image_key == frames[1].frame.object_key and shadow.rule_version == rule_version(candidate.task)
        assert len(worker.sent.records["fw.alerts"]) == len(worker.sent.records["fw.clip-requests"]) == 2
        tried = RuleState.from_bytes(worker.topology.rule_state[candidate_state_key(worker.task)])
        assert tried.candidate == 1 and len(tried.incidents) == 1

        catalog.values[worker.task] = candidate.task
        catalog.events[worker.task] = TaskEvent(task_id=worker.task, task=candidate.task, candidate_change=(
            CandidateChange(change=TaskChange.PROMOTE, by="bo", at=2, candidate=candidate)))
        await agent.put(detections(worker, 3, [left, right]).to_bytes())
        await worker.sent.wait_for("fw.frame-outcomes", 3)
    assert len(worker.sent.records["fw.alerts"]) == 2, "the incident the candidate carries on is not alerted again"
    assert candidate_state_key(worker.task) not in worker.topology.rule_state
    assert worker.sent.records["rule-state"][-1] is None  # the candidate's key, deleted on the changelog too
    carried = RuleState.from_bytes(worker.topology.rule_state[worker.task.encode()])
    # the candidate's incidents, and the one only the live rule had found (the left person), kept until it clears
    assert carried.candidate is None and set(carried.incidents) == set(tried.incidents) | {"1"} == {"1", "2"}


def test_a_topic_refuses_a_record_of_another_type(worker: InProcessWorker) -> None:
    spec = worker.topology.specs[worker.topology.alerts.get_topic_name()]
    with pytest.raises(TypeError, match="fw.alerts carries AlertEvent records, not DetectionEvent"):
        spec.key_of(detections(worker, 0, []))
