"""OpenCV's HOG people detector: the reference algorithm, about 100 ms a full frame on one core."""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np

from framewatch.schemas.events import Detection

cv2.setNumThreads(1)  # the service runs one detection per core; OpenCV's own threads would oversubscribe them


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

    def detect_jpeg(self, jpeg: bytes) -> list[Detection]:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("not a decodable image")
        return self.detect(image)

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
