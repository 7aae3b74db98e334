"""Fixtures: the real local stack (started once per session by the project's own code) and isolated configs."""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from framewatch.clients.bus import connect_admin
from framewatch.ops.camera import h264_clip
from framewatch.ops.load import free_port, free_ports
from framewatch.schemas.config import Config, load_config
from framewatch.stack import LocalStack, StackHome

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CLIP = ROOT / "samples" / "plaza-20s.mp4"
VTEST = Path(os.environ.get("FRAMEWATCH_TEST_VIDEO", ROOT.parent / "shared" / "data" / "vtest.avi"))

SAMPLE_JPEG = bytes(cv2.imencode(".jpg", np.full((48, 64, 3), 127, np.uint8))[1])

__all__ = ["SAMPLE_JPEG", "ROOT", "SAMPLE_CLIP", "VTEST", "free_port", "free_ports", "write_config"]


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """The local stack, up for the session; the topics the session made (every test has a namespace of its own)
    are deleted at its end, so the local Kafka does not grow by thousands of partitions a run."""
    stack = LocalStack()
    stack.up()
    env = stack.env()
    config, _ = load_config(None, {**os.environ, **env})
    before = asyncio.run(topic_names(config))
    yield env
    try:
        removed = asyncio.run(delete_topics_but(config, before))
        print(f"\n[tests] deleted the {removed} topics this session made")
    except Exception as error:  # the stack may be down after a fault test that failed: leave them, say so
        warnings.warn(f"the session's topics were left on Kafka: {error!r}", stacklevel=1)


async def topic_names(config: Config) -> set[str]:
    admin = await connect_admin(config)
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def delete_topics_but(config: Config, kept: set[str]) -> int:
    admin = await connect_admin(config)
    try:
        made = sorted(set(await admin.list_topics()) - kept)
        for start in range(0, len(made), 100):
            await admin.delete_topics(made[start:start + 100], timeout_ms=60_000)
        return len(made)
    finally:
        await admin.close()


@dataclass(frozen=True)
class Clips:
    moving: Path  # vtest.avi as an IP camera sends it: H.264, 25 fps, a key frame a second, no B-frames
    still: Path  # its first frame for 10 s: a static scene


@pytest.fixture(scope="session")
def clips() -> Clips:
    assert VTEST.is_file(), f"{VTEST} is missing: `make testdata` fetches it (FRAMEWATCH_TEST_VIDEO names another)"
    folder = StackHome.default().cache / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    return Clips(h264_clip(VTEST, folder / "vtest-25fps.mp4"),
                 h264_clip(VTEST, folder / "vtest-still-10s.mp4", seconds=10, still=True))


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def isolated_env(stack_env: dict[str, str], namespace: str) -> dict[str, str]:
    """The stack's addresses plus a namespace and bucket of this test's own."""
    return {**os.environ, **stack_env, "FRAMEWATCH_NAMESPACE": namespace,
            "FRAMEWATCH_MINIO_BUCKET": f"fw-{namespace}", "FRAMEWATCH_MQ_TOPIC": f"{namespace}.easyai.alerts"}


def write_config(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


@pytest.fixture
def stack_config(isolated_env: dict[str, str]) -> Config:
    config, _ = load_config(None, isolated_env)
    return config



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the local stack is an integration test: `pytest -m "not integration"` is the fast unit run."""
    for item in items:
        if "stack_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
