"""Pairing alerts with events, and the difference between a task's live rule and its candidate built on it: pure
computation, shared by the commands (`ops/scoring.py`, `ops/candidates.py`: `framewatch replay --truth`,
`framewatch tasks diff`) and the worker's API (`GET /api/tasks/{id}/diff`), which may not import `ops`.

An event is found by an alert of its rule within `tolerance_s` of `at_s` whose evidence holds every key of the
event's `evidence`, and, when the event has a `box` (x1, y1, x2, y2, normalised), whose box centre lies in it. Each
alert finds at most one event and each event is found at most once: the pairing that finds the most events.

The difference reads no database itself: its rows are `AlertStore.task_verdicts`' and `task_shadow`'s
(clients/database.py), which `read_difference` is handed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from framewatch.rules.versions import rule_version
from framewatch.schemas.events import Candidate, TaskChange, TaskEvent
from framewatch.schemas.queries import Verdict

# -- the pairing (scoring's, and the difference's) -------------------------------------------------------------------


class TruthEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    at_s: float = Field(ge=0, description="seconds into the clip")
    tolerance_s: float = Field(default=1.0, ge=0)
    evidence: dict[str, Any] = {}
    box: tuple[float, float, float, float] | None = None
    note: str = ""


@dataclass(frozen=True)
class ScoredAlert:
    """What scoring needs of an alert."""

    rule: str
    at_s: float
    evidence: dict[str, Any]


def _fits(event: TruthEvent, alert: ScoredAlert) -> bool:
    if abs(alert.at_s - event.at_s) > event.tolerance_s:
        return False
    if any(alert.evidence.get(key) != value for key, value in event.evidence.items()):
        return False
    if event.box is not None:
        box = alert.evidence.get("box")
        if box is None:
            return False
        x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return event.box[0] <= x <= event.box[2] and event.box[1] <= y <= event.box[3]
    return True


def _closest_first(event: TruthEvent, alerts: list[ScoredAlert]) -> list[int]:
    """The alerts that fit the event, closest in time first."""
    return sorted((j for j, a in enumerate(alerts) if _fits(event, a)), key=lambda j: abs(alerts[j].at_s - event.at_s))


def _matching(fits: list[list[int]]) -> dict[int, int]:
    """The most events found, each alert finding at most one (augmenting paths; an event tries its closest alert
    first). Returns alert index -> event index."""
    owner: dict[int, int] = {}

    def place(event: int, seen: set[int]) -> bool:
        for alert in fits[event]:
            if alert not in seen:
                seen.add(alert)
                if alert not in owner or place(owner[alert], seen):
                    owner[alert] = event
                    return True
        return False

    for event in range(len(fits)):
        place(event, set())
    return owner


def pair(events: list[TruthEvent], alerts: list[ScoredAlert]) -> dict[int, int]:
    """The pairing that finds the most events, each alert finding at most one: alert index -> event index. Also
    what the candidate difference matches a candidate's alerts to the live rule's with."""
    return _matching([_closest_first(e, alerts) for e in events])


# -- the difference between a task's live rule and its candidate ----------------------------------------------------

JUDGED = (Verdict.TRUE.value, Verdict.FALSE.value)  # the verdicts precision counts


def capture_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def moment_of(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class Seen:
    """An alert as the difference needs it."""

    alert_id: str
    rule: str
    captured_at: int  # ms
    verdict: str | None = None  # a live alert's review; a candidate's, borrowed from the live alert it matches

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> Seen:
        """From a row of `task_verdicts` (with `verdict`) or `task_shadow` (without)."""
        return cls(str(row["alert_id"]), row["rule"], capture_ms(row["captured_at"]), row.get("verdict"))

    def as_dict(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "rule": self.rule, "captured_at": iso_ms(self.captured_at),
                "verdict": self.verdict}


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
    """The live rule's and the candidate's alerts over the same span, matched rule by rule with `pair` (as scoring
    does): a live alert is an event, a candidate's alert of its rule within the tolerance finds it."""

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
class CandidateReport:
    """The difference of a task's candidate (running, promoted or dropped) as `tasks diff --json` and
    `GET /api/tasks/{id}/diff` answer it (`as_dict`)."""

    task_id: str
    candidate: Candidate
    state: str  # running, promoted, dropped
    until: int | None  # ms; None while it runs
    diff: CandidateDiff

    def as_dict(self) -> dict[str, Any]:
        def side(seen: list[Seen], only: list[Seen]) -> dict[str, Any]:
            reviewed, share = precision(seen)
            return {"alerts": len(seen), "only": [s.as_dict() for s in only], "reviewed": reviewed,
                    "precision": share}

        diff = self.diff
        return {"task_id": self.task_id, "state": self.state, "since": iso_ms(self.candidate.since),
                "until": None if self.until is None else iso_ms(self.until),
                "candidate": {"changes": self.candidate.changes, "by": self.candidate.by,
                              "rule_version": rule_version(self.candidate.task)},
                "live": side(diff.live, diff.only_live), "tried": side(diff.candidate, diff.only_candidate),
                "matched": [{"rule": m.live.rule, "live": m.live.alert_id, "candidate": m.candidate.alert_id,
                             "live_at": iso_ms(m.live.captured_at), "offset_s": m.offset_s} for m in diff.matches]}


class NoCandidate(LookupError):
    """The task has had no candidate since its last change (nothing to compare)."""


def compared(event: TaskEvent) -> tuple[Candidate, str, int | None]:
    """The candidate to compare (the running one, else the last promoted or dropped), its state and its end."""
    if event.candidate is not None:
        return event.candidate, "running", None
    change = event.candidate_change
    if change is None or change.change is TaskChange.TRY:
        raise NoCandidate(f"task {event.task_id!r} has had no candidate since its last change; "
                          "`framewatch tasks try` starts one")
    return change.candidate, {TaskChange.PROMOTE: "promoted", TaskChange.DROP: "dropped"}[change.change], change.at


class DifferenceRows(Protocol):
    """The reads the difference needs: `AlertStore`'s (clients/database.py)."""

    async def task_verdicts(self, task_id: str, since: datetime | None,
                            until: datetime | None) -> tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]:
        ...

    async def task_shadow(self, task_id: str, rule_version: str, since: datetime | None,
                          until: datetime | None) -> Sequence[Mapping[str, Any]]:
        ...


async def read_difference(store: DifferenceRows, event: TaskEvent, tolerance_s: float) -> CandidateReport:
    """Since the task's candidate started (until it was promoted or dropped): both rules' alerts, matched. Raises
    `NoCandidate` when there is none to compare."""
    candidate, state, until = compared(event)
    span = (moment_of(candidate.since), None if until is None else moment_of(until))
    live, _missed = await store.task_verdicts(event.task_id, *span)
    tried = await store.task_shadow(event.task_id, rule_version(candidate.task), *span)
    diff = CandidateDiff.of([Seen.of_row(row) for row in live], [Seen.of_row(row) for row in tried],
                            candidate.since, tolerance_s)
    return CandidateReport(event.task_id, candidate, state, until, diff)
