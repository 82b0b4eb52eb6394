"""Group commit on SQLite (storage/inline_sqlite.py): write transactions that queue up while one
COMMIT is on its way to disk share the next COMMIT, each inside its own savepoint. Real SQLite
files; COMMITs are counted with SQLAlchemy's `commit` event on the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from crdt_sync.model import EntityKey, EntityState
from crdt_sync.vector_clock import VectorClock
from storage.engine import open_store
from storage.store import SqlStore
from tests.conftest import OffsetClock

pytestmark = pytest.mark.anyio

NOW = OffsetClock().now()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    opened = await open_store(None, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


def count_commits(store: SqlStore) -> list[int]:
    commits = [0]

    def _on_commit(_conn: Any) -> None:
        commits[0] += 1

    event.listen(store.engine.sync_engine, "commit", _on_commit)  # type: ignore[union-attr]
    return commits


def key(n: int) -> EntityKey:
    return EntityKey("acme", "progress", f"course-{n}", "alice")


async def put(store: SqlStore, n: int, *, pause: bool = False, fail: bool = False) -> None:
    async with store.write("acme", NOW) as tx:
        await tx.put_entity(EntityState(key(n), {"percent": n}, VectorClock.of({"d1": n})))
        await tx.flush()
        if pause:
            await asyncio.sleep(0.05)  # others queue up behind this transaction meanwhile
        if fail:
            raise ValueError(f"writer {n} gives up")


async def stored(store: SqlStore) -> dict[str, tuple[int, Any]]:
    changes = await store.read_changes("acme", "alice", 0, 1000, 0)
    return {c.entity_id: (c.seq, c.payload) for c in changes}


async def test_concurrent_writers_share_commits_and_every_write_lands(store: SqlStore) -> None:
    commits = count_commits(store)
    await asyncio.gather(*(put(store, n) for n in range(1, 41)))
    assert commits[0] < 40 / 4, f"{commits[0]} COMMITs for 40 concurrent write transactions"
    rows = await stored(store)
    assert {e: p for e, (_s, p) in rows.items()} == {
        f"course-{n}": {"percent": n} for n in range(1, 41)
    }
    assert sorted(s for s, _p in rows.values()) == list(range(1, 41))  # one position each
    assert await store.head("acme") == (40, 0)


async def test_a_lone_writer_is_committed_before_write_returns(store: SqlStore) -> None:
    commits = count_commits(store)
    await put(store, 1)
    assert commits[0] == 1
    # visible to another connection at once: the COMMIT happened before write() returned
    assert await stored(store) == {"course-1": (1, {"percent": 1})}


async def test_a_failing_writer_rolls_back_alone_inside_its_batch(store: SqlStore) -> None:
    commits = count_commits(store)
    first = asyncio.create_task(put(store, 1, pause=True))
    await asyncio.sleep(0.01)  # the first holds the writer; the next two queue behind it
    second = asyncio.create_task(put(store, 2, fail=True))
    third = asyncio.create_task(put(store, 3))
    await first
    with pytest.raises(ValueError, match="writer 2 gives up"):
        await second
    await third
    assert commits[0] == 1, "the three should have shared one COMMIT"
    # the failed writer's entity and its log position are both gone: no gap in the log
    assert await stored(store) == {
        "course-1": (1, {"percent": 1}),
        "course-3": (2, {"percent": 3}),
    }
    assert await store.head("acme") == (2, 0)


async def test_a_failed_commit_fails_every_writer_of_its_batch(store: SqlStore) -> None:
    """A deferred foreign key is checked at COMMIT: one writer's violation makes the shared
    COMMIT fail, and then no writer of that batch may be told its data is stored."""
    async with store.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        await conn.execute(
            text(
                "CREATE TABLE child (parent_id INTEGER "
                "REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )

    async def orphan() -> None:
        async with store.write("acme", NOW) as tx:
            await tx.flush()
            await tx._conn.execute(text("INSERT INTO child VALUES (42)"))

    first = asyncio.create_task(put(store, 1, pause=True))
    await asyncio.sleep(0.01)
    bad = asyncio.create_task(orphan())
    third = asyncio.create_task(put(store, 3))
    results = await asyncio.gather(first, bad, third, return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results), results
    assert "FOREIGN KEY" in str(results[1])
    assert await stored(store) == {}
    assert await store.head("acme") == (0, 0)
    # the writer is usable again and the next batch commits
    await put(store, 4)
    assert await stored(store) == {"course-4": (1, {"percent": 4})}


async def test_a_cancelled_writer_neither_blocks_nor_breaks_the_batch(store: SqlStore) -> None:
    first = asyncio.create_task(put(store, 1, pause=True))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(put(store, 2))
    third = asyncio.create_task(put(store, 3))
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while queued for the writer: it never writes
    await first
    await third
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert set(await stored(store)) == {"course-1", "course-3"}


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    store = await open_store(None, tmp_path)
    writers = [asyncio.create_task(put(store, n)) for n in range(1, 6)]
    await asyncio.sleep(0)
    await asyncio.gather(*writers)
    await store.close()
    reopened = await open_store(None, tmp_path)
    try:
        assert len(await stored(reopened)) == 5
    finally:
        await reopened.close()


async def test_a_lone_failing_writer_does_not_keep_the_file_locked(
    store: SqlStore, tmp_path: Path
) -> None:
    """Its statements took SQLite's write lock; rolling back to its savepoint keeps the
    transaction (and the lock) open until the batch ends, so the batch must end now, not at
    the next write: another process (`crdt-sync prune`) would wait on it meanwhile."""
    import sqlite3

    with pytest.raises(ValueError):
        await put(store, 1, fail=True)
    other = sqlite3.connect(tmp_path / "crdt-sync.db", timeout=0, isolation_level=None)
    try:
        for _ in range(100):
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                break
            except sqlite3.OperationalError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the database stayed locked after a failed write")
    finally:
        other.close()
    assert await stored(store) == {}


# -- checkpoints ------------------------------------------------------------------------------


def in_database_file(path: Path, entity_id: str) -> bool:
    """Whether the database file itself (not its WAL) holds the entity: `immutable=1` makes
    SQLite read the file alone, as if no WAL existed."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        query = "SELECT count(*) FROM entities WHERE entity_id = ?"
        return bool(conn.execute(query, (entity_id,)).fetchone()[0])
    finally:
        conn.close()


async def test_commits_reach_the_database_file_by_the_engines_checkpoint(
    store: SqlStore, tmp_path: Path
) -> None:
    """SQLite's automatic checkpoint is off (it would run inside a COMMIT, under the writer
    lock); the engine copies committed pages into the database file after its commits. One
    small write is far below SQLite's own threshold (1,000 pages), yet reaches the file."""
    async with store.engine.connect() as conn:
        rows = await conn.execute(text("PRAGMA wal_autocheckpoint"))
        assert rows.scalar() == 0
    await put(store, 7)
    for _ in range(100):
        if in_database_file(tmp_path / "crdt-sync.db", "course-7"):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("a commit never reached the database file")


async def test_the_wal_does_not_grow_with_everything_written(
    store: SqlStore, tmp_path: Path
) -> None:
    """Checkpoints let SQLite start the WAL over: 12 MiB written over ~2 s leave a WAL far
    smaller than what went through it (without them it would hold all of it)."""
    chunk = bytes(256 * 1024)
    for _ in range(48):
        async with store.write("acme", NOW) as tx:
            await tx.append_doc_updates("doc-1", [chunk])
        await asyncio.sleep(0.04)
    wal = tmp_path / "crdt-sync.db-wal"
    assert wal.stat().st_size < 6 * 1024 * 1024, wal.stat().st_size
