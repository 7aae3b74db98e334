"""Fixtures: the real local stack (started once per session by the project's own code) and isolated configs."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import uuid
import warnings
from collections.abc import Iterator
from typing import IO
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


# a run's own namespace (`namespaced_env`): topics under it are never meant to outlive the run
RUN_TOPIC = re.compile(r"t[0-9a-f]{10}[.-]")


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    """The local stack, up for the session. Topics of run namespaces (this session's, a benchmark's, a session
    that crashed) are deleted when no other test session is running, at the start and at the end: a Kafka with
    thousands of partitions takes minutes to restart, longer than the fault tests wait for it. Sessions running
    side by side leave them to the last one, which would otherwise delete topics still in use."""
    stack = LocalStack()
    stack.up()
    env = stack.env()
    config, _ = load_config(None, {**os.environ, **env})
    with (StackHome.default().state / "test-sessions.lock").open("a") as sessions:
        if _alone(sessions):
            _delete_run_topics(config, "earlier runs left")
        fcntl.flock(sessions, fcntl.LOCK_SH)
        yield env
        if _alone(sessions):
            _delete_run_topics(config, "this session and earlier runs made")


def _alone(sessions: IO[str]) -> bool:
    """Whether no other test session holds the lock (taken exclusively when so)."""
    try:
        fcntl.flock(sessions, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _delete_run_topics(config: Config, whose: str) -> None:
    try:
        names = {name for name in asyncio.run(topic_names(config)) if RUN_TOPIC.match(name)}
        if names:
            asyncio.run(delete_topics(config, names))
            print(f"\n[tests] deleted {len(names)} topics {whose}")
    except Exception as error:  # the stack may be down after a fault test that failed: leave them, say so
        warnings.warn(f"run topics were left on Kafka: {error!r}", stacklevel=1)


async def topic_names(config: Config) -> set[str]:
    admin = await connect_admin(config)
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def delete_topics(config: Config, names: set[str]) -> None:
    admin = await connect_admin(config)
    try:
        ordered = sorted(names)
        for start in range(0, len(ordered), 100):
            await admin.delete_topics(ordered[start:start + 100], timeout_ms=60_000)
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
