"""Bad input gets a clear error naming what was wrong, and nothing else is lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from framewatch.clients.objectstore import ObjectStore
from framewatch.schemas.config import load_config
from framewatch.streams.extractor import run_extractor
from tests.conftest import ROOT, SAMPLE_CLIP, free_port, write_config


def test_unreachable_broker_is_named(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "c.toml", f"[[frame_extractor.tasks]]\nid='a'\ntask_type='区域入侵'\n"
                                               f"rtsp_url='{SAMPLE_CLIP}'\n")
    result = subprocess.run([sys.executable, "-m", "framewatch.cli", "extract", "-c", str(config)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "FRAMEWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
                                 "FRAMEWATCH_EXTRACTOR_METRICS_PORT": str(free_port())})
    assert result.returncode == 3  # unreachable
    assert f"framewatch: error: cannot reach Kafka at 127.0.0.1:{port}" in result.stderr


async def test_missing_video_file_fails_its_camera_only(isolated_env: dict[str, str], tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", f"""
[frame_extractor]
realtime = false
[[frame_extractor.tasks]]
id = "gone"
task_type = "区域入侵"
rtsp_url = "{tmp_path / 'no-such-clip.mp4'}"
[[frame_extractor.tasks]]
id = "plaza"
task_type = "区域入侵"
rtsp_url = "{SAMPLE_CLIP}"
interval_ms = 2000
""")
    config, _ = load_config(path, isolated_env)
    report = await run_extractor(config)
    store = ObjectStore(config.frame_extractor.minio)
    cameras = {c.task_id: c for c in report.cameras}
    assert cameras["gone"].error == f"{tmp_path / 'no-such-clip.mp4'}: no such video file"
    assert cameras["plaza"].error is None and cameras["plaza"].emitted == 10
    assert len(await store.list_keys("frames/plaza/")) == 10
