"""Presigned URLs (query-string Signature V4) for the objects of one bucket, made without the SDK's per-call cost.

The minio SDK spent 100-170 µs presigning each URL (URL building, date formatting, four HMACs to derive the same
signing key again); an extractor presigns a PUT for every frame it uploads and the worker a GET for every frame it
sends to a detector. Here the addressing (scheme, host, path to the bucket: path or virtual-host style) is taken
once from a URL the SDK presigned, the signing key is derived once a day, and a URL costs one SHA-256 and one HMAC.
The URLs are the SDK's, byte for byte (`tests/test_stores.py` compares them).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from minio import Minio

ALGORITHM = "AWS4-HMAC-SHA256"
ADDRESSING_SAMPLE = "k"  # an object name that quotes to itself


@dataclass(frozen=True)
class Presigned:
    scheme: str
    host: str
    target: str  # the path and query, as on an HTTP request line

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.target}"


class Presigner:
    def __init__(self, client: Minio, bucket: str, access_key: str, secret_key: str, region: str) -> None:
        """`client` is asked once where the bucket's objects are addressed; it makes no request for that."""
        sample = urlsplit(client.presigned_get_object(bucket, ADDRESSING_SAMPLE))
        self.scheme, self.host = sample.scheme, sample.netloc
        self.prefix = sample.path.removesuffix(ADDRESSING_SAMPLE)
        self.access_key = access_key
        self.region = region
        self._secret = ("AWS4" + secret_key).encode()
        self._signing = ("", b"")  # the day and its key, replaced as one (presigning may happen on several threads)

    def presign(self, method: str, key: str, expires_s: int, now: datetime | None = None) -> Presigned:
        """`method` on object `key` for `expires_s` seconds from `now` (the current time by default)."""
        now = now or datetime.now(UTC)
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        scope = f"{stamp[:8]}/{self.region}/s3/aws4_request"
        path = self.prefix + quote(key, safe="/")
        query = (f"X-Amz-Algorithm={ALGORITHM}&X-Amz-Credential={quote(f'{self.access_key}/{scope}', safe='')}"
                 f"&X-Amz-Date={stamp}&X-Amz-Expires={expires_s}&X-Amz-SignedHeaders=host")
        canonical = f"{method}\n{path}\n{query}\nhost:{self.host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(stamp[:8]), to_sign.encode(), hashlib.sha256).hexdigest()
        return Presigned(self.scheme, self.host, f"{path}?{query}&X-Amz-Signature={signature}")

    def _signing_key(self, day: str) -> bytes:
        cached_day, key = self._signing
        if cached_day != day:
            key = self._secret
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._signing = (day, key)
        return key
