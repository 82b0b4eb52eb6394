"""End-to-end pull over a real socket, on SQLite and PostgreSQL (design.md §3, Pull/Ack).

Paging, the initial state without tombstones, deletes after a cursor, changes made while an
initial pull pages, limits, latest-per-entity, tenant/user scoping, and the cursors that must
end in `410 full_resync_required` or `403 device_mismatch`.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.sync_client import Device

pytestmark = pytest.mark.anyio

TENANT = "acme"


async def device(server: Server, user: str, device_id: str, tenant: str = TENANT) -> Device:
    return await Device.register(
        server.http(), server.token(tenant, user), device_id, server.clock.time
    )


def apply(state: dict[tuple[str, str], Any], changes: list[dict[str, Any]]) -> None:
    """Apply pulled changes to a device-side replica {(type, id): (payload, clock)}."""
    for c in changes:
        key = (c["entity_type"], c["entity_id"])
        if c["op"] == "delete":
            assert c["payload"] is None
            state.pop(key, None)
        else:
            assert c["op"] == "put"
            state[key] = (c["payload"], c["clock"])


async def server_state(server: Server, dev: Device) -> dict[tuple[str, str], Any]:
    """What a fresh device of the same user gets: the reference for a replica."""
    fresh = Device(dev.http, dev.device_id, dev.token, dev.secret, server.clock.time)
    state: dict[tuple[str, str], Any] = {}
    apply(state, await fresh.pull_all(limit=1000))
    return state


def assert_resync(r: httpx.Response, reason: str) -> None:
    assert r.status_code == 410, r.text
    error = r.json()["error"]
    assert error["code"] == "full_resync_required"
    assert error["reason"] == reason
    assert isinstance(error["message"], str) and error["message"]


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)


async def push_ok(dev: Device, mutations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = await dev.push(mutations)
    assert [r["status"] for r in results] == ["applied"] * len(mutations), results
    return results


# -- paging ---------------------------------------------------------------------------


async def test_paging_5000_entities_each_exactly_once(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    expected = {}
    for start in range(0, 5000, 500):
        batch = [
            dev.mutation("bookmark", f"b{i:05d}", {"position": i})
            for i in range(start, start + 500)
        ]
        await push_ok(dev, batch)
        expected.update({("bookmark", m["entity_id"]): m["payload"] for m in batch})

    reader = await device(server, "alice", "dev-reader")
    seen: Counter[tuple[str, str]] = Counter()
    payloads = {}
    pages = 0
    cursor = None
    while True:
        r = await reader.pull_page(cursor)  # default limit: 500
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        assert len(body["changes"]) <= 500
        assert isinstance(body["cursor"], str) and body["cursor"]
        for c in body["changes"]:
            assert c["op"] == "put"
            seen[(c["entity_type"], c["entity_id"])] += 1
            payloads[(c["entity_type"], c["entity_id"])] = c["payload"]
        cursor = body["cursor"]
        if not body["has_more"]:
            break
        assert len(body["changes"]) == 500  # only the last page may be short
        assert pages <= 11, "paging does not end"
    assert pages >= 10
    assert set(seen) == set(expected)
    assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1][:5]
    assert payloads == expected

    # Nothing new: the cursor is at the head; the next pull is empty.
    r = await reader.pull_page(cursor)
    assert r.status_code == 200
    assert r.json()["changes"] == [] and r.json()["has_more"] is False

    # The maximum page size is honoured too.
    reader2 = await device(server, "alice", "dev-reader-2")
    r = await reader2.pull_page(limit=1000)
    assert len(r.json()["changes"]) == 1000 and r.json()["has_more"] is True


async def test_initial_pull_is_current_state_without_tombstones(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    await push_ok(dev, [dev.mutation("bookmark", f"b{i}", {"position": i}) for i in range(10)])
    await push_ok(dev, [dev.mutation("bookmark", f"b{i}", None) for i in (2, 5, 7)])
    await push_ok(dev, [dev.mutation("bookmark", "b0", {"position": 100})])

    fresh = await device(server, "alice", "dev-b")
    changes = await fresh.pull_all(limit=3)  # small pages: tombstones between pages too
    assert all(c["op"] == "put" for c in changes), changes
    got = {c["entity_id"]: c["payload"] for c in changes}
    want = {f"b{i}": {"position": i} for i in range(10) if i not in (2, 5, 7)}
    want["b0"] = {"position": 100}
    assert got == want
    assert len(changes) == len(want)


async def test_deletes_after_a_cursor_arrive_as_delete(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    reader = await device(server, "alice", "dev-b")
    await push_ok(dev, [dev.mutation("bookmark", f"b{i}", {"position": i}) for i in range(5)])
    assert len(await reader.pull_all()) == 5

    await push_ok(dev, [dev.mutation("bookmark", "b1", None), dev.mutation("bookmark", "b3", None)])
    changes = await reader.pull_all()
    assert sorted((c["entity_id"], c["op"], c["payload"]) for c in changes) == [
        ("b1", "delete", None),
        ("b3", "delete", None),
    ]
    for c in changes:
        assert c["entity_type"] == "bookmark" and isinstance(c["clock"], dict) and c["clock"]


async def test_change_during_initial_paging_is_not_lost(server: Server) -> None:
    writer = await device(server, "alice", "dev-w")
    await push_ok(
        writer, [writer.mutation("bookmark", f"b{i:02d}", {"position": i}) for i in range(30)]
    )
    reader = await device(server, "alice", "dev-r")
    replica: dict[tuple[str, str], Any] = {}

    r = await reader.pull_page(limit=10)
    assert r.status_code == 200
    page = r.json()
    assert page["has_more"] is True and len(page["changes"]) == 10
    apply(replica, page["changes"])
    first_ids = {c["entity_id"] for c in page["changes"]}
    read_one = sorted(first_ids)[0]
    unread = sorted({f"b{i:02d}" for i in range(30)} - first_ids)

    # Between two pages: delete one entity already sent and one not yet sent, update one
    # already sent and one not yet sent, and create a new one.
    await push_ok(
        writer,
        [
            writer.mutation("bookmark", read_one, None),
            writer.mutation("bookmark", unread[0], None),
            writer.mutation("bookmark", sorted(first_ids)[1], {"position": 1000}),
            writer.mutation("bookmark", unread[1], {"position": 2000}),
            writer.mutation("bookmark", "new", {"position": 3000}),
        ],
    )
    cursor = page["cursor"]
    rest: list[dict[str, Any]] = []
    for _ in range(10):
        r = await reader.pull_page(cursor, limit=10)
        assert r.status_code == 200, r.text
        rest.extend(r.json()["changes"])
        cursor = r.json()["cursor"]
        if not r.json()["has_more"]:
            break
    else:
        pytest.fail("paging does not end")
    apply(replica, rest)

    deletes = {c["entity_id"] for c in rest if c["op"] == "delete"}
    assert read_one in deletes, "a delete of an entity sent on an earlier page was lost"
    assert ("bookmark", unread[0]) not in replica
    assert replica[("bookmark", sorted(first_ids)[1])][0] == {"position": 1000}
    assert replica[("bookmark", unread[1])][0] == {"position": 2000}
    assert replica[("bookmark", "new")][0] == {"position": 3000}
    assert replica == await server_state(server, reader)
    # Latest per entity: nothing arrives twice after the change.
    ids = [c["entity_id"] for c in rest]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize(
    "limit", ["1001", "0", "-1", "abc", "1.5", "", "5_0", "+5", "\u0661\u0662", "1e3"]
)
async def test_bad_limit_is_400(server: Server, limit: str) -> None:
    dev = await device(server, "alice", "dev-a")
    r = await dev.http.get(
        "/sync/v1/pull",
        params={"limit": limit},
        headers={"Authorization": f"Bearer {dev.token}"},
    )
    assert_error(r, 400, "invalid_request")


async def test_limit_bounds_are_accepted(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    await push_ok(dev, [dev.mutation("bookmark", f"b{i}", {"position": i}) for i in range(3)])
    for limit, n, more in ((1, 1, True), (1000, 3, False)):
        r = await dev.pull_page(limit=limit)
        assert r.status_code == 200, r.text
        assert (len(r.json()["changes"]), r.json()["has_more"]) == (n, more)


async def test_latest_state_per_entity_only(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    reader = await device(server, "alice", "dev-b")
    await push_ok(dev, [dev.mutation("bookmark", "b1", {"position": 1})])
    await reader.pull_all()
    await push_ok(dev, [dev.mutation("bookmark", "b1", {"position": 2})])
    last = await push_ok(dev, [dev.mutation("bookmark", "b1", {"position": 3})])
    changes = await reader.pull_all()
    assert len(changes) == 1, changes
    assert changes[0]["payload"] == {"position": 3}
    assert changes[0]["clock"] == last[0]["clock"]
    # Put then delete between pulls: one change, the delete.
    await push_ok(dev, [dev.mutation("bookmark", "b1", {"position": 4})])
    await push_ok(dev, [dev.mutation("bookmark", "b1", None)])
    changes = await reader.pull_all()
    assert [(c["entity_id"], c["op"]) for c in changes] == [("b1", "delete")]


# -- scoping ------------------------------------------------------------------------------


async def test_user_and_tenant_scoping(server: Server) -> None:
    alice = await device(server, "alice", "dev-alice")
    bob = await device(server, "bob", "dev-bob")
    other = await device(server, "alice", "dev-alice", tenant="other-tenant")
    alice_reader = await device(server, "alice", "dev-alice-2")
    await push_ok(alice, [alice.mutation("bookmark", "shared-id", {"who": "alice"})])
    await push_ok(bob, [bob.mutation("bookmark", "shared-id", {"who": "bob"})])
    await push_ok(bob, [bob.mutation("progress", "bob-only", {"completion": 0.5})])
    await push_ok(other, [other.mutation("bookmark", "other", {"who": "other-tenant"})])

    admin = server.http()
    r = await admin.put(
        "/admin/v1/entities/bundle/b1",
        json={"title": "Bundle 1"},
        headers={"Authorization": f"Bearer {server.token(TENANT, 'root', 'admin')}"},
    )
    assert r.status_code == 200, r.text

    def view(changes: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        return {(c["entity_type"], c["entity_id"], str(c["payload"])) for c in changes}

    # Initial pulls, and incremental pulls after a cursor.
    for dev in (alice_reader, bob, other):
        dev.cursor = None
    assert view(await alice_reader.pull_all()) == {
        ("bookmark", "shared-id", "{'who': 'alice'}"),
        ("bundle", "b1", "{'title': 'Bundle 1'}"),
    }
    assert view(await bob.pull_all()) == {
        ("bookmark", "shared-id", "{'who': 'bob'}"),
        ("progress", "bob-only", "{'completion': 0.5}"),
        ("bundle", "b1", "{'title': 'Bundle 1'}"),
    }
    assert view(await other.pull_all()) == {("bookmark", "other", "{'who': 'other-tenant'}")}

    await push_ok(bob, [bob.mutation("bookmark", "bob-2", {"who": "bob"})])
    r = await admin.put(
        "/admin/v1/entities/bundle/b2",
        json={"title": "Bundle 2"},
        headers={"Authorization": f"Bearer {server.token(TENANT, 'root', 'admin')}"},
    )
    assert r.status_code == 200, r.text
    assert view(await alice_reader.pull_all()) == {("bundle", "b2", "{'title': 'Bundle 2'}")}
    assert view(await other.pull_all()) == set()


# -- cursors that cannot be served --------------------------------------------------------


def tamper(cursor: str) -> list[str]:
    """Garbage, and forgeries of a real cursor: a raised position under the old tag, a
    flipped tag, a truncated or extended token."""
    body, tag = cursor.split(".")
    try:  # today's token body: [version, tenant, device, seq, ...]; raise the seq
        fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        fields[3] += 1000
        raw = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode())
        forged = raw.rstrip(b"=").decode()
    except (ValueError, TypeError, IndexError, KeyError):  # another format: flip a character
        forged = body[:-1] + ("A" if body[-1] != "A" else "B")
    flipped_tag = ("A" if tag[0] != "A" else "B") + tag[1:]
    return [
        "garbage",
        "",
        "a.b",
        "a.b.c",
        "%%%.%%%",
        "\u00e9.\u00fc",
        "x" * 5000,
        f"{forged}.{tag}",
        f"{body}.{flipped_tag}",
        f"{body}.",
        f".{tag}",
        cursor + "A",
    ]


async def test_garbage_or_tampered_cursor_is_410_invalid_cursor(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    await push_ok(dev, [dev.mutation("bookmark", "b1", {"position": 1})])
    await dev.pull_all()
    assert dev.cursor is not None
    bad = tamper(dev.cursor)
    for token in bad:
        r = await dev.pull_page(token)
        assert_resync(r, "invalid_cursor")

    # The real cursor still works; the resyncs were counted for this device only.
    r = await dev.pull_page(dev.cursor)
    assert r.status_code == 200, r.text
    r = await server.http().get(
        "/admin/v1/devices",
        headers={"Authorization": f"Bearer {server.token(TENANT, 'root', 'admin')}"},
    )
    assert r.status_code == 200, r.text
    counts = {d["device_id"]: d["full_resyncs"] for d in r.json()["devices"]}
    assert counts == {"dev-a": len(bad)}


async def test_cursor_before_pruned_tombstones_is_410_tombstone_horizon(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    reader = await device(server, "alice", "dev-b")
    await push_ok(dev, [dev.mutation("bookmark", "b1", {"position": 1})])
    await reader.pull_all()
    old_cursor = reader.cursor
    await push_ok(dev, [dev.mutation("bookmark", "b1", None)])
    server.clock.advance(days=31)
    counts = await server.runtime.store.prune(server.clock.now(), 30 * 86400)
    assert counts["tombstones"] == 1

    r = await reader.pull_page(old_cursor)
    assert_resync(r, "tombstone_horizon")
    # A full resync (no cursor) works, and its cursor is served afterwards.
    reader.cursor = None
    assert await reader.pull_all() == []
    await push_ok(dev, [dev.mutation("bookmark", "b2", {"position": 2})])
    assert [c["entity_id"] for c in await reader.pull_all()] == ["b2"]

    r = await server.http().get(
        "/admin/v1/devices",
        headers={"Authorization": f"Bearer {server.token(TENANT, 'root', 'admin')}"},
    )
    counts_by_dev = {d["device_id"]: d["full_resyncs"] for d in r.json()["devices"]}
    assert counts_by_dev == {"dev-a": 0, "dev-b": 1}


async def test_prune_racing_a_pull_never_drops_a_delete(server: Server) -> None:
    """Retention commits between the pull's look at the log head and its read of the
    changes (forced here by running it right before the read): the device must not be
    served a page without the pruned delete; it gets 410 tombstone_horizon instead."""
    dev = await device(server, "alice", "dev-a")
    reader = await device(server, "alice", "dev-b")
    await push_ok(dev, [dev.mutation("bookmark", "b1", {"position": 1})])
    await reader.pull_all()
    old_cursor = reader.cursor
    await push_ok(dev, [dev.mutation("bookmark", "b1", None)])
    server.clock.advance(days=31)

    store = server.runtime.store
    read_changes = store.read_changes
    pruned: list[dict[str, int]] = []

    async def prune_first(*args: Any, **kwargs: Any) -> Any:
        if not pruned:
            pruned.append(await store.prune(server.clock.now(), 30 * 86400))
        return await read_changes(*args, **kwargs)

    store.read_changes = prune_first
    try:
        r = await reader.pull_page(old_cursor)
    finally:
        del store.read_changes
    assert pruned and pruned[0]["tombstones"] == 1
    if r.status_code == 200:
        ops = [(c["entity_id"], c["op"]) for c in r.json()["changes"]]
        pytest.fail(f"served {ops} after the delete of b1 was pruned: the delete is lost")
    assert_resync(r, "tombstone_horizon")


async def test_cursor_after_the_pruned_tombstones_is_still_served(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    await push_ok(dev, [dev.mutation("bookmark", "b1", {"position": 1})])
    await push_ok(dev, [dev.mutation("bookmark", "b1", None)])
    reader = await device(server, "alice", "dev-b")
    await reader.pull_all()  # its cursor is past the tombstone
    server.clock.advance(days=31)
    await server.runtime.store.prune(server.clock.now(), 30 * 86400)
    r = await reader.pull_page(reader.cursor)
    assert r.status_code == 200, r.text


async def test_seven_day_old_cursor_is_served(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    reader = await device(server, "alice", "dev-b")
    await push_ok(dev, [dev.mutation("bookmark", "b1", {"position": 1})])
    await reader.pull_all()
    await push_ok(dev, [dev.mutation("bookmark", "b1", None)])
    await push_ok(dev, [dev.mutation("bookmark", "b2", {"position": 2})])
    server.clock.advance(days=7)
    # Retention runs as it would in production; a week-old tombstone survives it.
    await server.runtime.store.prune(server.clock.now(), 30 * 86400)
    changes = await reader.pull_all()
    assert sorted((c["entity_id"], c["op"]) for c in changes) == [
        ("b1", "delete"),
        ("b2", "put"),
    ]
    assert (await reader.ack()).status_code == 204


async def test_cursor_of_another_device_is_403_device_mismatch(server: Server) -> None:
    a = await device(server, "alice", "dev-a")
    b = await device(server, "alice", "dev-b")
    bob = await device(server, "bob", "dev-bob")
    await push_ok(a, [a.mutation("bookmark", "b1", {"position": 1})])
    await b.pull_all()
    await a.pull_all()
    assert b.cursor is not None and a.cursor is not None
    for thief in (a, bob):
        r = await thief.pull_page(b.cursor)
        assert_error(r, 403, "device_mismatch")
        r = await thief.ack(b.cursor)
        assert_error(r, 403, "device_mismatch")
    # The owner's cursor works for the owner.
    assert (await b.pull_page(b.cursor)).status_code == 200
    assert (await b.ack()).status_code == 204


async def test_cursor_of_another_tenant_is_rejected(server: Server) -> None:
    a = await device(server, "alice", "dev-a")
    twin = await device(server, "alice", "dev-a", tenant="other-tenant")
    await a.pull_all()
    r = await twin.pull_page(a.cursor)
    assert_error(r, 403, "device_mismatch")
    r = await twin.ack(a.cursor)
    assert_error(r, 403, "device_mismatch")


async def test_ack_records_device_health(server: Server) -> None:
    dev = await device(server, "alice", "dev-a")
    await push_ok(dev, [dev.mutation("bookmark", f"b{i}", {"position": i}) for i in range(3)])
    admin_headers = {"Authorization": f"Bearer {server.token(TENANT, 'root', 'admin')}"}
    r = await server.http().get("/admin/v1/devices", headers=admin_headers)
    before = r.json()["devices"][0]
    assert before["lag"] == 3 and before["last_ack_at"] is None
    await dev.pull_all()
    assert (await dev.ack()).status_code == 204
    r = await server.http().get("/admin/v1/devices", headers=admin_headers)
    after = r.json()["devices"][0]
    assert after["lag"] == 0 and after["last_ack_at"] is not None
    assert after["full_resyncs"] == 0
