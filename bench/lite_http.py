"""A small HTTP/1.1 client on asyncio streams, for load generators that must stay cheap.

httpx costs about 3 ms of client CPU per request on the benchmark machine (2 cores), which at
the open-loop rates (370-1,100 requests/s) would take one to three cores away from the server
under test; this client costs about 0.15-0.2 ms. It speaks just what the benchmarks need:
one origin, keep-alive connections in a bounded pool, `Content-Length` and chunked response
bodies, no redirects, no TLS, no proxies, no compression.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD = 64 * 1024


class TransportError(Exception):
    """The request did not get a complete response (connection refused, reset, closed early,
    or a response this client cannot parse)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        self.writer.close()


class Pool:
    """At most `limit` connections to `host:port`; a request waits for a free one.

    Idle connections older than `idle_s` are not reused (the server may have closed them);
    a reused connection that fails before any byte of the response arrived is retried once on
    a fresh one, as browsers do (the server closed it between requests).
    """

    def __init__(self, host: str, port: int, limit: int, idle_s: float = 20.0) -> None:
        self.host = host
        self.port = port
        self.idle_s = idle_s
        self._host_header = f"Host: {host}:{port}\r\n".encode()
        self._gate = asyncio.Semaphore(limit)
        self._idle: list[_Conn] = []
        self._closed = False
        self.opened = 0  # connections opened over the pool's life

    async def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request (`target` = path and query) and read the whole response."""
        head = [f"{method} {target} HTTP/1.1\r\n".encode(), self._host_header]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode())
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}\r\n".encode())
        head.append(b"\r\n")
        data = b"".join(head) + (body or b"")
        async with self._gate:
            conn, reused = self._take()
            if conn is None:
                conn = await self._open()
            try:
                return await self._exchange(conn, data, method)
            except _Stale:
                if not reused:
                    raise TransportError("connection closed before the response") from None
            conn = await self._open()
            try:
                return await self._exchange(conn, data, method)
            except _Stale:
                raise TransportError("connection closed before the response") from None

    def _take(self) -> tuple[_Conn | None, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.last_used < self.idle_s and not conn.reader.at_eof():
                return conn, True
            conn.close()
        return None, False

    async def _open(self) -> _Conn:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD)
        except OSError as exc:
            raise TransportError(f"connect: {type(exc).__name__}: {exc}") from None
        self.opened += 1
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn, data: bytes, method: str) -> Response:
        """Write, read; the connection goes back to the pool only after a clean response."""
        got_bytes = False
        try:
            conn.writer.write(data)
            if conn.writer.transport.get_write_buffer_size() > 256 * 1024:
                await conn.writer.drain()
            try:
                raw = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise TransportError("connection closed in the response head") from None
                raise _Stale from None
            got_bytes = True
            resp = await _read_rest(conn.reader, raw, method)
        except BaseException as exc:  # cancelled (timeout) or broken: never reuse it
            conn.close()
            if isinstance(exc, (ConnectionError, OSError)) and not got_bytes:
                raise _Stale from None
            if isinstance(exc, (asyncio.IncompleteReadError, asyncio.LimitOverrunError)):
                raise TransportError(f"bad response: {type(exc).__name__}") from None
            if isinstance(exc, ValueError):  # a length that is not a number
                raise TransportError(f"bad response: {exc}") from None
            if isinstance(exc, (ConnectionError, OSError)):
                raise TransportError(f"{type(exc).__name__}: {exc}") from None
            raise
        if resp.headers.get("connection", "").lower() == "close" or self._closed:
            conn.close()
        else:
            conn.last_used = time.monotonic()
            self._idle.append(conn)
        return resp

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            try:
                await conn.writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class _Stale(Exception):
    """Nothing came back on this connection: it may be retried on a fresh one."""


async def _read_rest(reader: asyncio.StreamReader, raw: bytes, method: str) -> Response:
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TransportError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response(status, headers, await _read_chunked(reader))
    length = headers.get("content-length")
    if length is not None:
        return Response(status, headers, await reader.readexactly(int(length)))
    headers["connection"] = "close"  # the body runs to the end of the connection
    return Response(status, headers, await reader.read())


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
