"""The alert store and the object store, against the real PostgreSQL and MinIO."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from minio import Minio
from pydantic import SecretStr

from framewatch.clients.database import AlertStore, migrations
from framewatch.clients.objectstore import ObjectStore, StoreError
from framewatch.clients.sigv4 import Presigner
from framewatch.schemas.config import Config, MinioSettings
from tests.conftest import ROOT
from tests.test_rules import Camera, person


async def test_inserts_are_idempotent(stack_config: Config, namespace: str) -> None:
    store = AlertStore.of(stack_config)
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
    with pytest.raises(StoreError, match="copying to .*alerts/cam/2.jpg: NoSuchKey"):
        await store.copy("frames/cam/2.jpg", "alerts/cam/2.jpg")  # no source, no target


def test_stack_status_and_env(stack_env: dict[str, str]) -> None:
    status = subprocess.run([sys.executable, "-m", "framewatch.cli", "stack", "status"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    names = {line.split()[0] for line in status.stdout.splitlines()[1:]}
    assert names == {"kafka", "minio", "postgres", "mediamtx", "toxiproxy"}
    assert all(line.endswith("up") for line in status.stdout.splitlines()[1:])
    env = subprocess.run([sys.executable, "-m", "framewatch.cli", "stack", "env"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert f"export FRAMEWATCH_KAFKA_BOOTSTRAP={stack_env['FRAMEWATCH_KAFKA_BOOTSTRAP']}" in env.stdout
    assert f"export FRAMEWATCH_RTSP_SERVER={stack_env['FRAMEWATCH_RTSP_SERVER']}" in env.stdout


async def test_uploads_keep_their_connections_and_name_what_the_store_refused(stack_config: Config,
                                                                                namespace: str) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    images = {store.key("frames", namespace, f"{i}.jpg"): bytes([i]) * (1000 + i) for i in range(20)}
    try:
        for key, data in images.items():
            await store.put(key, data)
        assert [await store.get(key) for key in images] == list(images.values())
        assert len(store._uploads._idle) == 1, "one connection, kept between sequential puts"
    finally:
        await store.delete_many(list(images))
        store.close()
    wrong = stack_config.frame_extractor.minio.model_copy(update={"secret_key": SecretStr("not-the-secret")})
    with pytest.raises(StoreError, match=rf"uploading .*/{namespace}/x\.jpg: SignatureDoesNotMatch"):
        await ObjectStore(wrong).put(store.key("frames", namespace, "x.jpg"), b"x")
    missing = ObjectStore(stack_config.frame_extractor.minio, bucket=f"{namespace}-missing")
    with pytest.raises(StoreError, match="NoSuchBucket"):
        await missing.put("x.jpg", b"x")


async def test_an_upload_goes_again_on_a_fresh_connection_when_the_store_closed_the_idle_one() -> None:
    """A peer we need to misbehave: an S3 endpoint that closes each connection after its answer, unannounced, and
    refuses the third PUT with a chunked error document."""
    served: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length")))
        served.append(await reader.readexactly(length))
        if len(served) < 3:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        else:
            document = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + f"{len(document):x}\r\n".encode() + document + b"\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = MinioSettings(endpoint=f"127.0.0.1:{port}", access_key="a", secret_key=SecretStr("b"))
    store = ObjectStore(settings, bucket="frames")
    try:
        await store.put("one.jpg", b"1")
        await asyncio.sleep(0.1)  # the server has closed the connection kept for the next put
        await store.put("two.jpg", b"2")
        with pytest.raises(StoreError, match="SlowDown: Reduce your request rate"):
            await store.put("three.jpg", b"3")
    finally:
        store.close()
        server.close()
    assert served == [b"1", b"2", b"3"]


@pytest.mark.parametrize("endpoint", ["127.0.0.1:9000", "s3.eu-west-1.amazonaws.com"])
def test_presigned_urls_are_the_sdks_byte_for_byte(endpoint: str) -> None:
    """Path style (MinIO) and virtual-host style (AWS); keys with characters that must be quoted; across a day."""
    client = Minio(endpoint, access_key="AKIA/EXAMPLE+1", secret_key="s3cr3t", secure=True, region="eu-west-1")
    presigner = Presigner(client, "frames", "AKIA/EXAMPLE+1", "s3cr3t", "eu-west-1")
    for key in ("frames/cam 1/20261202/1764633600000-000001.jpg", "a+b=c&d/é~_.-!*'()", "k"):
        for when in (datetime(2026, 12, 2, 23, 59, 59, tzinfo=UTC), datetime(2026, 12, 3, 0, 0, 1, tzinfo=UTC)):
            for method, expiry in (("PUT", 900), ("GET", 86400)):
                ours = presigner.presign(method, key, expiry, when).url
                sdks = client.get_presigned_url(method, "frames", key, timedelta(seconds=expiry), request_date=when)
                assert ours == sdks, (method, key, when)


async def test_a_presigned_get_reads_what_a_presigned_put_wrote(stack_config: Config, namespace: str) -> None:
    store = ObjectStore(stack_config.frame_extractor.minio)
    await store.ensure_bucket()
    key = store.key("frames", namespace, "a frame + more é.jpg")
    try:
        await store.put(key, b"pixels")
        with urllib.request.urlopen(store.presign(key, 60), timeout=10) as answer:
            assert answer.read() == b"pixels"
    finally:
        await store.delete(key)
        store.close()
