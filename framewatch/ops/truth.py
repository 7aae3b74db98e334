"""`framewatch truth export`: the reviews of a task over a span, as a truth file (`ops/scoring.py`) for
`framewatch replay --from-topic --truth`, so that a rule setting can be tried against an operator's own verdicts.

Alerts confirmed (`true`) and missed events become events; alerts judged `false` are not events, so a replayed
alert there counts against precision. Only the rules with at least one `true`/`false` verdict or missed event are
labelled. An alert with no verdict, or only `reviewed`, is no event either: the file's note counts them, since a
replayed alert near one counts as a false positive.

Times line up with what `replay --from-topic` reports because they are computed the same way, by the same code:
replay's origin is the capture time of the task's first detection stored on fw.detections at or after `--since`
(`stored_detections`, then `evaluate_frames(…, frames[0].captured_at)`), and the export reads that same first
detection and converts each capture time with `ReplayResult.at_s` from that origin. So pass the export and the
replay the same `--since` (and `--until`), while fw.detections still holds that span.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from framewatch.clients.database import AlertStore
from framewatch.ops.replay import ReplayResult, stored_detections
from framewatch.ops.scoring import Truth, TruthEvent, TruthSpan
from framewatch.rules.pairing import JUDGED, capture_ms
from framewatch.schemas.config import Config
from framewatch.schemas.queries import Verdict
from framewatch.schemas.tasks import CameraTask


def build_truth(task_id: str, alerts: Sequence[Mapping[str, Any]], missed: Sequence[Mapping[str, Any]],
                at_s: Callable[[int], float], until_ms: int | None, tolerance_s: float) -> Truth:
    """The truth file of a task's reviewed span: `alerts` are rows with `alert_id`, `rule`, `captured_at`, `verdict`
    (None when unreviewed) and `reviewer`; `missed` rows with `rule`, `captured_at`, `note` and `reporter`; `at_s`
    turns a capture time (ms) into seconds as the replay reports them. Events before the replay's first frame
    cannot be found by it and are left out (the note counts them)."""
    labelled = {row["rule"] for row in alerts if row["verdict"] in JUDGED} | {row["rule"] for row in missed}
    happened = [(row["rule"], row["captured_at"], f"alert {row['alert_id']}, true ({row['reviewer']})")
                for row in alerts if row["verdict"] == Verdict.TRUE.value]
    happened += [(row["rule"], row["captured_at"], f"missed ({row['reporter']}) {row['note']}".strip())
                 for row in missed]
    timed = [(rule, at_s(capture_ms(moment)), note) for rule, moment, note in happened]
    events = [TruthEvent(rule=rule, at_s=seconds, tolerance_s=tolerance_s, note=note)
              for rule, seconds, note in timed if seconds >= 0]
    unjudged = sum(1 for row in alerts if row["rule"] in labelled and row["verdict"] not in JUDGED)
    span = TruthSpan(until_s=(at_s(until_ms) or None) if until_ms is not None else None)
    note = (f"task {task_id}: reviews exported {datetime.now(UTC).isoformat(timespec='seconds')}; "
            f"{unjudged} alerts of these rules had no true/false verdict (a replayed alert near one counts as a "
            f"false positive); {len(happened) - len(events)} events before the first stored detection left out")
    return Truth(video=f"fw.detections of task {task_id}", note=note, rules={rule: span for rule in sorted(labelled)},
                 events=sorted(events, key=lambda e: (e.rule, e.at_s)))


def truth_json(truth: Truth) -> str:
    """The truth file's text (what `scoring.load_truth` reads), defaults left out."""
    return truth.model_dump_json(indent=2, exclude_defaults=True)


async def export_truth(config: Config, task: CameraTask, since_ms: int | None, until_ms: int | None,
                       tolerance_s: float) -> Truth:
    """The reviews of a task from `since_ms` to `until_ms` (both included) as a truth file for `replay
    --from-topic` over the same span (a ReplayError when fw.detections holds nothing of it)."""
    frames = await stored_detections(config, task, since_ms, until_ms)
    clock = ReplayResult(task, frames, frames[0].captured_at).at_s
    store = AlertStore.of(config)
    await store.connect()
    try:
        alerts, missed = await store.task_verdicts(task.id, _moment(since_ms), _moment(until_ms))
    finally:
        await store.close()
    return build_truth(task.id, [dict(r) for r in alerts], [dict(r) for r in missed], clock, until_ms, tolerance_s)


def _moment(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)
