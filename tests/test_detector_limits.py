"""The reference detector refuses what would hold it up: images over 16 MiB, pictures over 4096x4096 pixels
(read from the header, before decoding), and bytes that are not an image; each frame gets its own error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import cv2
import httpx
import numpy as np
import pytest
from aiohttp import web

from framewatch.detector.hog import HogPeopleDetector, image_size
from framewatch.detector.service import (
    MAX_IMAGE_BYTES,
    DetectorService,
    DetectorSettings,
)
from framewatch.schemas.config import Config
from framewatch.schemas.contract import ErrorCode, InferFrame
from framewatch.schemas.tasks import TaskType
from tests.conftest import free_port


def jpeg(width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.zeros((height, width, 3), np.uint8))
    assert ok
    return bytes(data.tobytes())


def claiming(data: bytes, width: int, height: int) -> bytes:
    """The same JPEG with a frame header that claims another size (a decompression bomb's trick)."""
    found = image_size(data)
    assert found is not None
    at = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] == 0xC0)
    return data[:at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[at + 9:]


def test_the_size_is_read_from_the_header() -> None:
    assert image_size(jpeg(640, 480)) == (640, 480)
    assert image_size(claiming(jpeg(64, 64), 20000, 20000)) == (20000, 20000)
    assert image_size(b"GIF89a....") is None


@pytest.mark.parametrize("data,names", [
    (claiming(jpeg(64, 64), 20000, 20000), "20000x20000 image is over"),
    (b"GIF89a" + b"\0" * 100, "not a JPEG or PNG"),
    (b"\xff\xd8\xff\xe0 truncated", "not a JPEG or PNG"),
])
def test_images_it_should_not_decode_are_refused(data: bytes, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        HogPeopleDetector().detect_jpeg(data)


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    async def huge(_: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = MAX_IMAGE_BYTES + 1024 * 1024
        await response.prepare(_)
        chunk = b"\0" * (1024 * 1024)
        for _i in range(MAX_IMAGE_BYTES // len(chunk) + 1):
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/huge.jpg", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_an_image_url_over_16_mib_fails_that_frame(image_server: str) -> None:
    service = DetectorService(DetectorSettings(service_id="hog-test", capacity=1), Config())
    service.images = httpx.AsyncClient()
    try:
        result = await service._infer_frame(InferFrame(frame_id="f1", task_type=TaskType.AREA_INTRUSION,
                                                       image_url=f"{image_server}/huge.jpg?X-Amz-Signature=s"))
    finally:
        await service.images.aclose()
        service.pool.shutdown()
    assert result.error is not None and result.error.code == ErrorCode.IMAGE_UNAVAILABLE
    assert "over" in result.error.message and "Signature" not in result.error.message
