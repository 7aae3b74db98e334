"""Camera ingest benchmark: real RTSP cameras (mediamtx, fed vtest.avi as 25 fps 576p H.264 with a key frame a
second) read by one extractor process, side by side in one run.

    .venv/bin/python bench/ingest.py [--seconds 20] [--warm-up 8] [--max-cameras 80] [--json out.json]

Scenarios (each in a namespace and bucket of its own, against the local stack; figures over a window after a
warm-up, from the extractor's own metrics and its process CPU time):
  decode     16 cameras sampled every 1000 ms (one GOP): CPU seconds per sampled frame decoding every frame vs key
             frames only; and every 200 ms, where every frame must be decoded
  seed load  14 cameras every 200 ms (70 frames/s sampled, the seed's load): cores used, drops, capture-to-event p99;
             and the same with event clips off (`clips = false`): what holding each camera's packets costs
  clips      the seed load from streams of 2 and 8 Mbit/s, clips on and off: the packets held per camera and the
             extractor's memory (RSS) per camera
  capacity   more and more cameras every 200 ms (5 fps each) until one extractor drops a frame, samples less than
             it should, or its capture-to-event p99 reaches 500 ms: the largest number it sustains
  baselines  the seed load's 14 streams read by what a user might run instead, in the same run: the decode floor
             (a process that only decodes every frame of each stream with PyAV, as the extractor does, and keeps
             nothing) and a Frigate-style reader (an `ffmpeg` process per camera decoding the stream to raw
             yuv420p frames at 5 fps on a pipe, read and discarded here): CPU per camera, and framewatch's as a
             ratio to each
Everything shares this machine's cores: the RTSP server and the publisher, Kafka and MinIO are measured apart.
Prints a readable table, then the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import threading
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from framewatch.clients.objectstore import ObjectStore
from framewatch.ops.camera import h264_clip, start_publisher
from framewatch.ops.demo import ServiceProcess
from framewatch.ops.load import (
    free_port,
    histogram_buckets,
    histogram_quantile,
    namespaced_env,
    print_figures,
    print_table,
)
from framewatch.schemas.config import Config, load_config
from framewatch.stack import LocalStack, StackHome

ROOT = Path(__file__).resolve().parents[1]
PATHS = 4  # published streams; cameras read them in turn, so their key frames do not all come at once
DECODE_CAMERAS = 16  # enough that the process's fixed costs (Kafka client, event loop) weigh little per frame
P99_GOAL_S = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")
CAPACITY_PROCESSES = 5  # busy in the capacity sweep: the extractor, the publisher, the RTSP server, MinIO and Kafka
DECODE_ONLY = """
import sys, threading, av
def decode(url):
    with av.open(url, options={"rtsp_transport": "tcp"}) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        for _ in container.decode(stream):
            pass
for url in sys.argv[1:]:
    threading.Thread(target=decode, args=(url,), daemon=True).start()
threading.Event().wait()
"""


def vtest() -> Path:
    for candidate in (os.environ.get("FRAMEWATCH_TEST_VIDEO"), StackHome.default().cache / "vtest.avi",
                      ROOT.parent / "shared" / "data" / "vtest.avi"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("vtest.avi not found: run `make testdata` first")


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def clip_memory(stack_env: dict[str, str], folder: Path, warm_up_s: float, seconds: float) -> dict[str, Any]:
    """The seed load from streams of 2 and 8 Mbit/s, clips on and off: packets held and RSS per camera."""
    found: dict[str, Any] = {}
    for mbit in (2, 8):
        clip = h264_clip(vtest(), StackHome.default().cache / "clips" / f"vtest-25fps-{mbit}mbit.mp4",
                         bit_rate=mbit * 1_000_000)
        bench = Bench(stack_env, clip, folder, warm_up_s, tag=f"m{mbit}")
        try:
            on = bench.run(f"clips-{mbit}mbit", 14, 200, "auto", seconds)
            off = bench.run(f"no-clips-{mbit}mbit", 14, 200, "auto", seconds, clips=False)
        finally:
            bench.close()
        found[f"{mbit}mbit"] = {"clip_buffer_mb_per_camera": on["clip_buffer_mb_per_camera"],
                                "rss_mb_per_camera_clips_on": round(on["rss_mb"] / 14, 2),
                                "rss_mb_per_camera_clips_off": round(off["rss_mb"] / 14, 2),
                                "cores_clips_on": on["cores"], "cores_clips_off": off["cores"]}
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


@dataclass
class Snapshot:
    at: float
    cpu_s: float
    others_cpu_s: float
    counters: dict[str, float]
    latency: dict[float, float]  # capture-to-event histogram: upper bound -> cumulative count
    rss_mb: float = 0.0


LATENCY = "framewatch_extractor_capture_to_event_seconds"


def scrape(port: int) -> tuple[dict[str, float], dict[float, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("framewatch_extractor_frames_") and sample.name.endswith("_total"):
                key = sample.name.removeprefix("framewatch_extractor_frames_").removesuffix("_total")
                counters[key] = counters.get(key, 0.0) + sample.value
            elif sample.name == "framewatch_extractor_clip_buffer_bytes":
                counters["clip_buffer_bytes"] = counters.get("clip_buffer_bytes", 0.0) + sample.value
    return counters, histogram_buckets(text, LATENCY)


class Bench:
    def __init__(self, stack_env: dict[str, str], clip: Path, folder: Path, warm_up_s: float, tag: str = "") -> None:
        self.stack_env = stack_env
        self.warm_up_s = warm_up_s
        self.folder = folder
        self.server = stack_env["FRAMEWATCH_RTSP_SERVER"]
        self.prefix = f"bench{os.getpid()}{tag}"
        self.urls = [f"rtsp://{self.server}/cam-{self.prefix}-{i}" for i in range(PATHS)]
        self.publisher = start_publisher(clip, self.urls, folder / f"publisher{tag}.log")
        self.others = [self.publisher.pid, *self._stack_pids()]
        time.sleep(3)

    def _stack_pids(self) -> list[int]:
        return [s.pid for s in LocalStack().status() if s.pid is not None]

    def close(self) -> None:
        self.publisher.terminate()
        self.publisher.wait(10)

    def snapshot(self, pid: int, port: int) -> Snapshot:
        counters, latency = scrape(port)
        others = sum(cpu_seconds(p) for p in self.others if Path(f"/proc/{p}").exists())
        return Snapshot(time.monotonic(), cpu_seconds(pid), others, counters, latency, rss_mb(pid))

    def run(self, name: str, cameras: int, interval_ms: int, decode: str, seconds: float,
            clips: bool = True) -> dict[str, Any]:
        env = namespaced_env(self.stack_env, FRAMEWATCH_EXTRACTOR_METRICS_PORT=str(free_port()))
        body = "".join(f'[[frame_extractor.tasks]]\nid = "c{i}"\ntask_type = "people_counting"\n'
                       f'rtsp_url = "{self.urls[i % PATHS]}"\ninterval_ms = {interval_ms}\ndecode = "{decode}"\n'
                       f'clips = {str(clips).lower()}\n' for i in range(cameras))
        path = self.folder / f"{name}.toml"
        path.write_text(body, encoding="utf-8")
        config, _ = load_config(path, env)
        port = config.framewatch.extractor_metrics_port
        extractor = ServiceProcess(name, ["extract", "--once", "-c", str(path)], env, self.folder / "logs")
        try:
            time.sleep(self.warm_up_s)
            first = self.snapshot(extractor.process.pid, port)
            time.sleep(seconds)
            last = self.snapshot(extractor.process.pid, port)
        finally:
            extractor.stop()
        asyncio.run(empty_bucket(config))
        return figures(cameras, interval_ms, first, last)


    def baseline(self, name: str, cameras: int, seconds: float) -> dict[str, Any]:
        """CPU per camera of the decode floor ("floor") or of an ffmpeg process per camera ("ffmpeg")."""
        urls = [self.urls[i % PATHS] for i in range(cameras)]
        if name == "floor":
            processes = [subprocess.Popen([sys.executable, "-c", DECODE_ONLY, *urls])]
        else:
            ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
            processes = [subprocess.Popen([ffmpeg, "-hide_banner", "-loglevel", "error", "-rtsp_transport", "tcp",
                                           "-i", url, "-vf", "fps=5", "-f", "rawvideo", "-pix_fmt", "yuv420p",
                                           "pipe:1"], stdout=subprocess.PIPE) for url in urls]
            for process in processes:
                threading.Thread(target=discard, args=(process,), daemon=True).start()
        try:
            time.sleep(self.warm_up_s)
            cpu = sum(cpu_seconds(p.pid) for p in processes) + time.process_time()
            started = time.monotonic()
            time.sleep(seconds)
            cpu = sum(cpu_seconds(p.pid) for p in processes) + time.process_time() - cpu
            window = time.monotonic() - started
        finally:
            for process in processes:
                process.kill()
                process.wait(10)
        return {"cameras": cameras, "cores": round(cpu / window, 3),
                "cpu_ms_per_camera_s": round(1000 * cpu / window / cameras, 1)}


def discard(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    while process.stdout.read(1 << 20):
        pass


def figures(cameras: int, interval_ms: int, first: Snapshot, last: Snapshot) -> dict[str, Any]:
    window = last.at - first.at
    delta = {k: last.counters.get(k, 0.0) - first.counters.get(k, 0.0) for k in last.counters}
    sampled = delta.get("sampled", 0.0)
    cpu = last.cpu_s - first.cpu_s
    p99 = histogram_quantile(last.latency, 0.99, first.latency)
    expected = cameras * window * 1000 / interval_ms
    return {
        "cameras": cameras, "interval_ms": interval_ms, "window_s": round(window, 1),
        "sampled_per_s": round(sampled / window, 1), "expected_per_s": round(expected / window, 1),
        "decoded_per_s": round(delta.get("decoded", 0.0) / window, 1),
        "emitted": int(delta.get("emitted", 0.0)), "dropped": int(delta.get("dropped", 0.0)),
        "cores": round(cpu / window, 3), "cpu_ms_per_sampled_frame": round(1000 * cpu / max(sampled, 1), 2),
        "others_cores": round((last.others_cpu_s - first.others_cpu_s) / window, 3),
        "capture_to_event_p50_ms": None if (p := histogram_quantile(last.latency, 0.5, first.latency)) is None
        else round(p * 1000),
        "capture_to_event_p99_ms": None if p99 is None else round(p99 * 1000),
        "sustained": (delta.get("dropped", 0.0) == 0 and sampled >= 0.97 * expected
                      and p99 is not None and p99 < P99_GOAL_S),
        "rss_mb": round(last.rss_mb, 1),
        "clip_buffer_mb_per_camera": round(last.counters.get("clip_buffer_bytes", 0.0) / cameras / 2**20, 2),
    }


async def empty_bucket(config: Config) -> None:
    store = ObjectStore(config.frame_extractor.minio)
    await store.delete_many(await store.list_keys(""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="each scenario's window, after its warm-up")
    parser.add_argument("--warm-up", type=float, default=8, help="seconds each scenario runs before its window")
    parser.add_argument("--max-cameras", type=int, default=80, help="the capacity sweep's last step (from 20, by 5)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stack = LocalStack()
    stack.up()
    folder = Path(tempfile.mkdtemp(prefix="framewatch-bench-ingest-"))
    clip = h264_clip(vtest(), StackHome.default().cache / "clips" / "vtest-25fps.mp4")
    bench = Bench(stack.env(), clip, folder, args.warm_up)
    try:
        every = bench.run("decode-all", DECODE_CAMERAS, 1000, "all", args.seconds)
        keys = bench.run("decode-keyframes", DECODE_CAMERAS, 1000, "auto", args.seconds)
        dense = bench.run("decode-200ms", DECODE_CAMERAS, 200, "auto", args.seconds)
        seed = bench.run("seed-14x200ms", 14, 200, "auto", args.seconds)
        seed_no_clips = bench.run("seed-14x200ms-no-clips", 14, 200, "auto", args.seconds, clips=False)
        floor = bench.baseline("floor", 14, args.seconds)
        ffmpeg = bench.baseline("ffmpeg", 14, args.seconds)
        sweep = []
        cameras = 20
        while cameras <= args.max_cameras:
            sweep.append(bench.run(f"capacity-{cameras}", cameras, 200, "auto", args.seconds))
            print(f"capacity {cameras} cameras: {sweep[-1]}", file=sys.stderr, flush=True)
            if not sweep[-1]["sustained"]:
                break
            cameras += 5
    finally:
        bench.close()
    memory = clip_memory(stack.env(), folder, args.warm_up, args.seconds)
    sustained = max((s["cameras"] for s in sweep if s["sustained"]), default=0)
    per_camera = round(1000 * seed["cores"] / seed["cameras"], 1)
    result = {"decode_all_1000ms": every, "decode_keyframes_1000ms": keys, "decode_200ms": dense,
              "seed_14x200ms": {**seed, "cpu_ms_per_camera_s": per_camera}, "decode_floor_14": floor,
              "ffmpeg_per_camera_14": ffmpeg,
              "ratio_to_decode_floor": round(per_camera / floor["cpu_ms_per_camera_s"], 2),
              "ratio_to_ffmpeg": round(per_camera / ffmpeg["cpu_ms_per_camera_s"], 2),
              "seed_14x200ms_no_clips": seed_no_clips,
              "clips_cpu_ratio": round(seed["cores"] / max(seed_no_clips["cores"], 0.001), 3),
              "clip_memory": memory,
              "capacity_sweep": sweep, "max_cameras_sustained_5fps": sustained,
              "capacity_processes": CAPACITY_PROCESSES}
    rows = [
        ("CPU ms per sampled frame, 1 s interval, every frame decoded", every["cpu_ms_per_sampled_frame"], ""),
        ("CPU ms per sampled frame, 1 s interval, key frames only", keys["cpu_ms_per_sampled_frame"], ""),
        ("  ratio (every frame / key frames only)",
         round(every["cpu_ms_per_sampled_frame"] / max(keys["cpu_ms_per_sampled_frame"], 0.01), 1), ""),
        ("CPU ms per sampled frame, 200 ms interval", dense["cpu_ms_per_sampled_frame"], ""),
        ("seed load 14 x 5 fps: extractor cores", seed["cores"], ""),
        ("seed load: sampled frames/s (expected 70)", seed["sampled_per_s"], "70"),
        ("seed load: dropped", seed["dropped"], "0"),
        ("seed load: capture to event p99 (ms)", seed["capture_to_event_p99_ms"], ""),
        ("seed load, event clips off: extractor cores", seed_no_clips["cores"], ""),
        ("  clips on / off (CPU)", result["clips_cpu_ratio"], "<= 1.05"),
        *[(f"  {rate}: packets held per camera MB / RSS per camera MB on:off", f"{m['clip_buffer_mb_per_camera']} / "
           f"{m['rss_mb_per_camera_clips_on']}:{m['rss_mb_per_camera_clips_off']}", "") for rate, m in memory.items()],
        ("CPU ms per camera-second: framewatch, 25 fps sampled at 5 fps", per_camera, ""),
        ("  decoding every frame and nothing else (the floor)", floor["cpu_ms_per_camera_s"], ""),
        ("  an ffmpeg process per camera, raw frames at 5 fps", ffmpeg["cpu_ms_per_camera_s"], ""),
        ("  framewatch / the floor", result["ratio_to_decode_floor"], ""),
        ("  framewatch / ffmpeg per camera", result["ratio_to_ffmpeg"], ""),
        ("cameras at 5 fps one extractor sustains", sustained, ""),
    ]
    rows += [(f"  {s['cameras']} cameras: cores / p99 ms / dropped / sampled of expected",
              f"{s['cores']}/{s['capture_to_event_p99_ms']}/{s['dropped']}/{s['sampled_per_s']}:{s['expected_per_s']}",
              "sustained" if s["sustained"] else "NOT sustained") for s in sweep]
    print_table(rows)
    print_figures(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
