"""SyncService push / pull / ack on a real SQLite file store, without HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from crdt_sync.errors import Forbidden, InvalidInput
from crdt_sync.model import EntityKey, LocalMutation, MutationResult, Status
from crdt_sync.ports import ManualClock
from crdt_sync.registry import EntityRegistry
from crdt_sync.services import DeviceContext, Settings, SyncService
from crdt_sync.vector_clock import SERVER_NODE, Ordering, VectorClock
from storage.engine import open_store
from storage.store import SqlStore

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 27, 22, 20, 12, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
DEV_A = DeviceContext("tenant-1", "user-1", "dev-a")
DEV_B = DeviceContext("tenant-1", "user-1", "dev-b")
OTHER_USER = DeviceContext("tenant-1", "user-2", "dev-c")


@dataclass
class Harness:
    path: Path
    store: SqlStore
    clock: ManualClock
    service: SyncService

    async def reopen(self) -> None:
        await self.store.close()
        self.store = await open_store(None, self.path)
        self.service = SyncService(self.store, EntityRegistry.default(), self.clock)

    async def entity(self, ctx: DeviceContext, etype: str, eid: str) -> Any:
        scope = self.service.registry.get(etype)
        assert scope is not None
        owner = ctx.user_id if scope.scope == "user" else ""
        return await self.store.get_entity(EntityKey(ctx.tenant_id, etype, eid, owner))

    async def head(self, tenant: str = "tenant-1") -> int:
        return (await self.store.head(tenant))[0]

    async def snapshots(self, ctx: DeviceContext, etype: str, eid: str) -> int:
        return len(
            await self.store.list_snapshots(ctx.tenant_id, "entity", etype, eid, ctx.user_id)
        )


@pytest.fixture
async def h(anyio_backend: str, tmp_path: Path) -> AsyncIterator[Harness]:
    clock = ManualClock(T0)
    store = await open_store(None, tmp_path)
    harness = Harness(tmp_path, store, clock, SyncService(store, EntityRegistry.default(), clock))
    try:
        yield harness
    finally:
        await harness.store.close()


def mut(
    mid: str,
    etype: str = "progress",
    eid: str = "course-7",
    payload: dict[str, Any] | None = None,
    clock: dict[str, int] | None = None,
    ts: int | None = None,
) -> LocalMutation:
    op = "delete" if payload is None else "put"
    return LocalMutation(mid, etype, eid, op, payload, VectorClock.of(clock or {"dev-a": 1}), ts)


def same_fields(duplicate: MutationResult, first: MutationResult) -> None:
    assert duplicate.status is Status.DUPLICATE
    assert duplicate.mutation_id == first.mutation_id
    assert duplicate.clock == first.clock
    assert duplicate.conflict_id == first.conflict_id
    assert duplicate.error == first.error


# -- duplicates ---------------------------------------------------------------------------


async def test_duplicate_in_one_batch(h: Harness) -> None:
    results = await h.service.push(
        DEV_A,
        [
            mut("m1", payload={"score": 10}, clock={"dev-a": 1}),
            mut("m1", payload={"score": 99}, clock={"dev-a": 2}),  # same id, other content
        ],
    )
    assert [r.status for r in results] == [Status.APPLIED, Status.DUPLICATE]
    assert results[0].clock == VectorClock.of({"dev-a": 1})
    same_fields(results[1], results[0])
    stored = await h.entity(DEV_A, "progress", "course-7")
    assert stored.payload == {"score": 10}
    assert stored.clock == VectorClock.of({"dev-a": 1})
    assert await h.head() == 1  # applied once


async def test_duplicate_across_batches(h: Harness) -> None:
    [first] = await h.service.push(DEV_A, [mut("m1", payload={"score": 10})])
    assert first.status is Status.APPLIED
    head = await h.head()
    h.clock.advance(seconds=30)
    again = await h.service.push(DEV_A, [mut("m1", payload={"score": 10})])
    changed = await h.service.push(DEV_A, [mut("m1", payload={"score": 50}, clock={"dev-a": 9})])
    for [dup] in (again, changed):
        same_fields(dup, first)
    assert await h.head() == head
    assert (await h.entity(DEV_A, "progress", "course-7")).payload == {"score": 10}


async def test_duplicate_keeps_the_first_results_error(h: Harness) -> None:
    [first] = await h.service.push(DEV_A, [mut("m1", etype="enrollment", payload={"c": 1})])
    assert first.status is Status.REJECTED
    assert first.error is not None and first.error["code"] == "read_only"
    [dup] = await h.service.push(DEV_A, [mut("m1", etype="enrollment", payload={"c": 1})])
    same_fields(dup, first)


async def test_duplicate_keeps_the_first_results_conflict_id(h: Harness) -> None:
    await h.service.push(DEV_A, [mut("n1", "note", "n", {"text": "a"}, {"dev-a": 1})])
    conflicting = mut("n2", "note", "n", {"text": "b"}, {"dev-b": 1})
    [first] = await h.service.push(DEV_B, [conflicting])
    assert first.status is Status.CONFLICT and first.conflict_id
    snapshots = await h.snapshots(DEV_B, "note", "n")
    [dup] = await h.service.push(DEV_B, [conflicting])
    same_fields(dup, first)
    conflicts = await h.store.list_conflicts("tenant-1", "open")
    assert [c.conflict_id for c in conflicts] == [first.conflict_id]
    assert await h.snapshots(DEV_B, "note", "n") == snapshots  # nothing archived again


async def test_mutation_ids_are_per_device(h: Harness) -> None:
    [a] = await h.service.push(DEV_A, [mut("m1", eid="c1", payload={"score": 1})])
    [b] = await h.service.push(DEV_B, [mut("m1", eid="c2", payload={"score": 2})])
    assert a.status is Status.APPLIED and b.status is Status.APPLIED
    assert (await h.entity(DEV_B, "progress", "c2")).payload == {"score": 2}


async def test_idempotency_survives_reopening_the_store(h: Harness) -> None:
    batch = [
        mut("m1", payload={"score": 10}),
        mut("m2", etype="bundle", payload={"x": 1}),
        mut("m3", etype="nope", payload={"x": 1}),
    ]
    firsts = await h.service.push(DEV_A, batch)
    assert [r.status for r in firsts] == [Status.APPLIED, Status.REJECTED, Status.REJECTED]
    head = await h.head()
    await h.reopen()
    h.clock.advance(days=7)
    dups = await h.service.push(DEV_A, batch)
    for dup, first in zip(dups, firsts, strict=True):
        same_fields(dup, first)
    assert await h.head() == head
    # and a new mutation after the reopen still applies
    [fresh] = await h.service.push(DEV_A, [mut("m4", payload={"score": 20}, clock={"dev-a": 2})])
    assert fresh.status is Status.APPLIED


# -- one batch touching one entity twice --------------------------------------------------


async def test_batch_with_two_writes_to_one_entity_in_order(h: Harness) -> None:
    results = await h.service.push(
        DEV_A,
        [
            mut("m1", payload={"score": 10, "completed": ["m1"]}, clock={"dev-a": 1}),
            mut("m2", payload={"score": 20, "completed": ["m1", "m2"]}, clock={"dev-a": 2}),
        ],
    )
    assert [r.status for r in results] == [Status.APPLIED, Status.APPLIED]
    stored = await h.entity(DEV_A, "progress", "course-7")
    assert stored.payload == {"score": 20, "completed": ["m1", "m2"]}
    assert stored.clock == VectorClock.of({"dev-a": 2})
    page = await h.service.pull(DEV_A, None, 100)
    assert [(c.entity_id, c.payload) for c in page.changes] == [
        ("course-7", {"score": 20, "completed": ["m1", "m2"]})
    ]


async def test_batch_with_a_stale_second_write(h: Harness) -> None:
    results = await h.service.push(
        DEV_A,
        [
            mut("m1", payload={"score": 20}, clock={"dev-a": 2}),
            mut("m2", payload={"score": 5}, clock={"dev-a": 1}),
        ],
    )
    assert [r.status for r in results] == [Status.APPLIED, Status.STALE]
    assert results[1].clock == VectorClock.of({"dev-a": 2})  # the stored clock
    assert (await h.entity(DEV_A, "progress", "course-7")).payload == {"score": 20}


async def test_batch_with_concurrent_writes_merges(h: Harness) -> None:
    results = await h.service.push(
        DEV_A,
        [
            mut("m1", payload={"score": 20, "completed": ["m1"]}, clock={"dev-a": 1}),
            mut("m2", payload={"score": 5, "completed": ["m2"]}, clock={"dev-b": 1}),
        ],
    )
    assert [r.status for r in results] == [Status.APPLIED, Status.MERGED]
    merged = results[1].clock
    assert merged is not None
    assert merged.compare(VectorClock.of({"dev-a": 1})) is Ordering.AFTER
    assert merged.compare(VectorClock.of({"dev-b": 1})) is Ordering.AFTER
    assert merged.get_count(SERVER_NODE) == 1
    stored = await h.entity(DEV_A, "progress", "course-7")
    assert stored.payload == {"score": 20, "completed": ["m1", "m2"]}
    assert stored.clock == merged
    assert await h.snapshots(DEV_A, "progress", "course-7") == 1  # archived before the merge


async def test_batch_put_then_delete_then_put(h: Harness) -> None:
    results = await h.service.push(
        DEV_A,
        [
            mut("m1", etype="bookmark", eid="b", payload={"page": 1}, clock={"dev-a": 1}),
            mut("m2", etype="bookmark", eid="b", payload=None, clock={"dev-a": 2}),
        ],
    )
    assert [r.status for r in results] == [Status.APPLIED, Status.APPLIED]
    stored = await h.entity(DEV_A, "bookmark", "b")
    assert stored.deleted and stored.payload is None
    # a device pulling from scratch does not see the tombstone
    assert (await h.service.pull(DEV_B, None, 10)).changes == []
    [revive] = await h.service.push(
        DEV_A, [mut("m3", etype="bookmark", eid="b", payload={"page": 2}, clock={"dev-a": 3})]
    )
    assert revive.status is Status.APPLIED
    assert (await h.entity(DEV_A, "bookmark", "b")).payload == {"page": 2}


# -- policies through the service ---------------------------------------------------------

STATEMENT = {"id": "s-1", "actor": {"mbox": "a@x"}, "verb": {"id": "v"}, "object": {"id": "o"}}


async def test_statement_is_immutable(h: Harness) -> None:
    [ok] = await h.service.push(DEV_A, [mut("m1", "statement", "s-1", STATEMENT)])
    assert ok.status is Status.APPLIED
    [same] = await h.service.push(DEV_B, [mut("m2", "statement", "s-1", STATEMENT, {"dev-b": 1})])
    assert same.status is Status.STALE
    other = {**STATEMENT, "verb": {"id": "w"}}
    [bad] = await h.service.push(DEV_B, [mut("m3", "statement", "s-1", other, {"dev-b": 2})])
    assert bad.status is Status.REJECTED and bad.error is not None
    assert bad.error["code"] == "immutable"
    [gone] = await h.service.push(DEV_A, [mut("m4", "statement", "s-1", None, {"dev-a": 2})])
    assert gone.error is not None and gone.error["code"] == "immutable"
    assert (await h.entity(DEV_A, "statement", "s-1")).payload == STATEMENT


async def test_rejections_do_not_stop_the_batch(h: Harness) -> None:
    results = await h.service.push(
        DEV_A,
        [
            mut("m1", etype="unknown", payload={}),
            mut("m2", etype="statement", eid="s-2", payload=STATEMENT),  # id mismatch
            mut("m3", etype="statement", eid="s-3", payload={"id": "s-3"}),  # missing fields
            mut("m4", etype="certificate", payload={"c": 1}),
            mut("m5", payload={"score": 1}),
        ],
    )
    codes = [r.error["code"] if r.error else r.status.value for r in results]
    assert codes == [
        "unknown_entity_type",
        "invalid_payload",
        "invalid_payload",
        "read_only",
        "applied",
    ]
    assert all(r.clock is None for r in results[:4])


async def test_bookmark_last_writer_wins_with_clamped_future_ts(h: Harness) -> None:
    far_future = T0_MS + 10 * 86_400_000
    await h.service.push(
        DEV_A, [mut("m1", "bookmark", "b", {"page": 1}, {"dev-a": 1}, ts=far_future)]
    )
    stored = await h.entity(DEV_A, "bookmark", "b")
    assert stored.ts == T0_MS + Settings().max_future_skew_ms  # clamped
    # a concurrent write 2 minutes later wins although its ts is below the requested one
    h.clock.advance(minutes=2)
    [r] = await h.service.push(DEV_B, [mut("m2", "bookmark", "b", {"page": 2}, {"dev-b": 1})])
    assert r.status is Status.MERGED
    assert (await h.entity(DEV_A, "bookmark", "b")).payload == {"page": 2}


async def test_batch_too_large(h: Harness) -> None:
    small = SyncService(h.store, EntityRegistry.default(), h.clock, Settings(max_batch=2))
    with pytest.raises(InvalidInput) as info:
        await small.push(DEV_A, [mut(f"m{i}", eid=f"c{i}", payload={}) for i in range(3)])
    assert info.value.code == "batch_too_large"
    assert await h.head() == 0


# -- pull and ack -------------------------------------------------------------------------


async def test_pull_pages_then_follows_changes(h: Harness) -> None:
    await h.service.push(DEV_A, [mut(f"m{i}", eid=f"c{i}", payload={"score": i}) for i in range(5)])
    await h.service.push(OTHER_USER, [mut("x", eid="private", payload={"score": 1})])
    seen: list[str] = []
    page = await h.service.pull(DEV_B, None, 2)
    while True:
        seen += [c.entity_id for c in page.changes]
        if not page.has_more:
            break
        page = await h.service.pull(DEV_B, page.cursor, 2)
    assert seen == [f"c{i}" for i in range(5)]  # commit order; not the other user's
    cursor = page.cursor
    assert (await h.service.pull(DEV_B, cursor, 10)).changes == []
    await h.service.push(DEV_A, [mut("m9", eid="c1", payload=None, clock={"dev-a": 2})])
    update = await h.service.pull(DEV_B, cursor, 10)
    assert [(c.entity_id, c.op) for c in update.changes] == [("c1", "delete")]
    with pytest.raises(InvalidInput):
        await h.service.pull(DEV_B, None, 0)
    with pytest.raises(InvalidInput):
        await h.service.pull(DEV_B, None, 1001)


async def test_ack_records_the_cursor_for_its_device_only(h: Harness) -> None:
    await h.service.register_device("tenant-1", "user-1", "dev-a")
    await h.service.register_device("tenant-1", "user-1", "dev-b")
    await h.service.push(DEV_A, [mut("m1", payload={"score": 1})])
    page = await h.service.pull(DEV_A, None, 10)
    h.clock.advance(seconds=5)
    await h.service.ack(DEV_A, page.cursor)
    device = await h.store.get_device("tenant-1", "dev-a")
    assert device is not None
    assert device.last_ack_seq == page.cursor.seq == 1
    assert device.last_ack_at == h.clock.now()
    with pytest.raises(Forbidden) as info:
        await h.service.ack(DEV_B, page.cursor)
    assert info.value.code == "device_mismatch"
    other = await h.store.get_device("tenant-1", "dev-b")
    assert other is not None and other.last_ack_seq == 0 and other.last_ack_at is None


async def test_a_batch_reads_every_stored_entity_it_touches(h: Harness) -> None:
    """A push reads the stored versions of its entities in groups (type, owner) and chunks of
    ids; every one must be found, or an old write would be applied over a newer one."""
    ids = [f"course-{i}" for i in range(250)]  # more than one chunk of ids
    newer = [mut(f"p{i}", "progress", eid, {"score": 5}, {"dev-a": 2}) for i, eid in enumerate(ids)]
    newer.append(mut("b1", "bookmark", "lesson-1", {"position": 9}, {"dev-a": 2}))
    assert {r.status for r in await h.service.push(DEV_A, newer)} == {Status.APPLIED}
    older = [mut(f"q{i}", "progress", eid, {"score": 1}, {"dev-a": 1}) for i, eid in enumerate(ids)]
    older.append(mut("b2", "bookmark", "lesson-1", {"position": 1}, {"dev-a": 1}))
    results = await h.service.push(DEV_A, older)
    assert [r.status for r in results] == [Status.STALE] * len(older)
    assert (await h.entity(DEV_A, "bookmark", "lesson-1")).payload == {"position": 9}
