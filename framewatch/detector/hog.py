"""OpenCV's HOG people detector: the reference algorithm, about 100 ms a full frame on one core."""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np

from framewatch.schemas.events import Detection

cv2.setNumThreads(1)  # the service runs one detection per core; OpenCV's own threads would oversubscribe them

MAX_PIXELS = 4096 * 4096  # a bigger picture would hold a core for minutes: refused before it is decoded
JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header or a PNG's IHDR, without decoding; None when neither is found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in JPEG_FRAME_MARKERS:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def decode_image(data: bytes) -> np.ndarray:
    """A JPEG or PNG as BGR pixels; ValueError, naming why, for anything else or a picture too big to take."""
    size = image_size(data)
    if size is None:
        raise ValueError("not a JPEG or PNG image")
    if size[0] * size[1] > MAX_PIXELS:
        raise ValueError(f"a {size[0]}x{size[1]} image is over the {MAX_PIXELS} pixels this detector takes")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable image")
    return image


class HogPeopleDetector:
    """Thread-safe: each thread gets its own HOGDescriptor."""

    def __init__(self, min_score: float = 0.5, upscale: float = 1.0) -> None:
        """`upscale` > 1 enlarges the image first: HOG's window is 64x128 pixels, so people shorter than 128 pixels
        (far from the camera) are found only on an enlarged image, at about upscale² the time."""
        self.min_score = min_score
        self.upscale = upscale
        self._local = threading.local()

    def _hog(self) -> cv2.HOGDescriptor:
        hog = getattr(self._local, "hog", None)
        if hog is None:
            hog = cv2.HOGDescriptor()
            hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())  # type: ignore[attr-defined]
            self._local.hog = hog
        return hog

    def describe(self) -> dict[str, object]:
        return {"model": "hog-opencv-" + cv2.__version__, "labels": ["person"], "upscale": self.upscale}

    def detect_jpegs(self, images: list[bytes]) -> list[list[Detection] | ValueError]:
        results: list[list[Detection] | ValueError] = []
        for image in images:
            try:
                results.append(self.detect_jpeg(image))
            except ValueError as error:
                results.append(error)
        return results

    def detect_jpeg(self, jpeg: bytes) -> list[Detection]:
        return self.detect(decode_image(jpeg))

    def detect(self, image: np.ndarray) -> list[Detection]:
        height, width = image.shape[:2]
        if self.upscale != 1.0:
            image = cv2.resize(image, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
            height, width = image.shape[:2]
        boxes, weights = self._hog().detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
        detections = []
        for (x, y, w, h), weight in zip(boxes, np.ravel(weights)):
            score = 1.0 / (1.0 + math.exp(-float(weight)))  # SVM margin -> 0..1
            if score < self.min_score:
                continue
            box = (max(0.0, x / width), max(0.0, y / height), min(1.0, (x + w) / width), min(1.0, (y + h) / height))
            detections.append(Detection(label="person", score=round(score, 4), box=box))
        return detections
