"""Engines for the two backends, and `open_store`, which migrates and returns the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from storage.inline_sqlite import Engine, InlineEngine, without_file
from storage.schema import migrate
from storage.store import SqlStore

SQLITE_FILE = "crdt-sync.db"


def sqlite_url(data_dir: str | Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / SQLITE_FILE}"


def normalise_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and pick asyncpg; SQLite URLs (with or without a
    driver) all mean the file, run inline (storage/inline_sqlite.py)."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    for prefix in ("sqlite+aiosqlite://", "sqlite+pysqlite://"):
        if url.startswith(prefix):
            return "sqlite://" + url[len(prefix) :]
    return url


def single_process_only(url: str | None) -> bool:
    """A SQLite URL that several processes cannot share through the writer lock (see
    `inline_sqlite.without_file`); None is the data folder's file, which they can."""
    if url is None:
        return False
    url = normalise_url(url)
    return url.startswith("sqlite") and without_file(make_url(url).database)


def create_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        # No overflow cap: a checkout must never block the event loop waiting for a connection.
        sync_engine = sa_create_engine(
            url,
            pool_size=8,
            max_overflow=-1,
            connect_args={"check_same_thread": False},
        )

        @event.listens_for(sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we answer; acknowledged data survives power loss.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Not inside a COMMIT: the engine checkpoints after its commits, off the writer
            # lock (storage/inline_sqlite.py, `_checkpoints`).
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()

        return InlineEngine(sync_engine)
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
