"""permessage-deflate on room sockets: declined by default (the way Hocuspocus and y-websocket's
server ship), accepted when the operator turns it on; a room works either way."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import Server, run_server
from web.config import Config
from web.server import set_ws_compression

pytestmark = pytest.mark.anyio

OFFER = "permessage-deflate; client_max_window_bits"


async def first_data_frame(reader: asyncio.StreamReader) -> bytes:
    """The first byte of the server's first non-control frame (its sync step 1), skipping the
    pings Hypercorn may send first. Server frames are unmasked."""
    while True:
        header = await reader.readexactly(2)
        length = header[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        await reader.readexactly(length)
        if header[0] & 0x0F < 8:  # not a control frame
            return header


async def handshake(server: Server, room: str) -> tuple[int, dict[str, str], bytes]:
    """A WebSocket upgrade that offers permessage-deflate, as browsers and `ws` do; returns the
    status, the response headers and the first bytes after them."""
    host, port = server.config.host, server.config.port
    token = quote(server.token("acme", "alice", "author"), safe="")
    key = base64.b64encode(os.urandom(16)).decode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            (
                f"GET /sync/v1/rooms/{room}?token={token} HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Extensions: {OFFER}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        first = await asyncio.wait_for(first_data_frame(reader), 10)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    return status, headers, first


async def test_deflate_declined_by_default(server: Server) -> None:
    status, headers, first = await handshake(server, "doc-deflate-default")
    assert status == 101
    assert "sec-websocket-extensions" not in headers
    # an uncompressed binary frame: FIN + opcode 2, RSV1 (compressed) clear
    assert first[0] == 0x82


async def test_deflate_accepted_when_turned_on(tmp_path: Path, anyio_backend: str) -> None:
    backend = "sqlite"

    def compression_on(config: Config) -> None:
        config.ws_compression = True

    try:
        async with run_server(tmp_path, None, backend, configure=compression_on) as srv:
            status, headers, first = await handshake(srv, "doc-deflate-on")
            assert status == 101
            assert headers["sec-websocket-extensions"].startswith("permessage-deflate")
            assert first[0] == 0xC2  # FIN + RSV1 (compressed) + binary
        # and the default comes back for the next server
        async with run_server(tmp_path / "again", None, backend) as srv:
            status, headers, _ = await handshake(srv, "doc-deflate-off")
            assert status == 101 and "sec-websocket-extensions" not in headers
    finally:
        set_ws_compression(False)
