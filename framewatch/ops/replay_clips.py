"""`framewatch replay VIDEO --clips DIR`: the clip of each alert a replay found, cut from the video the way an
extractor cuts them (`streams/clips.py`: from the key frame at or before `captured_at − clip_pre_sec` to
`captured_at + clip_post_sec`, by stream copy; overlapping alerts share one clip), written as `DIR/<alert id>.mp4`
(the first alert of each clip)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from framewatch.schemas.events import AlertEvent
from framewatch.schemas.tasks import CameraTask
from framewatch.streams.clips import ClipCut, ClipRecorder

MAX_HELD_BYTES = 256 * 1024 * 1024


def write_clips(video: Path, task: CameraTask, alerts: list[AlertEvent], folder: Path) -> list[ClipCut]:
    """Each clip cut for the alerts (their `captured_at` on the video's clock, as a replay of a video has them),
    those with data written to `folder`; clips without data say why in their reason."""
    cuts: list[ClipCut] = []
    recorder = ClipRecorder(int(task.clip_pre_sec * 1000), int(task.clip_post_sec * 1000), lambda: MAX_HELD_BYTES,
                            cuts.append)
    for alert in alerts:
        recorder.request(alert.alert_id, alert.frame.captured_at)
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 90000)
        recorder.open(stream)
        for packet in container.demux(stream):
            at = packet.pts if packet.pts is not None else packet.dts
            if packet.size and at is not None:
                recorder.add(packet, int(at * time_base * 1000))
        recorder.close("the video ended before the post-roll")  # before the container closes: its stream is needed
    folder.mkdir(parents=True, exist_ok=True)
    for cut in cuts:
        if cut.data is not None:
            (folder / f"{cut.clip_id}.mp4").write_bytes(cut.data)
    return cuts


def report(cuts: list[ClipCut], folder: Path) -> str:
    """A line per clip: its file and alerts, or why there is none."""
    lines = [f"{len([c for c in cuts if c.data is not None])} clips written to {folder}"]
    for cut in cuts:
        what = f"{cut.clip_id}.mp4 ({(cut.end_ms - cut.start_ms) / 1000:.1f} s)" if cut.data is not None else "no clip"
        lines.append(f"  {what}: alerts {', '.join(cut.alert_ids)}" + (f"; {cut.reason}" if cut.reason else ""))
    return "\n".join(lines)
