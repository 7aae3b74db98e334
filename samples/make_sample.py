"""Re-encode the first seconds of OpenCV's vtest.avi to H.264 MP4 with PyAV: the clip the demo and tests use.

    python samples/make_sample.py ../shared/data/vtest.avi samples/plaza-20s.mp4 --seconds 20
"""

from __future__ import annotations

import argparse
from fractions import Fraction

import av


def cut(source: str, target: str, seconds: float, codec: str) -> int:
    written = 0
    with av.open(source) as inp, av.open(target, "w") as out:
        video = inp.streams.video[0]
        rate = video.average_rate or Fraction(10)
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = video.codec_context.width, video.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(int(rate) * 2), "crf": "28", "preset": "slow"}
        for frame in inp.decode(video):
            if frame.time is not None and frame.time >= seconds:
                break
            frame.pts = None
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
            written += 1
        out.mux(stream.encode(None))
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--codec", default="libx264")
    args = parser.parse_args()
    print(f"wrote {cut(args.source, args.target, args.seconds, args.codec)} frames to {args.target}")
