"""Camera sources read with PyAV, sampled every `interval_ms` on the stream's own clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from framewatch.schemas.config import mask_url

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0


class SourceError(RuntimeError):
    """A source could not be opened or read; the message names the (masked) URL and the cause."""


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # BGR, height x width x 3
    stream_ms: int  # position on the stream's own clock
    captured_at: int  # the stream's clock anchored at the wall-clock time the source opened, ms since the epoch


def _is_file(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _open(url: str) -> av.container.InputContainer:
    if _is_file(url):
        path = url.removeprefix("file://")
        if not Path(path).is_file():
            raise SourceError(f"{path}: no such video file")
    options = {"rtsp_transport": "tcp"} if url.startswith("rtsp://") else {}
    try:
        return av.open(url.removeprefix("file://"), options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
    except (av.FFmpegError, OSError) as error:
        raise SourceError(f"{mask_url(url)}: cannot open: {error}") from None


def _sample_frames(url: str, interval_ms: int, realtime: bool) -> Generator[Sample, None, None]:
    container = _open(url)
    try:
        if not container.streams.video:
            raise SourceError(f"{mask_url(url)}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_due_ms = 0
        started = time.monotonic()
        opened_at_ms = time.time_ns() // 1_000_000
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                stream_ms = int(frame.time * 1000)
                if stream_ms < next_due_ms:
                    continue
                next_due_ms = stream_ms + interval_ms
                if realtime:
                    time.sleep(max(0.0, stream_ms / 1000 - (time.monotonic() - started)))
                yield Sample(frame.to_ndarray(format="bgr24"), stream_ms, opened_at_ms + stream_ms)
        except av.FFmpegError as error:
            raise SourceError(f"{mask_url(url)}: decoding failed: {error}") from None
    finally:
        container.close()


async def samples(url: str, interval_ms: int, realtime: bool = True) -> AsyncIterator[Sample]:
    """Decoding and pacing happen in a worker thread; the event loop only receives samples."""
    frames = _sample_frames(url, interval_ms, realtime)
    end = object()
    try:
        while (sample := await asyncio.to_thread(next, frames, end)) is not end:
            yield sample  # type: ignore[misc]
    finally:
        frames.close()
