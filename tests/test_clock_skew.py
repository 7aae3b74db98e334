"""Extractors whose clocks are off (Debian's `faketime`: edge boxes whose NTP drifted), one 5 s behind and one 5 s
ahead, beside a worker on the broker's clock: each measures its offset from fw.frames' append times, its frames
carry it, and the worker judges their age on the broker's clock, so at least 95 % of each one's frames are
inferred. Judged on the extractor's own clock, the frames of the one behind were nearly all dropped as `stale` (26
of 30 in the run that found it), silently. The skew shows in each extractor's metric and log, in `/api/cameras`
and in `framewatch cameras`.

The extractors share the cameras through fw.tasks' consumer group; which frames each sent is read from fw.frames
itself: a record's append time (the broker's clock) minus its capture time (the extractor's) is the skew plus a
fraction of a second.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

import httpx
from aiokafka.partitioner import DefaultPartitioner

from framewatch.clients.bus import read_records
from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import Fleet, start_fleet
from framewatch.ops.tasks import camera_statuses, cameras_table
from framewatch.schemas.config import Config
from framewatch.schemas.events import FrameEvent, FrameOutcome, Outcome
from framewatch.schemas.topics import FRAME_OUTCOMES, FRAMES
from tests.conftest import SAMPLE_CLIP, free_port

SKEWS_S = {"behind": -5, "ahead": 5}
RUN_S = 30
INTERVAL_MS = 300  # a little over 3 frames a second per camera
PARTITIONS = list(range(16))  # fw.tasks' partitions: the default `task_partitions`


def camera_ids() -> list[str]:
    """Four task ids, two on even fw.tasks partitions and two on odd: Kafka's round-robin assignor gives each of
    two extractors the partitions of one parity, so each runs two of these cameras."""
    by_parity: dict[int, list[str]] = {0: [], 1: []}
    for i in range(100):
        name = f"skew-{i}"
        partition = DefaultPartitioner()(name.encode(), PARTITIONS, PARTITIONS)  # the producers' choice
        if len(by_parity[partition % 2]) < 2:
            by_parity[partition % 2].append(name)
    return by_parity[0] + by_parity[1]


def looping_cameras(names: list[str]) -> str:
    return "".join(f'[[frame_extractor.tasks]]\nid = "{name}"\ntask_type = "area_intrusion"\n'
                   f'rtsp_url = "{SAMPLE_CLIP}"\nloop = true\ninterval_ms = {INTERVAL_MS}\n' for name in names)


def skewed_extractor(fleet: Fleet, name: str, skew_s: int, metrics_port: int) -> ServiceProcess:
    env = {**fleet.run.env, "FRAMEWATCH_EXTRACTOR_METRICS_PORT": str(metrics_port),
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}  # only the wall clock is off, as on a host whose NTP drifted
    return ServiceProcess(f"extractor-{name}", ["extract", "-c", str(fleet.run.config_path)], env,
                          fleet.run.log_dir, wrapper=["faketime", "-f", f"{skew_s:+d}s"])


async def frames_by_clock(config: Config) -> dict[str, list[FrameEvent]]:
    """The frames on fw.frames by the clock that stamped them: append time minus capture time tells."""
    frames: dict[str, list[FrameEvent]] = {name: [] for name in SKEWS_S}
    for record in await read_records(config, config.topic(FRAMES.name)):
        frame = FrameEvent.decode(record.value)
        frames["behind" if record.timestamp - frame.captured_at > 0 else "ahead"].append(frame)
    return frames


async def reasons(config: Config) -> dict[str, str]:
    """How each frame's inference ended: `inferred`, or the reason it was dropped or failed."""
    ended = {}
    for record in await read_records(config, config.topic(FRAME_OUTCOMES.name)):
        outcome = FrameOutcome.decode(record.value)
        inferred = outcome.outcome in (Outcome.ALERT, Outcome.NO_ALERT)
        ended[outcome.frame.frame_id] = "inferred" if inferred else f"{outcome.outcome.value}:{outcome.reason}"
    return ended


def skew_metric(port: int) -> list[float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return [float(line.split()[-1]) for line in text.splitlines()
            if line.startswith("framewatch_extractor_clock_skew_seconds{")]


def ended_frames(config: Config, timeout_s: float) -> tuple[dict[str, list[FrameEvent]], dict[str, str]]:
    """Every frame sent, by clock, and how each ended, once all have ended (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        frames, ended = asyncio.run(frames_by_clock(config)), asyncio.run(reasons(config))
        if all(f.frame_id in ended for sent in frames.values() for f in sent) or time.monotonic() > deadline:
            return frames, ended
        time.sleep(1)


def test_skewed_extractors_have_their_frames_inferred_and_their_skew_shown(tmp_path: Path,
                                                                          stack_env: dict[str, str]) -> None:
    assert shutil.which("faketime"), "faketime is missing: `make test` installs it (Debian package faketime)"
    names = camera_ids()
    with start_fleet(tmp_path, stack_env, instances=1, latency_ms=20, config=looping_cameras(names)) as fleet:
        run = fleet.run
        ports = {name: free_port() for name in SKEWS_S}
        extractors = {name: skewed_extractor(fleet, name, skew_s, ports[name]) for name, skew_s in SKEWS_S.items()}
        try:
            time.sleep(RUN_S)
            metrics = {name: skew_metric(ports[name]) for name in SKEWS_S}
            cameras = httpx.get(run.stats_url.replace("/api/stats", "/api/cameras"), headers=run.auth_headers,
                                timeout=5).json()["cameras"]
            statuses = asyncio.run(camera_statuses(run.config))
        finally:
            for extractor in extractors.values():
                extractor.stop()
        frames, ended = ended_frames(run.config, 30)

    for name, skew_s in SKEWS_S.items():
        [measured] = metrics[name]
        assert abs(measured - skew_s) < 0.25, (name, measured)
        log = extractors[name].log_path.read_text()
        assert log.count("off the broker's") == 1, log[-3000:]  # one warning, not one per frame
        assert "Traceback" not in log
        sent = frames[name]
        outcomes = Counter(ended.get(f.frame_id, "no outcome") for f in sent)
        print(f"extractor {skew_s:+d}s: {len(sent)} frames, {dict(outcomes)}")
        assert outcomes["inferred"] >= 0.95 * len(sent), (name, outcomes)
        assert len(sent) >= 40, f"extractor {name} sent {len(sent)} frames"  # not slowed by drops, not idle
        assert {round(f.clock_offset_ms / 1000) for f in sent[-10:]} == {-skew_s}
    shown = {c["camera_id"]: c.get("clock_skew_s") for c in cameras if c["camera_id"] in names}
    assert sorted(round(s) for s in shown.values() if s is not None) == [-5, -5, 5, 5], cameras
    assert sorted(round((s.clock_skew_ms or 0) / 1000) for s in statuses if s.camera_id in names) == [-5, -5, 5, 5]
    table = "\n".join(cameras_table(statuses))
    assert "clock skew" in table and "-5.0s" in table and "+5.0s" in table, table
