"""Event clips cut in the extractor (streams/clips.py), on the bundled H.264 sample and the MS-MPEG4 test video: the
packets held from a key frame on and bounded, clips written by stream copy that cover the seconds asked for, one
clip for overlapping alerts, and a clear reason where there is no clip."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Generator
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import av
import pytest

from framewatch.schemas.tasks import CameraTask, TaskType
from framewatch.streams.camera import Camera, Uplink
from framewatch.streams.clip_uploads import CUTS_PENDING_MAX, CameraClips
from framewatch.streams.clips import ClipCut, ClipRecorder, HeldPacket, PacketRing
from framewatch.streams.extractor import run_with_clips
from tests.conftest import SAMPLE_CLIP, VTEST

EPOCH_MS = 1_700_000_000_000  # where the sample's clock is anchored


def packets(path: Path) -> Generator[tuple[av.Packet, int, av.stream.Stream], None, None]:
    """Each packet of the file's video with its capture time (its pts on the anchored clock)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 90000)
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                yield packet, EPOCH_MS + int(packet.pts * time_base * 1000), stream


def record(path: Path, requests: dict[int, list[tuple[str, int]]], pre_ms: int = 3000, post_ms: int = 3000,
           max_bytes: int = 50_000_000, close_at_ms: int | None = None) -> list[ClipCut]:
    """Feeds the file to a recorder; `requests` maps a packet's time to the alerts requested when it comes."""
    cuts: list[ClipCut] = []
    recorder = ClipRecorder(pre_ms, post_ms, lambda: max_bytes, cuts.append)
    opened = False
    feed = packets(path)  # its container open until the recorder has closed: clips are cut from its stream
    for packet, at_ms, stream in feed:
        if not opened:
            recorder.open(stream)
            opened = True
        for alert_id, captured_at in requests.pop(at_ms - EPOCH_MS, []):
            recorder.request(alert_id, EPOCH_MS + captured_at)
        recorder.add(packet, at_ms)
        if close_at_ms is not None and at_ms - EPOCH_MS >= close_at_ms:
            break
    recorder.close("the source ended before the post-roll")
    feed.close()
    return cuts


def probe(data: bytes) -> tuple[str, float, bool]:
    """The clip's codec, its duration in seconds and whether its first frame is a key frame."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        first = next(container.demux(stream))
        duration = float(container.duration or 0) / av.time_base
        return stream.codec_context.name, duration, first.is_keyframe


def gop_ms(path: Path) -> int:
    keys = [at_ms for packet, at_ms, _ in packets(path) if packet.is_keyframe]
    return max(b - a for a, b in zip(keys, keys[1:]))


def test_a_clip_covers_pre_and_post_from_a_key_frame_by_stream_copy() -> None:
    cuts = record(SAMPLE_CLIP, {9000: [("a1", 8000)]})
    [cut] = cuts
    assert cut.reason is None and cut.data is not None and cut.alert_ids == ("a1",)
    assert cut.start_ms <= EPOCH_MS + 8000 - 3000 < cut.start_ms + gop_ms(SAMPLE_CLIP)
    assert cut.end_ms >= EPOCH_MS + 8000 + 3000 - 100  # the last frame at or before the end: one frame at 10 fps
    codec, duration, key_first = probe(cut.data)
    assert codec == "h264" and key_first
    assert 6.0 - 0.2 <= duration <= 6.0 + gop_ms(SAMPLE_CLIP) / 1000 + 0.2


def test_overlapping_alerts_share_one_clip_and_a_late_covered_one_reuses_it() -> None:
    cuts = record(SAMPLE_CLIP, {6000: [("a1", 6000)], 7000: [("a2", 7000)], 8000: [("a3", 7500)],
                                12000: [("a4", 7200)]}, pre_ms=2000, post_ms=2000)
    made = [c for c in cuts if c.data is not None]
    assert len(made) == 1 and made[0].alert_ids == ("a1", "a2", "a3")
    assert made[0].end_ms >= EPOCH_MS + 9500 - 100  # extended to the latest alert's post-roll
    [shared] = [c for c in cuts if c.shared]
    assert shared.alert_ids == ("a4",) and shared.clip_id == "a1"


def test_a_clip_joined_by_later_alerts_keeps_the_first_ones_pre_roll() -> None:
    """Held for pre + post back from the newest packet only, the first alert's seconds would be gone by the time
    a clip its followers extended is cut."""
    chain = {at: [(f"a{at}", at)] for at in (5000, 5800, 6600, 7400)}  # each comes while the one before waits
    [cut] = record(SAMPLE_CLIP, chain, pre_ms=1000, post_ms=1000)
    assert cut.alert_ids == ("a5000", "a5800", "a6600", "a7400") and cut.reason is None
    assert cut.start_ms <= EPOCH_MS + 4000 and cut.end_ms >= EPOCH_MS + 8400 - 100


def test_a_source_that_ends_before_the_post_roll_gives_a_shorter_clip_marked_so() -> None:
    [cut] = record(SAMPLE_CLIP, {9000: [("a1", 9000)]}, close_at_ms=10000)
    assert cut.data is not None and cut.reason == "the source ended before the post-roll"
    assert cut.end_ms < EPOCH_MS + 12000


def test_a_pre_roll_not_held_gives_a_clip_from_the_first_key_frame_marked_short() -> None:
    [cut] = record(SAMPLE_CLIP, {1000: [("a1", 1000)]}, pre_ms=5000, post_ms=2000)
    assert cut.data is not None and cut.reason is not None and cut.reason.startswith("pre-roll short")
    assert cut.start_ms == EPOCH_MS


def test_a_codec_mp4_cannot_hold_is_named_and_no_clip_is_cut() -> None:
    [cut] = record(VTEST, {9000: [("a1", 8000)]}, close_at_ms=12000)
    assert cut.data is None and cut.reason == "codec msmpeg4: MP4 cannot hold it without re-encoding"


@pytest.mark.parametrize("max_bytes", [40_000, 2_000_000])
def test_the_ring_holds_whole_gops_within_its_time_and_bytes(max_bytes: int) -> None:
    ring = PacketRing(hold_ms=5000, max_bytes=max_bytes)
    for packet, at_ms, _ in packets(SAMPLE_CLIP):
        ring.add(HeldPacket(packet, packet.size, packet.pts, packet.dts, packet.duration or 0, packet.is_keyframe,
                            at_ms))
        assert ring.bytes <= max_bytes
        assert not ring.packets or ring.packets[0].keyframe
        assert ring.bytes == sum(p.size for p in ring.packets)
        assert list(ring.keys) == [p.at_ms for p in ring.packets if p.keyframe]
        if ring.newest_ms is not None and ring.oldest_ms is not None:
            assert ring.newest_ms - ring.oldest_ms <= 5000 + gop_ms(SAMPLE_CLIP)
    assert (ring.evicted > 0) == (max_bytes == 40_000)


async def test_clips_waiting_for_their_upload_are_bounded_and_their_alerts_told_why() -> None:
    """A store far behind (or down): the clips cut meanwhile would pile up in the extractor's memory."""
    task = CameraTask(id="cam", task_type=TaskType.AREA_INTRUSION, rtsp_url="unused")
    clips = CameraClips(task, cast(Uplink, None), lambda: 1_000_000)
    cuts = CUTS_PENDING_MAX + 2
    for n in range(cuts):
        clips._queue(ClipCut(f"a{n}", (f"a{n}",), b"mp4", EPOCH_MS, EPOCH_MS + 1000))
    queued = [cut for _ in range(cuts) if (cut := clips._cuts.get_nowait()) is not None]
    assert [cut.data for cut in queued[:CUTS_PENDING_MAX]] == [b"mp4"] * CUTS_PENDING_MAX
    assert [(cut.alert_ids, cut.data) for cut in queued[CUTS_PENDING_MAX:]] == [(("a8",), None), (("a9",), None)]
    assert all("waiting for their upload" in (cut.reason or "") for cut in queued[CUTS_PENDING_MAX:])


async def test_a_camera_stopped_past_its_grace_leaves_its_clips_unannounced_at_once() -> None:
    """The extractor waits a camera's grace, then cancels it: a clip announcement waiting on a broker that is away
    (each send waits up to 15 s, and used to be retried) must not hold the stop past SIGTERM's deadline."""
    never = asyncio.Event()

    async def waits_for_ever(*_: object) -> None:
        await never.wait()

    task = CameraTask(id="cam", task_type=TaskType.AREA_INTRUSION, rtsp_url="unused")
    uplink = SimpleNamespace(store=SimpleNamespace(bucket="b", key=lambda *parts: "/".join(parts), put=waits_for_ever),
                             producer=SimpleNamespace(send=waits_for_ever))
    camera = SimpleNamespace(task=task, run=waits_for_ever)
    clips = CameraClips(task, cast(Uplink, uplink), lambda: 1_000_000)
    clips._queue(ClipCut("a1", ("a1",), b"mp4", EPOCH_MS, EPOCH_MS + 1000))
    runner = asyncio.create_task(run_with_clips(cast(Camera, camera), clips))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(runner, 0.2)
    assert time.monotonic() - started < 2.0
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "clips-cam" and not t.done()]
