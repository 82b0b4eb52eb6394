"""Ids are opaque data (design.md §3): SQL, path and unicode tricks round-trip exactly through
push/pull, documents and the admin routes (which address them percent-encoded in the URL);
NUL and ids over 200 characters are refused with 400 (a token carrying one: 401). On both
backends.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pycrdt import Doc, Text

from tests.conftest import Server
from tests.sync_client import Device
from web.auth import mint_token

pytestmark = pytest.mark.anyio

TENANT = "acme'; DROP TABLE devices; --/../\u202e😀"  # tenant ids are data too
HOSTILE = [
    "'; DROP TABLE entities; --",
    "1' OR '1'='1",
    "../../etc/passwd",
    "..",
    ".",
    "%2e%2e%2f",
    "%00",
    "a/b/c",
    "/leading-slash",
    "trailing-slash/",
    "a//b",
    "a\\b\\c",
    "?query=1&x=2#fragment",
    "  spaced  ",
    "line\nbreak\r\ttab",
    "😀🏳️‍🌈👩🏽‍💻",
    "\u202eevil\u202c",  # right-to-left override
    "שלום עולם",  # right-to-left script
    "e\u0301\u0327\u0308z\u0335\u0336",  # combining marks
    "\ufeffbom\u200bzero-width",
    "x" * 200,
    "😀" * 200,  # 200 characters, 800 bytes of UTF-8
]
TOO_LONG = ["x" * 201, "😀" * 201]
WITH_NUL = ["\x00", "a\x00b", "trailing\x00"]


def seg(value: str) -> str:
    """One URL path segment that carries `value` exactly: every reserved character and the
    dots (which clients and proxies would otherwise fold as `.`/`..` segments) encoded."""
    return quote(value, safe="").replace(".", "%2E")


class Admin:
    def __init__(self, server: Server) -> None:
        self.http = server.http()
        self.headers = {"Authorization": f"Bearer {server.token(TENANT, 'root', 'admin')}"}

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, path, headers=self.headers, **kwargs)

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        r = await self.request(method, path, **kwargs)
        assert r.status_code in (200, 204), (method, path, r.status_code, r.text)
        return r.json() if r.status_code == 200 else None


async def register(server: Server, user: str, device_id: str) -> Device:
    return await Device.register(server.http(), server.token(TENANT, user, "author"), device_id)


def by_id(changes: list[dict[str, Any]], entity_type: str) -> dict[str, dict[str, Any]]:
    return {c["entity_id"]: c for c in changes if c["entity_type"] == entity_type}


async def test_entity_ids_round_trip_through_push_pull_and_admin_routes(server: Server) -> None:
    user = "learner'; --/../😀"
    a = await register(server, user, "dev-a")
    b = await register(server, user, "dev-b")
    admin = Admin(server)
    entity_ids = HOSTILE
    for eid in entity_ids:
        [first] = await a.push([a.mutation("bookmark", eid, {"at": 1, "id": eid}, ts=1000)])
        [second] = await b.push([b.mutation("bookmark", eid, {"at": 2, "id": eid}, ts=2000)])
        assert (first["status"], second["status"]) == ("applied", "merged"), eid
        r = await admin.request("PUT", f"/admin/v1/entities/bundle/{seg(eid)}", json={"id": eid})
        assert r.status_code == 200, (eid, r.text)
        assert r.json()["entity_id"] == eid

    reader = await register(server, user, "dev-reader")
    changes = await reader.pull_all(limit=7)
    bookmarks, bundles = by_id(changes, "bookmark"), by_id(changes, "bundle")
    assert set(bookmarks) == set(entity_ids) == set(bundles)
    for eid in entity_ids:
        assert bookmarks[eid]["payload"] == {"at": 2, "id": eid}
        assert bundles[eid]["payload"] == {"id": eid}

    owner = {"owner": user}
    for eid in entity_ids:
        base = f"/admin/v1/entities/bookmark/{seg(eid)}"
        listed = (await admin.ok("GET", f"{base}/snapshots", params=owner))["snapshots"]
        assert len(listed) == 1, eid  # the one merge
        snap = seg(listed[0]["snapshot_id"])
        got = await admin.ok("GET", f"{base}/snapshots/{snap}", params=owner)
        assert got["content"]["payload"] == {"at": 1, "id": eid}
        diff = await admin.ok("GET", f"{base}/snapshots/{snap}/diff", params=owner)
        assert (diff["snapshot"], diff["current"]) == ({"at": 1, "id": eid}, {"at": 2, "id": eid})
        restored = await admin.ok("POST", f"{base}/snapshots/{snap}/restore", params=owner)
        assert restored["entity"]["entity_id"] == eid
        assert restored["entity"]["payload"] == {"at": 1, "id": eid}
        await admin.ok("DELETE", f"/admin/v1/entities/bundle/{seg(eid)}")

    changes = await reader.pull_all()
    assert {c["entity_id"]: c["op"] for c in changes if c["entity_type"] == "bundle"} == {
        eid: "delete" for eid in entity_ids
    }
    restored_marks = by_id(changes, "bookmark")
    assert {k: v["payload"] for k, v in restored_marks.items()} == {
        eid: {"at": 1, "id": eid} for eid in entity_ids
    }


async def test_conflict_records_keep_hostile_ids(server: Server) -> None:
    a = await register(server, "u1", "dev-a")
    b = await register(server, "u1", "dev-b")
    admin = Admin(server)
    note_ids = HOSTILE
    conflict_of = {}
    for eid in note_ids:
        await a.push([a.mutation("note", eid, {"text": "a"})])
        [result] = await b.push([b.mutation("note", eid, {"text": "b"})])
        assert result["status"] == "conflict", eid
        conflict_of[eid] = result["conflict_id"]
    listed = (await admin.ok("GET", "/admin/v1/conflicts", params={"status": "open"}))["conflicts"]
    assert {c["entity_id"]: c["conflict_id"] for c in listed} == conflict_of
    for eid, conflict_id in conflict_of.items():
        record = await admin.ok("GET", f"/admin/v1/conflicts/{seg(conflict_id)}")
        assert record["entity_id"] == eid
        resolved = await admin.ok(
            "POST", f"/admin/v1/conflicts/{seg(conflict_id)}/resolve", json={"choice": "client"}
        )
        assert (resolved["entity_id"], resolved["payload"]) == (eid, {"text": "b"})


async def test_device_ids_round_trip_and_are_addressed_exactly(server: Server) -> None:
    admin = Admin(server)
    devices = {}
    for did in HOSTILE:
        dev = await register(server, "u1", did)
        [result] = await dev.push([dev.mutation("progress", "course", {"completion": 0.1})])
        assert result["status"] in ("applied", "merged"), (did, result)
        assert did in result["clock"]
        devices[did] = dev
    listed = {d["device_id"] for d in (await admin.ok("GET", "/admin/v1/devices"))["devices"]}
    assert listed == set(devices)

    [clock] = [c["clock"] for c in await next(iter(devices.values())).pull_all()]
    assert set(clock) - {"server"} == set(devices)

    owner_token = {"Authorization": f"Bearer {server.token(TENANT, 'u1')}"}
    http = server.http()
    for index, (did, dev) in enumerate(devices.items()):
        path = f"/sync/v1/devices/{seg(did)}"
        if index % 2:
            r = await http.delete(path, headers=owner_token)
            assert r.status_code == 204, (did, r.text)
        else:
            await admin.ok("DELETE", f"/admin/v1/devices/{seg(did)}")
        r = await dev.pull_page()
        assert (r.status_code, r.json()["error"]["code"]) == (401, "device_revoked"), did
        for other in list(devices)[index + 1 : index + 3]:  # the next ones are untouched
            assert (await devices[other].pull_page()).status_code == 200, (did, other)
    revoked = {
        d["device_id"]: d["revoked"]
        for d in (await admin.ok("GET", "/admin/v1/devices"))["devices"]
    }
    assert revoked == {did: True for did in devices}


async def test_doc_ids_round_trip_over_http_and_admin(server: Server) -> None:
    dev = await register(server, "u1", "dev-a")
    admin = Admin(server)
    http = server.http()
    doc_ids = HOSTILE
    for doc_id in doc_ids:
        for text in ("one", "two"):  # the second comes from behind: a merge, archived
            doc = Doc()
            doc["t"] = Text(f"{text} {doc_id}")
            body = doc.get_update()
            path = f"/sync/v1/docs/{seg(doc_id)}"
            r = await http.post(path, content=body, headers=dev.headers("POST", path, body))
            assert r.status_code == 200, (doc_id, r.text)
        r = await http.get(path, headers={"Authorization": f"Bearer {dev.token}"})
        assert r.status_code == 200, (doc_id, r.text)
        got = Doc()
        got.apply_update(r.content)
        merged = str(got.get("t", type=Text))
        assert merged in (f"one {doc_id}two {doc_id}", f"two {doc_id}one {doc_id}"), doc_id

    changes = await dev.pull_all()
    assert set(by_id(changes, "ydoc")) == set(doc_ids)

    for doc_id in doc_ids:
        base = f"/admin/v1/docs/{seg(doc_id)}/snapshots"
        listed = (await admin.ok("GET", base))["snapshots"]
        assert len(listed) == 1, doc_id
        snap = seg(listed[0]["snapshot_id"])
        got = await admin.ok("GET", f"{base}/{snap}")
        assert got["content"] == {"t": f"one {doc_id}"}
        diff = await admin.ok("GET", f"{base}/{snap}/diff")
        assert diff["snapshot"] == {"t": f"one {doc_id}"}
        await admin.ok("POST", f"{base}/{snap}/restore")
        r = await http.get(
            f"/sync/v1/docs/{seg(doc_id)}", headers={"Authorization": f"Bearer {dev.token}"}
        )
        restored = Doc()
        restored.apply_update(r.content)
        assert str(restored.get("t", type=Text)) == f"one {doc_id}"


def check_refused(r: httpx.Response, what: str) -> None:
    assert r.status_code == 400, (what, r.status_code, r.text)
    assert r.json()["error"]["code"] == "invalid_request", (what, r.text)


async def test_nul_and_over_long_ids_are_refused(server: Server) -> None:
    dev = await register(server, "u1", "dev-a")
    admin = Admin(server)
    http = server.http()
    user = {"Authorization": f"Bearer {server.token(TENANT, 'u1')}"}
    device = {"Authorization": f"Bearer {dev.token}"}
    assert server.config.jwt_secret
    secret = server.config.jwt_secret
    for bad in TOO_LONG + WITH_NUL:
        what = repr(bad[:12])
        r = await http.post("/sync/v1/devices", json={"device_id": bad}, headers=user)
        check_refused(r, f"register {what}")
        if "\x00" in bad:
            for field in ("name", "platform"):
                body = {"device_id": "dev-b", field: bad}
                r = await http.post("/sync/v1/devices", json=body, headers=user)
                check_refused(r, f"register {field} {what}")
            for claims in ({"user": bad}, {"tenant": bad}):
                token = mint_token(secret, **{"tenant": TENANT, "user": "u1", **claims}, roles=[])
                r = await http.get(
                    "/admin/v1/devices", headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status_code == 401, (claims, r.text)
                r = await http.post(
                    "/sync/v1/devices",
                    json={"device_id": "dev-c"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        for field in ("entity_id", "entity_type", "mutation_id"):
            mutation = dev.mutation("bookmark", "ok", {"x": 1})
            mutation[field] = bad
            r = await dev.post("/sync/v1/push", {"mutations": [mutation]})
            check_refused(r, f"push {field} {what}")
        r = await admin.request("PUT", f"/admin/v1/entities/bundle/{seg(bad)}", json={"x": 1})
        check_refused(r, f"admin put {what}")
        r = await admin.request("GET", "/admin/v1/entities/note/x/snapshots", params={"owner": bad})
        check_refused(r, f"owner {what}")
        path = f"/sync/v1/docs/{seg(bad)}"
        r = await http.post(
            path, content=b"\x00\x00", headers=dev.headers("POST", path, b"\x00\x00")
        )
        check_refused(r, f"doc post {what}")
        check_refused(await http.get(path, headers=device), f"doc get {what}")
        for route in (
            f"/admin/v1/docs/{seg(bad)}/snapshots",
            f"/admin/v1/docs/doc/snapshots/{seg(bad)}",
            f"/admin/v1/entities/bundle/x/snapshots/{seg(bad)}",
            f"/admin/v1/conflicts/{seg(bad)}",
        ):
            check_refused(await admin.request("GET", route), f"{route[:30]} {what}")
        check_refused(await admin.request("DELETE", f"/admin/v1/devices/{seg(bad)}"), what)
        r = await http.delete(f"/sync/v1/devices/{seg(bad)}", headers=user)
        check_refused(r, f"revoke {what}")

    # Nothing was stored: the device sees no change, the admin no extra device.
    assert await dev.pull_all() == []
    listed = (await admin.ok("GET", "/admin/v1/devices"))["devices"]
    assert [d["device_id"] for d in listed] == ["dev-a"]
