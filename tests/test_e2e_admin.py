"""End to end over the real socket: /admin/v1 (server-authored state, the pre-merge archive,
restore, conflict resolution, device health) and /sync/v1 device binding.

Every test runs on SQLite and on PostgreSQL (the `server` fixture).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from crdt_sync.model import EntityKey
from crdt_sync.vector_clock import Ordering, VectorClock
from tests.conftest import Server
from tests.sync_client import Device

pytestmark = pytest.mark.anyio

TENANT = "acme"
THIRTY_DAYS = timedelta(days=30)


# -- helpers ------------------------------------------------------------------------------


class Admin:
    """An admin of one tenant talking to /admin/v1."""

    def __init__(self, server: Server, tenant: str = TENANT, *roles: str) -> None:
        self.http = server.http()
        token = server.token(tenant, "admin-user", *(roles or ("admin",)))
        self.headers = {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, **params: str) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self.headers)

    async def put(self, path: str, body: Any, **params: str) -> httpx.Response:
        return await self.http.put(path, params=params, json=body, headers=self.headers)

    async def post(self, path: str, body: Any = None, **params: str) -> httpx.Response:
        return await self.http.post(path, params=params, json=body, headers=self.headers)

    async def delete(self, path: str, **params: str) -> httpx.Response:
        return await self.http.delete(path, params=params, headers=self.headers)

    async def snapshots(self, etype: str, eid: str, owner: str = "alice") -> list[dict[str, Any]]:
        r = await self.get(f"/admin/v1/entities/{etype}/{eid}/snapshots", owner=owner)
        assert r.status_code == 200, r.text
        found: list[dict[str, Any]] = r.json()["snapshots"]
        return found

    async def resolve(self, conflict_id: str, body: dict[str, Any]) -> httpx.Response:
        return await self.post(f"/admin/v1/conflicts/{conflict_id}/resolve", body)

    async def devices(self) -> dict[str, dict[str, Any]]:
        r = await self.get("/admin/v1/devices")
        assert r.status_code == 200, r.text
        return {d["device_id"]: d for d in r.json()["devices"]}


async def register(server: Server, user: str, device_id: str, tenant: str = TENANT) -> Device:
    return await Device.register(
        server.http(), server.token(tenant, user), device_id, server.clock.time
    )


def by_key(changes: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["entity_type"], c["entity_id"]): c for c in changes}


def payloads(changes: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    return {k: (c["op"], c["payload"]) for k, c in by_key(changes).items()}


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def error_code(r: httpx.Response) -> str:
    code: str = r.json()["error"]["code"]
    return code


async def check_retention(server: Server, snapshots: list[dict[str, Any]]) -> None:
    """expires_at is exactly 30 days after created_at: on the wire and in the store."""
    for meta in snapshots:
        assert parse_time(meta["expires_at"]) - parse_time(meta["created_at"]) == THIRTY_DAYS
        stored = await server.runtime.store.get_snapshot(TENANT, meta["snapshot_id"])
        assert stored is not None
        assert stored.expires_at - stored.created_at == THIRTY_DAYS


async def conflicting_note(
    a: Device, b: Device, eid: str, text_a: str, text_b: str
) -> dict[str, Any]:
    [ra] = await a.push([a.mutation("note", eid, {"text": text_a})])
    [rb] = await b.push([b.mutation("note", eid, {"text": text_b})])
    assert (ra["status"], rb["status"]) == ("applied", "conflict")
    return rb


# -- server-authored state ----------------------------------------------------------------


async def check_admin_guards(server: Server) -> None:
    """Owner, type, body, role and token checks of /admin/v1; none of them writes."""
    admin = Admin(server)
    r = await admin.put("/admin/v1/entities/enrollment/e1", {"course": "c1"})
    assert (r.status_code, error_code(r)) == (400, "invalid_request")
    r = await admin.delete("/admin/v1/entities/certificate/c1")
    assert r.status_code == 400
    r = await admin.put("/admin/v1/entities/bundle/b1", {"version": 1}, owner="alice")
    assert r.status_code == 400  # a tenant-wide type has no owner
    r = await admin.put("/admin/v1/entities/no-such-type/x", {"a": 1}, owner="alice")
    assert r.status_code == 404
    r = await admin.http.put(
        "/admin/v1/entities/bundle/b1", content=b"not json", headers=admin.headers
    )
    assert r.status_code == 400
    assert await server.runtime.store.head(TENANT) == (0, 0)

    learner = Admin(server, TENANT, "learner")
    author = Admin(server, TENANT, "author")
    routes = [
        ("PUT", "/admin/v1/entities/enrollment/e1?owner=alice"),
        ("DELETE", "/admin/v1/entities/enrollment/e1?owner=alice"),
        ("GET", "/admin/v1/entities/enrollment/e1/snapshots?owner=alice"),
        ("GET", "/admin/v1/conflicts?status=open"),
        ("GET", "/admin/v1/conflicts/abc"),
        ("POST", "/admin/v1/conflicts/abc/resolve"),
        ("GET", "/admin/v1/devices"),
        ("DELETE", "/admin/v1/devices/dev-a"),
    ]
    for method, path in routes:
        for who in (learner, author):
            r = await who.http.request(method, path, json={"choice": "server"}, headers=who.headers)
            assert (r.status_code, error_code(r)) == (403, "forbidden"), (method, path)
        r = await learner.http.request(method, path, json={"choice": "server"})
        assert (r.status_code, error_code(r)) == (401, "unauthorized"), (method, path)
    assert await server.runtime.store.head(TENANT) == (0, 0)


async def test_admin_written_entities_reach_the_right_devices(server: Server) -> None:
    await check_admin_guards(server)
    admin = Admin(server)
    alice = await register(server, "alice", "alice-phone")
    alice2 = await register(server, "alice", "alice-laptop")
    bob = await register(server, "bob", "bob-phone")
    other = await register(server, "alice", "alice-phone", tenant="globex")
    for dev in (alice, alice2, bob, other):
        assert await dev.pull_all() == []
    # alice's own types reach her devices only.
    [r] = await alice.push([alice.mutation("progress", "c1", {"completion": 0.5})])
    assert r["status"] == "applied"
    assert payloads(await alice2.pull_all()) == {("progress", "c1"): ("put", {"completion": 0.5})}
    await alice.pull_all()

    r = await admin.put("/admin/v1/entities/enrollment/e1", {"course": "c1"}, owner="alice")
    assert r.status_code == 200, r.text
    assert r.json()["entity_type"] == "enrollment"
    assert r.json()["entity_id"] == "e1"
    assert r.json()["payload"] == {"course": "c1"}
    assert r.json()["op"] == "put"
    r = await admin.put("/admin/v1/entities/certificate/cert-1", {"grade": "A"}, owner="bob")
    assert r.status_code == 200, r.text
    r = await admin.put("/admin/v1/entities/bundle/b1", {"version": 1})
    assert r.status_code == 200, r.text

    enrollment = ("enrollment", "e1")
    certificate = ("certificate", "cert-1")
    bundle = ("bundle", "b1")
    for dev in (alice, alice2):
        got = payloads(await dev.pull_all())
        assert got == {enrollment: ("put", {"course": "c1"}), bundle: ("put", {"version": 1})}
    assert payloads(await bob.pull_all()) == {
        certificate: ("put", {"grade": "A"}),
        bundle: ("put", {"version": 1}),
    }
    assert await other.pull_all() == []  # another tenant sees none of it

    # A new version of the bundle reaches every device of the tenant, a delete arrives as such.
    r = await admin.put("/admin/v1/entities/bundle/b1", {"version": 2})
    assert r.status_code == 200, r.text
    assert VectorClock.from_json(r.json()["clock"]).get_count("server") == 2
    r = await admin.delete("/admin/v1/entities/enrollment/e1", owner="alice")
    assert r.status_code == 204, r.text
    for dev in (alice, alice2):
        changes = by_key(await dev.pull_all())
        assert set(changes) == {enrollment, bundle}
        assert (changes[enrollment]["op"], changes[enrollment]["payload"]) == ("delete", None)
        assert changes[bundle]["payload"] == {"version": 2}
    assert payloads(await bob.pull_all()) == {bundle: ("put", {"version": 2})}
    assert await other.pull_all() == []
    # A fresh pull has no tombstones.
    alice.cursor = None
    assert payloads(await alice.pull_all()) == {
        bundle: ("put", {"version": 2}),
        ("progress", "c1"): ("put", {"completion": 0.5}),
    }


# -- the pre-merge archive and restore ----------------------------------------------------


async def test_every_merge_conflict_and_resolution_is_archived_for_30_days(
    server: Server,
) -> None:
    admin = Admin(server)
    a = await register(server, "alice", "dev-a")
    b = await register(server, "alice", "dev-b")

    # Applied writes are not merges: no snapshot.
    [r] = await a.push([a.mutation("progress", "c1", {"completion": 0.3, "done": ["m1"]})])
    assert r["status"] == "applied"
    assert await admin.snapshots("progress", "c1") == []

    server.clock.advance(minutes=1)
    [r] = await b.push([b.mutation("progress", "c1", {"completion": 0.1, "done": ["m2"]})])
    assert r["status"] == "merged"
    server.clock.advance(minutes=1)
    [r] = await b.push([b.mutation("progress", "c1", {"completion": 0.9}, clock={"dev-b": 5})])
    assert r["status"] == "merged"
    snaps = await admin.snapshots("progress", "c1")
    assert len(snaps) == 2
    assert [s["reason"] for s in snaps] == ["merge", "merge"]
    assert snaps[0]["created_at"] > snaps[1]["created_at"]  # newest first
    assert snaps[0]["device_id"] == "dev-b"
    await check_retention(server, snaps)

    # Each snapshot holds the state the merge changed.
    oldest = await admin.get(f"/admin/v1/entities/progress/c1/snapshots/{snaps[1]['snapshot_id']}")
    assert oldest.status_code == 400  # owner is required for a per-user type
    oldest = await admin.get(
        f"/admin/v1/entities/progress/c1/snapshots/{snaps[1]['snapshot_id']}", owner="alice"
    )
    assert oldest.status_code == 200, oldest.text
    body = oldest.json()
    assert body["snapshot_id"] == snaps[1]["snapshot_id"]
    assert body["content"]["exists"] is True
    assert body["content"]["payload"] == {"completion": 0.3, "done": ["m1"]}
    assert body["content"]["clock"] == {"dev-a": 1}
    newest = await admin.get(
        f"/admin/v1/entities/progress/c1/snapshots/{snaps[0]['snapshot_id']}", owner="alice"
    )
    assert newest.json()["content"]["payload"] == {"completion": 0.3, "done": ["m1", "m2"]}
    # Snapshots are addressed under their own entity only.
    r = await admin.get(
        f"/admin/v1/entities/progress/c2/snapshots/{snaps[0]['snapshot_id']}", owner="alice"
    )
    assert r.status_code == 404
    r = await admin.get("/admin/v1/entities/progress/c1/snapshots/nope", owner="alice")
    assert r.status_code == 404

    # The diff answers against the current content, side by side.
    diff = await admin.get(
        f"/admin/v1/entities/progress/c1/snapshots/{snaps[1]['snapshot_id']}/diff", owner="alice"
    )
    assert diff.status_code == 200, diff.text
    d = diff.json()
    assert d["snapshot"] == {"completion": 0.3, "done": ["m1"]}
    assert d["current"] == {"completion": 0.9, "done": ["m1", "m2"]}
    rows = {row["path"]: row for row in d["rows"]}
    assert rows["completion"]["change"] == "changed"
    assert (rows["completion"]["before"], rows["completion"]["after"]) == (0.3, 0.9)
    assert rows["done"]["change"] == "changed"

    # A last-writer-wins merge, won by the stored side, is archived too.
    t = int(server.clock.time() * 1000)
    await a.push([a.mutation("bookmark", "bm", {"page": 2}, ts=t)])
    [r] = await b.push([b.mutation("bookmark", "bm", {"page": 1}, ts=t - 5000)])
    assert r["status"] == "merged"
    [snap] = await admin.snapshots("bookmark", "bm")
    assert snap["reason"] == "merge"
    await check_retention(server, [snap])

    # Several merges of one entity in one batch share created_at: still newest first.
    await a.push([a.mutation("bookmark", "bm2", {"page": 0}, ts=t)])
    results = await b.push(
        [b.mutation("bookmark", "bm2", {"page": i}, ts=t + i) for i in (1, 2, 3, 4)]
    )
    assert [r["status"] for r in results] == ["merged"] * 4
    batch_snaps = await admin.snapshots("bookmark", "bm2")
    assert len({s["created_at"] for s in batch_snaps}) == 1
    pages = []
    for s in batch_snaps:
        url = f"/admin/v1/entities/bookmark/bm2/snapshots/{s['snapshot_id']}"
        pages.append((await admin.get(url, owner="alice")).json()["content"]["payload"]["page"])
    assert pages == [3, 2, 1, 0]

    # A write that dominates but would take progress backwards is a merge too.
    [r] = await a.push(
        [
            a.mutation(
                "progress", "c1", {"completion": 0.5}, clock={"dev-a": 9, "dev-b": 9, "server": 9}
            )
        ]
    )
    assert r["status"] == "merged"
    snaps = await admin.snapshots("progress", "c1")
    assert [s["reason"] for s in snaps] == ["merge"] * 3
    newest = await admin.get(
        f"/admin/v1/entities/progress/c1/snapshots/{snaps[0]['snapshot_id']}", owner="alice"
    )
    assert newest.json()["content"]["payload"] == {"completion": 0.9, "done": ["m1", "m2"]}

    # A conflict and its resolution: one snapshot each.
    rb = await conflicting_note(a, b, "n1", "a", "b")
    conflict_snaps = await admin.snapshots("note", "n1")
    assert [s["reason"] for s in conflict_snaps] == ["conflict"]
    server.clock.advance(minutes=1)
    r = await admin.resolve(rb["conflict_id"], {"choice": "client"})
    assert r.status_code == 200, r.text
    note_snaps = await admin.snapshots("note", "n1")
    assert [s["reason"] for s in note_snaps] == ["conflict_resolution", "conflict"]
    await check_retention(server, note_snaps)
    content = await admin.get(
        f"/admin/v1/entities/note/n1/snapshots/{note_snaps[0]['snapshot_id']}", owner="alice"
    )
    assert content.json()["content"]["payload"] == {"text": "a"}
    # Nothing else was archived: snapshots of another user's entity are separate.
    assert await admin.snapshots("note", "n1", owner="bob") == []


async def test_restore_is_a_forward_version_and_can_be_undone(server: Server) -> None:
    admin = Admin(server)
    a = await register(server, "alice", "dev-a")
    b = await register(server, "alice", "dev-b")
    await a.push([a.mutation("progress", "c1", {"completion": 0.3, "score": 50})])
    [merged] = await b.push([b.mutation("progress", "c1", {"completion": 0.6})])
    assert merged["status"] == "merged"
    merged_payload = {"completion": 0.6, "score": 50}
    for dev in (a, b):
        assert payloads(await dev.pull_all()) == {("progress", "c1"): ("put", merged_payload)}
    [snap] = await admin.snapshots("progress", "c1")

    server.clock.advance(minutes=1)
    url = f"/admin/v1/entities/progress/c1/snapshots/{snap['snapshot_id']}/restore"
    r = await admin.post(url, owner="alice")
    assert r.status_code == 200, r.text
    pre_id = r.json()["pre_restore_snapshot_id"]
    assert pre_id and pre_id != snap["snapshot_id"]
    restored_clock = VectorClock.from_json(r.json()["entity"]["clock"])
    assert restored_clock.compare(VectorClock.from_json(merged["clock"])) is Ordering.AFTER
    for dev in (a, b):
        changes = await dev.pull_all()
        assert payloads(changes) == {("progress", "c1"): ("put", {"completion": 0.3, "score": 50})}
        assert changes[0]["clock"] == restored_clock.to_json()

    snaps = await admin.snapshots("progress", "c1")
    assert [s["snapshot_id"] for s in snaps] == [pre_id, snap["snapshot_id"]]
    assert snaps[0]["reason"] == "restore"
    await check_retention(server, snaps)
    pre = await admin.get(f"/admin/v1/entities/progress/c1/snapshots/{pre_id}", owner="alice")
    assert pre.json()["content"]["payload"] == merged_payload

    # Restoring the pre-restore snapshot brings the merged content back (to devices too).
    server.clock.advance(minutes=1)
    r = await admin.post(
        f"/admin/v1/entities/progress/c1/snapshots/{pre_id}/restore", owner="alice"
    )
    assert r.status_code == 200, r.text
    assert r.json()["pre_restore_snapshot_id"] not in (pre_id, snap["snapshot_id"])
    for dev in (a, b):
        assert payloads(await dev.pull_all()) == {("progress", "c1"): ("put", merged_payload)}
    stored = await server.runtime.store.get_entity(EntityKey(TENANT, "progress", "c1", "alice"))
    assert stored is not None and stored.payload == merged_payload
    assert len(await admin.snapshots("progress", "c1")) == 3

    # A device write that saw the restored version applies on top of it.
    clock = {**r.json()["entity"]["clock"], "dev-a": 7}
    [after] = await a.push(
        [a.mutation("progress", "c1", {**merged_payload, "score": 60}, clock=clock)]
    )
    assert after["status"] == "applied"

    # A snapshot of another entity or user cannot be restored through this one's route.
    r = await admin.post(url.replace("/c1/", "/c2/"), owner="alice")
    assert r.status_code == 404
    r = await admin.post(url, owner="bob")
    assert r.status_code == 404


# -- conflicts ----------------------------------------------------------------------------


async def test_conflicts_list_resolve_and_reach_devices(server: Server) -> None:
    admin = Admin(server)
    a = await register(server, "alice", "dev-a")
    b = await register(server, "alice", "dev-b")
    ids = {}
    for eid in ("n-server", "n-client", "n-custom"):
        ids[eid] = (await conflicting_note(a, b, eid, f"{eid} a", f"{eid} b"))["conflict_id"]
    # A concurrent delete conflicts too; choosing it deletes the note everywhere.
    await a.push([a.mutation("note", "n-delete", {"text": "keep?"})])
    [rd] = await b.push([b.mutation("note", "n-delete", None)])
    assert rd["status"] == "conflict"
    ids["n-delete"] = rd["conflict_id"]
    for dev in (a, b):
        await dev.pull_all()
    records = {}
    for eid, cid in ids.items():
        r = await admin.get(f"/admin/v1/conflicts/{cid}")
        assert r.status_code == 200, r.text
        records[eid] = r.json()

    r = await admin.get("/admin/v1/conflicts", status="open")
    assert r.status_code == 200, r.text
    listed = {c["conflict_id"]: c for c in r.json()["conflicts"]}
    assert set(listed) == set(ids.values())
    for eid, cid in ids.items():
        assert (listed[cid]["entity_type"], listed[cid]["entity_id"]) == ("note", eid)
        assert listed[cid]["status"] == "open"
        parse_time(listed[cid]["created_at"])
    assert (await admin.get("/admin/v1/conflicts", status="resolved")).json()["conflicts"] == []
    assert (await admin.get("/admin/v1/conflicts", status="bogus")).status_code == 400

    # Bad resolutions are 400 and change nothing.
    for bad in (
        {"choice": "mine"},
        {"choice": "custom"},
        {"choice": "server", "payload": {"text": "x"}},
        {"choice": "custom", "payload": "text"},
        {},
    ):
        r = await admin.resolve(ids["n-custom"], bad)
        assert r.status_code == 400, (bad, r.text)

    choices = {
        "n-server": ({"choice": "server"}, {"text": "n-server a"}),
        "n-client": ({"choice": "client"}, {"text": "n-client b"}),
        "n-custom": ({"choice": "custom", "payload": {"text": "merged"}}, {"text": "merged"}),
        "n-delete": ({"choice": "client"}, None),
    }
    for eid, (body, want) in choices.items():
        r = await admin.resolve(ids[eid], body)
        assert r.status_code == 200, r.text
        entity = r.json()
        op = "put" if want is not None else "delete"
        assert (entity["entity_type"], entity["entity_id"], entity["op"]) == ("note", eid, op)
        assert entity["payload"] == want
        clock = VectorClock.from_json(entity["clock"])
        for side in ("server", "client"):
            side_clock = VectorClock.from_json(records[eid][side]["clock"])
            assert clock.compare(side_clock) is Ordering.AFTER

    expected = {
        ("note", eid): ("put" if want else "delete", want) for eid, (_, want) in choices.items()
    }
    for dev in (a, b):
        assert payloads(await dev.pull_all()) == expected

    # Resolved: listed as such, once only, and dev-b's old write stays settled.
    r = await admin.resolve(ids["n-client"], {"choice": "server"})
    assert (r.status_code, error_code(r)) == (409, "already_resolved")
    assert (await admin.get("/admin/v1/conflicts", status="open")).json()["conflicts"] == []
    resolved = (await admin.get("/admin/v1/conflicts", status="resolved")).json()["conflicts"]
    assert {c["conflict_id"]: c["resolution"] for c in resolved} == {
        ids[eid]: body["choice"] for eid, (body, _) in choices.items()
    }
    record = (await admin.get(f"/admin/v1/conflicts/{ids['n-custom']}")).json()
    assert record["status"] == "resolved"
    assert record["resolved_at"] is not None
    client_clock = records["n-client"]["client"]["clock"]
    retry = b.mutation("note", "n-client", {"text": "n-client b"}, clock=client_clock)
    [again] = await b.push([retry])
    assert again["status"] == "stale"

    # Unknown ids, and ids of another tenant, are 404.
    for who, cid in [(admin, "nope"), (Admin(server, "globex"), ids["n-server"])]:
        r = await who.get(f"/admin/v1/conflicts/{cid}")
        assert (r.status_code, error_code(r)) == (404, "not_found")
        r = await who.resolve(cid, {"choice": "server"})
        assert (r.status_code, error_code(r)) == (404, "not_found")


# -- devices ------------------------------------------------------------------------------


async def test_device_registration_rotation_and_binding(server: Server) -> None:
    http = server.http()
    alice = server.token(TENANT, "alice")
    old = await Device.register(http, alice, "dev-a", server.clock.time)
    [r] = await old.push([old.mutation("bookmark", "bm", {"page": 1})])
    assert r["status"] == "applied"

    # The same user again: 201 with a new secret; the old secret no longer signs.
    new = await Device.register(http, alice, "dev-a", server.clock.time)
    assert new.secret != old.secret
    r = await old.post("/sync/v1/push", {"mutations": [old.mutation("bookmark", "x", {"p": 1})]})
    assert (r.status_code, error_code(r)) == (401, "unauthorized")  # superseded token
    stale = Device(http, "dev-a", new.token, old.secret, server.clock.time)
    r = await stale.post("/sync/v1/push", {"mutations": []})
    assert (r.status_code, error_code(r)) == (401, "bad_signature")
    assert await new.push([]) == []
    [r] = await new.push([new.mutation("bookmark", "bm", {"page": 2}, clock={"dev-a": 2})])
    assert r["status"] == "applied"

    # Another user of the tenant cannot take the id; another tenant has its own dev-a.
    r = await http.post(
        "/sync/v1/devices",
        json={"device_id": "dev-a"},
        headers={"Authorization": f"Bearer {server.token(TENANT, 'bob')}"},
    )
    assert (r.status_code, error_code(r)) == (409, "device_taken")
    elsewhere = await Device.register(
        http, server.token("globex", "bob"), "dev-a", server.clock.time
    )
    assert elsewhere.secret != new.secret
    assert await elsewhere.pull_all() == []
    [r] = await elsewhere.push([elsewhere.mutation("bookmark", "bm", {"page": 99})])
    assert r["status"] == "applied"
    assert payloads(await new.pull_all()) == {("bookmark", "bm"): ("put", {"page": 2})}

    # A cursor of one device is refused to another, also on ack.
    other = await Device.register(http, alice, "dev-other", server.clock.time)
    r = await other.pull_page(new.cursor)
    assert (r.status_code, error_code(r)) == (403, "device_mismatch")
    r = await other.ack(new.cursor)
    assert (r.status_code, error_code(r)) == (403, "device_mismatch")

    # Revoking: bob cannot revoke alice's device; alice can; then her device token is refused.
    bob_headers = {"Authorization": f"Bearer {server.token(TENANT, 'bob')}"}
    r = await http.delete("/sync/v1/devices/dev-a", headers=bob_headers)
    assert r.status_code in (403, 404)
    r = await http.delete("/sync/v1/devices/dev-a", headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 204, r.text
    r = await new.pull_page()
    assert (r.status_code, error_code(r)) == (401, "device_revoked")
    r = await new.post("/sync/v1/push", {"mutations": []})
    assert (r.status_code, error_code(r)) == (401, "device_revoked")
    r = await new.ack("anything")
    assert (r.status_code, error_code(r)) == (401, "device_revoked")
    # The other tenant's dev-a is untouched.
    assert (await elsewhere.pull_page()).status_code == 200
    # An admin revokes through /admin/v1 as well.
    r = await Admin(server).delete("/admin/v1/devices/dev-other")
    assert r.status_code == 204, r.text
    r = await other.pull_page()
    assert (r.status_code, error_code(r)) == (401, "device_revoked")
    r = await Admin(server).delete("/admin/v1/devices/no-such-device")
    assert r.status_code == 404


async def test_admin_device_health(server: Server) -> None:
    admin = Admin(server)
    a = await register(server, "alice", "dev-a")
    b = await register(server, "bob", "dev-b")
    await register(server, "carol", "dev-c", tenant="globex")
    devices = await admin.devices()
    assert set(devices) == {"dev-a", "dev-b"}
    assert devices["dev-a"]["user_id"] == "alice"
    assert devices["dev-a"]["last_ack_at"] is None
    assert devices["dev-a"]["full_resyncs"] == 0
    assert devices["dev-a"]["revoked"] is False

    await a.push([a.mutation("bookmark", f"bm-{i}", {"page": i}) for i in range(3)])
    await a.pull_all()
    before_ack = server.clock.now().replace(microsecond=0)
    assert (await a.ack()).status_code == 204
    devices = await admin.devices()
    assert devices["dev-a"]["lag"] == 0
    assert parse_time(devices["dev-a"]["last_ack_at"]) >= before_ack
    assert devices["dev-a"]["last_seen_at"] is not None
    assert devices["dev-b"]["lag"] == 3  # bob has acked nothing (and sees none of it)
    assert devices["dev-b"]["last_ack_at"] is None

    # Two more changes: dev-a is two behind until it pulls and acks again.
    await b.push([b.mutation("bookmark", "x", {"page": 1})])
    await a.push([a.mutation("bookmark", "bm-0", {"page": 10}, clock={"dev-a": 9})])
    assert (await admin.devices())["dev-a"]["lag"] == 2
    await a.pull_all()
    server.clock.advance(hours=1)
    assert (await a.ack()).status_code == 204
    devices = await admin.devices()
    assert devices["dev-a"]["lag"] == 0
    assert parse_time(devices["dev-a"]["last_ack_at"]) >= before_ack + timedelta(hours=1)
    # An older cursor does not move the acked position back.
    await b.pull_all()
    first_cursor = b.cursor
    await a.push([a.mutation("bookmark", "bm-1", {"page": 11}, clock={"dev-a": 10})])
    await b.pull_all()
    assert (await b.ack()).status_code == 204
    assert (await b.ack(first_cursor)).status_code == 204
    assert (await admin.devices())["dev-b"]["lag"] == 0

    # A cursor the server cannot serve: 410, counted per device.
    r = await a.pull_page("not-a-cursor")
    assert r.status_code == 410
    assert r.json()["error"]["code"] == "full_resync_required"
    assert r.json()["error"]["reason"] == "invalid_cursor"
    devices = await admin.devices()
    assert devices["dev-a"]["full_resyncs"] == 1
    assert devices["dev-b"]["full_resyncs"] == 0

    r = await admin.delete("/admin/v1/devices/dev-b")
    assert r.status_code == 204
    devices = await admin.devices()
    assert devices["dev-b"]["revoked"] is True
    assert devices["dev-a"]["revoked"] is False


async def test_reregistration_supersedes_old_device_token(server: Server) -> None:
    http = server.http()
    user = server.token("acme", "alice")
    old = await Device.register(http, user, "dev-x", server.clock.time)
    assert (await old.pull_page()).status_code == 200
    new = await Device.register(http, user, "dev-x", server.clock.time)
    r = await old.pull_page()  # unsigned GET: only the token's generation can stop it
    assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    assert (await new.pull_page()).status_code == 200
    r = await http.post(
        "/sync/v1/devices",
        json={"device_id": "server"},
        headers={"Authorization": f"Bearer {user}"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
