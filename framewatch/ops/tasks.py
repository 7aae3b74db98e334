"""`framewatch tasks` and `framewatch cameras`: camera tasks changed at run time on fw.tasks, and how each camera
is doing, from the statuses extractors publish on fw.cameras.

A task written here is marked `command`: an extractor that starts with an older version in its config file does
not overwrite it.
"""

from __future__ import annotations

import tomllib
from typing import Any

from framewatch.clients.bus import EventProducer, ensure_topics, latest
from framewatch.ops.table import text_table
from framewatch.schemas.config import Config, ConfigError, mask_url
from framewatch.schemas.events import (
    CameraState,
    CameraStatus,
    DecodeError,
    TaskEvent,
    TaskOrigin,
    now_ms,
)
from framewatch.schemas.queries import task_json
from framewatch.schemas.tasks import CameraTask, changed, validated
from framewatch.schemas.topics import CAMERAS, TASKS

STALE_STATUS_S = 15.0  # three missed reports: the extractor that ran the camera is gone


def parse_setting(text: str) -> tuple[str, Any]:
    """`key=value`, the value read as TOML (numbers, booleans, arrays), else taken as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value


async def current_tasks(config: Config) -> dict[str, TaskEvent]:
    await ensure_topics(config)
    tasks = {}
    for task_id, raw in (await latest(config, TASKS)).items():
        if raw is None:
            continue
        try:
            tasks[task_id] = TaskEvent.decode(raw)
        except DecodeError:
            continue
    return tasks


async def _publish(config: Config, task_id: str, task: CameraTask | None) -> None:
    producer = EventProducer(config)
    await producer.start()
    try:
        if task is None:
            await producer.send_tombstone(TASKS, key=task_id)
        else:
            await producer.send(TASKS, TaskEvent(task_id=task_id, task=task, origin=TaskOrigin.COMMAND))
    finally:
        await producer.stop()


async def add_task(config: Config, values: dict[str, Any]) -> CameraTask:
    task = validated(values)
    if task.id in await current_tasks(config):
        raise ConfigError(f"task {task.id!r} exists already; change it with `framewatch tasks update`")
    await _publish(config, task.id, task)
    return task


async def _existing(config: Config, task_id: str) -> CameraTask:
    known = (await current_tasks(config)).get(task_id)
    if known is None or known.task is None:
        raise LookupError(f"no task {task_id!r} on {config.topic(TASKS.name)}; `framewatch tasks list` shows them")
    return known.task


async def update_task(config: Config, task_id: str, changes: dict[str, Any]) -> CameraTask:
    task = changed(await _existing(config, task_id), changes)
    await _publish(config, task_id, task)
    return task


async def remove_task(config: Config, task_id: str) -> None:
    await _existing(config, task_id)
    await _publish(config, task_id, None)


def tasks_json(tasks: dict[str, TaskEvent]) -> list[dict[str, Any]]:
    """The tasks as `tasks list --json` prints them, camera URLs masked."""
    return [{"task_id": task_id, "origin": event.origin.value, "task": task_json(event.task)}
            for task_id, event in sorted(tasks.items()) if event.task is not None]


def tasks_table(tasks: dict[str, TaskEvent]) -> list[str]:
    rows = [[task_id, task.task_type.value, "yes" if task.enabled else "no",
             f"{task.interval_ms}ms" if task.interval_ms else "default", event.origin.value, mask_url(task.rtsp_url)]
            for task_id, event in sorted(tasks.items()) if (task := event.task) is not None]
    return text_table(["task", "type", "enabled", "interval", "origin", "source"], rows, right={3})


async def camera_statuses(config: Config) -> list[CameraStatus]:
    await ensure_topics(config)
    statuses = []
    for raw in (await latest(config, CAMERAS)).values():
        try:
            statuses.append(CameraStatus.decode(raw))
        except DecodeError:
            continue
    return sorted(statuses, key=lambda s: s.camera_id)


def cameras_table(statuses: list[CameraStatus]) -> list[str]:
    now = now_ms()
    rows = []
    for s in statuses:  # their times are their extractors' clocks: read on the broker's, which this host shares
        stale = (now - s.on_broker_clock(s.emitted_at)) / 1000 > STALE_STATUS_S and s.state is not CameraState.STOPPED
        # a recording read faster than real time captures "ahead" of now: its age is 0, never negative
        last_frame = None if s.last_frame_at is None else max(0.0, (now - s.on_broker_clock(s.last_frame_at)) / 1000)
        rows.append([s.camera_id, "unknown" if stale else s.state.value,  # unknown: its extractor stopped reporting
                     f"{s.fps_in:.1f}", f"{s.fps_out:.1f}", f"{s.interval_ms}ms",
                     "-" if last_frame is None else f"{last_frame:.1f}s", s.reconnects,
                     "-" if s.clock_skew_ms is None else f"{s.clock_skew_ms / 1000:+.1f}s", s.extractor, s.last_error])
    return text_table(["camera", "state", "fps in", "fps out", "interval", "last frame", "reconnects", "clock skew",
                       "extractor", "last error"], rows, right=range(2, 8))
