"""Cameras for tests, benchmarks and demos: a clip re-encoded like an IP camera's stream (H.264, 25 fps, a key
frame every second, no B-frames) and published to the RTSP server in a loop, in real time, by PyAV (no re-encoding
while publishing).

    python -m framewatch.ops.camera clip vtest.avi vtest-25fps.mp4
    python -m framewatch.ops.camera publish vtest-25fps.mp4 rtsp://127.0.0.1:18554/cam1 [rtsp://…/cam2 …]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import av.container

log = logging.getLogger("framewatch.camera")

RETRY_S = 1.0


def h264_clip(source: Path, target: Path, fps: int = 25, gop: int = 25, seconds: float | None = None,
              still: bool = False, b_frames: int = 0, bit_rate: int | None = None) -> Path:
    """Re-encodes `source` (kept if already there). Every source frame becomes one frame at `fps`, so a 10 fps
    clip plays 2.5 times faster; `still` repeats the first frame: a static scene. `bit_rate` (bits/s): that rate,
    else a constant quality."""
    if target.exists():
        return target
    part = target.with_suffix(".part.mp4")
    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as inp, av.open(str(part), "w") as out:
        video = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = video.codec_context.width, video.codec_context.height
        stream.pix_fmt = "yuv420p"
        rate = {"crf": "26"} if bit_rate is None else {"b": str(bit_rate), "maxrate": str(bit_rate),
                                                         "bufsize": str(bit_rate)}
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(b_frames),
                          "preset": "veryfast", **rate}
        first: av.VideoFrame | None = None
        for index, frame in enumerate(inp.decode(video)):
            if seconds is not None and index >= seconds * fps:
                break
            first = first or frame.reformat(format="yuv420p")
            picture = first if still else frame.reformat(format="yuv420p")
            picture.pts, picture.time_base = index, Fraction(1, fps)
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
    part.rename(target)
    return target


def publish(clip: Path, url: str, stop: threading.Event) -> None:
    """Publishes `clip` to `url` in a loop, paced at its own rate, until `stop`; reconnects if the server goes."""
    while not stop.is_set():
        try:
            _publish_session(clip, url, stop)
        except (av.FFmpegError, OSError) as error:
            log.warning("publishing to %s: %s; again in %.0fs", url, error, RETRY_S)
            stop.wait(RETRY_S)


def _publish_session(clip: Path, url: str, stop: threading.Event) -> None:
    with av.open(url, "w", format="rtsp", options={"rtsp_transport": "tcp"}) as out:
        started = time.monotonic()
        offset = 0.0  # seconds of the clip already published, so timestamps keep rising across loops
        while not stop.is_set():
            offset = _publish_pass(clip, out, started, offset, stop)


def _publish_pass(clip: Path, out: av.container.OutputContainer, started: float, offset: float,
                  stop: threading.Event) -> float:
    with av.open(str(clip)) as inp:
        video = inp.streams.video[0]
        time_base = video.time_base or Fraction(1, 90000)
        if not out.streams.video:
            out.add_stream_from_template(video)
        target = out.streams.video[0]
        end = offset
        for packet in inp.demux(video):
            if stop.is_set() or packet.pts is None:
                continue
            at = offset + float(packet.pts * time_base)
            stop.wait(max(0.0, at - (time.monotonic() - started)))
            shift = round(offset / time_base)
            packet.pts += shift
            packet.dts = packet.pts if packet.dts is None else packet.dts + shift
            packet.stream = target
            out.mux(packet)
            end = at + float(time_base * (packet.duration or 0))
        return end


def start_publisher(clip: Path, urls: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A process publishing `clip` to each URL (stop it with terminate())."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "framewatch.ops.camera", "publish", str(clip), *urls],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("clip")
    p.add_argument("source", type=Path)
    p.add_argument("target", type=Path)
    p.add_argument("--still", action="store_true")
    p.add_argument("--seconds", type=float)
    p = sub.add_parser("publish")
    p.add_argument("clip", type=Path)
    p.add_argument("urls", nargs="+")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "clip":
        print(h264_clip(args.source, args.target, seconds=args.seconds, still=args.still))
        return
    stop = threading.Event()
    threads = [threading.Thread(target=publish, args=(args.clip, url, stop), daemon=True) for url in args.urls]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(1)
    except KeyboardInterrupt:
        stop.set()


if __name__ == "__main__":
    main()
