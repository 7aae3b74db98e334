"""The bad-input catalogue, against a running worker on the real stack: a poison record on every topic the worker
reads, hostile heartbeats and tasks, and bad API parameters. Each gets its clear error (a dead letter naming the
topic and the problem, a refusal, a 400), and the good traffic sent alongside flows on: every good frame ends with
an outcome and every alert it raised is stored.

The README's "Bad input" table lists these cases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.load import Fleet, FrameLoad, TopicFollower, start_fleet
from framewatch.schemas.config import Config
from framewatch.schemas.events import (
    AlertEvent,
    AlertStored,
    CountWindow,
    DeadLetter,
    Detection,
    DetectionEvent,
    Event,
    FrameEvent,
    FrameOutcome,
    Outcome,
    ServiceHeartbeat,
    now_ms,
)
from framewatch.schemas.tasks import TaskType
from framewatch.schemas.topics import (
    ALERTS,
    ALERTS_STORED,
    COUNTS,
    DEAD_LETTERS,
    DETECTIONS,
    FRAME_OUTCOMES,
    FRAMES,
    SERVICES,
    SHADOW_ALERTS,
    TASKS,
    TopicSpec,
)
from tests.conftest import SAMPLE_JPEG
from tests.test_alert_path import settle_stored
from tests.test_events import frame

TOKEN = "t0ken-" + uuid.uuid4().hex
PREFIX = "bad" + uuid.uuid4().hex[:6]
GOOD_CAMERAS = 3


def good_config() -> str:
    tasks = "".join(f'[[frame_extractor.tasks]]\nid = "{PREFIX}-{i:03d}"\ntask_type = "area_intrusion"\n'
                    f'rtsp_url = "unused"\ncooldown_sec = 0\n' for i in range(GOOD_CAMERAS))
    return ('[ai_analysis]\nalert_batch_size = 20\nalert_batch_interval_sec = 1\n'
            'service_endpoints = ["http://127.0.0.1:*"]\n' + tasks)


# -- valid records of every kind the worker reads, marked so that their dead letters can be found -------------

def marked_frame(marker: str, bucket: str = "b") -> FrameEvent:
    f = frame(seq=1, captured_at=now_ms())
    return f.model_copy(update={"camera_id": marker, "task_id": marker, "bucket": bucket,
                                "frame_id": FrameEvent.make_id(marker, f.captured_at, 1)})


def detections(marker: str, count: int = 1) -> DetectionEvent:
    people = [Detection(label="person", score=0.9, box=(0.111, 0.2, 0.3, 0.6))] * count
    return DetectionEvent(frame=marked_frame(marker), service_id="s", inference_ms=1, detections=people)


def alert(marker: str, evidence: dict[str, Any] | None = None) -> AlertEvent:
    f = marked_frame(marker)
    return AlertEvent(alert_id=AlertEvent.make_id(f.frame_id, "area_intrusion"), frame=f, rule="area_intrusion",
                      evidence=evidence or {}, image_key="alerts/x.jpg")


VALID: dict[str, tuple[Callable[[str], Event], str]] = {  # a record of the topic's kind, and a required field
    FRAMES.name: (marked_frame, "object_key"),
    DETECTIONS.name: (detections, "service_id"),
    ALERTS.name: (alert, "rule"),
    SHADOW_ALERTS.name: (alert, "rule"),
    COUNTS.name: (lambda m: CountWindow(task_id=m, camera_id=m, task_type=TaskType.PEOPLE_COUNTING,
                                        window_start=1_700_000_040_000, samples=1, people_max=1, people_mean=1.0,
                                        crossed_in=0, crossed_out=0), "samples"),
    FRAME_OUTCOMES.name: (lambda m: FrameOutcome(frame=marked_frame(m), outcome=Outcome.DROPPED), "outcome"),
    ALERTS_STORED.name: (lambda m: AlertStored(alert=alert(m), stored_at=now_ms()), "stored_at"),
}
READ_TOPICS = [FRAMES, DETECTIONS, ALERTS, SHADOW_ALERTS, COUNTS, FRAME_OUTCOMES, ALERTS_STORED]


def malformed(spec: TopicSpec, marker: str) -> bytes:
    return b'{"kind": "' + marker.encode() + b'", "version": 1, not json'


def not_utf8(spec: TopicSpec, marker: str) -> bytes:
    return b"\xff\xfe\xfa" + marker.encode()


def unknown_version(spec: TopicSpec, marker: str) -> bytes:
    record = orjson.loads(VALID[spec.name][0](marker).to_bytes())
    return orjson.dumps({**record, "schema_version": 99})


def wrong_kind(spec: TopicSpec, marker: str) -> bytes:
    other = COUNTS.name if spec.name != COUNTS.name else FRAMES.name
    return VALID[other][0](marker).to_bytes()


def missing_field(spec: TopicSpec, marker: str) -> bytes:
    make, field = VALID[spec.name]
    record = orjson.loads(make(marker).to_bytes())
    del record[field]
    return orjson.dumps(record)


POISONS = {"malformed JSON": malformed, "not UTF-8": not_utf8, "unknown schema version": unknown_version,
           "a record of another kind": wrong_kind, "a required field missing": missing_field}


@dataclass
class Poison:
    name: str
    spec: TopicSpec
    value: bytes
    marker: str
    reason: str  # what the dead letter's reason says


def catalogue() -> list[Poison]:
    cases = []
    for spec in READ_TOPICS:
        for name, make in POISONS.items():
            marker = f"poison-{uuid.uuid4().hex[:10]}"
            reason = {"malformed JSON": "", "not UTF-8": "", "unknown schema version": "schema_version",
                      "a record of another kind": "", "a required field missing": VALID[spec.name][1]}[name]
            cases.append(Poison(f"{spec.name}: {name}", spec, make(spec, marker), marker, reason))
    marker = f"poison-{uuid.uuid4().hex[:10]}"
    nan_box = detections(marker).to_bytes().replace(b"0.111", b"NaN")
    cases.append(Poison("fw.detections: a NaN box (not JSON)", DETECTIONS, nan_box, marker, "not JSON"))
    marker = f"poison-{uuid.uuid4().hex[:10]}"
    pixels = detections(marker).to_bytes().replace(b"[0.111,0.2,0.3,0.6]", b"[111,20,300,460]")
    cases.append(Poison("fw.detections: a box in pixels", DETECTIONS, pixels, marker, "normalised to 0..1"))
    marker = f"poison-{uuid.uuid4().hex[:10]}"
    many = orjson.loads(detections(marker).to_bytes())
    many["detections"] = many["detections"] * 10_000
    cases.append(Poison("fw.detections: 10 000 detections", DETECTIONS, orjson.dumps(many), marker, "detections"))
    marker = f"poison-{uuid.uuid4().hex[:10]}"
    cases.append(Poison("fw.alerts: NUL in the evidence (PostgreSQL refuses it)", ALERTS,
                        alert(marker, {"note": "nul \u0000"}).to_bytes(), marker, "refused by PostgreSQL"))
    return cases


CASES = catalogue()


@dataclass
class Outcomes:
    letters: dict[str, DeadLetter]  # by marker
    good_sent: int
    good_ended: int
    oversized_error: str
    forged_key_kept: bool
    metrics: str
    api: Callable[..., httpx.Response]


async def send_raw(config: Config, records: list[tuple[str, bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def oversized(config: Config) -> str:
    """A record over the broker's 1 MiB limit: refused when it is sent, nothing reaches the worker."""
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka_bootstrap, acks="all", max_request_size=4 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(config.topic(FRAMES.name), b"x" * (1100 * 1024), key=b"big")
    except MessageSizeTooLargeError as error:
        return repr(error)
    finally:
        await producer.stop()
    return ""


async def forged_outcome(config: Config) -> tuple[str, bytes]:
    """An outcome naming an alert image: retention must leave it alone."""
    store = ObjectStore(config.frame_extractor.minio)
    await store.ensure_bucket()
    key = f"alerts/{PREFIX}/precious.jpg"
    await store.put(key, SAMPLE_JPEG)
    forged = marked_frame("forged", bucket=store.bucket).model_copy(update={"object_key": key})
    return key, FrameOutcome(frame=forged, outcome=Outcome.NO_ALERT).to_bytes()


def hostile_control_records(config: Config) -> list[tuple[str, bytes | None, bytes]]:
    rogue = ServiceHeartbeat(service_id="rogue", endpoint="http://203.0.113.9:8500",
                             task_types=[TaskType.AREA_INTRUSION], capacity=64)
    forged_url = orjson.loads(rogue.to_bytes()) | {"service_id": "file", "endpoint": "file:///etc/passwd"}
    return [(config.topic(SERVICES.name), "rogue".encode(), rogue.to_bytes()),
            (config.topic(SERVICES.name), b"\xff\xfe", orjson.dumps(forged_url)),
            (config.topic(TASKS.name), b"\xff\xfe", b"\xff not a task")]


async def drive(fleet: Fleet) -> Outcomes:
    config = fleet.run.config
    follower = TopicFollower(config, [DEAD_LETTERS, FRAME_OUTCOMES])
    await follower.start()
    key, forged = await forged_outcome(config)
    await send_raw(config, [(config.topic(c.spec.name), c.marker.encode(), c.value) for c in CASES]
                   + [(config.topic(FRAME_OUTCOMES.name), b"forged", forged)] + hostile_control_records(config))
    too_big = await oversized(config)
    load = FrameLoad(config, GOOD_CAMERAS, 2, prefix=PREFIX, image=SAMPLE_JPEG)
    sent = await load.run(duration_s=5)

    def good_ended(events: list[Event]) -> int:
        return len({e.frame.frame_id for e in events if isinstance(e, FrameOutcome)
                    and e.frame.camera_id.startswith(PREFIX)})

    def letters(events: list[Event]) -> dict[str, DeadLetter]:
        found = {}
        for event in events:
            if isinstance(event, DeadLetter):
                for case in CASES:
                    if case.marker in event.payload:
                        found[case.marker] = event
        return found

    await follower.collect_until(lambda events: good_ended(events) >= sent
                                 and len(letters(events)) >= len(CASES), timeout_s=90)
    await follower.stop()
    await settle_stored(config, PREFIX, sent)
    await asyncio.sleep(6)  # retention's grace has passed for the forged outcome
    kept = await ObjectStore(config.frame_extractor.minio).exists(key)
    port = config.framewatch.worker_web_port
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    def api(path: str, token: str | None = TOKEN, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"http://127.0.0.1:{port}{path}", params=params, headers=headers, timeout=10)

    return Outcomes(letters(follower.events), sent, good_ended(follower.events), too_big, kept, metrics, api)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str]) -> Iterator[Outcomes]:
    folder: Path = tmp_path_factory.mktemp("bad-input")
    with start_fleet(folder, stack_env, 2, good_config(), latency_ms=10, people=1,
                     extra_env={"FRAMEWATCH_API_TOKEN": TOKEN}) as fleet:
        yield asyncio.run(drive(fleet))
        assert fleet.run.processes[-1].alive(), "the worker lived through the whole catalogue"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_poison_record_becomes_a_dead_letter_naming_its_topic_and_problem(outcomes: Outcomes,
                                                                          case: Poison) -> None:
    letter = outcomes.letters.get(case.marker)
    assert letter is not None, f"no dead letter for {case.name}"
    assert letter.topic.endswith(case.spec.name) and letter.reason
    assert case.reason in letter.reason, letter.reason


def test_the_good_traffic_flowed_past_every_poison(outcomes: Outcomes) -> None:
    assert outcomes.good_ended >= outcomes.good_sent > 0  # and settle_stored found every alert stored


def test_a_record_over_1_mib_is_refused_when_sent(outcomes: Outcomes) -> None:
    assert "MessageSizeTooLarge" in outcomes.oversized_error


def test_an_outcome_naming_an_alert_image_deletes_nothing(outcomes: Outcomes) -> None:
    assert outcomes.forged_key_kept
    assert 'framewatch_retention_refused_total 1.0' in outcomes.metrics


def test_hostile_heartbeats_and_tasks_are_ignored_and_counted(outcomes: Outcomes) -> None:
    assert 'framewatch_services_heartbeats_refused_total{reason="endpoint_not_allowed"}' in outcomes.metrics
    assert 'framewatch_services_heartbeats_refused_total{reason="unreadable"} 1.0' in outcomes.metrics
    services = outcomes.api("/api/services").json()["services"]
    assert {s["service_id"] for s in services} == {"fake-0", "fake-1"}


@pytest.mark.parametrize("path,params,status,names", [
    ("/api/alerts", {"limit": "0"}, 400, "limit"),
    ("/api/alerts", {"limit": "abc"}, 400, "limit"),
    ("/api/alerts", {"limit": "100000"}, 400, "limit"),
    ("/api/alerts", {"since": "yesterday"}, 400, "since"),
    ("/api/alerts", {"since": "9" * 30}, 400, "since"),
    ("/api/alerts", {"until": "2026-13-45"}, 400, "until"),
    ("/api/alerts", {"cursor": "not-a-cursor"}, 400, "cursor"),
    ("/api/alerts", {"cursor": "eyJjYXB0dXJlZF9hdCI6IjIwMjQtMDEtMDFUMDA6MDA6MDBaIiwiYWxlcnRfaWQiOiJ4In0="}, 400,
     "cursor"),
    ("/api/alerts", {"task_type": "dancing"}, 400, "task_type"),
    ("/api/alerts", {"camera_id": "a\u0000b"}, 400, "camera_id"),
    ("/api/alerts", {"rule": "r" * 300}, 400, "rule"),
    ("/api/alerts", {"colour": "red"}, 400, "colour"),
    ("/api/alerts/not-a-uuid", {}, 400, "alert id"),
    ("/api/alerts/" + str(uuid.uuid4()), {}, 404, "no alert"),
    ("/api/counts", {}, 400, "task_id"),
    ("/api/counts", {"task_id": "t", "limit": "-1"}, 400, "limit"),
])
def test_a_bad_api_parameter_gets_a_400_naming_it(outcomes: Outcomes, path: str, params: dict[str, str],
                                                  status: int, names: str) -> None:
    answer = outcomes.api(path, **params)
    assert answer.status_code == status, answer.text
    assert names in answer.json()["error"], answer.json()


def test_the_api_without_its_token_answers_401(outcomes: Outcomes) -> None:
    assert outcomes.api("/api/alerts", token=None).status_code == 401
    assert outcomes.api("/api/alerts", token="wrong").status_code == 401
