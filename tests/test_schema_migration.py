"""A database made by an older schema version is brought up to date when the store opens,
on both backends, without losing what it holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from crdt_sync.model import EntityKey, EntityState
from crdt_sync.vector_clock import VectorClock
from storage.engine import open_store
from storage.schema import SCHEMA_VERSION
from tests.conftest import OffsetClock

pytestmark = pytest.mark.anyio


async def _indexes(store) -> set[str]:  # type: ignore[no-untyped-def]
    async with store.engine.connect() as conn:
        found = await conn.run_sync(lambda sync: inspect(sync).get_indexes("entities"))
    return {ix["name"] for ix in found}


async def _version(store) -> int:  # type: ignore[no-untyped-def]
    async with store.engine.connect() as conn:
        result = await conn.execute(
            text("SELECT value FROM crdt_meta WHERE key = 'schema_version'")
        )
        return int(result.scalar_one())


async def test_version_1_database_gets_the_owner_log_index(
    database_url: str | None, tmp_path: Path
) -> None:
    now = OffsetClock().now()
    store = await open_store(database_url, tmp_path)
    key = EntityKey("acme", "progress", "course-1", "alice")
    async with store.write("acme", now) as tx:
        await tx.put_entity(EntityState(key, {"percent": 40}, VectorClock.of({"d1": 1})))
    # what a version-1 server left behind: no owner index, version 1
    async with store.engine.begin() as conn:
        await conn.execute(text("DROP INDEX ix_entities_owner_log"))
        await conn.execute(text("UPDATE crdt_meta SET value = '1' WHERE key = 'schema_version'"))
    assert "ix_entities_owner_log" not in await _indexes(store)
    await store.close()

    store = await open_store(database_url, tmp_path)
    try:
        assert "ix_entities_owner_log" in await _indexes(store)
        assert await _version(store) == SCHEMA_VERSION
        changes = await store.read_changes("acme", "alice", 0, 10, 0)
        assert [(c.entity_id, c.payload) for c in changes] == [("course-1", {"percent": 40})]
    finally:
        await store.close()
