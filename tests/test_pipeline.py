"""End to end on the sample clip, all real: Kafka, MinIO, PostgreSQL, the HOG detector, the Faust worker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import orjson
import pytest

from framewatch.clients.bus import read_records
from framewatch.ops.demo import PipelineRun, RunSummary
from framewatch.rules.versions import rule_version
from framewatch.schemas.feed import kind_of
from tests.conftest import ROOT, SAMPLE_CLIP, write_config

CONFIG = f"""
[frame_extractor]
realtime = false

[[frame_extractor.tasks]]
id = "plaza"
task_type = "区域入侵"
rtsp_url = "{SAMPLE_CLIP}"
interval_ms = 500
region = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]
cooldown_sec = 4

[ai_analysis]
alert_batch_size = 3
alert_batch_interval_sec = 1
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, stack_env: dict[str, str]) -> tuple[PipelineRun,
                                                                                                 RunSummary]:
    import os
    import uuid

    namespace = "t" + uuid.uuid4().hex[:10]
    env = {**os.environ, **stack_env, "FRAMEWATCH_NAMESPACE": namespace, "FRAMEWATCH_MINIO_BUCKET": f"fw-{namespace}",
           "FRAMEWATCH_MQ_TOPIC": f"{namespace}.easyai.alerts", "FRAMEWATCH_WORKER_PORT": "16066",
           "FRAMEWATCH_DETECTOR_PORT": "18500"}
    folder = tmp_path_factory.mktemp("e2e")
    run = PipelineRun(write_config(folder / "e2e.toml", CONFIG), env, folder / "logs")
    from framewatch.clients.bus import ensure_topics

    asyncio.run(ensure_topics(run.config))
    run.start()
    try:
        report = asyncio.run(run.extract())
        asyncio.run(run.settle(report.emitted))
        summary = asyncio.run(run.summary(report))
    finally:
        run.stop()
    return run, summary


def test_every_frame_of_the_clip_reaches_an_outcome(finished_run: tuple[PipelineRun, RunSummary]) -> None:
    _, summary = finished_run
    assert summary.frames_extracted == 40  # 20 s sampled every 500 ms
    assert sum(summary.frame_outcomes.values()) == 40
    assert summary.frame_outcomes.get("failed", 0) == 0


def test_alerts_are_stored_moved_and_published_once(finished_run: tuple[PipelineRun, RunSummary]) -> None:
    _, summary = finished_run
    # people walk through the lower half for the whole clip: one alert per person and incident, so a frame where
    # several enter raises several (the clip is read as fast as possible: most frames are superseded, few evaluated)
    alerting_frames = summary.frame_outcomes["alert"]
    assert 1 <= alerting_frames <= len(summary.stored_alert_ids) <= 6 * alerting_frames
    assert all(summary.alert_images.values()), summary.alert_images
    counts = Counter(summary.published_alert_ids)
    assert set(counts) == set(summary.stored_alert_ids) and set(counts.values()) == {1}


def test_alerts_say_which_rule_version_detector_and_model_raised_them(
        finished_run: tuple[PipelineRun, RunSummary]) -> None:
    """In the row (and so /api/alerts) and in the feed message: the task's rule version, the HOG service's id (the
    one the evidence names) and the model it reported."""
    run, summary = finished_run
    version = rule_version(run.config.frame_extractor.tasks[0])

    async def rows() -> list[tuple[str, str, str, str]]:
        connection = await asyncpg.connect(run.config.database.dsn.get_secret_value())
        try:
            found = await connection.fetch("SELECT rule_version, detector, model, evidence->>'service_id' AS seen "
                                           "FROM alerts WHERE namespace = $1", run.config.framewatch.namespace)
        finally:
            await connection.close()
        return [(r["rule_version"], r["detector"], r["model"], r["seen"]) for r in found]

    stored = asyncio.run(rows())
    assert len(stored) == len(summary.stored_alert_ids)
    assert all(v == version and d == seen and m.startswith("hog-opencv-") for v, d, m, seen in stored), stored
    published = asyncio.run(read_records(run.config, run.config.ai_analysis.mq_topic))
    messages = [m for m in (orjson.loads(r.value or b"{}") for r in published) if kind_of(m) == "alert"]
    assert messages and {(m["rule_version"], m["detector"], m["model"]) for m in messages} == {
        (v, d, m) for v, d, m, _ in stored}


def test_no_frame_object_is_left_for_frames_without_alert(finished_run: tuple[PipelineRun, RunSummary]) -> None:
    _, summary = finished_run
    assert summary.frames_left == []


def test_topics_tail_decodes_alerts(finished_run: tuple[PipelineRun, RunSummary]) -> None:
    run, summary = finished_run
    result = subprocess.run([sys.executable, "-m", "framewatch.cli", "topics", "-c", str(run.config_path), "tail",
                             run.config.topic("fw.alerts"), "-n", "50"], capture_output=True, text=True, env=run.env,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["value"]["alert_id"] for r in records) == sorted(summary.stored_alert_ids)
    assert all(r["key"] == "plaza" for r in records)


def test_topics_list_shows_offsets_and_lag(finished_run: tuple[PipelineRun, RunSummary]) -> None:
    run, _ = finished_run
    result = subprocess.run([sys.executable, "-m", "framewatch.cli", "topics", "-c", str(run.config_path), "list"],
                            capture_output=True, text=True, env=run.env, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith(run.config.topic("fw.frames") + " "))
    assert line.split()[1:3] == ["4", "40"] and f"{run.config.framewatch.namespace}-framewatch=0" in line


def test_worker_serves_prometheus_metrics_while_running(finished_run: tuple[PipelineRun, RunSummary]) -> None:
    run, summary = finished_run
    log = (Path(run.log_dir) / "worker.log").read_text()
    assert "Traceback" not in log, log[-3000:]
