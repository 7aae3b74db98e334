"""The algorithm-service HTTP contract (JSON over HTTP/1.1, keep-alive).

    POST {endpoint}/v1/infer        InferRequest  -> 200 InferResponse
    GET  {endpoint}/healthz         -> 200 {"status": "ok", ...}

A request carries one or several frames (up to the service's declared max_batch), each by presigned URL or by
inline base64 bytes. The answer carries one result per frame, in any order, matched by frame_id. A service that
cannot serve answers with an `error` (top level: the whole request; per result: that frame) whose `code`
classifies it; 107002 is the seed system's GPU out-of-memory and means "resource exhausted, try elsewhere".

Limits a service must keep, or its answer is refused as `malformed` (`too_large` past the size): the whole answer
at most 4 MiB, at most 1000 detections per frame, each detection within `Detection`'s bounds (schemas/events.py:
finite box coordinates normalised to 0..1 with x1 <= x2 and y1 <= y2 (a box hanging off the frame by up to
the frame's size is clamped to it), a score in 0..1, a label of 1..64 characters, a track
id of at most 128, attributes of at most 4 KiB as JSON).

Optional in the answer, so a service written before it keeps working: `model`, the name or hash of the model that
answered (at most 128 characters, e.g. `yolov8n.onnx` or a digest of the weights). framewatch copies it onto every
alert raised from that answer (with the service's id), so an alert says which model saw it; a service without it
gives alerts whose `model` is null.
"""

from __future__ import annotations

from enum import IntEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from framewatch.schemas.events import MAX_DETECTIONS, Detection
from framewatch.schemas.tasks import TaskType

INFER_PATH = "/v1/infer"
HEALTH_PATH = "/healthz"
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class ErrorCode(IntEnum):
    BAD_REQUEST = 100400
    IMAGE_UNAVAILABLE = 100404
    INTERNAL = 100500
    RESOURCE_EXHAUSTED = 107002


class ServiceError(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: int
    message: str = ""


class InferFrame(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    frame_id: str
    task_type: TaskType
    image_url: str | None = None
    image_b64: str | None = None
    region: list[tuple[float, float]] | None = None

    @model_validator(mode="after")
    def _one_image(self) -> InferFrame:
        if (self.image_url is None) == (self.image_b64 is None):
            raise ValueError("exactly one of image_url and image_b64 is required")
        return self


class InferRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    frames: list[InferFrame] = Field(min_length=1)


class FrameResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    frame_id: str
    detections: list[Detection] = Field(default=[], max_length=MAX_DETECTIONS)
    error: ServiceError | None = None


class InferResponse(BaseModel):
    model_config = ConfigDict(frozen=True)

    results: list[FrameResult] = []
    error: ServiceError | None = None
    inference_ms: float | None = None
    model: str | None = Field(default=None, max_length=128, description="the name or hash of the model that answered")
