"""The alert store and the object store, against the real PostgreSQL and MinIO."""

from __future__ import annotations

import subprocess
import sys
import time

import asyncpg

from framewatch.clients.database import AlertStore, migrations
from framewatch.clients.objectstore import ObjectStore
from framewatch.schemas.config import Config
from tests.conftest import ROOT
from tests.test_rules import Camera, person


async def test_inserts_are_idempotent(stack_config: Config, namespace: str) -> None:
    store = AlertStore(stack_config.database.dsn.get_secret_value())
    await store.connect()
    # frames never seen before, so their alerts are new; a new track, so an alert, every 10 s
    camera = Camera(start_ms=time.time_ns() // 1_000_000, id=namespace, track_gap_sec=1)
    alerts = camera.walk([10 * i for i in range(15)], lambda t: [person(0.5, 0.8)])
    assert len(alerts) == 15
    try:
        assert await store.insert(alerts[:2]) == 2  # a small batch: merged
        assert await store.insert(alerts[2:12]) == 10  # COPYed
        assert await store.insert(alerts) == 3  # a replay of the first twelve: the COPY fails, the merge skips them
        assert await store.insert(alerts) == 0
        connection = await asyncpg.connect(stack_config.database.dsn.get_secret_value())
        ids = {r["alert_id"] for r in await connection.fetch(
            "SELECT alert_id::text FROM alerts WHERE alert_id = ANY($1::uuid[])", [a.alert_id for a in alerts])}
        versions = [r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")]
        await connection.close()
        assert ids == {a.alert_id for a in alerts}
        assert versions == [v for v, _, _ in migrations()]
    finally:
        await store.close()


async def test_copy_is_idempotent(stack_config: Config) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    await store.put("frames/cam/1.jpg", b"jpeg")
    await store.copy("frames/cam/1.jpg", "alerts/cam/1.jpg")
    await store.delete("frames/cam/1.jpg")
    await store.copy("frames/cam/1.jpg", "alerts/cam/1.jpg")  # a retry that finds the target in place
    assert await store.get("alerts/cam/1.jpg") == b"jpeg"
    assert not await store.exists("frames/cam/1.jpg")


def test_stack_status_and_env(stack_env: dict[str, str]) -> None:
    status = subprocess.run([sys.executable, "-m", "framewatch.cli", "stack", "status"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert {line.split()[0] for line in status.stdout.splitlines()[1:]} == {"kafka", "minio", "postgres", "mediamtx"}
    assert all(line.endswith("up") for line in status.stdout.splitlines()[1:])
    env = subprocess.run([sys.executable, "-m", "framewatch.cli", "stack", "env"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert f"export FRAMEWATCH_KAFKA_BOOTSTRAP={stack_env['FRAMEWATCH_KAFKA_BOOTSTRAP']}" in env.stdout
    assert f"export FRAMEWATCH_RTSP_SERVER={stack_env['FRAMEWATCH_RTSP_SERVER']}" in env.stdout
