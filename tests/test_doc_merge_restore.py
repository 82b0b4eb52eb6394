"""Yjs merges archive exactly one pre-merge snapshot; restore is a forward update (design §4).

Real servers (SQLite and PostgreSQL), real stock Yjs clients (Node, y-websocket) in the rooms,
real HTTP for /sync/v1/docs and /admin/v1. "Merge" means: an update that brings the server
operations it lacked, from a client that lacked operations the server had.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pycrdt import Doc, Text

from crdt_sync import ydoc
from tests.conftest import Server, poll
from tests.interop_client import YjsClient, close_all
from tests.rooms_support import client, need_node
from tests.sync_client import Device

pytestmark = pytest.mark.anyio

TENANT = "acme"
TEXT = {"t": "text"}


# -- helpers ------------------------------------------------------------------------------------


class Admin:
    def __init__(self, server: Server, tenant: str = TENANT) -> None:
        self.http = server.http()
        self.headers = {"Authorization": f"Bearer {server.token(tenant, 'root', 'admin')}"}

    async def get(self, path: str) -> Any:
        r = await self.http.get(path, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    async def snapshots(self, doc: str) -> list[dict[str, Any]]:
        body = await self.get(f"/admin/v1/docs/{quote(doc)}/snapshots")
        snaps: list[dict[str, Any]] = body["snapshots"]
        return snaps

    async def snapshot(self, doc: str, snapshot_id: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.get(
            f"/admin/v1/docs/{quote(doc)}/snapshots/{snapshot_id}"
        )
        return body

    async def diff(self, doc: str, snapshot_id: str) -> dict[str, Any]:
        path = f"/admin/v1/docs/{quote(doc)}/snapshots/{snapshot_id}/diff"
        body: dict[str, Any] = await self.get(path)
        return body

    async def restore(self, doc: str, snapshot_id: str) -> str:
        path = f"/admin/v1/docs/{quote(doc)}/snapshots/{snapshot_id}/restore"
        r = await self.http.post(path, headers=self.headers)
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"pre_restore_snapshot_id"}, r.json()
        pre_id: str = r.json()["pre_restore_snapshot_id"]
        return pre_id


async def server_update(server: Server, doc: str, tenant: str = TENANT) -> bytes:
    """The room's document as the server holds it (in memory, everything stored)."""
    room = await server.runtime.extras["rooms"].get(tenant, doc)
    async with room.lock:
        update: bytes = room.doc.get_update()
    return update


async def server_content(server: Server, doc: str) -> dict[str, Any]:
    return ydoc.content_json(await server_update(server, doc))


async def server_sv(server: Server, doc: str) -> dict[int, int]:
    room = await server.runtime.extras["rooms"].get(TENANT, doc)
    async with room.lock:
        return ydoc.decode_state_vector(room.doc.get_state())


async def client_sv(c: YjsClient) -> dict[int, int]:
    reply = await c.command("state_vector")
    return ydoc.decode_state_vector(base64.b64decode(reply["base64"]))


async def server_has(server: Server, doc: str, c: YjsClient) -> None:
    """Wait until the server holds everything client `c` has."""
    want = await client_sv(c)

    async def covered() -> bool:
        have = await server_sv(server, doc)
        return all(have.get(k, 0) >= v for k, v in want.items())

    await poll(covered, what=f"the server holding all of {c.name}'s operations")


async def all_synced(server: Server, doc: str, clients: list[YjsClient]) -> None:
    """Wait until every client and the server have exactly the same operations."""

    async def same() -> bool:
        svs = [await client_sv(c) for c in clients]
        return all(sv == svs[0] for sv in svs) and await server_sv(server, doc) == svs[0]

    await poll(same, what="clients and server holding the same operations")


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def check_merge_snapshot(snap: dict[str, Any]) -> None:
    assert snap["reason"] == "merge", snap
    assert snap["size_bytes"] > 0, snap
    lifetime = parse_time(snap["expires_at"]) - parse_time(snap["created_at"])
    assert abs(lifetime - timedelta(days=30)) <= timedelta(seconds=1), snap


# -- 1. every offline merge archives exactly one snapshot ------------------------------------


async def test_websocket_offline_merge_archives_one_snapshot(server: Server) -> None:
    need_node()
    doc = "doc-ws-merge"
    token = server.token(TENANT, "alice", "author")
    admin = Admin(server)
    a, b = await asyncio.gather(client(server, doc, token), client(server, doc, token))
    try:
        await a.insert("t", 0, "base.")
        await b.wait_content({"t": "base."}, TEXT)
        assert await admin.snapshots(doc) == []

        await b.disconnect()
        await a.insert("t", 5, " online")
        await server_has(server, doc, a)
        before = await server_content(server, doc)
        assert before == {"t": "base. online"}
        await b.insert("t", 0, "offline ")
        await b.command("delete", root="t", index=len("offline "), length=1)  # the "b"
        await b.connect()
        merged = "offline ase. online"
        await asyncio.gather(
            a.wait_content({"t": merged}, TEXT), b.wait_content({"t": merged}, TEXT)
        )
        await all_synced(server, doc, [a, b])
        assert await server_content(server, doc) == {"t": merged}

        snaps = await admin.snapshots(doc)
        assert len(snaps) == 1, snaps
        check_merge_snapshot(snaps[0])
        body = await admin.snapshot(doc, snaps[0]["snapshot_id"])
        assert body["content"] == before
        assert body["snapshot_id"] == snaps[0]["snapshot_id"]

        # Not merges: a reconnect with nothing new on either side; offline edits while the
        # server learned nothing new (client only ahead); a reconnect of a client that only
        # missed operations (server only ahead).
        await b.disconnect()
        await b.connect()
        await b.disconnect()
        await b.insert("t", 0, "!")
        await b.connect()
        await a.wait_content({"t": "!" + merged}, TEXT)
        await a.disconnect()
        await b.insert("t", 0, "?")
        await server_has(server, doc, b)
        await a.connect()
        await a.wait_content({"t": "?!" + merged}, TEXT)
        await all_synced(server, doc, [a, b])
        assert len(await admin.snapshots(doc)) == 1
    finally:
        await close_all([a, b])


class HttpDoc:
    """A player without WebSockets: a pycrdt Doc synced through /sync/v1/docs."""

    def __init__(self, device: Device, doc_id: str, client_id: int | None = None) -> None:
        self.device = device
        self.doc_id = doc_id
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.text = self.doc.get("t", type=Text)

    @property
    def path(self) -> str:
        return f"/sync/v1/docs/{quote(self.doc_id)}"

    def sv(self) -> str:
        return base64.urlsafe_b64encode(self.doc.get_state()).rstrip(b"=").decode()

    async def pull(self) -> None:
        r = await self.device.http.get(
            self.path,
            params={"sv": self.sv()},
            headers={"Authorization": f"Bearer {self.device.token}"},
        )
        assert r.status_code == 200, r.text
        self.doc.apply_update(r.content)

    def insert(self, index: int, text: str) -> bytes:
        """Edit locally; return the update with just this edit."""
        before = self.doc.get_state()
        self.text.insert(index, text)
        return self.doc.get_update(before)

    async def post(self, update: bytes, sv: str | None = None) -> httpx.Response:
        headers = self.device.headers("POST", self.path, update)
        headers["Content-Type"] = "application/octet-stream"
        return await self.device.http.post(
            self.path,
            content=update,
            params={} if sv is None else {"sv": sv},
            headers=headers,
        )


async def author_device(server: Server, device_id: str, user: str = "alice") -> Device:
    token = server.token(TENANT, user, "author")
    return await Device.register(server.http(), token, device_id)


async def test_http_post_from_behind_archives_one_snapshot(server: Server) -> None:
    doc = "doc-http-merge"
    admin = Admin(server)
    writer = HttpDoc(await author_device(server, "dev-w"), doc, client_id=1001)
    laggard = HttpDoc(await author_device(server, "dev-l"), doc, client_id=1002)

    r = await writer.post(writer.insert(0, "base."))
    assert r.status_code == 200, r.text
    await laggard.pull()
    assert str(laggard.text) == "base."
    r = await writer.post(writer.insert(5, " more"), sv=None)  # up to date, no sv: no merge
    assert r.status_code == 200, r.text
    assert await admin.snapshots(doc) == []
    before = await server_content(server, doc)

    # The laggard lacks " more" and brings its own edit: a merge, without and with ?sv=.
    sv_before = laggard.sv()
    r = await laggard.post(laggard.insert(0, "L1 "))
    assert r.status_code == 200, r.text
    snaps = await admin.snapshots(doc)
    assert len(snaps) == 1, snaps
    check_merge_snapshot(snaps[0])
    assert (await admin.snapshot(doc, snaps[0]["snapshot_id"]))["content"] == before
    assert before == {"t": "base. more"}

    middle = await server_content(server, doc)
    r = await laggard.post(laggard.insert(0, "L2 "), sv=sv_before)
    assert r.status_code == 200, r.text
    snaps = await admin.snapshots(doc)
    assert len(snaps) == 2, snaps
    assert (await admin.snapshot(doc, snaps[0]["snapshot_id"]))["content"] == middle

    # A poster that is fully up to date (its sv covers the server's) merges nothing.
    await writer.pull()
    up_to_date = writer.sv()
    assert ydoc.decode_state_vector(writer.doc.get_state()) == await server_sv(server, doc)
    r = await writer.post(writer.insert(0, ">"), sv=up_to_date)
    assert r.status_code == 200, r.text
    assert ydoc.decode_state_vector(
        base64.urlsafe_b64decode(r.json()["state_vector"] + "==")
    ) == ydoc.decode_state_vector(writer.doc.get_state())
    assert len(await admin.snapshots(doc)) == 2
    assert await server_content(server, doc) == {"t": ">L2 L1 base. more"}


async def test_live_keystrokes_archive_nothing(server: Server) -> None:
    need_node()
    doc = "doc-live"
    token = server.token(TENANT, "alice", "author")
    admin = Admin(server)
    a, b = await asyncio.gather(client(server, doc, token), client(server, doc, token))
    try:
        left, right = "a" * 100, "b" * 100
        await asyncio.gather(
            a.command("type_chars", root="t", text=left, interval_ms=0, timeout=30),
            b.command("type_chars", root="t", text=right, interval_ms=0, timeout=30),
        )

        async def full() -> str | None:
            text: str = (await a.content(TEXT))["t"]
            return text if len(text) >= 200 else None

        text = await poll(full, what="200 characters")
        await b.wait_content({"t": text}, TEXT)
        await all_synced(server, doc, [a, b])
        assert sorted(text) == sorted(left + right)
        assert await server_content(server, doc) == {"t": text}
        assert await admin.snapshots(doc) == []
    finally:
        await close_all([a, b])


# -- 2. restore with two editors connected -------------------------------------------------


Step = Callable[[YjsClient], Awaitable[Any]]


def _text_steps() -> tuple[Step, Step, Step]:
    async def base(c: YjsClient) -> None:
        await c.insert("t", 0, "hello")

    async def online(c: YjsClient) -> None:
        await c.insert("t", 5, " world")

    async def offline(c: YjsClient) -> None:
        await c.insert("t", 0, "Oh, ")
        await c.command("delete", root="t", index=4, length=1)

    return base, online, offline


def _map_steps() -> tuple[Step, Step, Step]:
    async def base(c: YjsClient) -> None:
        await c.command("map_set", root="m", key="title", value="Intro")
        await c.command("map_set", root="m", key="meta", value={"n": 1, "tags": ["x"]})

    async def online(c: YjsClient) -> None:
        await c.command("map_set", root="m", key="level", value=2)

    async def offline(c: YjsClient) -> None:
        await c.command("map_set", root="m", key="title", value="Intro (draft)")
        await c.command("map_delete", root="m", key="meta")
        await c.command("map_set", root="m", key="tags", value=["a", "b"])

    return base, online, offline


def _array_steps() -> tuple[Step, Step, Step]:
    async def base(c: YjsClient) -> None:
        await c.command("array_push", root="a", values=[1, "two"])

    async def online(c: YjsClient) -> None:
        await c.command("array_push", root="a", values=[{"three": 3}])

    async def offline(c: YjsClient) -> None:
        await c.command("array_push", root="a", values=[["four"], None])

    return base, online, offline


def _xml_steps() -> tuple[Step, Step, Step]:
    async def base(c: YjsClient) -> None:
        await c.command("xml_paragraph", root="default", text="First")

    async def online(c: YjsClient) -> None:
        await c.command("xml_paragraph", root="default", text="Second")

    async def offline(c: YjsClient) -> None:
        await c.command("xml_paragraph", root="default", text="Offline")
        await c.command("xml_paragraph", root="default", text="Offline 2")

    return base, online, offline


KINDS: dict[str, tuple[dict[str, str], Callable[[], tuple[Step, Step, Step]]]] = {
    "text": ({"t": "text"}, _text_steps),
    "map": ({"m": "map"}, _map_steps),
    "array": ({"a": "array"}, _array_steps),
    "xml": ({"default": "xml"}, _xml_steps),
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_restore_with_two_editors_connected(server: Server, kind: str) -> None:
    need_node()
    roots, steps = KINDS[kind]
    base, online, offline = steps()
    doc = f"doc-restore-{kind}"
    token = server.token(TENANT, "alice", "author")
    admin = Admin(server)
    a, b = await asyncio.gather(client(server, doc, token), client(server, doc, token))
    try:
        # A merge gives us a pre-merge snapshot S.
        await base(a)
        await b.wait_content(await a.content(roots), roots)
        await b.disconnect()
        await online(a)
        await server_has(server, doc, a)
        pre_merge = await a.content(roots)
        pre_merge_server = await server_content(server, doc)
        await offline(b)
        await b.connect()
        await all_synced(server, doc, [a, b])
        merged = await a.content(roots)
        assert await b.content(roots) == merged
        assert merged != pre_merge
        merged_server = await server_content(server, doc)
        if kind != "xml":  # Node renders XML as a string; content_json as nodes
            assert merged_server == merged
            assert pre_merge_server == pre_merge
        else:
            paragraphs = [p["children"][0]["text"] for p in merged_server["default"]]
            assert sorted(paragraphs) == ["First", "Offline", "Offline 2", "Second"]
            assert all(p["element"] == "paragraph" for p in merged_server["default"])

        snaps = await admin.snapshots(doc)
        assert len(snaps) == 1, snaps
        check_merge_snapshot(snaps[0])
        s_id = snaps[0]["snapshot_id"]
        assert (await admin.snapshot(doc, s_id))["content"] == pre_merge_server

        diff = await admin.diff(doc, s_id)
        assert diff["snapshot"] == pre_merge_server
        assert diff["current"] == merged_server
        assert isinstance(diff["rows"], list) and diff["rows"]
        assert any(row["change"] != "same" for row in diff["rows"]), diff["rows"]
        assert {row["root"] for row in diff["rows"]} == set(roots)

        # Restore S: both editors converge to it; the state before is archived first.
        pre_restore = await admin.restore(doc, s_id)
        assert pre_restore != s_id
        await asyncio.gather(a.wait_content(pre_merge, roots), b.wait_content(pre_merge, roots))
        assert await server_content(server, doc) == pre_merge_server
        snaps = await admin.snapshots(doc)
        assert [s["snapshot_id"] for s in snaps] == [pre_restore, s_id], snaps
        assert snaps[0]["reason"] == "restore"
        assert (await admin.snapshot(doc, pre_restore))["content"] == merged_server

        # Restoring the pre-restore snapshot brings the merged content back.
        again = await admin.restore(doc, pre_restore)
        assert again not in (pre_restore, s_id)
        await asyncio.gather(a.wait_content(merged, roots), b.wait_content(merged, roots))
        await all_synced(server, doc, [a, b])
        assert await server_content(server, doc) == merged_server
        assert len(await admin.snapshots(doc)) == 3

        # The editors keep working on top of the restored document.
        await base(b)
        await all_synced(server, doc, [a, b])
        assert await a.content(roots) == await b.content(roots)
    finally:
        await close_all([a, b])
