"""The command's surface for scripts: --version, --json listings, and exit statuses that tell bad usage (2) from
a peer that cannot be reached (3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, free_port


def framewatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framewatch.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_version_and_exit_statuses(tmp_path: Path) -> None:
    version = framewatch("--version")
    assert version.returncode == 0 and version.stdout.startswith("framewatch ")
    assert framewatch("tasks", "bogus").returncode == 2  # usage
    config = tmp_path / "bad.toml"
    config.write_text("[frame_extractor]\ninterval_ms = -1\n")
    bad_config = framewatch("config", "check", str(config))
    assert bad_config.returncode == 2 and "interval_ms" in bad_config.stderr
    away = framewatch("services", "--worker", f"http://127.0.0.1:{free_port()}")
    assert away.returncode == 3 and "cannot reach the worker" in away.stderr


def test_listings_print_one_json_document(stack_env: dict[str, str]) -> None:
    env = {**os.environ, **stack_env}
    status = framewatch("stack", "status", "--json", env=env)
    assert {s["name"] for s in json.loads(status.stdout)} >= {"kafka", "minio", "postgres"}
    topics = framewatch("topics", "list", "--json", env=env)
    assert topics.returncode == 0
    listed = json.loads(topics.stdout)
    assert listed and {"name", "partitions", "end_offset", "lag"} <= set(listed[0])
