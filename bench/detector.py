"""The ONNX detector's throughput by batch size, side by side in one run, on this machine's CPU (or GPU).

    .venv/bin/python bench/detector.py [--frames 64] [--size 320] [--json out.json]

No weights are downloaded: the model is a small YOLO-shaped network made here with the `onnx` helper API (four
strided convolutions, 80 classes, a `[batch, 84, anchors]` head), random weights, scores kept low as a trained
model's mostly are. Each figure is the whole serving path of `OnnxDetector.detect_jpegs`: JPEG decode, letterbox,
one `InferenceSession.run` per batch, decode and NMS. Frames are vtest.avi's first frames (768 x 576 JPEGs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from framewatch.detector.onnx import COCO, OnnxDetector
from framewatch.ops.load import print_figures, print_table

BATCHES = (1, 4, 16)
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


def measure(detector: OnnxDetector, images: list[bytes], batch: int) -> dict[str, float]:
    detector.detect_jpegs(images[:batch])  # warm up
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(images), batch):
        detector.detect_jpegs(images[start:start + batch])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"frames_per_s": round(len(images) / wall, 1), "cpu_ms_per_frame": round(1000 * cpu / len(images), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=320, help="the model's input, square")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    images = frames(args.frames)
    with tempfile.TemporaryDirectory() as folder:
        detector = OnnxDetector(synthetic_yolo(Path(folder) / "synthetic.onnx", args.size))
        figures: dict[str, Any] = {"provider": detector.provider, "input": args.size, "frames": len(images),
                                   **{f"batch_{b}": measure(detector, images, b) for b in BATCHES}}
    base = figures["batch_1"]["frames_per_s"]
    for b in BATCHES:
        figures[f"batch_{b}"]["speedup_vs_batch_1"] = round(figures[f"batch_{b}"]["frames_per_s"] / base, 2)
    print_figures(figures, args.json)
    print_table([(f"batch {b}: frames/s ({detector.provider})", figures[f"batch_{b}"]["frames_per_s"],
                  f"{figures[f'batch_{b}']['speedup_vs_batch_1']}x batch 1") for b in BATCHES])
    return 0


if __name__ == "__main__":
    sys.exit(main())
