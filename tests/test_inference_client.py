"""The algorithm-service client reads whole answers, however they arrive, and refuses answers that are too large
or outside the contract's bounds (NaN boxes, oversized strings, too many detections)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web

from framewatch.agents.inference.client import InferenceFailure, ServiceClient
from framewatch.schemas.config import Config
from framewatch.schemas.contract import (
    INFER_PATH,
    MAX_RESPONSE_BYTES,
    InferFrame,
    InferRequest,
)
from framewatch.schemas.tasks import TaskType
from tests.conftest import free_port

Serve = Callable[[bytes, int], Awaitable[str]]


@pytest.fixture
async def answering() -> AsyncIterator[Serve]:
    """A service that answers any request with `body`, sent in pieces of `piece` bytes 10 ms apart."""
    runners: list[web.AppRunner] = []

    async def serve(body: bytes, piece: int) -> str:
        async def infer(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"content-type": "application/json"})
            await response.prepare(request)
            for start in range(0, len(body), piece):
                await response.write(body[start:start + piece])
                await asyncio.sleep(0.01)
            await response.write_eof()
            return response

        app = web.Application(client_max_size=1 << 20)
        app.router.add_post(INFER_PATH, infer)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield serve
    for runner in runners:
        await runner.cleanup()


def request() -> InferRequest:
    return InferRequest(frames=[InferFrame(frame_id="f1", task_type=TaskType.AREA_INTRUSION, image_b64="AAAA")])


async def test_an_answer_in_many_pieces_is_read_whole(answering: Serve) -> None:
    detections = [{"label": "person", "score": 0.9, "box": [0.1, 0.1, 0.2, 0.3], "track_id": f"t{i}"}
                  for i in range(301)]
    body = orjson.dumps({"results": [{"frame_id": "f1", "detections": detections}]})
    assert len(body) > 20_000
    client = ServiceClient(Config())
    try:
        answer = await client.send(await answering(body, 4096), request())
    finally:
        await client.close()
    found = answer.results["f1"]
    assert isinstance(found, list) and len(found) == 301


async def test_an_answer_over_the_limit_is_too_large(answering: Serve) -> None:
    body = b'{"results": [], "padding": "' + b"x" * (MAX_RESPONSE_BYTES + 10) + b'"}'
    client = ServiceClient(Config())
    try:
        with pytest.raises(InferenceFailure, match="answer over") as failure:
            await client.send(await answering(body, 256 * 1024), request())
    finally:
        await client.close()
    assert failure.value.reason == "too_large"


def one_detection(**fields: object) -> bytes:
    detection = {"label": "person", "score": 0.9, "box": [0.1, 0.1, 0.2, 0.3], **fields}
    return orjson.dumps({"results": [{"frame_id": "f1", "detections": [detection]}]})


@pytest.mark.parametrize("body,names", [
    (b'{"results": [{"frame_id": "f1", "detections": [{"label": "person", "score": 0.9, '
     b'"box": [NaN, 0.1, 0.2, 0.3]}]}]}', "results"),
    (b'{"results": [{"frame_id": "f1", "detections": [{"label": "person", "score": 0.9, '
     b'"box": [0.1, 0.1, Infinity, 0.3]}]}]}', "results"),
    (one_detection(box=[0.5, 0.1, 0.2, 0.3]), "x1 <= x2"),
    (one_detection(box=[10, 20, 320, 240]), "normalised to 0..1 (pixels are not)"),
    (one_detection(score=1.5), "score"),
    (one_detection(label=""), "label"),
    (one_detection(label="x" * 65), "label"),
    (one_detection(track_id="t" * 129), "track_id"),
    (one_detection(attributes={"blob": "x" * 5000}), "attributes take"),
    (orjson.dumps({"results": [{"frame_id": "f1", "detections": [
        {"label": "person", "score": 0.9, "box": [0.1, 0.1, 0.2, 0.3]}] * 1001}]}), "detections"),
])
async def test_an_answer_outside_the_contracts_bounds_is_malformed(answering: Serve, body: bytes,
                                                                   names: str) -> None:
    client = ServiceClient(Config())
    try:
        with pytest.raises(InferenceFailure) as failure:
            await client.send(await answering(body, 65536), request())
    finally:
        await client.close()
    assert failure.value.reason == "malformed" and names in str(failure.value), str(failure.value)


async def test_nul_characters_are_removed_and_boxes_hanging_off_the_frame_are_clamped(answering: Serve) -> None:
    body = one_detection(label="per\u0000son", track_id="t\u00001", box=[-0.04, 0.0, 1.3, 0.5],
                         attributes={"note": "a\u0000b", "list": ["\u0000"]})
    client = ServiceClient(Config())
    try:
        answer = await client.send(await answering(body, 65536), request())
    finally:
        await client.close()
    (found,) = answer.results["f1"]  # type: ignore[misc]
    assert (found.label, found.track_id, found.box) == ("person", "t1", (0.0, 0.0, 1.0, 0.5))
    assert found.attributes == {"note": "ab", "list": [""]}
