"""The ONNX detector's throughput by batch size, side by side in one run, on this machine's CPU (or GPU), and how
much of it the pipeline uses when cameras feed it through the worker.

    .venv/bin/python bench/detector.py [--frames 64] [--size 320] [--worker-size 640] [--worker-seconds 40]
                                       [--json out.json]

No weights are downloaded: the model is a small YOLO-shaped network made here with the `onnx` helper API (four
strided convolutions, 80 classes, a `[batch, 84, anchors]` head), random weights, scores kept low as a trained
model's mostly are. Each figure is the whole serving path of `OnnxDetector.detect_jpegs`: JPEG decode, letterbox,
one `InferenceSession.run` per batch, decode and NMS. Frames are vtest.avi's first frames (768 x 576 JPEGs).

Through the worker: the same network at `--worker-size` (larger, so that the detector, not the worker, Kafka and
MinIO sharing this machine's cores, is what limits the run) serves as `framewatch detector --model` with
`--max-batch 16`, and 16 cameras offer 1.5 times the rate it reached alone at batch 16, each frame a JPEG in MinIO
and an event on fw.frames as an extractor sends them. Utilisation is the frames inferred per second after a
warm-up over that batch-16 rate, measured alone just before, in the same run. With 4 cores or more the service
and the worker get cores of their own (`taskset`; the rate alone is measured on the service's cores), so the ratio
measures the pipeline rather than the contention for cores; with fewer nothing is pinned, as the JSON says.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper

from framewatch.clients.bus import ensure_topics
from framewatch.detector.hog import decode_image
from framewatch.detector.onnx import COCO, PADDING, OnnxDetector, intra_op_threads, letterbox, model_input
from framewatch.ops.demo import PipelineRun
from framewatch.ops.load import (
    FrameLoad,
    TopicFollower,
    free_port,
    inferred_per_s,
    namespaced_env,
    print_figures,
    print_table,
)
from framewatch.schemas.events import DetectionEvent, now_ms
from framewatch.schemas.topics import DETECTIONS
from framewatch.stack import LocalStack

BATCHES = (1, 4, 16)
CAMERAS = 16
OFFERED = 1.5  # times the rate the detector reached alone
WARM_UP_S = 8
PIN_FROM_CORES = 4
VIDEO = Path(os.environ.get("FRAMEWATCH_TEST_VIDEO", Path.home() / ".cache/framewatch/cache/vtest.avi"))


def synthetic_yolo(path: Path, size: int, classes: int = len(COCO)) -> Path:
    rng = np.random.default_rng(7)
    channels = [3, 16, 32, 64, 128]
    nodes, weights = [], []
    previous = "images"
    for i, (cin, cout) in enumerate(zip(channels, channels[1:], strict=False)):
        w = rng.normal(0, 0.1, (cout, cin, 3, 3)).astype(np.float32)
        weights.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.ravel().tolist()))
        nodes += [helper.make_node("Conv", [previous, f"w{i}"], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        previous = f"r{i}"
    head = rng.normal(0, 0.05, (4 + classes, channels[-1], 1, 1)).astype(np.float32)
    bias = np.concatenate([np.full(4, 8.0), np.full(classes, -6.0)]).astype(np.float32)  # few confident scores
    anchors = (size // 16) ** 2
    weights += [helper.make_tensor("head", TensorProto.FLOAT, head.shape, head.ravel().tolist()),
                helper.make_tensor("bias", TensorProto.FLOAT, bias.shape, bias.tolist()),
                helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 4 + classes, anchors])]
    nodes += [helper.make_node("Conv", [previous, "head", "bias"], ["raw"]),
              helper.make_node("Sigmoid", ["raw"], ["squashed"]),
              helper.make_node("Reshape", ["squashed", "shape"], ["output0"])]
    graph = helper.make_graph(
        nodes, "synthetic-yolo", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + classes, anchors])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def frames(count: int) -> list[bytes]:
    with av.open(str(VIDEO)) as container:
        decoded = [f.to_ndarray(format="bgr24") for _, f in zip(range(count), container.decode(video=0))]
    return [bytes(cv2.imencode(".jpg", image)[1]) for image in decoded]


def step_by_step(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The preprocessing before the one-pass one, kept as the baseline: resize, paste onto the canvas, convert the
    colours, transpose, convert to float, divide."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = int((width - new_w) / 2), int((height - new_h) / 2)
    canvas = np.full((height, width, 3), PADDING, np.uint8)
    canvas[top:top + new_h, left:left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    tensor: np.ndarray = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).astype(np.float32) / 255.0
    return tensor


def preprocessing_ms(images: list[bytes], size: int) -> dict[str, float]:
    """JPEG decode plus preprocessing, ms per frame on one thread: the step-by-step baseline and the one pass."""
    decoded = [decode_image(image) for image in images]
    figures = {}
    for name, prepare in (("step_by_step", lambda: np.stack([step_by_step(i, size, size) for i in decoded])),
                          ("one_pass", lambda: model_input([letterbox(i, size, size)[0] for i in decoded]))):
        prepare()
        started = time.process_time()
        prepare()
        figures[f"{name}_ms"] = round(1000 * (time.process_time() - started) / len(decoded), 2)
    started = time.process_time()
    for image in images:
        decode_image(image)
    figures["jpeg_decode_ms"] = round(1000 * (time.process_time() - started) / len(images), 2)
    return figures


def session_options_compared(model: Path, images: list[bytes]) -> dict[str, dict[str, float]]:
    """Batch 1 on ONNX Runtime's default session (every core, threads spinning between runs) and on the serving
    options (`intra_op_threads` for a service of this host's capacity, no spinning), side by side."""
    defaults = OnnxDetector(model)
    defaults.session = onnxruntime.InferenceSession(str(model), providers=defaults.session.get_providers())
    serving = OnnxDetector(model, threads=intra_op_threads(os.cpu_count() or 1))
    return {"defaults": measure(defaults, images, 1), "serving": measure(serving, images, 1)}


def measure(detector: OnnxDetector, images: list[bytes], batch: int) -> dict[str, float]:
    detector.detect_jpegs(images[:batch])  # warm up
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(images), batch):
        detector.detect_jpegs(images[start:start + batch])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"frames_per_s": round(len(images) / wall, 1), "cpu_ms_per_frame": round(1000 * cpu / len(images), 2)}


async def fed_through_worker(run: PipelineRun, image: bytes, fps: float, seconds: float) -> dict[str, float]:
    """With `CAMERAS` cameras offering `fps` frames/s in all, once warm: frames inferred per second, and the share
    of the time the service spent answering requests (its requests' times, a frame's share each)."""
    follower = TopicFollower(run.config, [DETECTIONS])
    await follower.start()
    load = FrameLoad(run.config, cameras=CAMERAS, fps_per_camera=fps / CAMERAS, image=image)
    started = now_ms()
    await load.run(seconds)
    ended = now_ms()
    await follower.collect_until(lambda events: any(isinstance(e, DetectionEvent) and e.emitted_at >= ended
                                                    for e in events), 60)
    await follower.stop()
    since = started + WARM_UP_S * 1000
    steady = [e for e in follower.events if isinstance(e, DetectionEvent) and since <= e.emitted_at < ended]
    busy_s = sum((e.service_ms or 0.0) / max(e.batch_size, 1) for e in steady) / 1000
    return {"achieved_fps": inferred_per_s(follower.events, since, ended), "service_busy": busy_s / ((ended - since) / 1000),
            "mean_batch": sum(e.batch_size for e in steady) / max(len(steady), 1)}


def core_plan() -> dict[str, list[int]]:
    """With `PIN_FROM_CORES` or more: half the cores for the detector service, one for the worker, the rest for
    the load (this process); Kafka and MinIO go where the kernel puts them. Fewer: nothing pinned."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < PIN_FROM_CORES:
        return {}
    half = len(cores) // 2
    return {"detector": cores[:half], "worker": [cores[half]], "load": cores[half + 1:]}


@contextmanager
def running_on(cores: list[int]) -> Iterator[None]:
    """This thread, and the threads it starts meanwhile, on `cores` only (all of them when it is empty)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores or before)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def through_worker(model: Path, image: bytes, alone_fps: float, seconds: float, folder: Path,
                   plan: dict[str, list[int]]) -> dict[str, Any]:
    stack = LocalStack()
    stack.up()
    env = namespaced_env(stack.env())
    config = folder / "bench.toml"
    config.write_text("", encoding="utf-8")
    run = PipelineRun(config, env, folder / "logs", detectors=["detector", "--model", str(model), "--max-batch", "16",
                                                                "--port", str(free_port())], pinning=plan)
    asyncio.run(ensure_topics(run.config))
    run.start()
    try:
        with running_on(plan.get("load", [])):
            fed = asyncio.run(fed_through_worker(run, image, OFFERED * alone_fps, seconds))
    finally:
        run.stop()
    return {"cameras": CAMERAS, "offered_fps": round(OFFERED * alone_fps, 1), "alone_batch_16_fps": alone_fps,
            "achieved_fps": round(fed["achieved_fps"], 1), "utilisation": round(fed["achieved_fps"] / alone_fps, 3),
            "service_busy": round(fed["service_busy"], 3), "mean_batch": round(fed["mean_batch"], 1),
            "pinning": plan or f"none: {len(os.sched_getaffinity(0))} cores, fewer than {PIN_FROM_CORES}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=320, help="the model's input, square")
    parser.add_argument("--worker-size", type=int, default=640, help="the model's input for the run through the worker")
    parser.add_argument("--worker-seconds", type=float, default=40, help="0: skip the run through the worker")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    images = frames(args.frames)
    with tempfile.TemporaryDirectory() as folder:
        cores = len(os.sched_getaffinity(0))  # one run at a time here: every core for it
        detector = OnnxDetector(synthetic_yolo(Path(folder) / "synthetic.onnx", args.size), threads=cores)
        figures: dict[str, Any] = {"provider": detector.provider, "input": args.size, "frames": len(images),
                                   **{f"batch_{b}": measure(detector, images, b) for b in BATCHES}}
        base = figures["batch_1"]["frames_per_s"]
        for b in BATCHES:
            figures[f"batch_{b}"]["speedup_vs_batch_1"] = round(figures[f"batch_{b}"]["frames_per_s"] / base, 2)
        rows = [(f"batch {b}: frames/s ({detector.provider})", figures[f"batch_{b}"]["frames_per_s"],
                 f"{figures[f'batch_{b}']['speedup_vs_batch_1']}x batch 1") for b in BATCHES]
        pre = figures["preprocessing_640"] = preprocessing_ms(images, 640)
        sessions = figures["session_options"] = session_options_compared(Path(folder) / "synthetic.onnx", images)
        rows += [("preprocessing at 640, ms per frame: step by step", pre["step_by_step_ms"], "before"),
                 ("  in one pass", pre["one_pass_ms"], f"{pre['step_by_step_ms'] / pre['one_pass_ms']:.2f}x faster"),
                 ("  (JPEG decode, ms per frame)", pre["jpeg_decode_ms"], ""),
                 ("batch 1, CPU ms per frame: ONNX Runtime defaults", sessions["defaults"]["cpu_ms_per_frame"],
                  f"{sessions['defaults']['frames_per_s']} frames/s"),
                 ("  serving options (no spinning)", sessions["serving"]["cpu_ms_per_frame"],
                  f"{sessions['serving']['frames_per_s']} frames/s")]
        if args.worker_seconds > 0:
            model = synthetic_yolo(Path(folder) / "worker.onnx", args.worker_size)
            plan = core_plan()
            with running_on(plan.get("detector", [])):
                alone = measure(OnnxDetector(model, threads=len(plan.get("detector", [])) or cores), images,
                                16)["frames_per_s"]
            fed = figures["through_worker"] = through_worker(model, images[0], alone, args.worker_seconds,
                                                             Path(folder), plan)
            rows += [(f"input {args.worker_size}, batch 16 alone: frames/s", alone, ""),
                     (f"  through the worker, {CAMERAS} cameras offering {fed['offered_fps']}/s", fed["achieved_fps"],
                      ""),
                     ("  utilisation (through the worker / alone)", fed["utilisation"], ""),
                     ("  frames per request", fed["mean_batch"], "16"),
                     ("  share of the time the service was answering", fed["service_busy"], "1.0")]
    print_figures(figures, args.json)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
