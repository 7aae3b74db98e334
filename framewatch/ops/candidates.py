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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from framewatch.clients.bus import EventProducer
from framewatch.clients.database import AlertStore
from framewatch.ops.scoring import ScoredAlert, TruthEvent, pair
from framewatch.ops.table import text_table
from framewatch.ops.tasks import current_tasks
from framewatch.ops.truth import JUDGED, capture_ms
from framewatch.rules.versions import RULE_SETTINGS, rule_version
from framewatch.schemas.config import Config
from framewatch.schemas.events import Candidate, CandidateChange, TaskChange, TaskEvent, TaskOrigin, now_ms
from framewatch.schemas.queries import Verdict
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


@dataclass(frozen=True)
class Seen:
    """An alert as the difference needs it."""

    alert_id: str
    rule: str
    captured_at: int  # ms
    verdict: str | None = None  # a live alert's review; a candidate's, borrowed from the live alert it matches


@dataclass(frozen=True)
class Match:
    live: Seen
    candidate: Seen

    @property
    def offset_s(self) -> float:
        """How much later the candidate alerted (negative: earlier)."""
        return round((self.candidate.captured_at - self.live.captured_at) / 1000, 3)


def precision(seen: Sequence[Seen]) -> tuple[int, float | None]:
    """How many have a true/false verdict, and the share of those that are true."""
    judged = [s for s in seen if s.verdict in JUDGED]
    confirmed = sum(1 for s in judged if s.verdict == Verdict.TRUE.value)
    return len(judged), (confirmed / len(judged) if judged else None)


@dataclass(frozen=True)
class CandidateDiff:
    """The live rule's and the candidate's alerts over the same span, matched rule by rule with `scoring.pair` (as
    scoring does): a live alert is an event, a candidate's alert of its rule within the tolerance finds it."""

    live: list[Seen]
    candidate: list[Seen]
    matches: list[Match]

    @classmethod
    def of(cls, live: list[Seen], candidate: list[Seen], since: int, tolerance_s: float) -> CandidateDiff:
        def at_s(seen: Seen) -> float:
            return max(0.0, (seen.captured_at - since) / 1000)

        matches = []
        for rule in {s.rule for s in live}:
            lives, tries = [s for s in live if s.rule == rule], [s for s in candidate if s.rule == rule]
            owner = pair([TruthEvent(rule=rule, at_s=at_s(s), tolerance_s=tolerance_s) for s in lives],
                         [ScoredAlert(rule=rule, at_s=at_s(s), evidence={}) for s in tries])
            matches += [Match(lives[i], tries[j]) for j, i in owner.items()]
        matches.sort(key=lambda m: (m.live.captured_at, m.live.alert_id))
        verdicts = {m.candidate.alert_id: m.live.verdict for m in matches}
        judged = [Seen(s.alert_id, s.rule, s.captured_at, verdicts.get(s.alert_id)) for s in candidate]
        return cls(live, judged, matches)

    @property
    def only_live(self) -> list[Seen]:
        matched = {m.live.alert_id for m in self.matches}
        return [s for s in self.live if s.alert_id not in matched]

    @property
    def only_candidate(self) -> list[Seen]:
        matched = {m.candidate.alert_id for m in self.matches}
        return [s for s in self.candidate if s.alert_id not in matched]


@dataclass(frozen=True)
class DiffReport:
    task_id: str
    candidate: Candidate
    state: str  # running, promoted, dropped
    until: int | None  # ms; None while it runs
    diff: CandidateDiff

    def as_dict(self) -> dict[str, Any]:
        def side(seen: list[Seen], only: list[Seen]) -> dict[str, Any]:
            reviewed, share = precision(seen)
            return {"alerts": len(seen), "only": [_seen_json(s) for s in only], "reviewed": reviewed,
                    "precision": share}

        diff = self.diff
        return {"task_id": self.task_id, "state": self.state, "since": _iso(self.candidate.since),
                "until": None if self.until is None else _iso(self.until),
                "candidate": {"changes": self.candidate.changes, "by": self.candidate.by,
                              "rule_version": rule_version(self.candidate.task)},
                "live": side(diff.live, diff.only_live), "tried": side(diff.candidate, diff.only_candidate),
                "matched": [{"rule": m.live.rule, "live": m.live.alert_id, "candidate": m.candidate.alert_id,
                             "live_at": _iso(m.live.captured_at), "offset_s": m.offset_s} for m in diff.matches]}

    def table(self) -> list[str]:
        diff = self.diff
        head = (f"task {self.task_id}: candidate {rule_version(self.candidate.task)} ({self.state}) "
                f"{self.candidate.changes} by {self.candidate.by}, since {_iso(self.candidate.since)}")
        rows = []
        for name, seen, only in (("live", diff.live, diff.only_live), ("candidate", diff.candidate,
                                                                        diff.only_candidate)):
            reviewed, share = precision(seen)
            rows.append([name, len(seen), len(only), len(diff.matches), reviewed,
                         "-" if share is None else f"{share:.2f}"])
        lines = [head, *text_table(["side", "alerts", "only", "matched", "reviewed", "precision"], rows,
                                   right=range(1, 6))]
        alerts: list[list[str]] = [["only live", _iso(s.captured_at), s.rule, s.alert_id, ""]
                                   for s in diff.only_live]
        alerts += [["only candidate", _iso(s.captured_at), s.rule, s.alert_id, ""] for s in diff.only_candidate]
        alerts += [["matched", _iso(m.live.captured_at), m.live.rule, m.live.alert_id, f"{m.offset_s:+.2f}s"]
                   for m in diff.matches]
        alerts.sort(key=lambda row: row[1])
        return [*lines, "", *text_table(["", "captured", "rule", "alert (the live one when matched)", "offset"],
                                        alerts)] if alerts else lines


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _seen_json(seen: Seen) -> dict[str, Any]:
    return {"alert_id": seen.alert_id, "rule": seen.rule, "captured_at": _iso(seen.captured_at),
            "verdict": seen.verdict}


def _compared(event: TaskEvent) -> tuple[Candidate, str, int | None]:
    """The candidate to compare (the running one, else the last promoted or dropped), its state and its end."""
    if event.candidate is not None:
        return event.candidate, "running", None
    change = event.candidate_change
    if change is None or change.change is TaskChange.TRY:
        raise LookupError(f"task {event.task_id!r} has had no candidate since its last change; "
                          "`framewatch tasks try` starts one")
    return change.candidate, {TaskChange.PROMOTE: "promoted", TaskChange.DROP: "dropped"}[change.change], change.at


async def diff(config: Config, task_id: str, tolerance_s: float) -> DiffReport:
    """Since the candidate started (until it was promoted or dropped): both rules' alerts, matched."""
    event, _ = await _known(config, task_id)
    candidate, state, until = _compared(event)
    span = (_moment(candidate.since), None if until is None else _moment(until))
    store = AlertStore.of(config)
    await store.connect()
    try:
        live, _missed = await store.task_verdicts(task_id, *span)
        tried = await store.task_shadow(task_id, rule_version(candidate.task), *span)
    finally:
        await store.close()
    compared = CandidateDiff.of([_seen(row) for row in live], [_seen(row) for row in tried], candidate.since,
                                tolerance_s)
    return DiffReport(task_id, candidate, state, until, compared)


def _seen(row: Mapping[str, Any]) -> Seen:
    return Seen(str(row["alert_id"]), row["rule"], capture_ms(row["captured_at"]), row.get("verdict"))


def _moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
