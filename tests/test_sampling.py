"""The camera edge without a network: sampling cadence, key-frame-only decoding, the change gate, the hand-off,
the pressure throttle, and sources that are not what they claim to be."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from framewatch.ops.camera import h264_clip
from framewatch.ops.tasks import parse_setting
from framewatch.schemas.config import ConfigError
from framewatch.schemas.events import InferencePressure
from framewatch.schemas.tasks import DecodeMode
from framewatch.streams.gate import ChangeGate
from framewatch.streams.handoff import Handoff
from framewatch.streams.pressure import Throttle
from framewatch.streams.source import Cadence, KeyframeSpacing, Source, SourceError, SourceSettings
from tests.conftest import VTEST, Clips


def test_cadence_takes_every_fifth_frame_of_a_25_fps_stream_at_200_ms() -> None:
    cadence = Cadence()
    taken = [t for t in range(0, 4000, 40) if cadence.due(t, 200, 40)]
    assert taken == list(range(0, 4000, 200))


def test_cadence_keeps_its_rate_when_key_frames_drift_from_the_interval() -> None:
    cadence = Cadence()  # a GOP of 1920 ms sampled every 2000 ms: each key frame is due, not every other one
    assert [t for t in range(0, 20000, 1920) if cadence.due(t, 2000, 1920)] == list(range(0, 20000, 1920))


def test_cadence_starts_anew_after_a_gap() -> None:
    cadence = Cadence()
    assert cadence.due(0, 200, 40) and cadence.due(200, 200, 40)
    assert cadence.due(5000, 200, 40) and not cadence.due(5040, 200, 40) and cadence.due(5200, 200, 40)


def read(clip: Path, interval_ms: int, decode: DecodeMode = DecodeMode.AUTO) -> tuple[list[int], Source]:
    source = Source(SourceSettings(str(clip), decode=decode, realtime=False), lambda: interval_ms, threading.Event())
    return [due.stream_ms for due in source.frames()], source


def test_intervals_of_a_gop_or_more_decode_key_frames_only(clips: Clips) -> None:
    every, full = read(clips.moving, 1000, DecodeMode.ALL)
    keys, keyframes_only = read(clips.moving, 1000)
    assert keys == every  # the same frames sampled, at 0, 1000, 2000 ... ms
    assert every[:4] == [0, 1000, 2000, 3000] and len(every) == 32
    assert keyframes_only.keyframes_only and not full.keyframes_only
    # 795 frames; until three GOPs are measured every frame is decoded, then one frame in 25
    assert full.decoded == 795 and keyframes_only.decoded < 4 * 25 + 32


def pictures(clip: Path, interval_ms: int, decode: DecodeMode = DecodeMode.AUTO) -> tuple[dict[int, str], Source]:
    """Each sampled frame's YUV pixels, hashed, by its place on the stream's clock."""
    source = Source(SourceSettings(str(clip), decode=decode, realtime=False), lambda: interval_ms, threading.Event())
    return {due.stream_ms: hashlib.sha1(due.frame.to_ndarray().tobytes()).hexdigest()
            for due in source.frames()}, source


def test_intervals_under_a_gop_skip_each_gops_rest_after_its_last_due_frame(clips: Clips) -> None:
    every, full = pictures(clips.moving, 200, DecodeMode.ALL)
    taken, source = pictures(clips.moving, 200)
    assert taken == every and len(taken) == 159  # the same frames, pixel for pixel
    assert full.decoded == 795 and full.skipped == 0 and not source.keyframes_only
    # 32 GOPs of 25 frames (the last one 20): once the GOP is known (four key frames), frames 21-24 of each are
    # not needed, since the frame at 1000 ms is the next key frame
    assert source.skipped == 4 * (31 - 3) and source.decoded + source.skipped == 795


def test_a_stream_with_b_frames_decodes_its_gops_whole(clips: Clips, tmp_path: Path) -> None:
    clip = h264_clip(VTEST, tmp_path / "b-frames.mp4", seconds=8, b_frames=2)
    taken, source = pictures(clip, 200)
    assert source.skipped == 0 and source.decoded == 200 and len(taken) == 40


def test_a_clip_is_written_into_a_folder_that_does_not_exist_yet(clips: Clips, tmp_path: Path) -> None:
    """What `make bench` meets in a fresh stack home: no cache/clips/ until a clip is made."""
    clip = h264_clip(clips.moving, tmp_path / "cache" / "clips" / "one-second.mp4", seconds=1)
    taken, _ = pictures(clip, 200)
    assert len(taken) == 5


def test_the_next_key_frame_is_foreseen_only_on_a_regular_gop() -> None:
    spacing = KeyframeSpacing()
    for at in (0, 1000, 2000, 3000):
        spacing.observe(at)
    assert spacing.next_key_ms(40) == 4000
    spacing.observe(3500)  # an extra key frame (a scene cut): gaps 1000, 1000, 500
    assert spacing.next_key_ms(40) is None


def test_a_text_file_is_not_a_video(tmp_path: Path) -> None:
    text = tmp_path / "camera.mp4"
    text.write_text("this is not a video\n")
    with pytest.raises(SourceError, match="not a playable video") as raised:
        read(text, 200)
    assert raised.value.permanent


def test_a_truncated_video_file_is_refused_with_its_reason(clips: Clips, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clips.moving.read_bytes()[: clips.moving.stat().st_size // 2])  # its index is at the end
    with pytest.raises(SourceError, match="not a playable video") as raised:
        read(truncated, 200)
    assert raised.value.permanent


def test_garbage_in_the_middle_of_a_stream_loses_those_frames_only(clips: Clips, tmp_path: Path) -> None:
    """200 kB overwritten in an MPEG-TS copy: the demuxer resyncs, the decoder conceals, reading goes on."""
    ts = tmp_path / "clip.ts"
    with av.open(str(clips.moving)) as inp, av.open(str(ts), "w", format="mpegts") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = bytearray(ts.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 200_000] = np.random.default_rng(1).integers(0, 256, 200_000, np.uint8).tobytes()
    ts.write_bytes(bytes(data))
    taken, source = read(ts, 200)
    assert 120 <= len(taken) < 159 and taken[-1] >= 31000


def frame_of(image: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(image, format="bgr24")


def test_change_gate_holds_back_a_static_scene_and_sends_a_heartbeat() -> None:
    rng = np.random.default_rng(7)
    scene = rng.integers(60, 200, (576, 768, 3), np.uint8)
    noisy = lambda: np.clip(scene.astype(int) + rng.integers(-6, 7, scene.shape), 0, 255).astype(np.uint8)  # noqa: E731
    gate = ChangeGate(min_area=0.005, heartbeat_ms=10_000)
    sent = [t for t in range(0, 30_000, 200) if gate.admits(frame_of(noisy()), t)]
    assert sent == [0, 10_000, 20_000]  # sensor noise is not change; the heartbeat is
    walker = noisy()
    walker[300:420, 100:150] = 20  # a person-sized dark shape, 1.4 % of the picture
    assert gate.admits(frame_of(walker), 30_200)
    assert not gate.admits(frame_of(walker), 30_400)  # compared with the last frame sent: nothing moved since


async def test_handoff_drops_the_oldest_when_full() -> None:
    handoff: Handoff[int] = Handoff(asyncio.get_running_loop(), size=2)
    assert handoff.put(1) is None and handoff.put(2) is None
    assert handoff.put(3) == 1
    handoff.close()
    assert [await handoff.get(), await handoff.get(), await handoff.get()] == [2, 3, None]


async def test_handoff_for_a_file_read_fast_waits_for_room() -> None:
    stop = threading.Event()
    handoff: Handoff[int] = Handoff(asyncio.get_running_loop(), size=1, wait_for_room=stop)

    def produce() -> None:
        for i in range(5):
            assert handoff.put(i) is None
        handoff.close()

    thread = threading.Thread(target=produce)
    thread.start()
    taken = []
    while (item := await handoff.get()) is not None:
        taken.append(item)
    thread.join()
    assert taken == [0, 1, 2, 3, 4]


def report(received: int, dropped: int) -> InferencePressure:
    return InferencePressure(task_id="cam", period_ms=2000, received=received, dropped=dropped)


def test_throttle_slows_a_camera_to_what_inference_keeps_up_with_and_recovers() -> None:
    throttle = Throttle(max_factor=10)
    throttle.observe(report(20, 12))  # 8 of 20 kept up with
    assert throttle.factor("cam") == pytest.approx(2.5)
    throttle.observe(report(8, 0))
    assert throttle.factor("cam") == pytest.approx(2.5 * 0.85)
    for _ in range(20):
        throttle.observe(report(8, 0))
    assert throttle.factor("cam") == 1.0
    throttle.observe(report(100, 100))
    assert throttle.factor("cam") == 10  # capped
    assert throttle.factor("other") == 1.0


def test_task_settings_from_the_command_line() -> None:
    assert parse_setting("interval_ms=250") == ("interval_ms", 250)
    assert parse_setting("region=[[0,0],[1,0],[1,1]]") == ("region", [[0, 0], [1, 0], [1, 1]])
    assert parse_setting("change_gate=true") == ("change_gate", True)
    assert parse_setting("rtsp_url=rtsp://cam/1") == ("rtsp_url", "rtsp://cam/1")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_setting("interval_ms")
