"""The algorithm-service client: one request carries a batch of frames; every failure gets a reason.

One pooled `aiohttp.ClientSession` with keep-alive serves every service (aiohttp, not the design card's httpx:
measured lower CPU per request on the hot path, docs/architecture.md). A failure of the whole request raises
`InferenceFailure`; a frame the service refused on its own comes back as an `InferenceFailure` in its slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from pydantic import ValidationError

from framewatch.agents.inference.registry import RegisteredService
from framewatch.clients.objectstore import ObjectStore
from framewatch.errors import FramewatchError
from framewatch.schemas.config import Config
from framewatch.schemas.contract import (
    INFER_PATH,
    MAX_RESPONSE_BYTES,
    ErrorCode,
    FrameResult,
    InferFrame,
    InferRequest,
    InferResponse,
    ServiceError,
)
from framewatch.schemas.events import Detection, FrameEvent

IMAGE_URL_EXPIRY_S = 600

# Failures that say the service is unwell (they count against its breaker); the others are about one frame.
SERVICE_FAULTS = frozenset({"connect", "timeout", "transport", "http_5xx", "http_4xx", "resource_exhausted",
                            "malformed", "too_large", "service_error"})


class InferenceFailure(FramewatchError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason

    @property
    def service_fault(self) -> bool:
        return self.reason in SERVICE_FAULTS


@dataclass(frozen=True)
class BatchAnswer:
    results: dict[str, list[Detection] | InferenceFailure]
    round_trip_ms: float
    service_ms: float | None
    model: str | None = None


def refusal_reason(error: ServiceError) -> str:
    if error.code == ErrorCode.RESOURCE_EXHAUSTED:
        return "resource_exhausted"
    if error.code == ErrorCode.IMAGE_UNAVAILABLE:
        return "image_unavailable"
    if error.code == ErrorCode.BAD_REQUEST:
        return "bad_request"
    return "service_error"


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first `limit` bytes when it is longer (`content.read(n)` returns what has arrived
    so far: an answer that comes in several pieces would be cut)."""
    body = bytearray()
    async for piece in response.content.iter_any():
        body += piece
        if len(body) >= limit:
            break
    return bytes(body[:limit])


Regions = Callable[[str], list[tuple[float, float]] | None]


class ServiceClient:
    def __init__(self, config: Config, store: ObjectStore | None = None, regions: Regions | None = None) -> None:
        """`store` presigns the image URLs of `infer`; a client that only `send`s inline images needs none.
        `regions` gives a task's region as it stands (the worker's: fw.tasks, else the config)."""
        settings = config.ai_analysis
        self.store = store
        configured = {task.id: task.region for task in config.frame_extractor.tasks}
        self.region_of: Regions = regions or configured.get
        self.timeout = aiohttp.ClientTimeout(total=settings.infer_timeout_sec, connect=2.0)
        self.pool = max(settings.max_concurrent_infer, 1)
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        """Made on first use, inside the running loop; one pool of keep-alive connections for every service."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self.timeout, connector=aiohttp.TCPConnector(
                limit=self.pool, keepalive_timeout=60, enable_cleanup_closed=True))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def request(self, frames: list[FrameEvent]) -> InferRequest:
        if self.store is None:
            raise ValueError("this client has no object store to presign image URLs with")
        return InferRequest(frames=[InferFrame(
            frame_id=frame.frame_id, task_type=frame.task_type,
            image_url=self.store.presign(frame.object_key, expiry_sec=IMAGE_URL_EXPIRY_S),
            region=self.region_of(frame.task_id)) for frame in frames])

    async def infer(self, service: RegisteredService, frames: list[FrameEvent]) -> BatchAnswer:
        return await self.send(service.heartbeat.endpoint, self.request(frames))

    async def send(self, endpoint: str, request: InferRequest) -> BatchAnswer:
        """One request as it is (`framewatch replay` sends inline images); raises `InferenceFailure`."""
        url = endpoint.rstrip("/") + INFER_PATH
        started = time.perf_counter()
        body = await self._post(url, request)
        round_trip_ms = (time.perf_counter() - started) * 1000
        if body.error is not None:
            raise InferenceFailure(refusal_reason(body.error), f"{url}: {body.error.code} {body.error.message}")
        by_id: dict[str, FrameResult] = {r.frame_id: r for r in body.results}
        results: dict[str, list[Detection] | InferenceFailure] = {}
        for frame in request.frames:
            result = by_id.get(frame.frame_id)
            if result is None:
                results[frame.frame_id] = InferenceFailure("malformed", f"{url}: no result for frame {frame.frame_id}")
            elif result.error is not None:
                results[frame.frame_id] = InferenceFailure(
                    refusal_reason(result.error), f"{url}: {result.error.code} {result.error.message}")
            else:
                results[frame.frame_id] = result.detections
        return BatchAnswer(results, round_trip_ms, body.inference_ms, body.model)

    async def _post(self, url: str, request: InferRequest) -> InferResponse:
        try:
            async with self.http.post(url, data=request.model_dump_json(),
                                      headers={"content-type": "application/json"}) as response:
                status = response.status
                content = await read_at_most(response, MAX_RESPONSE_BYTES + 1)
        except aiohttp.ClientConnectorError as error:
            raise InferenceFailure("connect", f"{url}: {error}") from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise InferenceFailure("timeout", f"{url}: no answer within the timeout") from None
        except aiohttp.ClientError as error:
            raise InferenceFailure("transport", f"{url}: {type(error).__name__} {error}") from None
        if len(content) > MAX_RESPONSE_BYTES:
            raise InferenceFailure("too_large", f"{url}: answer over {MAX_RESPONSE_BYTES} bytes")
        try:
            body = InferResponse.model_validate_json(content)
        except ValidationError as error:
            if status >= 400:
                raise InferenceFailure(f"http_{status // 100}xx", f"{url}: HTTP {status}") from None
            raise InferenceFailure("malformed", f"{url}: answer breaks the contract: {error}") from None
        if body.error is None and status >= 400:
            raise InferenceFailure(f"http_{status // 100}xx", f"{url}: HTTP {status}")
        return body
