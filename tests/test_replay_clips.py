"""`framewatch replay VIDEO --clips DIR`: each alert's clip cut from the video as an extractor cuts it, one file per
clip, and a reason for an alert whose post-roll the video does not hold."""

from __future__ import annotations

from pathlib import Path

import av

from framewatch.ops.replay_clips import report, write_clips
from framewatch.schemas.events import AlertEvent
from framewatch.schemas.tasks import CameraTask, TaskType
from tests.conftest import SAMPLE_CLIP
from tests.test_events import frame


def alert(captured_at: int) -> AlertEvent:
    seen = frame(captured_at=captured_at)
    return AlertEvent(alert_id=AlertEvent.make_id(seen.frame_id, "area_intrusion"), frame=seen, rule="area_intrusion",
                      evidence={}, image_key="alerts/a.jpg")


def test_each_alert_of_a_replayed_video_gets_its_clip(tmp_path: Path) -> None:
    task = CameraTask(id="cam", task_type=TaskType.AREA_INTRUSION, rtsp_url=str(SAMPLE_CLIP), clip_pre_sec=2,
                      clip_post_sec=2)
    early, late, at_the_end = alert(5000), alert(12000), alert(19500)  # the sample lasts 20 s
    cuts = write_clips(SAMPLE_CLIP, task, [early, late, at_the_end], tmp_path / "clips")
    by_alert = {cut.alert_ids[0]: cut for cut in cuts}
    for made in (early, late):
        cut = by_alert[made.alert_id]
        assert cut.reason is None
        with av.open(str(tmp_path / "clips" / f"{made.alert_id}.mp4")) as clip:
            seconds = float(clip.duration or 0) / av.time_base
            assert clip.streams.video[0].codec_context.name == "h264"
        assert 4.0 - 0.2 <= seconds <= 4.0 + 2.0 + 0.2  # pre + post, from the key frame before (a GOP is 2 s)
    assert "the video ended before the post-roll" in (by_alert[at_the_end.alert_id].reason or "")
    assert "3 clips written" in report(cuts, tmp_path / "clips")
