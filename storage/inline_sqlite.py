"""SQLite without a thread hop per call: the async engine interface the store uses, over a sync
SQLAlchemy engine whose statements run right where they are awaited.

Why: aiosqlite runs every DBAPI call (cursor, execute, fetch, close) in its own thread and hands
the result back through the event loop, so one SQL statement costs three or four loop
iterations. On a busy loop (a room fanning out to 50 clients) each iteration takes
milliseconds: a six-statement write transaction took ~26 ms of waiting, and that wait is
the propagation latency of every keystroke in the room (docs/benchmarks.md). A local SQLite
statement itself takes microseconds; running it inline is cheaper than any hand-off.

What it costs, and why that is acceptable:
- The loop is blocked while a statement runs (the COMMIT, which waits for the disk, goes to a
  worker thread: one hand-off per transaction instead of three or four per statement). A
  large read (a 5,000-row pull page) blocks it for its few milliseconds, CPU the process
  spends either way.
- A statement that waits on SQLite's lock would block the loop for busy_timeout. In this
  process that cannot happen: every write transaction takes the store's asyncio writer lock
  first (storage/store.py), and nothing awaits anything but these inline calls while one is
  open. Another process writing the same file (`crdt-sync prune` next to a running server)
  can make the server wait for it, at most busy_timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy import Engine as SyncEngine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class InlineConnection:
    """The subset of `AsyncConnection` the store uses."""

    def __init__(self, conn: Connection) -> None:
        self.sync_connection = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> Any:
        return self.sync_connection.execute(statement, parameters)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.sync_connection, *args, **kwargs)


class InlineEngine:
    """The subset of `AsyncEngine` the store uses, over a sync engine."""

    def __init__(self, sync_engine: SyncEngine) -> None:
        self.sync_engine = sync_engine
        self.dialect = sync_engine.dialect

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[InlineConnection]:
        with self.sync_engine.connect() as conn:
            yield InlineConnection(conn)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[InlineConnection]:
        """A transaction; its COMMIT (the fsync, milliseconds on a busy disk) runs in a worker
        thread, the one hand-off per transaction, so the loop serves others meanwhile."""
        conn = self.sync_engine.connect()
        try:
            trans = conn.begin()
            yield InlineConnection(conn)
        except BaseException:
            try:
                conn.rollback()
            finally:
                conn.close()
            raise

        def commit_and_close() -> None:
            try:
                trans.commit()
            finally:
                conn.close()

        # Shielded: a cancelled caller must not touch the connection while the thread commits;
        # the thread finishes (commit or not) and returns it to the pool either way.
        await asyncio.shield(asyncio.to_thread(commit_and_close))

    async def dispose(self) -> None:
        self.sync_engine.dispose()


# What the store accepts: an asyncpg engine for PostgreSQL, an inline one for SQLite.
Engine = AsyncEngine | InlineEngine
Conn = AsyncConnection | InlineConnection
