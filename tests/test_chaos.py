"""Chaos: three workers and two extractors over 16 cameras at live pace against a misbehaving fleet, while a
driver kills workers, adds and removes one, kills an extractor and kills and restarts the Kafka broker.

What must hold afterwards, whatever was killed when:
- every FrameEvent on fw.frames has an outcome (a frame replayed after a crash may have two, never none);
- every alert on fw.alerts is stored exactly once, has its image, and is on the alert topic exactly once for a
  read_committed reader;
- frames/ is empty within the retention grace plus 30 s of the load's end (what a failed send left behind too);
- every clip an alert's row names is in the store (an extractor killed before the post-roll leaves an alert without
  a clip row, which the API explains; never a row naming a clip that is not there);
- the workers' consumer group has committed every partition of fw.frames to its end (none left unprocessed);
- a worker that lived through most of the run did not grow.

The run lasts FRAMEWATCH_CHAOS_SECONDS (180 by default); the schedule scales with it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import TopicPartition

from framewatch.clients.bus import connect_admin, ensure_topics, read_records
from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import free_port, free_ports, namespaced_env
from framewatch.schemas.config import Config, load_config
from framewatch.schemas.events import AlertEvent, FrameEvent, FrameOutcome
from framewatch.schemas.topics import ALERTS, FRAME_OUTCOMES, FRAMES
from framewatch.stack import LocalStack
from tests.conftest import SAMPLE_CLIP, write_config
from tests.test_alert_path import missing_images, published, stored

CAMERAS = 16
SECONDS = float(os.environ.get("FRAMEWATCH_CHAOS_SECONDS", "180"))
GRACE_S = 5
SETTLE_S = 300  # generous: a slow machine replays what the crashes left over


def cluster_config(prefix: str) -> str:
    """Every camera's frames raise an alert (the fake detector sees a new person in each); sampled every 2 s,
    a key frame each: cheap to decode, so 16 cameras fit beside everything else on a small machine."""
    tasks = "".join(f'[[frame_extractor.tasks]]\nid = "{prefix}-{i:02d}"\ntask_type = "area_intrusion"\n'
                    f'rtsp_url = "{SAMPLE_CLIP}"\ninterval_ms = 2000\nloop = true\ncooldown_sec = 0\n'
                    for i in range(CAMERAS))
    return f"[ai_analysis]\nalert_batch_size = 50\nalert_batch_interval_sec = 1\n{tasks}"


@dataclass
class Member:
    name: str
    process: ServiceProcess
    started: float = field(default_factory=time.monotonic)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)


class Cluster:
    def __init__(self, folder: Path, env: dict[str, str], config_path: Path, fleet_port: int) -> None:
        self.folder = folder
        self.env = env
        self.config_path = config_path
        self.fleet_port = fleet_port  # the misbehaving services' first port
        self.workers: dict[str, Member] = {}
        self.extractors: dict[str, Member] = {}
        self.retired: list[Member] = []
        self.log: list[str] = []
        self.stop_seconds: dict[str, float] = {}  # of the members stopped with SIGTERM
        self._sampling = threading.Event()

    def _spawn(self, name: str, args: list[str], port_variable: str) -> Member:
        env = {**self.env, port_variable: str(free_port())}
        return Member(name, ServiceProcess(name, [*args, "-c", str(self.config_path)], env, self.folder / "logs"))

    def start_worker(self, name: str) -> None:
        generation = sum(1 for m in [*self.retired, *self.workers.values()] if m.name.startswith(name))
        member = self._spawn(f"{name}.{generation}", ["worker"], "FRAMEWATCH_WORKER_PORT")
        self.workers[name] = member

    def start_extractor(self, name: str) -> None:
        generation = sum(1 for m in [*self.retired, *self.extractors.values()] if m.name.startswith(name))
        self.extractors[name] = self._spawn(f"{name}.{generation}", ["extract"], "FRAMEWATCH_EXTRACTOR_METRICS_PORT")

    def stop(self, members: dict[str, Member], name: str, sig: int) -> None:
        member = members.pop(name)
        started = time.monotonic()
        member.process.stop(sig)
        if sig == signal.SIGTERM:
            self.stop_seconds[member.name] = round(time.monotonic() - started, 1)
        self.retired.append(member)
        self.log.append(f"{time.strftime('%X')} {signal.Signals(sig).name} {member.name}")

    def sample_rss(self) -> None:
        while not self._sampling.wait(5):
            for member in list(self.workers.values()):
                try:
                    status = Path(f"/proc/{member.process.process.pid}/status").read_text()
                except OSError:
                    continue
                kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
                member.rss_mb.append((time.monotonic() - member.started, kb / 1024))

    def stop_all(self) -> None:
        self._sampling.set()
        for members in (self.extractors, self.workers):
            for name in list(members):
                self.stop(members, name, signal.SIGTERM)


@pytest.fixture
def cluster(tmp_path: Path, stack_env: dict[str, str]) -> Iterator[Cluster]:
    env = namespaced_env(stack_env)
    config_path = write_config(tmp_path / "cluster.toml", cluster_config(env["FRAMEWATCH_NAMESPACE"]))
    port = free_ports(2)
    fleet = ServiceProcess("fleet", ["fake-detector", "-c", str(config_path), "--instances", "2", "--port", str(port),
                                     "--capacity", "2", "--latency-ms", "30", "--people", "1"], env, tmp_path / "logs")
    group = Cluster(tmp_path, env, config_path, port)
    asyncio.run(ensure_topics(load_config(config_path, env)[0]))
    try:
        yield group
    finally:
        group.stop_all()
        fleet.stop()
        LocalStack().up()  # whatever happened, the broker is back for the tests after this one


def kill_broker(cluster: Cluster) -> None:
    kafka = LocalStack().services[0]
    pid = kafka.pid()
    assert pid is not None, "the local Kafka is not running"
    os.kill(pid, signal.SIGKILL)
    cluster.log.append(f"{time.strftime('%X')} SIGKILL kafka")


def restart_broker(cluster: Cluster) -> None:
    LocalStack().services[0].up()
    cluster.log.append(f"{time.strftime('%X')} kafka up")


def drive(cluster: Cluster) -> None:
    """The schedule, at fractions of the run: kills, an added and removed worker, an extractor, the broker."""
    rng = random.Random()
    kills = [0.11, 0.25, 0.39, 0.53, 0.78, 0.92]
    events: list[tuple[float, str]] = [*[(at, "kill_worker") for at in kills], (0.28, "add_worker"),
                                       (0.6, "remove_worker"), (0.33, "kill_extractor"),
                                       (0.42, "restart_extractor"), (0.45, "fault_on"), (0.55, "fault_off"),
                                       (0.66, "kill_broker"), (0.75, "restart_broker")]
    started = time.monotonic()
    for at, action in sorted(events):
        time.sleep(max(0.0, started + at * SECONDS - time.monotonic()))
        if action == "kill_worker":
            name = rng.choice(["w0", "w1", "w2"])
            cluster.stop(cluster.workers, name, signal.SIGKILL)
            cluster.start_worker(name)
        elif action == "add_worker":
            cluster.start_worker("w3")
        elif action == "remove_worker":
            cluster.stop(cluster.workers, "w3", signal.SIGTERM)
        elif action == "kill_extractor":
            cluster.stop(cluster.extractors, "e0", signal.SIGKILL)
        elif action == "restart_extractor":
            cluster.start_extractor("e0")
        elif action in ("fault_on", "fault_off"):
            fault = "resource_exhausted" if action == "fault_on" else "none"
            httpx.post(f"http://127.0.0.1:{cluster.fleet_port + 1}/control", json={"fault": fault}, timeout=5)
        elif action == "kill_broker":
            kill_broker(cluster)
        elif action == "restart_broker":
            restart_broker(cluster)
    time.sleep(max(0.0, started + SECONDS - time.monotonic()))
    for name in list(cluster.extractors):
        cluster.stop(cluster.extractors, name, signal.SIGTERM)


@dataclass
class Ledger:
    frames: set[str]
    outcomes: collections.Counter[str]
    alerts: set[str]
    stored: dict[str, str]  # alert id -> image key
    published: collections.Counter[str]
    frames_left: list[str]
    unprocessed: dict[int, int]  # fw.frames partition -> records not committed by the workers' group

    def missing(self) -> list[str]:
        what = []
        if lost := self.frames - set(self.outcomes):
            what.append(f"{len(lost)} frames without an outcome")
        if unstored := self.alerts - set(self.stored):
            what.append(f"{len(unstored)} alerts not stored")
        if unpublished := self.alerts - set(self.published):
            what.append(f"{len(unpublished)} alerts not published")
        if self.frames_left:
            what.append(f"{len(self.frames_left)} objects under frames/")
        if any(self.unprocessed.values()):
            what.append(f"uncommitted records on fw.frames {self.unprocessed}")
        return what


async def ledger(config: Config) -> Ledger:
    frames = {FrameEvent.decode(r.value).frame_id for r in await read_records(config, config.topic(FRAMES.name))}
    outcomes = collections.Counter(FrameOutcome.decode(r.value).frame.frame_id
                                   for r in await read_records(config, config.topic(FRAME_OUTCOMES.name)))
    alerts = {AlertEvent.decode(r.value).alert_id for r in await read_records(config, config.topic(ALERTS.name))}
    store = ObjectStore(config.frame_extractor.minio)
    return Ledger(frames, outcomes, alerts, await stored(config, f"{config.framewatch.namespace}-"),
                  await published(config), await store.list_keys(store.key("frames") + "/"), await unprocessed(config))


async def clips_named(config: Config, alert_ids: set[str]) -> dict[str, str | None]:
    """The clip row of each of these alerts that has one: its clip's key, or None (no clip, a reason instead)."""
    connection = await asyncpg.connect(config.database.dsn.get_secret_value())
    try:
        rows = await connection.fetch("SELECT alert_id::text, clip_key FROM alert_clips "
                                      "WHERE alert_id = ANY($1::uuid[])", list(alert_ids))
    finally:
        await connection.close()
    return {r["alert_id"]: r["clip_key"] for r in rows}


async def missing_clips(config: Config, keys: set[str]) -> list[str]:
    store = ObjectStore(config.frame_extractor.minio)
    return sorted([key for key in keys if not await store.exists(key)])


async def unprocessed(config: Config) -> dict[int, int]:
    topic = config.topic(FRAMES.name)
    admin = await connect_admin(config)
    try:
        committed = await admin.list_consumer_group_offsets(f"{config.framewatch.namespace}-framewatch")
    finally:
        await admin.close()
    records = await read_records(config, topic, last=1)
    ends = {r.partition: r.offset + 1 for r in records}
    return {p: end - (committed[TopicPartition(topic, p)].offset if TopicPartition(topic, p) in committed else 0)
            for p, end in ends.items()}


def test_nothing_is_lost_or_duplicated_while_processes_and_the_broker_die(cluster: Cluster) -> None:
    config = load_config(cluster.config_path, cluster.env)[0]
    for name in ("w0", "w1", "w2"):
        cluster.start_worker(name)
    time.sleep(10)  # the group forms before the cameras start
    for name in ("e0", "e1"):
        cluster.start_extractor(name)
    threading.Thread(target=cluster.sample_rss, daemon=True).start()
    drive(cluster)
    load_ended = time.monotonic()

    deadline = load_ended + SETTLE_S
    every_outcome_at = frames_gone_at = None
    while True:
        state = asyncio.run(ledger(config))
        now = time.monotonic()
        if every_outcome_at is None and state.frames <= set(state.outcomes):
            every_outcome_at = now
        if every_outcome_at is not None and frames_gone_at is None and not state.frames_left:
            frames_gone_at = now
        if not state.missing() or now > deadline:
            break
        time.sleep(3)
    settled_s = time.monotonic() - load_ended
    stopped_in = dict(cluster.stop_seconds)
    images = asyncio.run(missing_images(config, list(state.stored.values())))
    print(f"chaos: {len(state.frames)} frames, {len(state.alerts)} alerts on fw.alerts, {len(state.stored)} stored, "
          f"{sum(state.published.values())} published, settled in {settled_s:.0f}s; events: {cluster.log}")
    # the load ran: a quarter of its frames at least (cameras are throttled for a while after the broker restart,
    # when the frames it delayed are dropped as stale)
    assert len(state.frames) > CAMERAS * SECONDS / 2 / 4
    assert state.missing() == [], cluster.log
    assert set(state.stored) == state.alerts  # stored exactly once: alert_id is the primary key
    assert images == []
    clips = asyncio.run(clips_named(config, set(state.stored)))
    print(f"chaos: {len(clips)} alerts with a clip row, {sum(1 for key in clips.values() if key)} naming a clip")
    assert asyncio.run(missing_clips(config, {key for key in clips.values() if key})) == []
    assert {a: n for a, n in state.published.items() if n != 1} == {}
    assert set(state.published) == state.alerts
    assert all(s < 28 for s in stopped_in.values()), stopped_in  # SIGTERM: gone within 25 s, in any state
    assert every_outcome_at is not None and frames_gone_at is not None
    assert frames_gone_at - every_outcome_at <= GRACE_S + 30  # storage bounded: the last outcomes' objects go
    for member in [*cluster.retired, *cluster.workers.values()]:
        late = [mb for at, mb in member.rss_mb if at >= 40]
        if len(late) >= 12:  # lived two minutes or more: its memory after the first 40 s stays flat
            assert late[-1] - late[0] < 40, (member.name, member.rss_mb)

