"""`framewatch replay`: a recorded video (or stored detections) through a task's rule, losslessly, as fast as the
detector allows; the alerts as a table or JSON, scored against a ground truth when one is given.

    video ─► Source (every sampled frame, as the extractor samples it) ─► JPEG ─► algorithm service (inline
          images, its capacity and batches) ─► detections, cached per frame ─► rules/engine.evaluate, in order
    fw.detections (a time range of one task) ──────────────────────────────────────────────────────┘

Detections are cached under the stack's cache folder, keyed by the video's contents, the sampling, the task type
and the detector's endpoint, so trying other rule settings (`--set`) on the same clip does not run the detector
again. Times are the stream's own: a video's frame at 17.2 s is captured at 17,200 ms after the epoch, so the
rules see the clip's own clock and minute windows start at its whole minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from framewatch.agents.inference.client import InferenceFailure, ServiceClient
from framewatch.clients.bus import BrokerUnavailable, latest, read_records
from framewatch.errors import FramewatchError
from framewatch.ops.scoring import RuleScore, ScoredAlert
from framewatch.ops.table import text_table
from framewatch.ops.tasks import validated
from framewatch.retry import Backoff, logged
from framewatch.rules.engine import evaluate
from framewatch.rules.state import RuleState
from framewatch.schemas.config import Config, StaticService
from framewatch.schemas.contract import InferFrame, InferRequest
from framewatch.schemas.events import (
    AlertEvent,
    CountWindow,
    Detection,
    DetectionEvent,
    FrameEvent,
    ServiceHeartbeat,
    now_ms,
)
from framewatch.schemas.tasks import CameraTask, Freshness
from framewatch.schemas.topics import DETECTIONS, SERVICES
from framewatch.streams.camera import Sample, encode_jpeg
from framewatch.streams.handoff import Handoff
from framewatch.streams.source import Source, SourceError, SourceSettings

CACHE_VERSION = 1
log = logging.getLogger("framewatch.replay")

# per frame: a replay waits out a detector's hiccup instead of losing the frame
DETECTOR_BACKOFF = Backoff(first_s=0.5, max_s=1.0, attempts=3)
DIGEST_CHUNK = 1 << 20


class ReplayError(FramewatchError, RuntimeError):
    """A replay that cannot run: no such video, no detector to ask, nothing stored for the task."""


class DetectedFrame(BaseModel):
    """One sampled frame and what the detector found in it (or why it could not say)."""

    seq: int
    captured_at: int
    width: int
    height: int
    detections: list[Detection] = []
    service_id: str = ""
    failed: str = ""


@dataclass(frozen=True)
class Detector:
    service_id: str
    endpoint: str
    capacity: int = 1
    max_batch: int = 1


@dataclass
class ReplayResult:
    task: CameraTask
    frames: list[DetectedFrame]
    origin_ms: int  # capture time of the clip's start: an alert at `origin_ms + 1000` is 1 s into the clip
    alerts: list[AlertEvent] = field(default_factory=list)
    windows: list[CountWindow] = field(default_factory=list)

    def at_s(self, captured_at: int) -> float:
        return round((captured_at - self.origin_ms) / 1000, 3)

    def scored(self) -> list[ScoredAlert]:
        return [ScoredAlert(a.rule, self.at_s(a.frame.captured_at), a.evidence) for a in self.alerts]

    @property
    def failed(self) -> dict[str, int]:
        tally: dict[str, int] = {}
        for frame in self.frames:
            if frame.failed:
                tally[frame.failed] = tally.get(frame.failed, 0) + 1
        return tally


# -- detections of a video ----------------------------------------------------------------------------------------


async def detectors_for(config: Config, task: CameraTask, endpoints: list[str]) -> list[Detector]:
    """The services named on the command line, else the config's static services for the task type, else those
    that announce themselves on fw.services (as a worker finds them)."""
    if endpoints:
        return [Detector(f"replay-{i}", url) for i, url in enumerate(endpoints)]
    declared: list[StaticService] = [s for s in config.ai_analysis.services if task.task_type in s.task_types]
    if declared:
        return [Detector(s.id, s.endpoint, s.capacity, s.max_batch) for s in declared]
    if announced := await announced_detectors(config, task):
        return announced
    raise ReplayError(f"no algorithm service for {task.task_type.value}: pass --detector URL, declare one in "
                      "[[ai_analysis.services]], or start one that announces itself (framewatch detector)")


async def announced_detectors(config: Config, task: CameraTask) -> list[Detector]:
    """The services that heartbeated on fw.services within `heartbeat_timeout_sec` and serve the task type."""
    try:
        heartbeats = [ServiceHeartbeat.decode(raw) for raw in (await latest(config, SERVICES)).values() if raw]
    except (BrokerUnavailable, LookupError):
        return []
    horizon = now_ms() - int(config.ai_analysis.heartbeat_timeout_sec * 1000)
    return [Detector(h.service_id, h.endpoint, h.capacity, h.max_batch) for h in heartbeats
            if h.emitted_at >= horizon and task.task_type in h.task_types]


def video_digest(video: Path) -> str:
    digest = hashlib.sha256()
    with video.open("rb") as file:
        while chunk := file.read(DIGEST_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cache_path(folder: Path, video: Path, task: CameraTask, interval_ms: int, detectors: list[Detector]) -> Path:
    key = "\x1f".join([str(CACHE_VERSION), video_digest(video), str(interval_ms), task.decode.value,
                       task.task_type.value, *sorted(d.endpoint for d in detectors)])
    return folder / f"{video.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"


def read_cache(path: Path) -> list[DetectedFrame] | None:
    if not path.is_file():
        return None
    return [DetectedFrame.model_validate_json(line) for line in path.read_bytes().splitlines() if line.strip()]


def write_cache(path: Path, frames: list[DetectedFrame]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_bytes(b"".join(frame.model_dump_json().encode() + b"\n" for frame in frames))
    partial.replace(path)


class VideoDetections:
    """Samples a video as the extractor would, and has every sampled frame inferred, `capacity` requests at a
    time per detector, each with up to `max_batch` frames."""

    def __init__(self, config: Config, task: CameraTask, video: Path, detectors: list[Detector]) -> None:
        self.config = config
        self.task = task
        self.video = video
        self.detectors = detectors
        self.interval_ms = config.frame_extractor.interval_for(task)
        self.client = ServiceClient(config)
        self.frames: dict[int, DetectedFrame] = {}
        self.unreachable = ""  # a detector that refused connections on every attempt: the replay stops

    async def run(self) -> list[DetectedFrame]:
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        slots: asyncio.Queue[Detector] = asyncio.Queue()
        for detector in self.detectors:
            for _ in range(detector.capacity):
                slots.put_nowait(detector)
        room = sum(d.capacity * d.max_batch for d in self.detectors) * 2
        handoff: Handoff[tuple[int, Sample]] = Handoff(loop, room, wait_for_room=stop)
        errors: list[SourceError] = []
        reader = threading.Thread(target=self._read, args=(handoff, stop, errors), daemon=True, name="replay-reader")
        reader.start()
        requests: set[asyncio.Task[None]] = set()
        try:
            while True:
                detector = await slots.get()
                if self.unreachable:
                    raise ReplayError(self.unreachable)
                batch: list[tuple[int, Sample]] = []
                while len(batch) < detector.max_batch and (sample := await handoff.get()) is not None:
                    batch.append(sample)
                if not batch:
                    break
                request = asyncio.create_task(self._infer(detector, batch, slots))
                requests.add(request)
                request.add_done_callback(requests.discard)
            await asyncio.gather(*requests)
            if self.unreachable:
                raise ReplayError(self.unreachable)
        finally:
            stop.set()
            await self.client.close()
        if errors:
            raise ReplayError(str(errors[0]))
        return [self.frames[seq] for seq in sorted(self.frames)]

    def _read(self, handoff: Handoff[tuple[int, Sample]], stop: threading.Event, errors: list[SourceError]) -> None:
        settings = SourceSettings(str(self.video), decode=self.task.decode, realtime=False)
        try:
            for seq, due in enumerate(Source(settings, lambda: self.interval_ms, stop).frames()):
                if (sample := encode_jpeg(due, self.config.frame_extractor.jpeg_quality)) is not None:
                    handoff.put((seq, sample))
        except SourceError as error:
            errors.append(error)
        finally:
            handoff.close()

    async def _infer(self, detector: Detector, batch: list[tuple[int, Sample]], slots: asyncio.Queue[Detector]) -> None:
        request = InferRequest(frames=[InferFrame(frame_id=str(seq), task_type=self.task.task_type,
                                                  image_b64=b64encode(sample.jpeg).decode(), region=self.task.region)
                                       for seq, sample in batch])
        try:
            answers = await self._send(detector, request)
        finally:
            slots.put_nowait(detector)
        for seq, sample in batch:
            answer = answers.get(str(seq))
            self.frames[seq] = DetectedFrame(
                seq=seq, captured_at=sample.stream_ms, width=sample.width, height=sample.height,
                detections=answer if isinstance(answer, list) else [], service_id=detector.service_id,
                failed=answer.reason if isinstance(answer, InferenceFailure) else "")

    async def _send(self, detector: Detector, request: InferRequest) -> dict[str, list[Detection] | InferenceFailure]:
        try:
            answer = await DETECTOR_BACKOFF.call(self.client.send, lambda error: isinstance(error, InferenceFailure),
                                                 logged(log, f"asking {detector.endpoint}"), detector.endpoint, request)
        except InferenceFailure as failure:
            if failure.reason == "connect":
                self.unreachable = f"the detector cannot be reached: {failure}"
            return {frame.frame_id: failure for frame in request.frames}
        return answer.results


async def detect_video(config: Config, task: CameraTask, video: Path, detectors: list[Detector],
                       cache_folder: Path | None) -> list[DetectedFrame]:
    """Every sampled frame's detections: from the cache when this video was run so before, else from the
    detectors (and then cached, unless a frame failed)."""
    if not video.is_file():
        raise ReplayError(f"{video}: no such video file")
    path = None if cache_folder is None else cache_path(cache_folder, video, task,
                                                        config.frame_extractor.interval_for(task), detectors)
    if path is not None and (cached := read_cache(path)) is not None:
        return cached
    frames = await VideoDetections(config, task, video, detectors).run()
    if path is not None and not any(frame.failed for frame in frames):
        write_cache(path, frames)
    return frames


# -- detections stored on fw.detections ---------------------------------------------------------------------------


async def stored_detections(config: Config, task: CameraTask, since_ms: int | None,
                            until_ms: int | None) -> list[DetectedFrame]:
    """What the pipeline's detectors found for the task, once per frame, in capture order."""
    by_frame: dict[str, DetectionEvent] = {}
    for record in await read_records(config, config.topic(DETECTIONS.name)):
        event = DetectionEvent.decode(record.value)
        at = event.frame.captured_at
        if (event.frame.task_id == task.id and (since_ms is None or at >= since_ms)
                and (until_ms is None or at <= until_ms)):
            by_frame[event.frame.frame_id] = event
    if not by_frame:
        raise ReplayError(f"no detections of task {task.id} on {config.topic(DETECTIONS.name)} in that time range")
    events = sorted(by_frame.values(), key=lambda e: (e.frame.captured_at, e.frame.seq))
    return [DetectedFrame(seq=e.frame.seq, captured_at=e.frame.captured_at, width=e.frame.width,
                          height=e.frame.height, detections=e.detections, service_id=e.service_id) for e in events]


# -- the rules ----------------------------------------------------------------------------------------------------


def evaluate_frames(config: Config, task: CameraTask, frames: list[DetectedFrame], origin_ms: int) -> ReplayResult:
    """The task's rule over the frames in order, from a fresh state, as the rules agent would evaluate them."""
    result = ReplayResult(task, frames, origin_ms)
    state = RuleState()
    for detected in frames:
        if detected.failed:
            continue
        frame = FrameEvent(frame_id=FrameEvent.make_id(task.id, detected.captured_at, detected.seq), task_id=task.id,
                           camera_id=task.id, task_type=task.task_type, seq=detected.seq,
                           captured_at=detected.captured_at, bucket="replay",
                           object_key=f"frames/{task.output_path}/replay/{detected.captured_at}-{detected.seq:06d}.jpg",
                           width=detected.width, height=detected.height, freshness=Freshness.ALL)
        event = DetectionEvent(frame=frame, service_id=detected.service_id, inference_ms=0,
                               detections=detected.detections)
        evaluation = evaluate(task, state, event, config.ai_analysis.alert_base_path)
        result.alerts += evaluation.alerts
        result.windows += evaluation.windows
    return result


# -- what it prints -----------------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_shown(v) for v in value) + "]"
    return str(value)


HIDDEN_EVIDENCE = frozenset({"subject", "incident_started_at", "service_id"})
WINDOW_FIGURES = {"samples", "people_max", "people_mean", "crossed_in", "crossed_out"}


def alerts_table(result: ReplayResult) -> list[str]:
    rows = [[f"{result.at_s(a.frame.captured_at):.1f}s", a.rule, a.evidence.get("subject", ""),
             " ".join(f"{k}={_shown(v)}" for k, v in a.evidence.items() if k not in HIDDEN_EVIDENCE)]
            for a in result.alerts]
    return text_table(["time", "rule", "subject", "evidence"], rows, right={0})


def as_json(result: ReplayResult) -> dict[str, Any]:
    return {"task": result.task.id, "task_type": result.task.task_type.value, "frames": len(result.frames),
            "failed": result.failed,
            "alerts": [{"at_s": result.at_s(a.frame.captured_at), "rule": a.rule,
                        "subject": a.evidence.get("subject"), "alert_id": a.alert_id, "evidence": a.evidence}
                       for a in result.alerts],
            "windows": [{"start_s": result.at_s(w.window_start),
                         **w.model_dump(mode="json", include=WINDOW_FIGURES)} for w in result.windows]}


def scores_table(scores: list[RuleScore]) -> list[str]:
    def figure(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:.2f}{unit}"

    rows = [[s.rule, s.alerts, s.events, s.matched, figure(s.precision), figure(s.recall),
             figure(s.mean_time_error_s, " s")] for s in scores]
    return text_table(["rule", "alerts", "truth", "found", "precision", "recall", "time error"], rows,
                      right=range(1, 7))


# -- the command --------------------------------------------------------------------------------------------------


def pick_task(config: Config, task_id: str | None, changes: dict[str, Any]) -> CameraTask:
    """The config's task (the only one, or the one named), with `changes` applied and validated."""
    tasks = config.frame_extractor.tasks
    if task_id is not None:
        task = next((t for t in tasks if t.id == task_id), None)
        if task is None:
            raise ReplayError(f"no task {task_id!r} in the config; it has: {', '.join(t.id for t in tasks) or 'none'}")
    elif len(tasks) == 1:
        task = tasks[0]
    else:
        raise ReplayError(f"the config has {len(tasks)} tasks: name one with --task "
                          f"({', '.join(t.id for t in tasks) or 'none'})")
    return validated({**task.model_dump(exclude_none=True), **changes}) if changes else task


async def replay(config: Config, task: CameraTask, video: Path | None, endpoints: list[str],
                 cache_folder: Path | None, since_ms: int | None = None, until_ms: int | None = None) -> ReplayResult:
    """A video through the detectors and the rule (`video`), or the stored detections of the task (`None`)."""
    if video is None:
        frames = await stored_detections(config, task, since_ms, until_ms)
        return evaluate_frames(config, task, frames, frames[0].captured_at)
    frames = await detect_video(config, task, video, await detectors_for(config, task, endpoints), cache_folder)
    return evaluate_frames(config, task, frames, origin_ms=0)


def report(result: ReplayResult, scores: list[RuleScore] | None, json_out: bool) -> str:
    if json_out:
        document = as_json(result)
        if scores is not None:
            document["scores"] = [s.as_dict() for s in scores]
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
    failed = sum(result.failed.values())
    lines = [f"task {result.task.id} ({result.task.task_type.value}): {len(result.frames)} frames"
             + (f", {failed} failed in the detector and not evaluated {result.failed}" if failed else "")
             + f", {len(result.alerts)} alerts", "", *alerts_table(result)]
    if scores is not None:
        lines += ["", *scores_table(scores)]
    return "\n".join(lines)
