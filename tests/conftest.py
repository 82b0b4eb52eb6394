"""Fixtures: real servers (Hypercorn over a socket) on SQLite files and on PostgreSQL.

A test that needs PostgreSQL or Node skips where they are absent; CI sets
CRDT_SYNC_REQUIRE_PG / CRDT_SYNC_REQUIRE_NODE and such a test fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdt_sync.services import Settings
from web.app import create_app
from web.auth import mint_token
from web.config import Config
from web.server import serve_app

PG_URL = os.environ.get("CRDT_SYNC_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def require(kind: str, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a needed part is missing."""
    if os.environ.get(f"CRDT_SYNC_REQUIRE_{kind}") == "1":
        pytest.fail(f"{reason} (CRDT_SYNC_REQUIRE_{kind}=1: it must run here)")
    pytest.skip(reason)


async def _pg_admin() -> Any:
    import asyncpg

    return await asyncpg.connect(PG_URL, timeout=5)


@pytest.fixture
async def pg_database(anyio_backend: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test; dropped afterwards."""
    try:
        conn = await _pg_admin()
    except Exception as exc:
        require("PG", f"PostgreSQL is not reachable at {PG_URL}: {exc}")
    name = f"crdt_test_{uuid.uuid4().hex[:12]}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"postgresql+asyncpg://{base.split('://', 1)[1]}/{name}"
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OffsetClock:
    """Real time plus an offset tests can move (days offline, retention)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)

    def time(self) -> float:
        return self.now().timestamp()


@dataclass
class Server:
    url: str
    config: Config
    clock: OffsetClock
    backend: str
    app: Any = None
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def token(self, tenant: str, user: str, *roles: str, ttl: int = 3600) -> str:
        assert self.config.jwt_secret
        return mint_token(
            self.config.jwt_secret,
            tenant=tenant,
            user=user,
            roles=list(roles) or ["learner"],
            ttl_s=ttl,
        )

    def http(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(base_url=self.url, timeout=30)
        self.clients.append(client)
        return client

    @property
    def runtime(self) -> Any:
        return self.app.extensions["crdt_sync"]


def make_config(tmp: Path, database_url: str | None) -> Config:
    return Config(
        host="127.0.0.1",
        port=free_port(),
        data_dir=tmp,
        database_url=database_url,
        jwt_secret="test-secret-" + uuid.uuid4().hex,
        server_key=os.urandom(32),
        ws_ping_interval_s=0.5,
        graceful_timeout_s=5.0,
    )


@contextlib.asynccontextmanager
async def run_server(
    tmp: Path,
    database_url: str | None,
    backend: str,
    settings: Settings | None = None,
    configure: Callable[[Config], None] | None = None,
) -> AsyncIterator[Server]:
    """Serve a fresh app on a real socket in this event loop; stop it afterwards."""
    config = make_config(tmp, database_url)
    if configure is not None:
        configure(config)
    clock = OffsetClock()
    app = create_app(config, clock=clock, settings=settings)
    stop = asyncio.Event()

    async def _shutdown() -> None:
        await stop.wait()

    task = asyncio.create_task(serve_app(app, config, shutdown=_shutdown))
    server = Server(f"http://{config.host}:{config.port}", config, clock, backend, app)
    try:
        await wait_ready(server.url, task)
        yield server
    finally:
        for client in server.clients:
            await client.aclose()
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_ready(url: str, task: asyncio.Task[None] | None = None, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        while loop.time() < deadline:
            if task is not None and task.done():
                task.result()
                raise RuntimeError("the server stopped while starting")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    if backend == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
async def server(
    anyio_backend: str, tmp_path: Path, backend: str, database_url: str | None
) -> AsyncIterator[Server]:
    async with run_server(tmp_path, database_url, backend) as srv:
        yield srv


async def poll(
    check: Callable[[], Awaitable[Any]], timeout: float = 15.0, what: str = "condition"
) -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last = await check()
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")
        await asyncio.sleep(0.05)
