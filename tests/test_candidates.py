"""Candidate rule settings beside the live ones (`framewatch tasks try`): what a candidate may change, its record on
fw.tasks, its state carried on by a promotion (no incident announced twice, none lost), and the difference between
both rules' alerts, matched with scoring's pairing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from framewatch.agents.api import tasks as api_tasks
from framewatch.agents.api.routes import NotFound
from framewatch.agents.catalog import TaskCatalog
from framewatch.ops import candidates as ops_candidates
from framewatch.ops import scoring
from framewatch.ops.candidates import CandidateDiff, DiffReport, Seen, candidate_of, precision
from framewatch.rules import pairing
from framewatch.rules.engine import evaluate
from framewatch.rules.versions import rule_version
from framewatch.schemas.config import load_config
from framewatch.schemas.events import Candidate, CandidateChange, TaskChange, TaskEvent
from framewatch.schemas.queries import BadQuery
from framewatch.schemas.tasks import BadTask
from tests.conftest import write_config
from tests.test_rules import LOWER_HALF, Camera, person, task

RIGHT_LOWER = [(0.5, 0.5), (1.0, 0.5), (1.0, 1.0), (0.5, 1.0)]
T = 1_700_000_000_000


def test_a_candidate_changes_rule_settings_only_and_must_differ_from_the_live_rule() -> None:
    live = task(region=LOWER_HALF)
    tried = candidate_of(live, {"region": RIGHT_LOWER}, "ana", T)
    assert tried.task.region == RIGHT_LOWER and tried.task.rtsp_url == live.rtsp_url and tried.since == T
    assert rule_version(tried.task) != rule_version(live)
    with pytest.raises(BadTask, match="rule settings only, not clips, rtsp_url"):
        candidate_of(live, {"rtsp_url": "rtsp://elsewhere", "clips": False}, "ana", T)
    with pytest.raises(BadTask, match="not task_type"):
        candidate_of(live, {"task_type": "loitering"}, "ana", T)
    with pytest.raises(BadTask, match="the live rule's"):
        candidate_of(live, {"cooldown_sec": live.cooldown_sec}, "ana", T)
    with pytest.raises(BadTask, match="region: the region crosses itself"):
        candidate_of(live, {"region": [(0, 0), (1, 1), (1, 0), (0, 1)]}, "ana", T)


def test_the_catalog_keeps_each_tasks_record_whole_and_old_records_decode(tmp_path: Path) -> None:
    config, _ = load_config(write_config(tmp_path / "c.toml", ""), environ={})
    catalog = TaskCatalog(config)
    live = task(region=LOWER_HALF)
    candidate = candidate_of(live, {"region": RIGHT_LOWER}, "ana", T)
    tried = TaskEvent(task_id="cam", task=live, candidate=candidate,
                      candidate_change=CandidateChange(change=TaskChange.TRY, by="ana", at=T, candidate=candidate))
    catalog.keep("cam", tried.to_bytes())
    assert catalog.values["cam"] == live and catalog.events["cam"].candidate == candidate
    before_candidates = b'{"schema_version": 1, "emitted_at": 1, "task_id": "cam", "task": ' + \
        live.model_dump_json().encode() + b"}"
    catalog.keep("cam", before_candidates)
    assert catalog.values["cam"] == live and catalog.events["cam"].candidate is None
    catalog.keep("cam", None)
    assert "cam" not in catalog.values and "cam" not in catalog.events


def walk_both(live: Camera, tried: Camera, times: list[float], x: float, foot_y: float) -> tuple[int, int]:
    """The same person at (x, foot_y) seen by both rules at `times`; the alerts each raised."""
    counts = [0, 0]
    for at in times:
        for i, camera in enumerate((live, tried)):
            counts[i] += len(camera.see(at, person(x, foot_y, track_id="p1")).alerts)
    return counts[0], counts[1]


def test_a_promoted_state_announces_no_incident_twice_and_loses_none() -> None:
    """Both rules saw p1 in the lower right (both alerted); only the candidate, whose region is the whole lower
    half, saw p2 in the lower left. After the promotion p1 stays announced, and p2, until then announced in the
    shadow table only, reaches the feed at its next frame."""
    live = Camera(region=RIGHT_LOWER)
    tried = Camera(region=LOWER_HALF)
    tried.state.candidate = T
    assert walk_both(live, tried, [0.0, 0.5], 0.8, 0.9) == (1, 1)  # p1, in both regions
    live.see(1.0, person(0.8, 0.9, track_id="p1"), person(0.2, 0.9, track_id="p2"))
    tried.see(1.0, person(0.8, 0.9, track_id="p1"), person(0.2, 0.9, track_id="p2"))  # p2 only in the candidate's
    promoted = tried.state.promoted(live.state)
    assert promoted.candidate is None and promoted.outputs == live.state.outputs
    live.task, live.state = tried.task, promoted
    alerts = live.see(1.5, person(0.8, 0.9, track_id="p1"), person(0.2, 0.9, track_id="p2")).alerts
    assert [a.evidence["subject"] for a in alerts] == ["dp2"]  # a detector's track id, as the tracker names it
    assert live.see(2.0, person(0.8, 0.9, track_id="p1"), person(0.2, 0.9, track_id="p2")).alerts == []


def test_an_incident_only_the_live_rule_had_found_is_not_announced_again_once_the_candidate_finds_it() -> None:
    """The live rule alerted on p1 in the lower right; the candidate's region (the lower left) had not found it. p1
    walks into the lower left after the promotion, past the cooldown but before its incident cleared."""
    live = Camera(region=RIGHT_LOWER, cooldown_sec=1.0, clear_sec=5.0)
    tried = Camera(region=[(0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0)], cooldown_sec=1.0, clear_sec=5.0)
    assert walk_both(live, tried, [0.0, 0.5], 0.8, 0.9) == (1, 0)
    live.task, live.state = tried.task, tried.state.promoted(live.state)
    assert live.see(2.0, person(0.2, 0.9, track_id="p1")).alerts == []


def test_a_replayed_frame_from_before_the_promotion_sends_the_live_rules_alerts_again() -> None:
    live = Camera(region=RIGHT_LOWER)
    tried = Camera(region=LOWER_HALF)
    first = live.see(0.0, person(0.8, 0.9, track_id="p1")).alerts
    tried.see(0.0, person(0.8, 0.9, track_id="p1"), person(0.2, 0.9, track_id="p2"))
    promoted = tried.state.promoted(live.state)
    replayed = evaluate(tried.task, promoted, live.event(0.0, person(0.8, 0.9, track_id="p1")), "alerts")
    assert [a.alert_id for a in replayed.alerts] == [a.alert_id for a in first]


def seen(alert_id: str, at_s: float, verdict: str | None = None, rule: str = "area_intrusion") -> Seen:
    return Seen(alert_id, rule, T + round(at_s * 1000), verdict)


def test_the_difference_matches_alerts_of_a_rule_within_the_tolerance_each_once() -> None:
    live = [seen("l1", 1.0, "true"), seen("l2", 5.0, "false"), seen("l3", 9.0), seen("l4", 12.0, rule="loitering")]
    tried = [seen("c1", 1.2), seen("c3", 9.0), seen("c4", 9.5), seen("c5", 12.0)]
    diff = CandidateDiff.of(live, tried, T, tolerance_s=1.0)
    assert [(m.live.alert_id, m.candidate.alert_id, m.offset_s) for m in diff.matches] == [
        ("l1", "c1", 0.2), ("l3", "c3", 0.0)]
    assert [s.alert_id for s in diff.only_live] == ["l2", "l4"]
    assert [s.alert_id for s in diff.only_candidate] == ["c4", "c5"]  # c5: another rule than l4's
    assert precision(diff.live) == (2, 0.5)
    assert precision(diff.candidate) == (1, 1.0)  # c1 takes l1's verdict; the others have none


def test_a_candidate_record_round_trips_with_who_and_when() -> None:
    candidate = Candidate(task=task(region=LOWER_HALF), changes={"dwell_sec": 12}, by="ana", since=T)
    change = CandidateChange(change=TaskChange.PROMOTE, by="bo", at=T + 60_000, candidate=candidate)
    event = TaskEvent(task_id="cam", task=candidate.task, candidate_change=change)
    assert TaskEvent.decode(event.to_bytes()) == event


def test_the_difference_reads_as_a_table_and_as_json() -> None:
    live_task = task(region=LOWER_HALF)
    candidate = candidate_of(live_task, {"region": RIGHT_LOWER}, "ana", T)
    diff = CandidateDiff.of([seen("l1", 1.0, "true"), seen("l2", 5.0)], [seen("c1", 1.5)], T, tolerance_s=1.0)
    report = DiffReport("cam", candidate, "running", None, diff)
    lines = report.table()
    assert lines[0].startswith(f"task cam: candidate {rule_version(candidate.task)} (running)")
    assert lines[1].split() == ["side", "alerts", "only", "matched", "reviewed", "precision"]
    assert lines[2].split() == ["live", "2", "1", "1", "1", "1.00"]
    assert lines[3].split() == ["candidate", "1", "0", "1", "1", "1.00"]
    assert [line.split()[0] for line in lines[6:]] == ["matched", "only"]
    assert lines[6].split()[-1] == "+0.50s"
    shown = report.as_dict()
    assert shown["candidate"]["changes"] == {"region": [[0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [0.5, 1.0]]}
    assert [m["offset_s"] for m in shown["matched"]] == [0.5] and shown["until"] is None


class Rows:
    """An alert store's reads, as `read_difference` asks them (AlertStore's, in PostgreSQL)."""

    def __init__(self, live: list[dict[str, Any]], shadow: list[dict[str, Any]]) -> None:
        self.live, self.shadow = live, shadow
        self.asked: list[tuple[Any, ...]] = []

    async def task_verdicts(self, task_id: str, since: datetime | None,
                            until: datetime | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        self.asked.append(("verdicts", task_id, since, until))
        return self.live, []

    async def task_shadow(self, task_id: str, version: str, since: datetime | None,
                          until: datetime | None) -> list[dict[str, Any]]:
        self.asked.append(("shadow", task_id, version, since, until))
        return self.shadow


def row(alert_id: str, at_s: float, verdict: str | None = None) -> dict[str, Any]:
    shown = {"alert_id": alert_id, "rule": "area_intrusion",
             "captured_at": datetime.fromtimestamp((T + at_s * 1000) / 1000, tz=UTC)}
    return shown if verdict is None else {**shown, "verdict": verdict}


def test_the_difference_is_built_in_rules_from_the_stores_rows_for_the_cli_and_the_api_alike() -> None:
    """rules/pairing.py holds what `tasks diff` and GET /api/tasks/{id}/diff share: the span asked of the store (since
    the candidate started; until its promotion once promoted), the rows matched, the same JSON."""
    assert ops_candidates.CandidateDiff is pairing.CandidateDiff and ops_candidates.Seen is pairing.Seen
    assert scoring.pair is pairing.pair and scoring.TruthEvent is pairing.TruthEvent
    candidate = candidate_of(task(region=LOWER_HALF), {"region": RIGHT_LOWER}, "ana", T)
    store = Rows([row("l1", 1.0, "true"), row("l2", 5.0, "false")], [row("c1", 1.4), row("c9", 30.0)])
    running = TaskEvent(task_id="cam", task=task(region=LOWER_HALF), candidate=candidate)
    report = asyncio.run(pairing.read_difference(store, running, tolerance_s=1.0))
    since = datetime.fromtimestamp(T / 1000, tz=UTC)
    assert store.asked == [("verdicts", "cam", since, None), ("shadow", "cam", rule_version(candidate.task), since,
                                                              None)]
    shown = report.as_dict()
    assert shown["state"] == "running" and shown["until"] is None
    assert [(m["live"], m["candidate"], m["offset_s"]) for m in shown["matched"]] == [("l1", "c1", 0.4)]
    assert [s["alert_id"] for s in shown["live"]["only"]] == ["l2"]
    assert [s["alert_id"] for s in shown["tried"]["only"]] == ["c9"]
    assert (shown["live"]["reviewed"], shown["live"]["precision"]) == (2, 0.5)
    assert (shown["tried"]["reviewed"], shown["tried"]["precision"]) == (1, 1.0)
    cli = DiffReport(report.task_id, report.candidate, report.state, report.until, report.diff)
    assert cli.as_dict() == shown

    promoted = TaskEvent(task_id="cam", task=candidate.task, candidate_change=CandidateChange(
        change=TaskChange.PROMOTE, by="bo", at=T + 60_000, candidate=candidate))
    assert pairing.compared(promoted) == (candidate, "promoted", T + 60_000)
    store.asked.clear()
    ended = asyncio.run(pairing.read_difference(store, promoted, 1.0)).as_dict()
    assert (ended["state"], ended["until"]) == ("promoted", "2023-11-14T22:14:20.000+00:00")
    assert store.asked[0][3] == datetime.fromtimestamp((T + 60_000) / 1000, tz=UTC)
    with pytest.raises(pairing.NoCandidate, match="has had no candidate since its last change"):
        pairing.compared(TaskEvent(task_id="cam", task=candidate.task))


class JsonView:
    """A Faust view as the handlers use it: `json` answers (status, body) here."""

    def json(self, value: Any, status: int = 200) -> tuple[int, Any]:
        return status, value


def test_the_api_answers_the_difference_404_for_an_unknown_task_409_without_a_candidate() -> None:
    candidate = candidate_of(task(region=LOWER_HALF), {"region": RIGHT_LOWER}, "ana", T)
    store = Rows([row("l1", 1.0, "true")], [row("c1", 1.5)])
    events = {"cam": TaskEvent(task_id="cam", task=task(region=LOWER_HALF), candidate=candidate),
              "plain": TaskEvent(task_id="plain", task=task(region=LOWER_HALF))}
    context: Any = SimpleNamespace(resources=SimpleNamespace(alerts=store, catalog=SimpleNamespace(events=events)))

    def answer(task_id: str, **query: str) -> Any:
        request: Any = SimpleNamespace(match_info={"task_id": task_id}, query=query)
        view: Any = JsonView()
        return asyncio.run(api_tasks.candidate_diff(context, view, request))

    expected = asyncio.run(pairing.read_difference(store, events["cam"], 1.0)).as_dict()
    assert answer("cam") == (200, expected)
    assert answer("cam", tolerance="0.4")[1]["matched"] == []  # 0.5 s apart
    status, body = answer("plain")
    assert status == 409 and "has had no candidate since its last change" in body["error"]
    with pytest.raises(NotFound, match="no task 'nope'"):
        answer("nope")
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(BadQuery, match="tolerance"):
            answer("cam", tolerance=bad)
    assert any(r.path == "/api/tasks/{task_id}/diff" and r.handler is api_tasks.candidate_diff
               for r in api_tasks.ROUTES)
