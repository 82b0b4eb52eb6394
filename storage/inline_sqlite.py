"""SQLite without a thread hop per call, and with group commit: the async engine interface the
store uses, over a sync SQLAlchemy engine whose statements run right where they are awaited.

Why inline: aiosqlite runs every DBAPI call (cursor, execute, fetch, close) in its own thread
and hands the result back through the event loop, so one SQL statement costs three or four loop
iterations. On a busy loop (a room fanning out to 50 clients) each iteration takes
milliseconds: a six-statement write transaction took ~26 ms of waiting, and that wait is
the propagation latency of every keystroke in the room (docs/benchmarks.md). A local SQLite
statement itself takes microseconds; running it inline is cheaper than any hand-off.

Why group commit: every COMMIT waits for an fsync (`synchronous=FULL`), and SQLite has one
writer, so one fsync per write transaction caps a process at a few hundred writes per second
(an ack, a device's last-seen time, a push each cost one). Here the write transactions that
queue up while one COMMIT is on its way to disk run next, each inside a SAVEPOINT of one shared
SQLite transaction, and the next COMMIT makes all of them durable at once. `begin()` still
returns only once its own writes are committed; a transaction that fails rolls back to its
savepoint and leaves the others of its batch alone; a COMMIT that fails fails every
transaction of its batch (none was acknowledged).

What inline costs, and why that is acceptable:
- The loop is blocked while a statement runs (the COMMIT, which waits for the disk, goes to a
  worker thread). A large read (a 5,000-row pull page) blocks it for its few milliseconds, CPU
  the process spends either way.
- A statement that waits on SQLite's lock would block the loop for busy_timeout. In this
  process that cannot happen: one write transaction at a time holds the engine's writer lock
  (the committer holds it during a COMMIT), and nothing awaits anything but these inline calls
  while one is open. Across processes (sync workers, web/sync_workers.py; `crdt-sync prune`
  next to a running server) a batch first takes the file's writer lock (`_FileLock`, an flock
  beside the database, waited for in a thread so the loop runs on; not FIFO: a busy process
  can take it again before a waiting one), then BEGIN IMMEDIATE, so its reads see what it will
  write over: a deferred transaction that read before another process committed could not
  write at all (SQLITE_BUSY_SNAPSHOT). A program that writes the file without the flock can
  still make a server wait for it, at most busy_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Connection, Executable, event
from sqlalchemy import Engine as SyncEngine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


def _autocommit_driver(dbapi_conn: Any, _record: Any) -> None:
    """Python's sqlite3 module would otherwise open a transaction itself at the first INSERT,
    so the SAVEPOINT a batch starts with would open it instead and its RELEASE would commit.
    A write batch issues its own BEGIN (`_Batch`); a read is a statement on its own."""
    dbapi_conn.isolation_level = None


def _driver(conn: Connection) -> Any:
    """The sqlite3 connection under a SQLAlchemy connection, in the same transaction."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    return raw


class InlineConnection:
    """The subset of `AsyncConnection` the store uses."""

    def __init__(self, conn: Connection) -> None:
        self.sync_connection = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Executable, parameters: Any = None) -> Any:
        return self.sync_connection.execute(statement, parameters)

    @property
    def driver(self) -> Any:
        """The sqlite3 connection under this one, in the same transaction: the store runs its
        hottest statements on it directly (SQL compiled once by SQLAlchemy, parameters as
        tuples), without SQLAlchemy's per-statement and per-row parameter processing."""
        return _driver(self.sync_connection)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.sync_connection, *args, **kwargs)


# How often at most the committed pages are copied from the WAL into the database file.
CHECKPOINT_INTERVAL_S = 0.2


class _FileLock:
    """The database file's writer lock across processes: an exclusive flock on a file beside
    it. Held from a batch's BEGIN to the end of its COMMIT or ROLLBACK; taken by one batch of
    this process at a time (the engine's writer lock)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        # A wait in a thread, kept when its waiter is cancelled: the thread takes the lock
        # either way, and one flock per open file is no lock between its users, so the next
        # acquire joins that wait instead of starting another; with nobody waiting any more,
        # the lock is given back as soon as the thread has it.
        self._taking: asyncio.Future[None] | None = None
        self._waiters = 0

    async def acquire(self) -> None:
        taking = self._taking
        if taking is None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass  # another process is writing: wait in a thread, not on the loop
            taking = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, self.fd, fcntl.LOCK_EX))
            self._taking = taking
            taking.add_done_callback(self._taken)
        self._waiters += 1
        try:
            await asyncio.shield(taking)
        except BaseException:
            self._waiters -= 1
            if taking.done():
                # Cancelled after the thread took the lock, before this waiter resumed.
                self._finish(taking)
            raise
        self._waiters -= 1
        if self._taking is taking:
            self._taking = None

    def _taken(self, taking: asyncio.Future[None]) -> None:
        """Runs before the waiters resume: with none left, nobody will release the lock."""
        if self._waiters == 0:
            self._finish(taking)

    def _finish(self, taking: asyncio.Future[None]) -> None:
        if self._taking is taking:
            self._taking = None
            if not taking.cancelled() and taking.exception() is None:
                self.release()

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        os.close(fd)  # a wait still in its thread fails on the closed file and releases nothing


class _Batch:
    """One SQLite transaction holding the savepoint-wrapped write transactions of a batch.
    The caller holds `lock` (if any); the batch gives it back when it commits or rolls back."""

    def __init__(self, conn: Connection, lock: _FileLock | None) -> None:
        self.conn = conn
        self.lock = lock
        try:
            self.trans = conn.begin()
            # The driver's own connection, for BEGIN and the savepoints: through SQLAlchemy's
            # execution machinery they cost as much as a one-statement transaction's statement.
            self.raw = _driver(conn)
            self.raw.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._close()
            raise
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _close(self) -> None:
        try:
            self.conn.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def commit_and_close(self) -> None:
        try:
            self.trans.commit()
        except BaseException:
            # SQLite leaves the transaction open when COMMIT fails (a deferred constraint, a
            # full disk): this connection must not go back to the pool.
            self.conn.invalidate()
            raise
        finally:
            self._close()

    def rollback_and_close(self) -> None:
        try:
            self.trans.rollback()
        finally:
            self._close()

    def settle(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)
            self.done.exception()  # a batch nobody waits for must not log "never retrieved"


class _Writer:
    """The per-event-loop part of group commit: the writer lock, the open batch, the committer,
    and the checkpointer that follows the commits."""

    def __init__(
        self,
        commit_batches: Callable[[_Writer], Coroutine[Any, Any, None]],
        checkpoints: Callable[[_Writer], Coroutine[Any, Any, None]],
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self.committed = asyncio.Event()
        self.batch: _Batch | None = None
        self.committer = asyncio.create_task(commit_batches(self))
        self.checkpointer = asyncio.create_task(checkpoints(self))


def without_file(database: str | None) -> bool:
    """A SQLite database that is no plain file path (in memory, or a `file:` URI): the
    writer lock has no file to sit beside, so only one process may use it."""
    return not database or database == ":memory:" or database.startswith("file:")


class InlineEngine:
    """The subset of `AsyncEngine` the store uses, over a sync engine."""

    def __init__(self, sync_engine: SyncEngine) -> None:
        event.listen(sync_engine, "connect", _autocommit_driver)
        self.sync_engine = sync_engine
        self.dialect = sync_engine.dialect
        self._writer: _Writer | None = None
        database = sync_engine.url.database
        self._file_lock = None if without_file(database) else _FileLock(f"{database}-writer.lock")
        # Reads share one connection, kept open: the driver is in autocommit mode, so each
        # statement reads the latest commit, and a pool checkout and reset per read cost more
        # than a small read itself. A read that overlaps another (its body awaits something
        # that yields) takes a pooled connection instead.
        self._reader: Connection | None = None
        self._reader_busy = False

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[InlineConnection]:
        if self._reader_busy:
            with self.sync_engine.connect() as conn:
                yield InlineConnection(conn)
            return
        if self._reader is None:
            self._reader = self.sync_engine.connect()
        self._reader_busy = True
        try:
            yield InlineConnection(self._reader)
        except BaseException:
            self._drop_reader()
            raise
        finally:
            self._reader_busy = False

    def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[InlineConnection]:
        """A write transaction, durable when this returns; see the module docstring. One runs
        at a time in this process: the callers queue on the writer lock, not on SQLite's."""
        writer = self._writer_for_this_loop()
        async with writer.lock:
            if writer.batch is None:
                writer.batch = await self._open_batch()
            batch = writer.batch
            batch.raw.execute("SAVEPOINT w")
            try:
                yield InlineConnection(batch.conn)
            except BaseException:
                self._undo(writer, batch)
                raise
            else:
                batch.raw.execute("RELEASE w")
            finally:
                # After a failure too: the batch may hold nothing else, but its open
                # transaction keeps the file's write lock that the failed statements took.
                writer.wake.set()
        # Shielded: a cancelled caller leaves its writes to the batch, committed or not.
        await asyncio.shield(batch.done)

    async def _open_batch(self) -> _Batch:
        lock = self._file_lock
        if lock is not None:
            await lock.acquire()
        try:
            conn = self.sync_engine.connect()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return _Batch(conn, lock)

    def _undo(self, writer: _Writer, batch: _Batch) -> None:
        try:
            batch.raw.execute("ROLLBACK TO w")
            batch.raw.execute("RELEASE w")
        except BaseException as exc:
            # The connection cannot roll back to the savepoint: give up the whole batch.
            writer.batch = None
            with contextlib.suppress(Exception):
                batch.rollback_and_close()
            batch.settle(exc)

    def _writer_for_this_loop(self) -> _Writer:
        writer = self._writer
        if writer is None or writer.loop is not asyncio.get_running_loop():
            writer = self._writer = _Writer(self._commit_batches, self._checkpoints)
        return writer

    async def _commit_batches(self, writer: _Writer) -> None:
        """Commit the open batch once the writers queued before this task are in it. The lock
        is FIFO: taking it lets everyone already waiting add to the batch first; writers that
        come during the COMMIT (the fsync, in a worker thread) queue up for the next one."""
        while True:
            await writer.wake.wait()
            writer.wake.clear()
            async with writer.lock:
                batch, writer.batch = writer.batch, None
                if batch is None:
                    continue
                try:
                    # Shielded: at shutdown the thread finishes the COMMIT either way.
                    await asyncio.shield(asyncio.to_thread(batch.commit_and_close))
                except BaseException as exc:
                    batch.settle(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                else:
                    batch.settle(None)
                    writer.committed.set()

    async def _checkpoints(self, writer: _Writer) -> None:
        """Copy committed pages from the WAL into the database file, at most once per
        `CHECKPOINT_INTERVAL_S` and only after a commit. SQLite's own automatic checkpoint
        (off, `storage/engine.py`) would run inside the COMMIT that crosses its threshold,
        while this process holds the writer lock (and the file's, which another process may
        be waiting for); a PASSIVE checkpoint here waits for no writer and no writer waits
        for it."""
        while True:
            await writer.committed.wait()
            writer.committed.clear()
            # Shielded: at shutdown the thread finishes the checkpoint either way.
            await asyncio.shield(asyncio.to_thread(self._checkpoint))
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)

    def _checkpoint(self) -> None:
        try:
            raw = self.sync_engine.raw_connection()
        except Exception:  # the next commit tries again
            return
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            cursor.close()
        except Exception:
            pass  # busy (another process checkpoints) or the disk: the next one tries again
        finally:
            raw.close()

    async def dispose(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and writer.loop is asyncio.get_running_loop():
            batch = writer.batch
            if batch is not None:
                writer.wake.set()
                with contextlib.suppress(Exception):
                    await asyncio.shield(batch.done)
            async with writer.lock:  # a COMMIT in flight has finished
                pass
            for task in (writer.committer, writer.checkpointer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._drop_reader()
        self.sync_engine.dispose()
        if self._file_lock is not None:
            self._file_lock.close()
            self._file_lock = None


# What the store accepts: an asyncpg engine for PostgreSQL, an inline one for SQLite.
Engine = AsyncEngine | InlineEngine
Conn = AsyncConnection | InlineConnection
