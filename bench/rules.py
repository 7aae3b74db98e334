"""Rule evaluation cost per frame, for the nine task types, by the number of objects in the frame.

    .venv/bin/python bench/rules.py [--frames 600] [--json out.json]

Each task type sees the same synthetic scene: N objects of the label it watches, walking across the frame at
different speeds in rows (so tracks, crossings, dwells and incidents all happen), sampled at 5 frames/s. A frame's
cost is what the `rules` agent spends on it: the state decoded from the table's bytes, the frame evaluated (tracker,
condition, incidents, alerts), the state encoded again. The decoding and encoding are also given apart. Median of
three rounds, microseconds per frame, one core.

With a candidate (`framewatch tasks try`): the same frames through the live rule and a candidate of it (another
`cooldown_sec`), each with its own state decoded, evaluated and encoded, as the `rules` agent does for a task that
has one; the ratio to the live rule alone is what the candidate costs (about 2: it doubles that task's rules CPU,
and nothing for tasks without one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framewatch.ops.load import print_figures
from framewatch.rules.engine import evaluate
from framewatch.rules.state import RuleState
from framewatch.schemas.events import Detection, DetectionEvent, FrameEvent
from framewatch.schemas.tasks import CameraTask, TaskType, changed

OBJECTS = (1, 10, 50)
STEP_MS = 200
SETTINGS: dict[TaskType, dict[str, Any]] = {
    TaskType.LINE_CROSSING: {"line": [[0.5, 0.0], [0.5, 1.0]]},
    TaskType.LOITERING: {"region": [[0.2, 0.2], [0.8, 0.2], [0.8, 0.9], [0.2, 0.9]], "dwell_sec": 5},
    TaskType.AREA_INTRUSION: {"region": [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]},
}


def scene(objects: int, frame: int, label: str) -> list[Detection]:
    found = []
    for i in range(objects):
        row, speed = i % 10, 0.002 + 0.001 * (i % 7)
        x = (0.05 + i * 0.37 + speed * frame) % 0.9 + 0.05
        y = 0.3 + 0.06 * row
        found.append(Detection(label=label, score=0.9, box=(x - 0.02, y - 0.1, x + 0.02, y)))
    return found


def events(task: CameraTask, objects: int, frames: int) -> list[DetectionEvent]:
    label = sorted(task.watched)[0]
    out = []
    for i in range(frames):
        at = 1_700_000_000_000 + i * STEP_MS
        frame = FrameEvent(frame_id=FrameEvent.make_id("bench", at, i), task_id="bench", camera_id="bench",
                           task_type=task.task_type, seq=i, captured_at=at, bucket="b",
                           object_key=f"frames/bench/20231114/{at}.jpg", width=768, height=576)
        out.append(DetectionEvent(frame=frame, service_id="s", inference_ms=1, detections=scene(objects, i, label)))
    return out


def one_round(tasks: list[CameraTask], frames: list[DetectionEvent]) -> tuple[float, float]:
    """(µs per frame for the whole step, µs per frame for decoding and encoding the states): each frame through
    each of `tasks` (the live rule, and its candidate when there is one), each with its own state."""
    raws: list[bytes | None] = [None] * len(tasks)
    codec_s = 0.0
    started = time.perf_counter()
    for event in frames:
        for i, task in enumerate(tasks):
            t0 = time.perf_counter()
            state = RuleState.from_bytes(raws[i])
            t1 = time.perf_counter()
            evaluate(task, state, event, "alerts")
            t2 = time.perf_counter()
            raws[i] = state.to_bytes()
            codec_s += (t1 - t0) + (time.perf_counter() - t2)
    total_s = time.perf_counter() - started
    return total_s / len(frames) * 1e6, codec_s / len(frames) * 1e6


def median_round(tasks: list[CameraTask], frames: list[DetectionEvent]) -> tuple[float, float]:
    rounds = [one_round(tasks, frames) for _ in range(3)]
    return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for task_type in TaskType:
        task = CameraTask.model_validate({"id": "bench", "task_type": task_type, "rtsp_url": "x",
                                          **SETTINGS.get(task_type, {})})
        candidate = changed(task, {"cooldown_sec": 30})
        figures[task_type.value] = {}
        for objects in OBJECTS:
            frames = events(task, objects, args.frames)
            alone, codec = median_round([task], frames)
            both, _ = median_round([task, candidate], frames)
            figures[task_type.value][str(objects)] = {
                "us_per_frame": round(alone, 1), "state_codec_us": round(codec, 1),
                "with_candidate_us": round(both, 1), "candidate_ratio": round(both / alone, 2)}
    print(f"\nµs per frame (state decode + evaluate + encode; in brackets the decode + encode), {args.frames} frames")
    table(figures, lambda v: f"{v['us_per_frame']:>8.0f} ({v['state_codec_us']:>5.0f})")
    print("\nµs per frame with a candidate beside the live rule (in brackets: times the live rule alone)")
    table(figures, lambda v: f"{v['with_candidate_us']:>8.0f} ({v['candidate_ratio']:>4.2f}x)")
    print_figures({"frames": args.frames, "us_per_frame": figures}, args.json)
    return 0


def table(figures: dict[str, dict[str, dict[str, float]]], cell: Callable[[dict[str, float]], str]) -> None:
    print(f"{'task type':>16} " + " ".join(f"{f'{n} objects':>18}" for n in OBJECTS))
    for name, by_objects in figures.items():
        print(f"{name:>16} " + " ".join(f"{cell(v):>18}" for v in by_objects.values()))


if __name__ == "__main__":
    sys.exit(main())
