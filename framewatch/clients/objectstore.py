"""The object store (MinIO or any S3 server) behind a small async surface, one pooled client per process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from framewatch.clients.sigv4 import Presigned, Presigner
from framewatch.clients.uploads import BadAnswer, PutRefused, Uploader
from framewatch.errors import FramewatchError
from framewatch.retry import Backoff, logged
from framewatch.schemas.config import MinioSettings

T = TypeVar("T")
log = logging.getLogger("framewatch.objectstore")


BUCKET_BACKOFF = Backoff(first_s=0.5, max_s=2.0, attempts=4)
PUT_URL_EXPIRY_S = 15 * 60  # signed just before the PUT: only a clock that far off fails


class StoreError(FramewatchError, RuntimeError):
    """The object store refused or could not be reached; the message names the endpoint, bucket and key."""


class ObjectStore:
    def __init__(self, settings: MinioSettings, bucket: str | None = None, pool_size: int = 16) -> None:
        self.settings = settings
        self.bucket = bucket or settings.bucket
        # no retries here: each caller's own policy retries (framewatch/retry.py), so they never multiply
        http = urllib3.PoolManager(maxsize=pool_size, timeout=urllib3.Timeout(connect=3.0, read=20.0),
                                   retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False))
        self._client = Minio(settings.endpoint, access_key=settings.access_key,
                             secret_key=settings.secret_key.get_secret_value(), secure=settings.use_ssl,
                             region=settings.region, http_client=http)
        self._puts = self._presigner(self._client)
        self._uploads = Uploader(settings.endpoint, settings.use_ssl, self._presign_put, pool_size=pool_size)
        # presigning makes no request: a client named for the public address signs URLs for that host
        self._gets = self._puts if not settings.public_endpoint else self._presigner(Minio(
            settings.public_endpoint, access_key=settings.access_key,
            secret_key=settings.secret_key.get_secret_value(), secure=settings.use_ssl, region=settings.region))

    def _presigner(self, client: Minio) -> Presigner:
        return Presigner(client, self.bucket, self.settings.access_key, self.settings.secret_key.get_secret_value(),
                         self.settings.region)

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.settings.base_path, *parts) if p)

    def snapshot_key(self, namespace: str, camera_id: str) -> str:
        """Where a camera's still is: one object per camera, overwritten (`streams/snapshots.py`)."""
        return self.key(snapshot_folder(namespace), f"{camera_id}.jpg")

    def holds_frame(self, bucket: str, key: str) -> bool:
        """Whether an object named by a FrameEvent is a frame of ours: in this bucket, a JPEG under frames/, no
        '.' or '..' segments. Retention deletes nothing else, whatever a record on fw.frames says."""
        return self._holds(bucket, key, "frames", ".jpg")

    def holds_clip(self, bucket: str, key: str) -> bool:
        """Whether an object an alert_clips row names (from a ClipReady on fw.clips) is a clip of ours: in this
        bucket, an MP4 under clips/, no '.' or '..' segments. Clip retention deletes nothing else."""
        return self._holds(bucket, key, "clips", ".mp4")

    def _holds(self, bucket: str, key: str, folder: str, suffix: str) -> bool:
        segments = key.split("/")
        return (bucket == self.bucket and key.startswith(self.key(folder) + "/") and key.endswith(suffix)
                and not any(part in ("", ".", "..") for part in segments))

    def _where(self, key: str = "") -> str:
        return f"{self.settings.endpoint}/{self.bucket}/{key}"

    async def _call(self, what: str, key: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except S3Error as error:
            raise StoreError(f"{what} {self._where(key)}: {error.code}: {error.message}") from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise StoreError(f"{what} {self._where(key)}: object store unreachable ({error})") from error

    async def ensure_bucket(self) -> None:
        """Creates the bucket if missing; retried a few times, a process starting beside the store may be early."""
        await BUCKET_BACKOFF.call(self._ensure_bucket, lambda error: isinstance(error, StoreError),
                                  logged(log, f"checking the bucket {self._where()}"))

    async def reachable(self, timeout_s: float = 2.0) -> bool:
        """Whether the store answers for the bucket within `timeout_s` (readiness probes)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._call("checking bucket", "", self._client.bucket_exists, self.bucket)
        except (TimeoutError, StoreError):
            return False

    async def _ensure_bucket(self) -> None:
        if not await self._call("checking bucket", "", self._client.bucket_exists, self.bucket):
            try:
                await self._call("creating bucket", "", self._client.make_bucket, self.bucket)
            except StoreError as error:
                if "BucketAlreadyOwnedByYou" not in str(error):
                    raise

    async def put(self, key: str, data: bytes, content_type: str = "image/jpeg") -> None:
        try:
            await self._uploads.put(key, data, content_type)
        except PutRefused as error:
            raise StoreError(f"uploading {self._where(key)}: {error}") from error
        except (OSError, TimeoutError, asyncio.IncompleteReadError, BadAnswer) as error:
            raise StoreError(f"uploading {self._where(key)}: object store unreachable ({error!r})") from error

    def _presign_put(self, key: str) -> Presigned:
        return self._puts.presign("PUT", key, PUT_URL_EXPIRY_S)

    def close(self) -> None:
        """Closes the kept-alive upload connections (a later put opens new ones)."""
        self._uploads.close()

    async def exists(self, key: str) -> bool:
        try:
            await self._call("checking", key, self._client.stat_object, self.bucket, key)
            return True
        except StoreError as error:
            if _missing(error):
                return False
            raise

    async def get(self, key: str) -> bytes:
        def read() -> bytes:
            answer = self._client.get_object(self.bucket, key)
            try:
                return answer.read()
            finally:
                answer.close()
                answer.release_conn()
        data: bytes = await self._call("reading", key, read)
        return data

    async def delete(self, key: str) -> None:
        """Deleting a missing object succeeds: S3 deletes are idempotent."""
        await self._call("deleting", key, self._client.remove_object, self.bucket, key)

    async def delete_many(self, keys: list[str]) -> dict[str, str]:
        """One multi-object delete per 1000 keys; returns the keys the store refused, with its reason."""
        def remove() -> dict[str, str]:
            refused: dict[str, str] = {}
            for start in range(0, len(keys), 1000):
                batch = [DeleteObject(key) for key in keys[start:start + 1000]]
                for error in self._client.remove_objects(self.bucket, batch):  # lazy: iterating sends it
                    refused[error.name or ""] = f"{error.code}: {error.message}"
            return refused
        if not keys:
            return {}
        refused: dict[str, str] = await self._call("deleting", f"({len(keys)} keys)", remove)
        return refused

    async def copy(self, source: str, target: str) -> None:
        """Server-side copy. One whose source is gone succeeds when the target is in place: a retry after the
        first copy, once retention deleted the source."""
        try:
            await self._call("copying to", target, self._client.copy_object, self.bucket, target,
                             CopySource(self.bucket, source))
        except StoreError as error:
            if not (_missing(error) and await self.exists(target)):
                raise

    async def list_keys(self, prefix: str, modified_before: datetime | None = None) -> list[str]:
        """Keys under a prefix (only those last modified before a time, when given)."""
        return [key for key, modified in (await self.list_modified(prefix)).items()
                if modified_before is None or modified is None or modified < modified_before]

    async def list_modified(self, prefix: str, start_after: str | None = None) -> dict[str, datetime | None]:
        """Keys under a prefix (those after `start_after` in key order, when given), with when each was written."""
        def listed() -> dict[str, datetime | None]:
            return {o.object_name: o.last_modified for o in self._client.list_objects(
                self.bucket, prefix=prefix, recursive=True, start_after=start_after) if o.object_name is not None}
        found: dict[str, datetime | None] = await self._call("listing", prefix, listed)
        return found

    def presign(self, key: str, expiry_sec: int) -> str:
        """A GET URL computed locally (the region is configured, so no request is made)."""
        return self._gets.presign("GET", key, expiry_sec).url


def snapshot_folder(namespace: str) -> str:
    """A namespace's stills, under the base path: snapshots/<namespace>/, `_` (which no namespace is named) for
    none, so that namespaces sharing a bucket never overwrite each other's stills of cameras of the same id."""
    return f"snapshots/{namespace or '_'}"


def _missing(error: StoreError) -> bool:
    return isinstance(error.__cause__, S3Error) and error.__cause__.code in {"NoSuchKey", "NoSuchObject"}
