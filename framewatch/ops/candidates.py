"""`framewatch tasks try | promote | drop | diff`: a candidate version of a task's rule settings, run by the workers
beside the live rule on the same detections, its alerts kept apart (fw.shadow-alerts, PostgreSQL's shadow_alerts,
never published), and compared with the live rule's as they happen.

The candidate rides in the task's record on fw.tasks (`TaskEvent.candidate`, schemas/events.py says why), with who
started it and when; promoting and dropping are records of that task too, naming who and when
(`TaskEvent.candidate_change`). A change of the live task itself (`tasks update`, the dashboard's zone editor, a
config file an extractor publishes) writes a record without the candidate, which ends it: its comparison would
mix two live versions.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from typing import Any

from framewatch.clients.bus import EventProducer
from framewatch.clients.database import AlertStore
from framewatch.ops.table import text_table
from framewatch.ops.tasks import current_tasks
from framewatch.rules.pairing import (  # CandidateDiff, Match, Seen: still importable from here
    CandidateDiff,  # noqa: F401
    CandidateReport,
    Match,  # noqa: F401
    Seen,  # noqa: F401
    compared,
    iso_ms,
    precision,
    read_difference,
)
from framewatch.rules.versions import RULE_SETTINGS, rule_version
from framewatch.schemas.config import Config
from framewatch.schemas.events import Candidate, CandidateChange, TaskChange, TaskEvent, TaskOrigin, now_ms
from framewatch.schemas.tasks import BadTask, CameraTask, changed
from framewatch.schemas.topics import TASKS


def operator(by: str | None) -> str:
    """Who runs the command: `--by`, else the login name."""
    return by or getpass.getuser()


async def _known(config: Config, task_id: str) -> tuple[TaskEvent, CameraTask]:
    event = (await current_tasks(config)).get(task_id)
    if event is None or event.task is None:
        raise LookupError(f"no task {task_id!r} on {config.topic(TASKS.name)}; `framewatch tasks list` shows them")
    return event, event.task


def _running(event: TaskEvent) -> Candidate:
    if event.candidate is None:
        raise LookupError(f"task {event.task_id!r} has no candidate; `framewatch tasks try` starts one")
    return event.candidate


async def _publish(config: Config, event: TaskEvent) -> None:
    producer = EventProducer(config)
    await producer.start()
    try:
        await producer.send(TASKS, event)
    finally:
        await producer.stop()


# what a candidate may change: the rule settings, but for the type (its frames, and the detectors asked about
# them, are the live type's)
CANDIDATE_SETTINGS = RULE_SETTINGS - {"task_type"}


def candidate_of(task: CameraTask, changes: Mapping[str, Any], by: str, since: int) -> Candidate:
    """The candidate `changes` make of the live task: rule settings only (rules/versions.py) but the type, validated
    as the task would stand, and different from the live rule."""
    if not changes:
        raise BadTask(f"task {task.id!r}: a candidate needs at least one --set KEY=VALUE")
    if others := sorted(set(changes) - CANDIDATE_SETTINGS):
        raise BadTask(f"task {task.id!r}: a candidate changes rule settings only, not {', '.join(others)} "
                      f"(those it may change: {', '.join(sorted(CANDIDATE_SETTINGS))})")
    tried = changed(task, changes)
    if rule_version(tried) == rule_version(task):
        raise BadTask(f"task {task.id!r}: these settings are the live rule's (version {rule_version(task)})")
    return Candidate(task=tried, changes=tried.model_dump(mode="json", include=set(changes)), by=by, since=since)


async def try_candidate(config: Config, task_id: str, changes: Mapping[str, Any], by: str) -> Candidate:
    """Puts a candidate beside the task's live settings (replacing any before: the new one starts afresh)."""
    event, task = await _known(config, task_id)
    at = now_ms()
    candidate = candidate_of(task, changes, by, at)
    await _publish(config, TaskEvent(task_id=task_id, task=task, origin=event.origin, candidate=candidate,
                                     candidate_change=CandidateChange(change=TaskChange.TRY, by=by, at=at,
                                                                      candidate=candidate)))
    return candidate


async def promote(config: Config, task_id: str, by: str) -> CameraTask:
    """Makes the candidate the live settings (a `command`: no config file overwrites them); the workers carry its
    state on as the live rule's (`RuleState.promoted`)."""
    event, _ = await _known(config, task_id)
    candidate = _running(event)
    await _publish(config, TaskEvent(task_id=task_id, task=candidate.task, origin=TaskOrigin.COMMAND,
                                     candidate_change=CandidateChange(change=TaskChange.PROMOTE, by=by, at=now_ms(),
                                                                      candidate=candidate)))
    return candidate.task


async def drop(config: Config, task_id: str, by: str) -> Candidate:
    """Removes the candidate; the live settings stay as they are."""
    event, task = await _known(config, task_id)
    candidate = _running(event)
    await _publish(config, TaskEvent(task_id=task_id, task=task, origin=event.origin,
                                     candidate_change=CandidateChange(change=TaskChange.DROP, by=by, at=now_ms(),
                                                                      candidate=candidate)))
    return candidate


class DiffReport(CandidateReport):
    """The difference as `framewatch tasks diff` prints it: a table (`as_dict`, its `--json`, is the API's too)."""

    def table(self) -> list[str]:
        diff = self.diff
        head = (f"task {self.task_id}: candidate {rule_version(self.candidate.task)} ({self.state}) "
                f"{self.candidate.changes} by {self.candidate.by}, since {iso_ms(self.candidate.since)}")
        rows = []
        for name, seen, only in (("live", diff.live, diff.only_live), ("candidate", diff.candidate,
                                                                        diff.only_candidate)):
            reviewed, share = precision(seen)
            rows.append([name, len(seen), len(only), len(diff.matches), reviewed,
                         "-" if share is None else f"{share:.2f}"])
        lines = [head, *text_table(["side", "alerts", "only", "matched", "reviewed", "precision"], rows,
                                   right=range(1, 6))]
        alerts: list[list[str]] = [["only live", iso_ms(s.captured_at), s.rule, s.alert_id, ""]
                                   for s in diff.only_live]
        alerts += [["only candidate", iso_ms(s.captured_at), s.rule, s.alert_id, ""] for s in diff.only_candidate]
        alerts += [["matched", iso_ms(m.live.captured_at), m.live.rule, m.live.alert_id, f"{m.offset_s:+.2f}s"]
                   for m in diff.matches]
        alerts.sort(key=lambda row: row[1])
        return [*lines, "", *text_table(["", "captured", "rule", "alert (the live one when matched)", "offset"],
                                        alerts)] if alerts else lines


async def diff(config: Config, task_id: str, tolerance_s: float) -> DiffReport:
    """Since the candidate started (until it was promoted or dropped): both rules' alerts, matched."""
    event, _ = await _known(config, task_id)
    compared(event)  # no candidate to compare: said before connecting
    store = AlertStore.of(config)
    await store.connect()
    try:
        report = await read_difference(store, event, tolerance_s)
    finally:
        await store.close()
    return DiffReport(report.task_id, report.candidate, report.state, report.until, report.diff)
