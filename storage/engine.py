"""Engines for the two backends, and `open_store`, which migrates and returns the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage.schema import migrate
from storage.store import SqlStore

SQLITE_FILE = "crdt-sync.db"


def sqlite_url(data_dir: str | Path) -> str:
    return f"sqlite+aiosqlite:///{Path(data_dir).resolve() / SQLITE_FILE}"


def normalise_url(url: str) -> str:
    """Accept plain `postgresql://` and `sqlite:///` URLs and pick the async drivers."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


def create_engine(url: str) -> AsyncEngine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=8, max_overflow=0)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we answer; acknowledged data survives power loss.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


async def open_store(url: str | None = None, data_dir: str | Path = "./var") -> SqlStore:
    """Open (creating and migrating) the store: SQLite in `data_dir` unless `url` is given."""
    if url is None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        url = sqlite_url(data_dir)
    engine = create_engine(url)
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several server processes may start at once on one database.
            await conn.execute(text("SELECT pg_advisory_xact_lock(872364001)"))
        await migrate(conn)
    return SqlStore(engine)
