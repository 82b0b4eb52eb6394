"""End to end over the real socket: every push status, every registered policy, replayed
batches, and two devices of one user converging after a week offline.

Every test runs on SQLite and on PostgreSQL (the `server` fixture).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from crdt_sync.model import EntityKey
from crdt_sync.vector_clock import Ordering, VectorClock
from tests.conftest import Server
from tests.sync_client import Device

pytestmark = pytest.mark.anyio

TENANT = "acme"

STATEMENT = {
    "id": "st-1",
    "actor": {"mbox": "mailto:alice@example.com"},
    "verb": {"id": "http://adlnet.gov/expapi/verbs/completed"},
    "object": {"id": "http://example.com/course-1"},
}


# -- helpers ------------------------------------------------------------------------------


def now_ms(server: Server) -> int:
    return int(server.clock.time() * 1000)


def vc(value: dict[str, int] | None) -> VectorClock:
    assert value is not None
    return VectorClock.from_json(value)


def dominates_both(merged: dict[str, int], *sides: dict[str, int]) -> bool:
    return all(vc(merged).compare(vc(side)) is Ordering.AFTER for side in sides)


def admin_headers(server: Server, tenant: str = TENANT) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token(tenant, 'admin-user', 'admin')}"}


async def register(server: Server, user: str, device_id: str, tenant: str = TENANT) -> Device:
    return await Device.register(
        server.http(), server.token(tenant, user), device_id, server.clock.time
    )


async def full_state(dev: Device) -> dict[tuple[str, str], Any]:
    """What a fresh install of this device would get: a pull without a cursor."""
    saved, dev.cursor = dev.cursor, None
    try:
        changes = await dev.pull_all()
    finally:
        dev.cursor = saved
    assert all(c["op"] == "put" for c in changes), changes
    return {(c["entity_type"], c["entity_id"]): c["payload"] for c in changes}


async def head(server: Server, tenant: str = TENANT) -> int:
    seq, _ = await server.runtime.store.head(tenant)
    return int(seq)


async def stored(server: Server, etype: str, eid: str, owner: str = "alice") -> Any:
    return await server.runtime.store.get_entity(EntityKey(TENANT, etype, eid, owner))


def statuses(results: list[dict[str, Any]]) -> list[str]:
    return [r["status"] for r in results]


def error_code_of(r: Any) -> str:
    code: str = r.json()["error"]["code"]
    return code


def error_code(result: dict[str, Any]) -> str | None:
    error = result.get("error")
    return None if error is None else error["code"]


class Replica:
    """A device's local store as a well-behaved client keeps it: edits are applied locally and
    queued with a clock that extends what the device has seen; pulled changes overwrite."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.entities: dict[tuple[str, str], dict[str, Any]] = {}
        self.clocks: dict[tuple[str, str], dict[str, int]] = {}
        self.outbox: list[dict[str, Any]] = []

    def edit(self, etype: str, eid: str, payload: dict[str, Any] | None, ts: int) -> None:
        key = (etype, eid)
        clock = dict(self.clocks.get(key, {}))
        clock[self.dev.device_id] = clock.get(self.dev.device_id, 0) + 1
        self.clocks[key] = clock
        if payload is None:
            self.entities.pop(key, None)
        else:
            self.entities[key] = payload
        self.outbox.append(self.dev.mutation(etype, eid, payload, clock=clock, ts=ts))

    async def push(self) -> list[dict[str, Any]]:
        results = await self.dev.push(self.outbox) if self.outbox else []
        self.outbox = []
        return results

    async def pull(self) -> list[dict[str, Any]]:
        changes = await self.dev.pull_all(limit=2)  # small pages: paging is part of it
        for c in changes:
            key = (c["entity_type"], c["entity_id"])
            self.clocks[key] = c["clock"]
            if c["op"] == "delete":
                self.entities.pop(key, None)
            else:
                self.entities[key] = c["payload"]
        return changes

    async def sync(self) -> list[dict[str, Any]]:
        results = await self.push()
        await self.pull()
        return results


# -- statuses and policies ----------------------------------------------------------------


async def test_applied_stale_and_duplicate_keep_first_result(server: Server) -> None:
    a = await register(server, "alice", "dev-a")
    first = a.mutation("progress", "c1", {"completion": 0.2}, clock={"dev-a": 1})
    [r1] = await a.push([first])
    assert (r1["status"], r1["clock"]) == ("applied", {"dev-a": 1})
    assert "conflict_id" not in r1 and "error" not in r1

    [r2] = await a.push([a.mutation("progress", "c1", {"completion": 0.5}, clock={"dev-a": 2})])
    assert (r2["status"], r2["clock"]) == ("applied", {"dev-a": 2})
    before = await head(server)

    # A new mutation whose clock the stored one already covers: stale, nothing changes.
    old = a.mutation("progress", "c1", {"completion": 0.9}, clock={"dev-a": 1})
    [r3] = await a.push([old])
    assert (r3["status"], r3["clock"]) == ("stale", {"dev-a": 2})
    assert await head(server) == before
    assert (await stored(server, "progress", "c1")).payload == {"completion": 0.5}

    # The first mutation again: duplicate, with the *first* result's clock, not today's.
    [r4] = await a.push([first])
    assert r4 == {**r1, "status": "duplicate"}
    assert await head(server) == before
    assert await full_state(a) == {("progress", "c1"): {"completion": 0.5}}


async def test_statement_is_append_only(server: Server) -> None:
    a = await register(server, "alice", "dev-a")
    b = await register(server, "alice", "dev-b")
    [r] = await a.push([a.mutation("statement", "st-1", STATEMENT)])
    assert r["status"] == "applied"
    seq = await head(server)

    # The same statement again (a retry under a new mutation id) is harmless.
    [again] = await b.push([b.mutation("statement", "st-1", dict(STATEMENT))])
    assert again["status"] == "stale"

    other = {**STATEMENT, "verb": {"id": "http://adlnet.gov/expapi/verbs/failed"}}
    results = await a.push(
        [
            a.mutation("statement", "st-1", other),  # dominating clock, other payload
            a.mutation("statement", "st-1", None),  # delete
        ]
    )
    [concurrent] = await b.push([b.mutation("statement", "st-1", other)])
    for result in [*results, concurrent]:
        assert result["status"] == "rejected", result
        assert error_code(result) == "immutable"
        assert result["error"]["message"]
    assert await head(server) == seq
    assert await full_state(a) == {("statement", "st-1"): STATEMENT}

    # Payloads that break the statement shape are rejected; the others still apply.
    bad = [
        {k: v for k, v in STATEMENT.items() if k != "actor"},  # a required field missing
        {**STATEMENT, "id": "st-2", "verb": "completed"},  # a field of the wrong JSON type
        {**STATEMENT, "id": "st-other"},  # the statement id is not the entity id
    ]
    results = await a.push(
        [a.mutation("statement", "st-2", payload) for payload in bad]
        + [a.mutation("statement", "st-3", {**STATEMENT, "id": "st-3"})]
    )
    assert statuses(results) == ["rejected"] * 3 + ["applied"]
    assert [error_code(r) for r in results[:3]] == ["invalid_payload"] * 3
    assert all(r["clock"] is None and r["error"]["message"] for r in results[:3])
    assert set(await full_state(a)) == {("statement", "st-1"), ("statement", "st-3")}


async def test_progress_merges_monotonically_across_devices(server: Server) -> None:
    a = await register(server, "alice", "dev-a")
    b = await register(server, "alice", "dev-b")
    side_a = {"completion": 0.8, "score": 70, "passed": False, "completed": ["m1", "m2"]}
    side_b = {"completion": 0.5, "score": 92, "passed": True, "completed": ["m2", "m3"]}
    [ra] = await a.push([a.mutation("progress", "course-7", side_a)])
    [rb] = await b.push([b.mutation("progress", "course-7", side_b)])
    assert ra["status"] == "applied"
    assert rb["status"] == "merged"
    assert dominates_both(rb["clock"], {"dev-a": 1}, {"dev-b": 1})
    expected = {"completion": 0.8, "score": 92, "passed": True, "completed": ["m1", "m2", "m3"]}
    for dev in (a, b):
        [change] = await dev.pull_all()
        assert change["op"] == "put"
        assert change["payload"] == expected
        assert change["clock"] == rb["clock"]

    # A write that saw the merge but carries lower values cannot take progress backwards.
    lower = {"completion": 0.1, "score": 10, "passed": False, "completed": []}
    seen = {**rb["clock"], "dev-a": rb["clock"]["dev-a"] + 1}
    [rl] = await a.push([a.mutation("progress", "course-7", lower, clock=seen)])
    assert rl["status"] == "merged"
    assert dominates_both(rl["clock"], seen)
    # Neither can a concurrent delete (a put wins over it).
    [rd] = await b.push([b.mutation("progress", "course-7", None, clock={"dev-b": 2})])
    assert rd["status"] == "merged"
    assert dominates_both(rd["clock"], rl["clock"], {"dev-b": 2})
    for dev in (a, b):
        changes = await dev.pull_all()
        assert [(c["op"], c["payload"]) for c in changes] == [("put", expected)]
    assert (await stored(server, "progress", "course-7")).payload == expected


async def test_simultaneous_progress_pushes_merge_without_loss(server: Server) -> None:
    a = await register(server, "alice", "dev-a")
    b = await register(server, "alice", "dev-b")
    courses = [f"course-{i}" for i in range(10)]
    batch_a = [
        a.mutation("progress", c, {"score": i, "done": ["a"]}) for i, c in enumerate(courses)
    ]
    batch_b = [
        b.mutation("progress", c, {"score": 9 - i, "done": ["b"]}) for i, c in enumerate(courses)
    ]
    results_a, results_b = await asyncio.gather(a.push(batch_a), b.push(batch_b))
    for ma, mb, ra, rb in zip(batch_a, batch_b, results_a, results_b, strict=True):
        assert sorted([ra["status"], rb["status"]]) == ["applied", "merged"]
        merged = ra if ra["status"] == "merged" else rb
        assert dominates_both(merged["clock"], ma["clock"], mb["clock"])
    state = await full_state(b)
    assert state == {
        ("progress", c): {"score": max(i, 9 - i), "done": state[("progress", c)]["done"]}
        for i, c in enumerate(courses)
    }
    assert all(sorted(p["done"]) == ["a", "b"] for p in state.values())


async def test_bookmark_last_writer_wins_on_ts_then_device(server: Server) -> None:
    a = await register(server, "alice", "dev-a")
    b = await register(server, "alice", "dev-b")
    t = now_ms(server) - 60_000
    pairs = [
        # The later ts wins when it arrives first...
        (a.mutation("bookmark", "bm-1", {"page": 10}, ts=t + 1000), b, ("bm-1", {"page": 20}, t)),
        # ...and when it arrives second.
        (a.mutation("bookmark", "bm-2", {"page": 1}, ts=t), b, ("bm-2", {"page": 2}, t + 1000)),
        # Equal ts: the greater device id ("dev-b") breaks the tie, in either order.
        (a.mutation("bookmark", "bm-3", {"page": 3}, ts=t), b, ("bm-3", {"page": 4}, t)),
        (b.mutation("bookmark", "bm-4", {"page": 5}, ts=t), a, ("bm-4", {"page": 6}, t)),
    ]
    for first, dev, (eid, payload, ts) in pairs:
        writer = a if dev is b else b
        second = dev.mutation("bookmark", eid, payload, ts=ts)
        [r1] = await writer.push([first])
        [r2] = await dev.push([second])
        assert (r1["status"], r2["status"]) == ("applied", "merged")
        assert dominates_both(r2["clock"], first["clock"], second["clock"])
    expected = {
        ("bookmark", "bm-1"): {"page": 10},
        ("bookmark", "bm-2"): {"page": 2},
        ("bookmark", "bm-3"): {"page": 4},
        ("bookmark", "bm-4"): {"page": 5},
    }
    for dev in (a, b):
        changes = await dev.pull_all()
        assert {(c["entity_type"], c["entity_id"]): c["payload"] for c in changes} == expected

    # A ts far in the server's future is clamped.
    ten_days = 10 * 86400 * 1000
    [r1] = await a.push([a.mutation("bookmark", "bm", {"page": 1}, ts=now_ms(server) + ten_days)])
    assert r1["status"] == "applied"
    server.clock.advance(minutes=5)
    # Five minutes later a concurrent write is later than the clamped ts (now + at most 60 s);
    # had the server kept the claimed ts, dev-a would win for ten days.
    [r2] = await b.push([b.mutation("bookmark", "bm", {"page": 2}, ts=now_ms(server))])
    assert r2["status"] == "merged"
    assert (await full_state(a))[("bookmark", "bm")] == {"page": 2}


async def test_note_concurrent_write_is_a_conflict_holding_both_sides(server: Server) -> None:
    a = await register(server, "alice", "dev-a")
    b = await register(server, "alice", "dev-b")
    [ra] = await a.push([a.mutation("note", "n1", {"text": "from a"})])
    mb = b.mutation("note", "n1", {"text": "from b"})
    [rb] = await b.push([mb])
    assert ra["status"] == "applied"
    assert rb["status"] == "conflict"
    assert rb["conflict_id"]
    assert rb["clock"] == {"dev-a": 1}  # the stored clock: nothing changed yet
    assert await full_state(b) == {("note", "n1"): {"text": "from a"}}

    http = server.http()
    r = await http.get(f"/admin/v1/conflicts/{rb['conflict_id']}", headers=admin_headers(server))
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["conflict_id"] == rb["conflict_id"]
    assert (record["entity_type"], record["entity_id"], record["status"]) == ("note", "n1", "open")
    assert record["server"]["payload"] == {"text": "from a"}
    assert record["server"]["clock"] == {"dev-a": 1}
    assert record["client"]["payload"] == {"text": "from b"}
    assert record["client"]["clock"] == {"dev-b": 1}
    assert record["client"]["device_id"] == "dev-b"

    # Replaying the conflicting mutation: duplicate with the same conflict id, no new record.
    [again] = await b.push([mb])
    assert again == {**rb, "status": "duplicate"}
    listed = await http.get(
        "/admin/v1/conflicts", params={"status": "open"}, headers=admin_headers(server)
    )
    assert [c["conflict_id"] for c in listed.json()["conflicts"]] == [rb["conflict_id"]]


async def test_device_writes_to_server_authored_and_unknown_types_are_rejected(
    server: Server,
) -> None:
    a = await register(server, "alice", "dev-a")
    results = await a.push(
        [
            a.mutation("enrollment", "e1", {"course": "c1"}),
            a.mutation("certificate", "cert-1", {"course": "c1"}),
            a.mutation("bundle", "b1", {"version": 3}),
            a.mutation("enrollment", "e2", None),
            a.mutation("no-such-type", "x", {"a": 1}),
            a.mutation("bookmark", "bm", {"page": 1}),
        ]
    )
    assert statuses(results) == ["rejected"] * 5 + ["applied"]
    assert [error_code(r) for r in results[:5]] == ["read_only"] * 4 + ["unknown_entity_type"]
    assert await full_state(a) == {("bookmark", "bm"): {"page": 1}}

    # Also after the server wrote one: the device still cannot overwrite it.
    http = server.http()
    r = await http.put(
        "/admin/v1/entities/enrollment/e1",
        params={"owner": "alice"},
        json={"course": "c1"},
        headers=admin_headers(server),
    )
    assert r.status_code == 200, r.text
    clock = {**r.json()["clock"], "dev-a": 9}
    [r2] = await a.push([a.mutation("enrollment", "e1", {"course": "hacked"}, clock=clock)])
    assert (r2["status"], error_code(r2)) == ("rejected", "read_only")
    assert (await full_state(a))[("enrollment", "e1")] == {"course": "c1"}

    # More than 500 mutations: 413, nothing applied.
    seq = await head(server)
    batch = [a.mutation("bookmark", f"bm-{i}", {"page": i}) for i in range(501)]
    r = await a.post("/sync/v1/push", {"mutations": batch})
    assert (r.status_code, error_code_of(r)) == (413, "batch_too_large")
    assert await head(server) == seq


# -- replay -------------------------------------------------------------------------------


async def test_replayed_batch_applies_nothing_and_returns_first_results(server: Server) -> None:
    a = await register(server, "alice", "dev-a")
    b = await register(server, "alice", "dev-b")
    await a.push(
        [
            a.mutation("progress", "c1", {"completion": 0.9, "completed": ["m1"]}),
            a.mutation("bookmark", "bm", {"page": 5}, ts=now_ms(server)),
            a.mutation("note", "n1", {"text": "a"}),
        ]
    )
    t = now_ms(server) - 1000
    batch = [
        b.mutation("progress", "c1", {"completion": 0.4, "completed": ["m2"]}),  # merged
        b.mutation("bookmark", "bm", {"page": 6}, ts=t),  # merged, stored side wins
        b.mutation("note", "n1", {"text": "b"}),  # conflict
        b.mutation("statement", "st-1", STATEMENT),  # applied
        b.mutation("statement", "st-1", {**STATEMENT, "object": {"id": "x"}}),  # rejected
        b.mutation("certificate", "cert", {"x": 1}),  # rejected (read only)
    ]
    batch.append(dict(batch[0]))  # the same mutation id twice in one batch
    first = await b.push(batch)
    assert statuses(first) == [
        "merged",
        "merged",
        "conflict",
        "applied",
        "rejected",
        "rejected",
        "duplicate",
    ]
    assert first[6] == {**first[0], "status": "duplicate"}
    await b.pull_all()
    store_before = await head(server)
    state_before = await full_state(b)
    http = server.http()
    conflicts = await http.get("/admin/v1/conflicts", headers=admin_headers(server))
    snaps = await http.get(
        "/admin/v1/entities/progress/c1/snapshots",
        params={"owner": "alice"},
        headers=admin_headers(server),
    )

    replay = await b.push(batch)
    assert replay == [{**r, "status": "duplicate"} for r in first]
    assert await head(server) == store_before
    assert await b.pull_all() == []
    assert await full_state(b) == state_before
    assert (await http.get("/admin/v1/conflicts", headers=admin_headers(server))).json() == (
        conflicts.json()
    )
    snaps_after = await http.get(
        "/admin/v1/entities/progress/c1/snapshots",
        params={"owner": "alice"},
        headers=admin_headers(server),
    )
    assert snaps_after.json() == snaps.json()
    # The same batch sent twice at once (a retry racing the original): applied once only.
    again = [b.mutation("bookmark", f"race-{i}", {"page": i}) for i in range(20)]
    seq = await head(server)
    one, two = await asyncio.gather(b.push(again), b.push(again))
    assert sorted([statuses(one), statuses(two)]) == [["applied"] * 20, ["duplicate"] * 20]
    assert await head(server) == seq + 20
    # Mutation ids are per device: the same id from another device is a new mutation.
    [other] = await a.push([{**batch[1], "clock": {**first[1]["clock"], "dev-a": 99}}])
    assert other["status"] == "applied"


# -- offline for a week -------------------------------------------------------------------


async def test_device_offline_for_seven_days_converges_without_resync(server: Server) -> None:
    a = Replica(await register(server, "alice", "dev-a"))
    b = Replica(await register(server, "alice", "dev-b"))

    # Both online: shared starting point.
    a.edit("progress", "c1", {"completion": 0.2, "completed": ["m1"]}, now_ms(server))
    a.edit("bookmark", "bm-1", {"page": 1}, now_ms(server))
    a.edit("bookmark", "bm-2", {"page": 1}, now_ms(server))
    a.edit("note", "n1", {"text": "start"}, now_ms(server))
    a.edit("note", "n2", {"text": "start"}, now_ms(server))
    a.edit("bookmark", "bm-4", {"page": 1}, now_ms(server))
    a.edit("progress", "c2", {"completion": 0.1}, now_ms(server))
    assert statuses(await a.sync()) == ["applied"] * 7
    await b.pull()
    assert b.entities == a.entities
    b_cursor = b.dev.cursor

    # dev-b goes offline for seven days; both keep editing.
    server.clock.advance(days=1)
    b_progress = {"completion": 0.5, "completed": ["m1", "m2"], "score": 80}
    b.edit("progress", "c1", b_progress, now_ms(server))
    b.edit("bookmark", "bm-1", {"page": 7}, now_ms(server))  # older than dev-a's edit below
    b.edit("note", "n1", {"text": "b's offline edit"}, now_ms(server))
    b.edit("bookmark", "bm-4", {"page": 2}, now_ms(server))  # older than dev-a's delete
    server.clock.advance(days=1)
    a.edit("progress", "c1", {"completion": 0.4, "completed": ["m1", "m4"]}, now_ms(server))
    a.edit("bookmark", "bm-2", {"page": 3}, now_ms(server))  # older than dev-b's edit below
    a.edit("note", "n1", {"text": "a's edit"}, now_ms(server))
    a.edit("note", "n2", {"text": "only a touched this"}, now_ms(server))
    a.edit("bookmark", "bm-4", None, now_ms(server))
    a.edit("progress", "c2", None, now_ms(server))
    assert statuses(await a.sync()) == ["applied"] * 6
    server.clock.advance(days=2)
    a.edit("bookmark", "bm-1", {"page": 9}, now_ms(server))
    assert statuses(await a.sync()) == ["applied"]
    server.clock.advance(days=3)
    b.edit("bookmark", "bm-2", {"page": 12}, now_ms(server))
    b.edit("bookmark", "bm-3", {"page": 1}, now_ms(server))  # new while offline
    b.edit("bookmark", "bm-3", {"page": 2}, now_ms(server))  # and edited again

    # Back online after seven days, with the old cursor: push, then pull.
    assert b.dev.cursor == b_cursor
    results = await b.push()
    want = ["merged", "merged", "conflict", "merged", "merged", "applied", "applied"]
    assert statuses(results) == want
    conflict_id = results[2]["conflict_id"]
    changes = await b.pull()  # pull_all asserts 200: no 410, no full resync
    assert {c["entity_id"] for c in changes} >= {"c1", "bm-1", "bm-2", "n1", "n2"}
    await a.pull()

    expected = {
        ("progress", "c1"): {"completion": 0.5, "completed": ["m1", "m4", "m2"], "score": 80},
        ("bookmark", "bm-1"): {"page": 9},
        ("bookmark", "bm-2"): {"page": 12},
        ("bookmark", "bm-3"): {"page": 2},
        ("note", "n1"): {"text": "a's edit"},  # the conflict keeps the stored side until resolved
        ("note", "n2"): {"text": "only a touched this"},
    }
    server_state = await full_state(a.dev)
    for (etype, eid), payload in server_state.items():
        entity = await stored(server, etype, eid)
        assert (entity.payload, entity.deleted) == (payload, False)
    assert _same_lists(server_state, expected)
    for etype, eid in (("bookmark", "bm-4"), ("progress", "c2")):  # deleted while b was away
        assert (await stored(server, etype, eid)).deleted
        assert any(c["entity_id"] == eid and c["op"] == "delete" for c in changes)
    assert a.entities == b.entities == server_state

    # The admin settles the note for dev-b's side; both devices get it on their next pull.
    http = server.http()
    r = await http.post(
        f"/admin/v1/conflicts/{conflict_id}/resolve",
        json={"choice": "client"},
        headers=admin_headers(server),
    )
    assert r.status_code == 200, r.text
    await a.pull()
    await b.pull()
    assert a.entities[("note", "n1")] == {"text": "b's offline edit"}
    assert a.entities == b.entities == await full_state(a.dev)
    assert a.clocks == b.clocks

    # Later edits from either side dominate what they pulled: plain applies, no more merges.
    a.edit("note", "n1", {"text": "final"}, now_ms(server))
    assert statuses(await a.sync()) == ["applied"]
    await b.pull()
    assert b.entities == a.entities

    r = await http.get("/admin/v1/devices", headers=admin_headers(server))
    assert {d["device_id"]: d["full_resyncs"] for d in r.json()["devices"]} == {
        "dev-a": 0,
        "dev-b": 0,
    }


def _same_lists(got: dict[Any, Any], want: dict[Any, Any]) -> bool:
    """Equal, with list values compared as sets (union order depends on arrival order)."""

    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return sorted(map(str, value))
        return value

    return norm(got) == norm(want)
