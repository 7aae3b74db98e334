"""An alert's clip as /api/alerts shows it, computed from its row and its task's settings at read time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from framewatch.schemas.queries import (
    CLIPS_OFF,
    NO_EXTRACTOR_ANSWERED,
    ClipStatus,
    alert_json,
    clip_answer,
    clip_status,
)
from framewatch.schemas.tasks import CameraTask, TaskType

CAPTURED = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
ALERT_ID = uuid.UUID("00000000-0000-0000-0000-00000000c11f")


def row(answered: bool = False, clip_key: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """An alert row joined with its clip's columns, as `AlertStore.query` returns it."""
    made = clip_key is not None
    return {"alert_id": ALERT_ID, "frame_id": uuid.uuid4(), "camera_id": "cam", "task_id": "cam",
            "task_type": "area_intrusion", "rule": "area_intrusion", "captured_at": CAPTURED,
            "stored_at": CAPTURED, "evidence": "{}", "image_key": "alerts/cam/a.jpg", "clip_answered": answered,
            "clip_key": clip_key, "clip_reason": reason, "clip_bytes": 1234 if made else None,
            "clip_start_at": CAPTURED - timedelta(seconds=5) if made else None,
            "clip_end_at": CAPTURED + timedelta(seconds=5) if made else None,
            "rule_version": "0123456789ab", "detector": "hog-1", "model": None}


def task(**settings: Any) -> CameraTask:
    return CameraTask(id="cam", task_type=TaskType.AREA_INTRUSION, rtsp_url="rtsp://camera/1", **settings)


def after(seconds: float) -> datetime:
    return CAPTURED + timedelta(seconds=seconds)


@pytest.mark.parametrize("clip_key,reason,expected", [
    ("clips/cam/d/a.mp4", None, (ClipStatus.READY, None)),
    ("clips/cam/d/a.mp4", "pre-roll short: held from 0.0 s", (ClipStatus.SHORT, "pre-roll short: held from 0.0 s")),
    (None, "the extractor stopped before the post-roll", (ClipStatus.NONE,
                                                          "the extractor stopped before the post-roll")),
    (None, None, (ClipStatus.NONE, "the extractor gave no reason")),
])
def test_an_extractors_answer_is_the_status_whenever_it_is_read(clip_key: str | None, reason: str | None,
                                                                expected: tuple[ClipStatus, str | None]) -> None:
    for now in (after(1), after(3600)):
        assert clip_status(row(True, clip_key, reason), task(), now) == expected


def test_without_an_answer_it_is_pending_until_the_post_roll_and_a_minute_have_passed() -> None:
    settings = task(clip_post_sec=5)
    assert clip_status(row(), settings, after(65)) == (ClipStatus.PENDING, None)
    assert clip_status(row(), settings, after(65.001)) == (ClipStatus.NONE, NO_EXTRACTOR_ANSWERED)


def test_the_tasks_own_post_roll_counts_and_an_unknown_task_gets_five_seconds() -> None:
    assert clip_status(row(), task(clip_post_sec=30), after(80))[0] is ClipStatus.PENDING
    assert clip_status(row(), None, after(64))[0] is ClipStatus.PENDING
    assert clip_status(row(), None, after(66)) == (ClipStatus.NONE, NO_EXTRACTOR_ANSWERED)


def test_a_task_with_clips_off_has_none_and_says_so_at_once() -> None:
    assert clip_status(row(), task(clips=False), after(0)) == (ClipStatus.NONE, CLIPS_OFF)


def test_a_made_clip_has_its_stable_address_and_a_presigned_url() -> None:
    presigned: list[str] = []

    def presign(key: str) -> str:
        presigned.append(key)
        return f"http://store/{key}?X-Amz-Signature=s"

    short = row(True, "clips/cam/d/a.mp4", "post-roll short")
    clip = clip_answer(short, task(), after(10), presign)
    assert clip.status is ClipStatus.SHORT and clip.reason == "post-roll short"
    assert clip.clip_url == f"/api/alerts/{ALERT_ID}/clip" and presigned == ["clips/cam/d/a.mp4"]
    assert (clip.start_at, clip.end_at, clip.clip_bytes) == ("2026-05-01T11:59:55+00:00", "2026-05-01T12:00:05+00:00",
                                                             1234)
    shown = alert_json(short, "http://store/alerts/cam/a.jpg", clip)["clip"]
    assert shown == {"status": "short", "reason": "post-roll short", "start_at": "2026-05-01T11:59:55+00:00",
                     "end_at": "2026-05-01T12:00:05+00:00", "clip_bytes": 1234,
                     "clip_url": f"/api/alerts/{ALERT_ID}/clip",
                     "presigned_url": "http://store/clips/cam/d/a.mp4?X-Amz-Signature=s"}


@pytest.mark.parametrize("answered", [False, True])
def test_without_a_clip_there_is_no_address_and_nothing_is_presigned(answered: bool) -> None:
    def presign(key: str) -> str:
        raise AssertionError(f"presigned {key}")

    clip = clip_answer(row(answered, None, "no pre-roll" if answered else None), task(), after(1), presign)
    assert clip.status is (ClipStatus.NONE if answered else ClipStatus.PENDING)
    assert (clip.clip_url, clip.presigned_url, clip.start_at, clip.end_at, clip.clip_bytes) == (None,) * 5
