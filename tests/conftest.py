"""Fixtures: the real local stack (started once per session by the project's own code) and isolated configs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from framewatch.ops.load import free_port, free_ports
from framewatch.schemas.config import Config, load_config
from framewatch.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CLIP = ROOT / "samples" / "plaza-20s.mp4"

SAMPLE_JPEG = bytes(cv2.imencode(".jpg", np.full((48, 64, 3), 127, np.uint8))[1])

__all__ = ["SAMPLE_JPEG", "ROOT", "SAMPLE_CLIP", "free_port", "free_ports", "write_config"]


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    stack = LocalStack()
    stack.up()
    yield stack.env()


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

