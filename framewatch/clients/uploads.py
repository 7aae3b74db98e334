"""S3 PUTs on the event loop over kept-alive connections: the extractor's upload of every sampled frame.

The minio SDK does each request in a thread with urllib3, and hashes the body to sign it: about 2.4 ms of CPU for
a 70 KB JPEG on our machines, against 0.9 ms for the same PUT written to a kept-alive socket here. The URL is
presigned (query-string SigV4, the payload unsigned: clients/sigv4.py), so only the HTTP exchange is here: one
request per connection at a time, a body of Content-Length or chunks, the S3 error document read for its code.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from framewatch.clients.sigv4 import Presigned

HEADER_LIMIT = 100


class PutRefused(Exception):
    """The store answered with an error status; `code` is the S3 error code when its document gave one."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code or status}: {message}")
        self.status, self.code, self.message = status, code, message


class BadAnswer(Exception):
    """What came back is not an HTTP answer this client can read."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, request: bytes, body: bytes) -> tuple[int, bool, bytes]:
        """Status, whether the connection may be kept, and the answer's body."""
        try:
            return await self._exchange(request, body)
        except (ValueError, IndexError, asyncio.LimitOverrunError) as error:
            raise BadAnswer(f"an answer that is not HTTP/1.1: {error}") from None

    async def _exchange(self, request: bytes, body: bytes) -> tuple[int, bool, bytes]:
        self.writer.writelines((request, body))  # one system call
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        if len(lines) > HEADER_LIMIT:
            raise BadAnswer(f"more than {HEADER_LIMIT} header lines")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            answer = await self._chunks()
        else:
            answer = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        return status, headers.get(b"connection", b"").lower() != b"close", answer

    async def _chunks(self) -> bytes:
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size + 2))
        while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return b"".join(p[:-2] for p in parts)


class Uploader:
    """PUTs to presigned URLs of one endpoint, over at most `pool_size` kept-alive connections, on the loop that
    first used it (a store used from another loop gets fresh connections there)."""

    def __init__(self, endpoint: str, secure: bool, presign: Callable[[str], Presigned], timeout_s: float = 20.0,
                 pool_size: int = 16) -> None:
        address = urlsplit(f"//{endpoint}")
        self.host = address.hostname or endpoint
        self.port = address.port or (443 if secure else 80)
        self.ssl = ssl.create_default_context() if secure else None
        self.presign = presign
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        url = self.presign(key)
        request = (f"PUT {url.target} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: {content_type}\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode()
        async with asyncio.timeout(self.timeout_s):
            status, answer = await self._exchange(request, data)
        if status >= 300:
            raise PutRefused(status, _element(answer, "Code"), _element(answer, "Message") or answer[:200].decode(
                errors="replace"))

    async def _exchange(self, request: bytes, body: bytes) -> tuple[int, bytes]:
        """On an idle connection when there is one; if the store had closed it meanwhile, once more on a fresh one."""
        connection, reused = await self._connection()
        while True:
            try:
                status, keep, answer = await connection.exchange(request, body)
            except (OSError, asyncio.IncompleteReadError):
                connection.close()
                if not reused:
                    raise
                connection, reused = await self._connection(fresh=True)
                continue
            except BaseException:
                connection.close()
                raise
            self._release(connection, keep)
            return status, answer

    async def _connection(self, fresh: bool = False) -> tuple[_Connection, bool]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._idle, self._loop = [], loop
        if self._idle and not fresh:
            return self._idle.pop(), True
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
        return _Connection(reader, writer), False

    def _release(self, connection: _Connection, keep: bool) -> None:
        if keep and len(self._idle) < self.pool_size:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


def _element(document: bytes, name: str) -> str:
    found = re.search(rb"<%s>([^<]*)</%s>" % (name.encode(), name.encode()), document)
    return found.group(1).decode(errors="replace") if found else ""
