"""`framewatch truth export` without the stack: reviews become a truth file whose times are the replay's, so
replaying the very alerts that were reviewed scores them as the reviews did."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from framewatch.ops.replay import DetectedFrame, ReplayResult, evaluate_frames
from framewatch.ops.scoring import ScoredAlert, load_truth, score
from framewatch.ops.truth import build_truth, truth_json
from framewatch.schemas.config import Config
from framewatch.schemas.events import Detection
from framewatch.schemas.tasks import CameraTask, TaskType

START_MS = 1_796_190_000_437  # a live camera's clock: not a whole second, far from the epoch
RULE = "area_intrusion"


def moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def replayed() -> ReplayResult:
    """What `replay --from-topic` makes of ten frames a second apart, each with a new person in view (an alert
    each), its origin the first frame's capture time as `replay` takes it."""
    task = CameraTask(id="gate", task_type=TaskType.AREA_INTRUSION, rtsp_url="unused")
    frames = [DetectedFrame(seq=i, captured_at=START_MS + 1000 * i, width=640, height=480,
                            detections=[Detection(label="person", score=0.9, box=(0.4, 0.4, 0.5, 0.8),
                                                  track_id=f"p{i}")]) for i in range(10)]
    return evaluate_frames(Config(), task, frames, frames[0].captured_at)


def reviewed(result: ReplayResult, verdicts: list[str | None]) -> list[dict[str, Any]]:
    """The stored alerts' rows as the export reads them, with these verdicts in capture order."""
    return [{"alert_id": uuid.UUID(a.alert_id), "rule": a.rule, "captured_at": moment(a.frame.captured_at),
             "verdict": verdict, "reviewer": "alice"} for a, verdict in zip(result.alerts, verdicts, strict=True)]


VERDICTS = ["true"] * 6 + ["false", "false", "reviewed", None]


def test_confirmed_and_missed_become_events_at_the_replays_times() -> None:
    result = replayed()
    assert len(result.alerts) == 10
    missed = [{"rule": RULE, "captured_at": moment(START_MS + 9_500), "note": "behind the van", "reporter": "bob"},
              {"rule": RULE, "captured_at": moment(START_MS - 2_000), "note": "", "reporter": "bob"}]
    truth = build_truth("gate", reviewed(result, VERDICTS), missed, result.at_s, START_MS + 9_000, tolerance_s=0.5)
    assert list(truth.rules) == [RULE] and truth.rules[RULE].until_s == 9.0
    assert [e.at_s for e in truth.events] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 9.5]  # the one before the origin left out
    assert {e.tolerance_s for e in truth.events} == {0.5}
    assert truth.events[-1].note == "missed (bob) behind the van" and "true (alice)" in truth.events[0].note
    assert "2 alerts of these rules had no true/false verdict" in truth.note
    assert "1 events before the first stored detection left out" in truth.note


def test_replaying_the_reviewed_alerts_scores_them_as_the_reviews_did(tmp_path: Path) -> None:
    result = replayed()
    judged = VERDICTS[:8] + ["false", "false"]
    truth_file = tmp_path / "truth.json"
    truth_file.write_text(truth_json(build_truth("gate", reviewed(result, judged), [], result.at_s, None, 1.0)))
    truth = load_truth(truth_file)  # what `replay --truth` reads
    [figures] = score(truth, result.scored())
    assert (figures.alerts, figures.events, figures.matched) == (10, 6, 6)
    assert figures.precision == 0.6  # confirmed / (confirmed + false), as /api/precision has it
    assert figures.time_errors_s == [0.0] * 6


def test_unjudged_alerts_count_against_a_replay_and_unjudged_rules_are_not_labelled() -> None:
    result = replayed()
    truth = build_truth("gate", reviewed(result, VERDICTS), [], result.at_s, None, 1.0)
    [figures] = score(truth, result.scored())
    assert figures.precision == 0.6  # the "reviewed" and the unreviewed alert count as false positives
    assert score(truth, [ScoredAlert(RULE, 0.0, {})])[0].matched == 1
    nothing_judged = build_truth("gate", reviewed(result, ["reviewed"] * 10), [], result.at_s, None, 1.0)
    assert nothing_judged.rules == {} and nothing_judged.events == []
