"""Event clips, the extractor's part: each camera's last seconds of *encoded* packets, held from a key frame on, and
the clips cut from them into MP4 by stream copy (demuxed, never decoded or encoded).

A camera's reader thread hands every packet it demuxes to its `ClipRecorder` (before deciding whether to decode
it). An alert's clip request (`request`, from the event loop) waits until the packets up to `captured_at + post`
have come, then the packets from the key frame at or before `captured_at − pre` to there are written as one MP4
and handed back (`deliver`). Requests whose seconds overlap a clip still waiting join it (its end moves on, up to
`MAX_CLIP_MS`), and a request whose seconds a clip already cut covers gets that clip: a burst of alerts makes one
clip, not one each.

The packets are held for `pre + post`: a request that comes up to `post` late still finds its pre-roll. A session
of the source (an open container) has a ring of its own; when it ends, clips still waiting are cut from what there
is and marked as short.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import av
import av.container
import av.stream

log = logging.getLogger("framewatch.extractor")

MAX_CLIP_MS = 60_000  # overlapping alerts extend one clip up to this long; later ones start another
CUT_REMEMBERED = 8  # clips already cut that a later request may share
NOTHING_HELD = ("no packets of those seconds held: they came before this session of the source began, or the "
                "request came more than pre + post seconds late")


@dataclass(frozen=True, slots=True)
class HeldPacket:
    data: av.Packet | bytes  # the demuxer's own packet (held, not copied: each demuxed packet is a new buffer)
    size: int
    pts: int | None
    dts: int | None
    duration: int
    keyframe: bool
    at_ms: int  # when it was captured: the source's clock anchored to the wall clock, ms since the epoch


class PacketRing:
    """One session's packets of the last `hold_ms`, and from `keep_from_ms` on while a clip waits for them, from a
    key frame on, at most `max_bytes` (whole GOPs go first; a GOP larger than the bound on its own is not held)."""

    def __init__(self, hold_ms: int, max_bytes: int) -> None:
        self.hold_ms = hold_ms
        self.max_bytes = max_bytes
        self.keep_from_ms: int | None = None
        self.packets: deque[HeldPacket] = deque()
        self.keys: deque[int] = deque()  # the capture time of each key frame held: a GOP starts at each
        self.bytes = 0
        self.evicted = 0  # packets dropped before their time for the byte bound

    def add(self, packet: HeldPacket) -> None:
        """Runs for every packet of every camera: a few comparisons, no scan of what is held."""
        if packet.keyframe:
            self.keys.append(packet.at_ms)
        elif not self.packets:
            return  # a clip starts at a key frame: nothing before the first one is any use
        self.packets.append(packet)
        self.bytes += packet.size
        while len(self.keys) > 1 and (self._older_than_needed() or self.bytes > self.max_bytes):
            self._drop_first_gop()
        if self.bytes > self.max_bytes:
            self.evicted += len(self.packets)
            self.packets.clear()
            self.keys.clear()
            self.bytes = 0

    @property
    def oldest_ms(self) -> int | None:
        return self.packets[0].at_ms if self.packets else None

    @property
    def newest_ms(self) -> int | None:
        return self.packets[-1].at_ms if self.packets else None

    def span(self, start_ms: int, end_ms: int) -> list[HeldPacket]:
        """The packets from the last key frame at or before `start_ms` (the first held when none is) up to the first
        packet after `end_ms`, in decoding order (a frame that comes later in decoding order may reference one
        after the end: the run stops there)."""
        packets = list(self.packets)
        first = 0
        for index, packet in enumerate(packets):
            if packet.keyframe and packet.at_ms <= start_ms:
                first = index
        return list(itertools.takewhile(lambda p: p.at_ms <= end_ms, packets[first:]))

    def _older_than_needed(self) -> bool:
        """The first GOP is no longer needed: the second one starts before the oldest moment held for."""
        second = self.keys[1]
        return (second <= self.packets[-1].at_ms - self.hold_ms
                and (self.keep_from_ms is None or second <= self.keep_from_ms))

    def _drop_first_gop(self) -> None:
        dropped_for_bytes = not self._older_than_needed()
        self.keys.popleft()
        gone = [self.packets.popleft()]
        while self.packets and not self.packets[0].keyframe:
            gone.append(self.packets.popleft())
        self.bytes -= sum(p.size for p in gone)
        if dropped_for_bytes:
            self.evicted += len(gone)


@dataclass
class Wanted:
    """A clip waiting for its post-roll, for one alert or several whose seconds overlap."""
    alert_ids: list[str]
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class ClipCut:
    """A clip for `alert_ids`: `data` is the MP4, or None when the clip of `clip_id` (cut earlier, for another alert)
    serves them too, or when there is no clip at all (`reason` says why). `reason` also marks a clip shorter than
    asked for."""
    clip_id: str  # the first alert it was cut for: its object is clips/<task>/<day>/<clip_id>.mp4
    alert_ids: tuple[str, ...]
    data: bytes | None
    start_ms: int
    end_ms: int
    reason: str | None = None

    @property
    def shared(self) -> bool:
        return self.data is None and self.reason is None


@dataclass
class ClipRecorder:
    """One camera's clips. `add`, `open` and `close` run in the camera's reader thread; `request` in the event
    loop; `deliver` is called in the reader thread with each clip cut."""
    pre_ms: int
    post_ms: int
    max_bytes: Callable[[], int]
    deliver: Callable[[ClipCut], None]
    ring: PacketRing | None = None
    unsupported: str | None = None  # why this source's clips cannot be MP4 (its codec), once known
    _template: av.stream.Stream | None = None
    _requests: list[tuple[str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiting: list[Wanted] = field(default_factory=list)
    _cut: deque[tuple[str, int, int]] = field(default_factory=lambda: deque(maxlen=CUT_REMEMBERED))  # id, start, end

    def request(self, alert_id: str, captured_at: int) -> None:
        with self._lock:
            self._requests.append((alert_id, captured_at))

    def open(self, stream: av.stream.Stream) -> None:
        """A new session of the source: its packets held from now on, its codec checked against MP4 (once)."""
        self.ring = PacketRing(self.pre_ms + self.post_ms, self.max_bytes())
        self._template = stream
        if self.unsupported is None:
            self.unsupported = mp4_refusal(stream)
            if self.unsupported is not None:
                log.warning("%s: alerts of this camera come without clips", self.unsupported)

    def add(self, packet: av.Packet, at_ms: int) -> None:
        """Runs in the reader thread for every packet: cheap unless a clip is due."""
        ring = self.ring
        if ring is None:
            return
        if self._requests:  # read without the lock: a request that comes meanwhile is taken with the next packet
            self._take_requests()
        ring.max_bytes = self.max_bytes()
        ring.keep_from_ms = min(w.start_ms for w in self._waiting) if self._waiting else None  # a joined clip's start
        ring.add(HeldPacket(packet, packet.size, packet.pts, packet.dts, packet.duration or 0, packet.is_keyframe,
                            at_ms))
        if self._waiting:
            for wanted in [w for w in self._waiting if at_ms >= w.end_ms]:
                self._waiting.remove(wanted)
                self._cut_now(wanted, None)

    def close(self, reason: str) -> None:
        """The session ended: clips still waiting are cut from what is held, marked with `reason`."""
        try:
            self._take_requests()
            for wanted in self._waiting:
                self._cut_now(wanted, reason)
        finally:
            self._waiting.clear()
            self.ring = None
            self._template = None

    @property
    def held_bytes(self) -> int:
        return self.ring.bytes if self.ring is not None else 0

    def _take_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for alert_id, captured_at in requests:
            self._place(alert_id, captured_at - self.pre_ms, captured_at + self.post_ms)

    def _place(self, alert_id: str, start_ms: int, end_ms: int) -> None:
        for clip_id, cut_start_ms, cut_end_ms in self._cut:
            if cut_start_ms <= start_ms and end_ms <= cut_end_ms:
                self.deliver(ClipCut(clip_id, (alert_id,), None, cut_start_ms, cut_end_ms))
                return
        for wanted in self._waiting:
            if start_ms < wanted.end_ms and end_ms > wanted.start_ms and end_ms - wanted.start_ms <= MAX_CLIP_MS:
                wanted.alert_ids.append(alert_id)
                wanted.end_ms = max(wanted.end_ms, end_ms)
                return
        self._waiting.append(Wanted([alert_id], start_ms, end_ms))

    def _cut_now(self, wanted: Wanted, reason: str | None) -> None:
        """Cuts and delivers the clip; a clip that cannot be written (a stream whose timestamps jump back, a full
        disk) is no clip, with the reason, and never ends the camera's session."""
        try:
            cut = self._cut_clip(wanted, reason)
        except (av.FFmpegError, OSError, ValueError) as error:
            log.warning("a clip of alerts %s could not be written: %r", ", ".join(wanted.alert_ids), error)
            ids = tuple(wanted.alert_ids)
            cut = ClipCut(ids[0], ids, None, wanted.start_ms, wanted.end_ms, f"the clip could not be written: {error}")
        if cut.data is not None and cut.reason is None:
            self._cut.append((cut.clip_id, cut.start_ms, cut.end_ms))
        self.deliver(cut)

    def _cut_clip(self, wanted: Wanted, ended: str | None) -> ClipCut:
        """The clip of `wanted` from what is held; `ended` says why no more will come, when it is cut early."""
        ids = tuple(wanted.alert_ids)
        if self.unsupported is not None:
            return ClipCut(ids[0], ids, None, wanted.start_ms, wanted.end_ms, self.unsupported)
        packets = self.ring.span(wanted.start_ms, wanted.end_ms) if self.ring is not None else []
        if not packets or self._template is None:
            return ClipCut(ids[0], ids, None, wanted.start_ms, wanted.end_ms, ended or NOTHING_HELD)
        start_ms, end_ms = packets[0].at_ms, max(p.at_ms for p in packets)
        short = []
        if start_ms > wanted.start_ms:
            short.append(f"pre-roll short: packets held from {(wanted.start_ms + self.pre_ms - start_ms) / 1000:.1f} s "
                         "before the alert (the source's session began since, or the clip buffer was full)")
        if ended is not None:
            short.append(ended)
        return ClipCut(ids[0], ids, remux(packets, self._template), start_ms, end_ms, "; ".join(short) or None)


def mp4_refusal(stream: av.stream.Stream) -> str | None:
    """Why MP4 cannot hold this stream's packets as they are (its codec), or None when it can."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            with av.open(os.path.join(folder, "probe.mp4"), "w", format="mp4") as probe:
                probe.add_stream_from_template(stream)
        except (ValueError, av.FFmpegError):
            return f"codec {stream.codec_context.name}: MP4 cannot hold it without re-encoding"
    return None


def remux(packets: Iterable[HeldPacket], template: av.stream.Stream) -> bytes:
    """The packets as one MP4 (moov first, so a browser plays it before the whole file has come), by stream copy;
    its time starts at 0."""
    held = list(packets)
    base = min((p.dts if p.dts is not None else p.pts or 0) for p in held)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "clip.mp4")
        with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as output:
            stream = output.add_stream_from_template(template)
            for held_packet in held:
                packet = av.Packet(bytes(held_packet.data))  # muxing consumes a packet: the held one stays
                packet.pts = None if held_packet.pts is None else held_packet.pts - base
                packet.dts = None if held_packet.dts is None else held_packet.dts - base
                packet.duration = held_packet.duration
                if template.time_base is not None:
                    packet.time_base = template.time_base
                packet.is_keyframe = held_packet.keyframe
                packet.stream = stream
                output.mux(packet)
        with open(path, "rb") as written:
            return written.read()
