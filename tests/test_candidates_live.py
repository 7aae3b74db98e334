"""Issue 33's test: a candidate rule beside the live one on a worker, all real (Kafka, MinIO, PostgreSQL, the
Faust worker), driven by the `framewatch tasks` commands.

Detections go straight onto fw.detections, as tests/test_rules_recovery.py sends them: a recording in which each
person stands where the script says, with the detector's own track id, so both rules follow the same tracks. The
live rule watches the lower half of the picture, the candidate only its right half:

- act 1, both rules running: p1 stands in the lower left (live only), p2 in the lower right (both); then the worker
  is SIGKILLed, with frames in flight, and restarted;
- act 2: p2 stays, p4 comes into the lower right (both). Neither rule alerts on p2 again: neither lost its state.
  `tasks diff` says exactly which alerts both raised, which only the live rule did (p1), and none only the candidate;
- act 3, once the workers carried the promoted candidate's state on: p2 stays (not alerted again: its incident was
  carried on) and p5 stands in the lower left, which the promoted settings no longer watch.

The worker's `GET /api/tasks/{id}/diff` (behind the token) answers what `tasks diff --json` prints, while the
candidate runs and once it was promoted.

Nothing of the candidate reaches the alert feed: every message there is the live rule's version, one per live
alert, and clip requests go out for the live alerts only. A probe frame (p3, above both regions) is sent until the
worker shows, on the rule state's changelog, that it saw a change on fw.tasks.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from framewatch.clients.bus import read_records
from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.load import TopicFollower, start_fleet
from framewatch.ops.demo import PipelineRun
from framewatch.rules.versions import rule_version
from framewatch.schemas.config import Config
from framewatch.schemas.events import AlertEvent, ClipRequest, Detection, DetectionEvent, FrameEvent, now_ms
from framewatch.schemas.feed import kind_of
from framewatch.schemas.tasks import TaskType
from framewatch.schemas.topics import CLIP_REQUESTS, DETECTIONS, FRAME_OUTCOMES, SHADOW_ALERTS
from tests.conftest import ROOT, SAMPLE_JPEG

STEP_MS = 500
LIVE_REGION = "[[0,0.5],[1,0.5],[1,1],[0,1]]"
CANDIDATE_REGION = "[[0.5,0.5],[1,0.5],[1,1],[0.5,1]]"
TOKEN = "t0ken-" + uuid.uuid4().hex
WHERE = {"p1": (0.2, 0.8), "p2": (0.75, 0.8), "p3": (0.3, 0.3), "p4": (0.6, 0.9), "p5": (0.2, 0.7)}


def config_of(task_id: str) -> str:
    return (f'[[frame_extractor.tasks]]\nid = "{task_id}"\ntask_type = "area_intrusion"\nrtsp_url = "unused"\n'
            f"region = {LIVE_REGION}\n[ai_analysis]\nalert_batch_interval_sec = 0.5\n")


def standing(name: str) -> Detection:
    x, foot_y = WHERE[name]
    return Detection(label="person", score=0.9, box=(x - 0.04, foot_y - 0.3, x + 0.04, foot_y), track_id=name)


class Recording:
    """The frames of one camera, STEP_MS apart, each with the people the script puts in it, onto fw.detections."""

    def __init__(self, config: Config, task_id: str) -> None:
        self.config = config
        self.task_id = task_id
        self.store = ObjectStore(config.frame_extractor.minio)
        self.started_at = now_ms()
        self.sent = 0

    async def send(self, *frames: list[str]) -> None:
        await self.store.ensure_bucket()
        producer = AIOKafkaProducer(bootstrap_servers=self.config.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for people in frames:
                i, captured = self.sent, self.started_at + self.sent * STEP_MS
                frame = FrameEvent(frame_id=FrameEvent.make_id(self.task_id, captured, i), task_id=self.task_id,
                                   camera_id=self.task_id, task_type=TaskType.AREA_INTRUSION, seq=i,
                                   captured_at=captured, bucket=self.config.frame_extractor.minio.bucket,
                                   object_key=f"frames/{self.task_id}/20260101/{captured}-{i:06d}.jpg", width=640,
                                   height=480)
                await self.store.put(frame.object_key, SAMPLE_JPEG)
                event = DetectionEvent(frame=frame, service_id="recorded", inference_ms=1,
                                       detections=[standing(name) for name in people])
                await producer.send_and_wait(self.config.topic(DETECTIONS.name), event.to_bytes(),
                                             key=self.task_id.encode())
                self.sent += 1
        finally:
            await producer.stop()

    async def probe_until(self, seen: Callable[[list[ConsumerRecord]], bool], people: list[str],
                          timeout_s: float = 30) -> None:
        """Frames of `people`, one at a time, until the rule state's changelog shows what `seen` looks for."""
        changelog = f"{self.config.worker_group}-rule-state-changelog"
        async with asyncio.timeout(timeout_s):
            while not seen(await read_records(self.config, changelog)):
                await self.send(people)
                await asyncio.sleep(0.3)


def tasks(run: PipelineRun, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "framewatch.cli", "tasks", "-c", str(run.config_path), *args],
                          capture_output=True, text=True, env=run.env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def api_diff(run: PipelineRun, task_id: str, token: str | None = TOKEN) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{run.config.framewatch.worker_web_port}/api/tasks/{task_id}/diff",
                     headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=10)


def candidate_key(task_id: str, tombstone: bool) -> Callable[[list[ConsumerRecord]], bool]:
    """The candidate's state written (it runs), or deleted (it was carried on)."""
    key = f"{task_id}/candidate".encode()
    return lambda records: any(r.key == key and (r.value is None) == tombstone for r in records)


async def rows(config: Config, table: str, task_id: str) -> list[tuple[str, str, str, str]]:
    """(subject, alert id, rule version, image key) of a task's rows, oldest first."""
    connection = await asyncpg.connect(config.database.dsn.get_secret_value())
    try:
        found = await connection.fetch(f"SELECT alert_id::text, rule_version, image_key, evidence FROM {table} "
                                       "WHERE namespace = $1 AND task_id = $2 "
                                       "ORDER BY captured_at, evidence->>'subject'", config.framewatch.namespace,
                                       task_id)
    finally:
        await connection.close()
    return [(orjson.loads(r["evidence"])["subject"], r["alert_id"], r["rule_version"], r["image_key"])
            for r in found]


async def stored(config: Config, task_id: str, alerts: int, shadow: int, timeout_s: float = 30) -> None:
    """Until PostgreSQL holds that many rows of each side (the sinks write in batches, after the frames ended)."""
    async with asyncio.timeout(timeout_s):
        while (len(await rows(config, "alerts", task_id)), len(await rows(config, "shadow_alerts", task_id))) != (
                alerts, shadow):
            await asyncio.sleep(0.5)


def test_a_candidate_runs_beside_the_live_rule_is_compared_and_promoted_through_a_worker_crash(
        tmp_path: Path, stack_env: dict[str, str]) -> None:
    task_id = f"shadow-{uuid.uuid4().hex[:8]}"
    with start_fleet(tmp_path, stack_env, 1, config_of(task_id), extra_env={"FRAMEWATCH_API_TOKEN": TOKEN}) as fleet:
        run, config = fleet.run, fleet.run.config
        tasks(run, "add", task_id, "--type", "area_intrusion", "--url", "unused", "--set", f"region={LIVE_REGION}")
        live = config.task(task_id)
        tried = tasks(run, "try", task_id, "--set", f"region={CANDIDATE_REGION}", "--by", "tester")
        assert tried["changes"] == {"region": [[0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [0.5, 1.0]]}
        recording = Recording(config, task_id)

        async def act(frames: list[list[str]]) -> None:
            """The frames sent, and each one's outcome awaited."""
            outcomes = TopicFollower(config, [FRAME_OUTCOMES])
            await outcomes.start()
            first = recording.sent
            try:
                await recording.send(*frames)
                assert await outcomes.collect_until(lambda events: len(
                    {e.frame.frame_id for e in events if e.frame.seq >= first}) >= len(frames), timeout_s=60)
            finally:
                await outcomes.stop()

        async def before_the_crash() -> None:
            await recording.probe_until(candidate_key(task_id, tombstone=False), ["p3"])
            await act([["p1", "p2", "p3"]] * 10)

        asyncio.run(before_the_crash())
        asyncio.run(recording.send(*[["p1", "p2", "p3"]] * 3))  # some of these are in flight when the worker dies
        run.restart_worker()
        asyncio.run(act([["p2", "p3"]] * 5 + [["p2", "p3", "p4"]] * 5))
        asyncio.run(stored(config, task_id, alerts=3, shadow=2))
        diff = tasks(run, "diff", task_id, "--json")
        answered = api_diff(run, task_id)
        assert answered.status_code == 200 and answered.json() == diff, answered.text
        assert api_diff(run, task_id, token=None).status_code == 401
        assert api_diff(run, "no-such-task").status_code == 404
        promoted = tasks(run, "promote", task_id, "--by", "tester")
        assert promoted["task"]["region"] == tried["changes"]["region"]
        asyncio.run(recording.probe_until(candidate_key(task_id, tombstone=True), ["p2", "p3"]))
        asyncio.run(act([["p2", "p3", "p5"]] * 6))
        ended = tasks(run, "diff", task_id, "--json")
        answered = api_diff(run, task_id)
        assert answered.status_code == 200 and answered.json() == ended, answered.text

        alerts = asyncio.run(rows(config, "alerts", task_id))
        shadow = asyncio.run(rows(config, "shadow_alerts", task_id))
        feed = asyncio.run(read_records(config, config.ai_analysis.mq_topic))
        shadow_topic = asyncio.run(read_records(config, config.topic(SHADOW_ALERTS.name)))
        clip_requests = [ClipRequest.decode(r.value) for r in asyncio.run(read_records(
            config, config.topic(CLIP_REQUESTS.name)))]
    assert run.workers_started == 2

    # each person once per rule, across the crash: neither state was lost
    assert [subject for subject, *_ in alerts] == ["dp1", "dp2", "dp4"]
    assert [subject for subject, *_ in shadow] == ["dp2", "dp4"]
    candidate_version = diff["candidate"]["rule_version"]
    assert {version for _, _, version, _ in alerts} == {rule_version(live)} != {candidate_version}
    assert {version for _, _, version, _ in shadow} == {candidate_version}
    assert all(key.startswith(f"frames/{task_id}/") for *_, key in shadow)  # the frame's own key: no copy
    # at least once on the topic (a frame replayed after the crash sends its alerts again), once in the table
    assert {AlertEvent.decode(r.value).alert_id for r in shadow_topic} == {alert_id for _, alert_id, _, _ in shadow}

    # the difference, exactly
    ids = {(table, subject): alert_id for table, found in (("live", alerts), ("candidate", shadow))
           for subject, alert_id, _, _ in found}
    assert diff["state"] == "running" and (diff["live"]["alerts"], diff["tried"]["alerts"]) == (3, 2)
    assert [a["alert_id"] for a in diff["live"]["only"]] == [ids["live", "dp1"]]
    assert diff["tried"]["only"] == []
    assert [(m["live"], m["candidate"], m["offset_s"]) for m in diff["matched"]] == [
        (ids["live", subject], ids["candidate", subject], 0.0) for subject in ("dp2", "dp4")]
    assert ended["state"] == "promoted" and ended["until"] is not None  # p5, after the promotion, is in neither
    assert {k: v for k, v in ended.items() if k not in ("state", "until")} == {
        k: v for k, v in diff.items() if k not in ("state", "until")}

    # nothing of the candidate on the feed: one message per live alert, each of the live rule's version
    messages = [orjson.loads(r.value) for r in feed if r.value]
    alert_messages = [m for m in messages if kind_of(m) == "alert"]
    assert sorted(m["alert_id"] for m in alert_messages) == sorted(alert_id for _, alert_id, _, _ in alerts)
    assert {m["rule_version"] for m in alert_messages} == {rule_version(live)}
    assert {c.alert_id for c in clip_requests if c.task_id == task_id} == {a for _, a, _, _ in alerts}
