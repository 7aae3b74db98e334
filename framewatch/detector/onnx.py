"""A detection model the user brings, exported to ONNX, run with ONNX Runtime (CUDA when present, else CPU).

Supported output layouts, recognised from the model's outputs:
- `yolo`: one output `[batch, 4 + classes, anchors]` (YOLOv8/v11 exports; `[batch, anchors, 4 + classes]` too):
  centre x, centre y, width, height in input pixels, then one score per class; framewatch applies NMS per class.
- `nms`: one output `[batch, detections, 6]`, end to end: x1, y1, x2, y2 in input pixels, score, class index.
- `detr`: two outputs named `boxes` `[batch, queries, 4]` (x1, y1, x2, y2 in input pixels) and `scores`
  `[batch, queries, classes]` (RT-DETR style, no NMS needed).
Images are letterboxed to the model's input size (grey padding, aspect kept: resized straight into the canvas),
then the batch becomes the model's input in one conversion (RGB, scaled to 0..1, NCHW float32); a batch of frames
is one `InferenceSession.run`. Boxes come back normalised to the original image. No weights are ever downloaded:
the file is the user's.

The session is a serving process's: each run uses `threads` intra-op threads (by default the host's cores shared
by the runs the service's capacity lets go at once), and none of them spins while it waits for work: ONNX
Runtime's default spins every core between runs, which cost several times the model's own CPU per frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from framewatch.detector.hog import decode_image
from framewatch.errors import BadInput
from framewatch.schemas.events import Detection

COCO = ("person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
        "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
        "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
        "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
        "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
        "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier "
        "toothbrush").split()
DEFAULT_SIZE = 640  # for models whose input size is dynamic
PADDING = 114


class ModelError(BadInput):
    """A model file framewatch cannot use; the message says what it expected."""


@dataclass(frozen=True)
class Letterbox:
    scale: float
    pad_x: float
    pad_y: float
    width: int  # of the original image
    height: int

    def normalised(self, x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
        def nx(x: float) -> float:
            return min(1.0, max(0.0, (x - self.pad_x) / self.scale / self.width))

        def ny(y: float) -> float:
            return min(1.0, max(0.0, (y - self.pad_y) / self.scale / self.height))
        return nx(x1), ny(y1), nx(x2), ny(y2)


def letterbox(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Letterbox]:
    """The BGR image fitted into width x height, aspect kept, centred on grey: resized straight into the canvas."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    left, top = int((width - new_w) / 2), int((height - new_h) / 2)
    canvas = np.full((height, width, 3), PADDING, np.uint8)
    cv2.resize(image, (new_w, new_h), dst=canvas[top:top + new_h, left:left + new_w], interpolation=cv2.INTER_LINEAR)
    return canvas, Letterbox(scale, left, top, w, h)


def model_input(canvases: list[np.ndarray]) -> np.ndarray:
    """Letterboxed BGR canvases as one batch of the model's input, NCHW float32 RGB in 0..1: each canvas read once,
    its channels reversed and laid out planar by the view, scaled into the batch as it is written (OpenCV's
    `blobFromImages` took four times as long here)."""
    height, width = canvases[0].shape[:2]
    batch = np.empty((len(canvases), 3, height, width), np.float32)
    for planes, canvas in zip(batch, canvases, strict=True):
        np.multiply(canvas.transpose(2, 0, 1)[::-1], np.float32(1 / 255), out=planes, casting="unsafe")
    return batch


def intra_op_threads(capacity: int, cores: int | None = None) -> int:
    """Threads for one model run: the host's cores shared by the `capacity` runs that may go at once."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, capacity))


def session_options(threads: int) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    for pool in ("intra_op", "inter_op"):
        options.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
    return options


class OnnxDetector:
    def __init__(self, path: Path, labels: list[str] | None = None, min_score: float = 0.25,
                 iou: float = 0.45, threads: int = 1) -> None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in onnxruntime.get_available_providers()]
        try:
            self.session = onnxruntime.InferenceSession(str(path), session_options(threads), providers=providers)
        except Exception as error:  # ONNX Runtime raises its own untyped errors for unreadable files
            raise ModelError(f"{path}: not a model ONNX Runtime can load ({error})") from None
        self.path = path
        self.threads = threads
        self.min_score = min_score
        self.iou = iou
        self.provider = self.session.get_providers()[0]
        self.input = self.session.get_inputs()[0]
        shape = self.input.shape
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise ModelError(f"{path}: the input should be [batch, 3, height, width], not {shape}")
        self.height = shape[2] if isinstance(shape[2], int) else DEFAULT_SIZE
        self.width = shape[3] if isinstance(shape[3], int) else DEFAULT_SIZE
        self.labels = labels or list(COCO)
        self.layout = self._layout()

    def _layout(self) -> str:
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if {"boxes", "scores"} <= set(outputs):
            return "detr"
        if len(outputs) == 1:
            shape = next(iter(outputs.values()))
            if len(shape) == 3 and shape[2] in (6, "6"):
                return "nms"
            if len(shape) == 3:
                channels = 4 + len(self.labels)
                if all(isinstance(d, int) for d in shape[1:]) and channels not in shape[1:]:
                    raise ModelError(f"{self.path}: a yolo head {shape} does not hold 4 + {len(self.labels)} "
                                     "values per box: give the model's own labels (--labels)")
                return "yolo"
        raise ModelError(f"{self.path}: outputs {outputs} are none of the supported layouts (yolo [b, 4+c, n]; "
                         "nms [b, n, 6]; boxes [b, n, 4] with scores [b, n, c])")

    def describe(self) -> dict[str, object]:
        return {"model": self.path.name, "layout": self.layout, "input": [self.height, self.width],
                "labels": self.labels, "provider": self.provider, "threads": self.threads}

    def detect_jpegs(self, images: list[bytes]) -> list[list[Detection] | ValueError]:
        """One batch: every decodable image in one `InferenceSession.run`; an image that is not gets its error."""
        decoded: list[np.ndarray | ValueError] = [self._decode(image) for image in images]
        ready = [(i, image) for i, image in enumerate(decoded) if isinstance(image, np.ndarray)]
        results: list[list[Detection] | ValueError] = [d if isinstance(d, ValueError) else [] for d in decoded]
        if ready:
            boxed = [letterbox(image, self.width, self.height) for _, image in ready]
            batch = model_input([canvas for canvas, _ in boxed])
            outputs = self.session.run(None, {self.input.name: batch})
            named = dict(zip((o.name for o in self.session.get_outputs()), outputs, strict=True))
            for row, ((index, _), (_, box)) in enumerate(zip(ready, boxed, strict=True)):
                results[index] = self._detections(named, outputs, row, box)
        return results

    @staticmethod
    def _decode(data: bytes) -> np.ndarray | ValueError:
        try:
            return decode_image(data)
        except ValueError as error:
            return error

    def _detections(self, named: dict[str, np.ndarray], outputs: list[np.ndarray], row: int,
                    box: Letterbox) -> list[Detection]:
        if self.layout == "nms":
            rows = outputs[0][row]
            return self._found(rows[:, :4], rows[:, 4], rows[:, 5].astype(int), box)
        if self.layout == "detr":
            scores = named["scores"][row]
            classes = scores.argmax(axis=1)
            return self._found(named["boxes"][row], scores[np.arange(len(scores)), classes], classes, box)
        head = outputs[0][row]
        if head.shape[0] != 4 + len(self.labels):  # [anchors, 4 + classes]
            head = head.T
        centres, scores = head[:4].T, head[4:].T
        classes = scores.argmax(axis=1)
        best = scores[np.arange(len(scores)), classes]
        corners = np.column_stack([centres[:, 0] - centres[:, 2] / 2, centres[:, 1] - centres[:, 3] / 2,
                                   centres[:, 0] + centres[:, 2] / 2, centres[:, 1] + centres[:, 3] / 2])
        keep = best >= self.min_score
        corners, best, classes = corners[keep], best[keep], classes[keep]
        if len(best):
            xywh = [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in corners]
            kept = cv2.dnn.NMSBoxesBatched(xywh, best.tolist(), classes.tolist(), self.min_score, self.iou)
            index = np.array(kept, dtype=int).reshape(-1)
            corners, best, classes = corners[index], best[index], classes[index]
        return self._found(corners, best, classes, box)

    def _found(self, corners: np.ndarray, scores: np.ndarray, classes: np.ndarray,
               box: Letterbox) -> list[Detection]:
        found = []
        for (x1, y1, x2, y2), score, cls in zip(corners, scores, classes, strict=True):
            if score < self.min_score or not 0 <= cls < len(self.labels):
                continue
            found.append(Detection(label=self.labels[int(cls)], score=round(float(score), 4),
                                   box=box.normalised(float(x1), float(y1), float(x2), float(y2))))
        return found
