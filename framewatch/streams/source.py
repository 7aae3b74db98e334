"""Camera sources read with PyAV: opened with timeouts, their errors sorted into those worth retrying and those
not, and decoded only as far as sampling needs.

A source is read in a thread of its own (`Source.frames` blocks); what it yields is a decoded frame that is due,
every `interval_ms` of the stream's own clock. A packet no due frame needs is demuxed and dropped undecoded:
- when the interval is at least one GOP, every packet but the key frames' (most of the cost of a camera sampled
  every few seconds);
- when it is shorter, the rest of a GOP after its last due frame, on a stream with a regular GOP and no B-frames
  (at 5 fps from a 25 fps stream with a key frame a second: 4 frames in 25). The frames sampled are the same, pixel
  for pixel, as when every frame is decoded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.container
import av.error

from framewatch.errors import FramewatchError
from framewatch.schemas.config import mask_url
from framewatch.schemas.events import now_ms
from framewatch.schemas.tasks import DecodeMode, RtspTransport, is_file_source
from framewatch.streams.clips import ClipRecorder

# errors that retrying cannot fix: the camera refuses us, or what answers is not a video
PERMANENT_ERRORS = (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError, av.error.InvalidDataError,
                    av.error.ProtocolNotFoundError, av.error.PermissionError)
# the stream's description says what it holds: probing a live stream for FFmpeg's default (about a second of
# packets) delays the open and then delivers those frames in one burst, with capture times squeezed together
LIVE_PROBE = {"analyzeduration": "100000", "probesize": "32768"}
CORRUPT_PACKETS_IN_A_ROW = 25  # more than this many undecodable packets in a row: reconnect


class SourceError(FramewatchError, RuntimeError):
    """A source could not be opened or read; the message names the (masked) URL and the cause. `permanent` when
    retrying cannot help (wrong credentials, not a video): the camera waits for its task to change."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class SourceSettings:
    url: str
    transport: RtspTransport = RtspTransport.TCP
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    decode: DecodeMode = DecodeMode.AUTO
    realtime: bool = True  # pace a file at its own frame rate, like a camera
    loop: bool = False  # a file starts again at its end

    @property
    def is_file(self) -> bool:
        return is_file_source(self.url)

    @property
    def path(self) -> str:
        return self.url.removeprefix("file://")


@dataclass(frozen=True)
class DueFrame:
    frame: av.VideoFrame
    stream_ms: int  # position on the stream's own clock (continued across a file's loops)
    captured_at: int  # the stream's clock anchored to wall-clock time, ms since the epoch


def describe(error: av.FFmpegError, settings: SourceSettings) -> SourceError:
    """A PyAV error as a SourceError whose message names the masked URL (PyAV's own message holds the raw one)."""
    where = mask_url(settings.url)
    reason = error.strerror or type(error).__name__
    if isinstance(error, av.error.HTTPUnauthorizedError):
        return SourceError(f"{where}: {reason}: check the user and password in the camera URL", permanent=True)
    if isinstance(error, av.error.InvalidDataError):
        return SourceError(f"{where}: not a playable video ({reason})", permanent=True)
    if isinstance(error, av.error.ExitError):
        return SourceError(f"{where}: no answer within the timeout")
    return SourceError(f"{where}: {reason}", permanent=isinstance(error, PERMANENT_ERRORS))


def open_container(settings: SourceSettings) -> av.container.InputContainer:
    if settings.is_file and not Path(settings.path).is_file():
        raise SourceError(f"{settings.path}: no such video file", permanent=True)
    options = dict(LIVE_PROBE) if settings.url.startswith(("rtsp://", "rtmp://")) else {}
    if settings.url.startswith("rtsp://"):
        options["rtsp_transport"] = settings.transport.value
    try:
        container = av.open(settings.path if settings.is_file else settings.url, options=options,
                            timeout=(settings.open_timeout_s, settings.read_timeout_s))
    except av.FFmpegError as error:
        raise describe(error, settings) from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"{mask_url(settings.url)}: has no video stream", permanent=True)
    return container


class Cadence:
    """When a frame is due: every interval on the stream's clock, give or take half a grain (a frame, or a GOP
    when only key frames are decoded), so a 200 ms interval on a 25 fps stream takes every fifth frame exactly."""

    def __init__(self) -> None:
        self.next_due: float | None = None

    def due(self, stream_ms: float, interval_ms: float, grain_ms: float) -> bool:
        if self.next_due is None:
            self.next_due = stream_ms
        if stream_ms + grain_ms / 2 < self.next_due:
            return False
        following = self.next_due + interval_ms
        self.next_due = following if following > stream_ms else stream_ms + interval_ms  # after a gap: anew
        return True


class KeyframeSpacing:
    """The GOP, measured as the longest of the last three gaps between key frames."""

    def __init__(self) -> None:
        self.last_ms: float | None = None
        self.gaps: deque[float] = deque(maxlen=3)

    def observe(self, stream_ms: float) -> None:
        if self.last_ms is not None and stream_ms > self.last_ms:
            self.gaps.append(stream_ms - self.last_ms)
        self.last_ms = stream_ms

    @property
    def gop_ms(self) -> float | None:
        return max(self.gaps) if len(self.gaps) == self.gaps.maxlen else None

    def next_key_ms(self, frame_ms: float) -> float | None:
        """When the next key frame comes, if the last three gaps agree within half a frame (a camera's fixed GOP);
        None while that is not known."""
        if self.gop_ms is None or self.last_ms is None or self.gop_ms - min(self.gaps) > frame_ms / 2:
            return None
        return self.last_ms + self.gop_ms


class Source:
    """One camera session: open, then decode what is due until the stream ends, fails, or `stop` is set.

    `decoded` and `keyframes_only` are read by the event loop for metrics; only this thread writes them."""

    def __init__(self, settings: SourceSettings, interval_ms: Callable[[], float], stop: threading.Event,
                 recorder: ClipRecorder | None = None) -> None:
        self.settings = settings
        self.interval_ms = interval_ms
        self.stop = stop
        self.recorder = recorder  # every packet demuxed is held for event clips, decoded or not
        self.decoded = 0
        self.skipped = 0  # packets no due frame needed, dropped undecoded
        self.corrupt = 0
        self.keyframes_only = False
        self._offset_ms = 0.0  # a looping file's clock goes on from where its last pass ended
        self._anchor_ms: float | None = None

    def frames(self, on_open: Callable[[], object] = lambda: None) -> Generator[DueFrame, None, None]:
        cadence = Cadence()
        while not self.stop.is_set():
            container = open_container(self.settings)
            ended = "the source ended before the post-roll"
            try:
                on_open()
                if self.recorder is not None:
                    self.recorder.open(container.streams.video[0])
                end_ms = yield from self._read(container, cadence)
            except SourceError as error:
                ended = f"the source failed before the post-roll: {error}"
                raise
            finally:
                try:
                    if self.recorder is not None:  # before the container closes: clips are cut with its stream
                        self.recorder.close("the camera stopped before the post-roll" if self.stop.is_set() else ended)
                finally:
                    container.close()
            if not self.settings.is_file:
                raise SourceError(f"{mask_url(self.settings.url)}: the stream ended")
            if not self.settings.loop:
                return
            self._offset_ms = end_ms

    def _read(self, container: av.container.InputContainer, cadence: Cadence) -> Generator[DueFrame, None, float]:
        """Decodes one pass of the container; returns the stream position its last frame ended at."""
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 90000)
        stream.thread_type = "SLICE"  # frame threading would hold frames back: a key frame would come out late
        frame_ms = float(1000 / stream.average_rate) if stream.average_rate else 40.0
        spacing = KeyframeSpacing()
        started = time.monotonic()
        first_ms: float | None = None
        end_ms = self._offset_ms
        corrupt_in_a_row = 0
        try:
            for packet in container.demux(stream):
                if self.stop.is_set():
                    break
                at = packet.pts if packet.pts is not None else packet.dts
                at_ms = None if at is None else self._offset_ms + float(at * time_base) * 1000
                if self.recorder is not None and at_ms is not None and packet.size:
                    self.recorder.add(packet, self._captured_at(at_ms))
                if packet.is_keyframe and at_ms is not None:
                    spacing.observe(at_ms)
                    self.keyframes_only = self._keyframes_suffice(spacing.gop_ms)
                if not packet.is_keyframe and packet.size and not self._needed(stream, spacing, cadence, frame_ms):
                    self.skipped += 1
                    end_ms = end_ms if at_ms is None else max(end_ms, at_ms + frame_ms)
                    continue
                try:
                    frames = self._decode(stream, packet)
                except (av.error.InvalidDataError, av.error.UndefinedError, ValueError):
                    self.corrupt += 1
                    corrupt_in_a_row += 1
                    if corrupt_in_a_row > CORRUPT_PACKETS_IN_A_ROW:
                        raise SourceError(f"{mask_url(self.settings.url)}: {corrupt_in_a_row} undecodable packets "
                                          "in a row") from None
                    continue
                corrupt_in_a_row = 0
                for frame in frames:
                    if frame.time is None:
                        continue
                    self.decoded += 1
                    stream_ms = self._offset_ms + frame.time * 1000
                    end_ms = stream_ms + frame_ms
                    first_ms = stream_ms if first_ms is None else first_ms
                    grain = spacing.gop_ms or frame_ms if self.keyframes_only else frame_ms
                    if not cadence.due(stream_ms, self.interval_ms(), grain):
                        continue
                    if self.settings.is_file and self.settings.realtime:
                        self.stop.wait(max(0.0, (stream_ms - first_ms) / 1000 - (time.monotonic() - started)))
                    yield DueFrame(frame, int(stream_ms), self._captured_at(stream_ms))
        except av.FFmpegError as error:
            raise describe(error, self.settings) from None
        return end_ms

    def _keyframes_suffice(self, gop_ms: float | None) -> bool:
        return self.settings.decode is DecodeMode.AUTO and gop_ms is not None and self.interval_ms() >= gop_ms

    def _needed(self, stream: av.video.stream.VideoStream, spacing: KeyframeSpacing, cadence: Cadence,
                frame_ms: float) -> bool:
        """Whether a frame that is not a key frame must be decoded: no when only key frames are, or when no frame
        is due before the next key frame (the decoder starts afresh there). A stream with B-frames decodes its GOPs
        whole: a frame after the key frame in decoding order may come before it in time."""
        if self.keyframes_only:
            return False
        if self.settings.decode is not DecodeMode.AUTO or cadence.next_due is None or stream.codec_context.has_b_frames:
            return True
        next_key_ms = spacing.next_key_ms(frame_ms)
        return next_key_ms is None or cadence.next_due <= next_key_ms - frame_ms / 2

    def _decode(self, stream: av.video.stream.VideoStream, packet: av.Packet) -> list[av.VideoFrame]:
        frames = stream.codec_context.decode(packet)
        if self.keyframes_only and packet.is_keyframe and not frames:
            # a decoder that reorders (B-frames) holds the key frame back until more packets come: drain it now
            frames = stream.codec_context.decode(None)
            stream.codec_context.flush_buffers()
        return frames

    def _captured_at(self, stream_ms: float) -> int:
        """A file's clock starts at its first frame; a live stream's is anchored to the wall clock by the frame that
        arrived soonest, so no capture time is in the future (the first frames of a session often come late)."""
        now = now_ms()
        if self._anchor_ms is None or (not self.settings.is_file and self._anchor_ms + stream_ms > now):
            self._anchor_ms = now - stream_ms
        return int(self._anchor_ms + stream_ms)
