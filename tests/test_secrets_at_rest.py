"""A dump of a running server's database holds no usable device secret (nor the server key
they derive from)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3

import pytest

from tests.conftest import Server, require
from tests.sync_client import Device

pytestmark = pytest.mark.anyio


async def dump(server: Server) -> str:
    if server.backend == "sqlite":
        path = server.config.data_dir / "crdt-sync.db"
        conn = sqlite3.connect(path)  # reads through the live WAL
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        require("PG", "pg_dump is not installed")
    url = str(server.config.database_url).replace("postgresql+asyncpg://", "postgresql://")
    proc = await asyncio.create_subprocess_exec(
        pg_dump, "--data-only", "--inserts", url, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode()


async def test_dump_has_no_device_secret(server: Server) -> None:
    http = server.http()
    devices = [
        await Device.register(http, server.token("acme", user), f"dev-{user}", server.clock.time)
        for user in ("alice", "bob")
    ]
    rotated = await Device.register(
        http, server.token("acme", "alice"), "dev-alice", server.clock.time
    )
    for dev in (devices[1], rotated):  # the first secret of dev-alice was rotated away
        await dev.push([dev.mutation("bookmark", "b1", {"at": 1})])
    text = await dump(server)
    assert "dev-alice" in text and "bookmark" in text  # the dump is real and complete
    for dev in [*devices, rotated]:
        assert dev.secret not in text
    assert server.config.server_key.hex() not in text
    assert server.config.jwt_secret and server.config.jwt_secret not in text
