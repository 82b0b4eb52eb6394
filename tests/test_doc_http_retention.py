"""Yjs documents over HTTP, archive retention (30 days), and compaction of the update log.

Real servers (SQLite and PostgreSQL) over real sockets; pycrdt Docs play the HTTP clients, a
stock Yjs client (Node, y-websocket) the connected editor.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pycrdt import Doc, Map, Text, write_var_uint

import web.app
from crdt_sync import ydoc
from protocol import yprotocol as yp
from tests.conftest import Server, poll
from tests.interop_client import close_all
from tests.rooms_support import client, need_node
from tests.sync_client import Device

pytestmark = pytest.mark.anyio

TENANT = "acme"
TEXT = {"t": "text"}


# -- helpers ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def doc_path(doc_id: str) -> str:
    return f"/sync/v1/docs/{quote(doc_id)}"


class HttpDoc:
    """A player without WebSockets: a pycrdt Doc synced through /sync/v1/docs."""

    def __init__(self, device: Device, doc_id: str, client_id: int | None = None) -> None:
        self.device = device
        self.doc_id = doc_id
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self.text = self.doc.get("t", type=Text)

    def sv(self) -> str:
        return b64url(self.doc.get_state())

    async def get(self, sv: str | None = None) -> httpx.Response:
        return await self.device.http.get(
            doc_path(self.doc_id),
            params={} if sv is None else {"sv": sv},
            headers={"Authorization": f"Bearer {self.device.token}"},
        )

    async def pull(self) -> bytes:
        """GET what this Doc lacks and apply it; return the update."""
        r = await self.get(self.sv())
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        self.doc.apply_update(r.content)
        return r.content

    def insert(self, index: int, text: str) -> bytes:
        before = self.doc.get_state()
        self.text.insert(index, text)
        return self.doc.get_update(before)

    async def post(self, update: bytes, sv: str | None = None) -> httpx.Response:
        path = doc_path(self.doc_id)
        headers = self.device.headers("POST", path, update)
        headers["Content-Type"] = "application/octet-stream"
        return await self.device.http.post(
            path, content=update, params={} if sv is None else {"sv": sv}, headers=headers
        )


async def device(
    server: Server, device_id: str, user: str = "alice", role: str = "author", tenant: str = TENANT
) -> Device:
    token = server.token(tenant, user, role)
    return await Device.register(server.http(), token, device_id, now=server.clock.time)


class Admin:
    def __init__(self, server: Server) -> None:
        self.http = server.http()
        self.headers = {"Authorization": f"Bearer {server.token(TENANT, 'root', 'admin')}"}

    async def snapshots(self, doc: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"/admin/v1/docs/{quote(doc)}/snapshots", headers=self.headers)
        assert r.status_code == 200, r.text
        snaps: list[dict[str, Any]] = r.json()["snapshots"]
        return snaps

    async def snapshot_status(self, doc: str, snapshot_id: str) -> int:
        path = f"/admin/v1/docs/{quote(doc)}/snapshots/{snapshot_id}"
        return (await self.http.get(path, headers=self.headers)).status_code


async def live_update(server: Server, doc: str) -> bytes:
    room = await server.runtime.extras["rooms"].get(TENANT, doc)
    async with room.lock:
        update: bytes = room.doc.get_update()
    return update


async def stored(server: Server, doc: str) -> tuple[bytes | None, list[bytes]]:
    checkpoint, updates = await server.runtime.store.load_doc(TENANT, doc)
    return checkpoint, [u.update for u in updates]


async def stored_content(server: Server, doc: str) -> dict[str, Any]:
    checkpoint, updates = await stored(server, doc)
    return ydoc.content_json(ydoc.compact(updates, checkpoint))


async def merge(writer: HttpDoc, laggard: HttpDoc, tag: str) -> None:
    """Make one merge over HTTP: the writer (up to date) adds, then the laggard (behind) adds."""
    await writer.pull()
    r = await writer.post(writer.insert(0, f"w{tag} "), sv=writer.sv())
    assert r.status_code == 200, r.text
    r = await laggard.post(laggard.insert(0, f"l{tag} "))
    assert r.status_code == 200, r.text


# -- 3. retention ------------------------------------------------------------------------------


async def test_snapshots_expire_after_30_days(server: Server) -> None:
    doc = "doc-retention"
    admin = Admin(server)
    writer = HttpDoc(await device(server, "dev-w"), doc)
    laggard = HttpDoc(await device(server, "dev-l"), doc)
    await merge(writer, laggard, "1")
    snaps = await admin.snapshots(doc)
    assert len(snaps) == 1 and snaps[0]["reason"] == "merge", snaps
    snap_id = snaps[0]["snapshot_id"]

    server.clock.advance(days=30, minutes=-1)
    counts = await web.app.prune_once(server.runtime)
    assert counts["snapshots"] == 0, counts
    assert [s["snapshot_id"] for s in await admin.snapshots(doc)] == [snap_id]
    assert await admin.snapshot_status(doc, snap_id) == 200

    server.clock.advance(minutes=2)
    counts = await web.app.prune_once(server.runtime)
    assert counts["snapshots"] == 1, counts
    assert await admin.snapshots(doc) == []
    assert await admin.snapshot_status(doc, snap_id) == 404
    # Pruning the archive never touches the document itself.
    assert sorted((await stored_content(server, doc))["t"].split()) == ["l1", "w1"]


def run_cli_prune(server: Server) -> str:
    """`crdt-sync prune` as operators run it: its own process, the real clock."""
    args = [str(Path(sys.executable).with_name("crdt-sync")), "prune"]
    args += ["--data-dir", str(server.config.data_dir)]
    if server.config.database_url:
        args += ["--database-url", server.config.database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRDT_SYNC_")}
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_cli_prune_keeps_live_and_deletes_expired_snapshots(server: Server) -> None:
    """The CLI prunes with the real clock, so the snapshots are made with the server's clock
    set back: one expires a minute before now, the other two minutes after."""
    doc = "doc-cli-prune"
    admin = Admin(server)
    writer = HttpDoc(await device(server, "dev-w"), doc)
    laggard = HttpDoc(await device(server, "dev-l"), doc)
    server.clock.advance(days=-30, minutes=-1)
    await merge(writer, laggard, "1")
    expired = (await admin.snapshots(doc))[0]["snapshot_id"]
    server.clock.offset = timedelta(days=-30, minutes=2)
    await merge(writer, laggard, "2")
    snaps = await admin.snapshots(doc)
    assert len(snaps) == 2, snaps
    alive = snaps[0]["snapshot_id"]
    assert alive != expired

    out = await asyncio.to_thread(run_cli_prune, server)
    assert "snapshots=1" in out.split(), out
    assert [s["snapshot_id"] for s in await admin.snapshots(doc)] == [alive]
    out = await asyncio.to_thread(run_cli_prune, server)
    assert "snapshots=0" in out.split(), out
    assert [s["snapshot_id"] for s in await admin.snapshots(doc)] == [alive]
    server.clock.offset = timedelta()


# -- 4. compaction -----------------------------------------------------------------------------


def single_char_edits(count: int, seed: int) -> tuple[Doc[Any], list[bytes]]:
    """`count` one-character edits (inserts anywhere, some deletes), one update each."""
    rng = random.Random(seed)
    doc: Doc[Any] = Doc(client_id=4242)
    text = doc.get("t", type=Text)
    updates: list[bytes] = []
    sub = doc.observe(lambda event: updates.append(event.update))
    for _ in range(count):
        size = len(text)
        if size > 10 and rng.random() < 0.15:
            pos = rng.randrange(size)
            del text[pos : pos + 1]
        else:
            text.insert(rng.randrange(size + 1), rng.choice("abcdefghij \n"))
    doc.unobserve(sub)
    assert len(updates) == count
    return doc, updates


async def test_compaction_keeps_content_and_bounds_the_store(server: Server) -> None:
    doc = "doc-compact"
    rooms = server.runtime.extras["rooms"]
    store = server.runtime.store
    local, updates = single_char_edits(10_000, seed=11)
    expected = {"t": str(local.get("t", type=Text))}

    room = await rooms.get(TENANT, doc)
    every = rooms.settings.compact_every
    assert every < 10_000
    for start in range(0, len(updates), 500):
        results = await asyncio.gather(
            *(room.submit(u, None, "http") for u in updates[start : start + 500])
        )
        assert all(results)
    assert ydoc.content_json(await live_update(server, doc)) == expected

    # The room compacted on its own along the way (every `compact_every` updates).
    async def checkpointed() -> bool:
        checkpoint, _ = await stored(server, doc)
        return checkpoint is not None and room._compacting is None

    await poll(checkpointed, what="an automatic checkpoint")
    assert await stored_content(server, doc) == expected

    await room.compact_now()
    live = await live_update(server, doc)
    assert ydoc.content_json(live) == expected
    assert await stored_content(server, doc) == expected
    size = await store.doc_stored_bytes(TENANT, doc)
    assert 0 < size <= 3 * len(live), (size, len(live))
    raw = sum(map(len, updates))
    assert size < raw, (size, raw)  # the 10,000 updates were not kept as they came

    # Unload and reload: the same content, served to a new HTTP client too.
    await rooms.unload(room)
    assert (TENANT, doc) not in rooms.rooms
    again = await rooms.get(TENANT, doc)
    assert again is not room
    assert ydoc.content_json(await live_update(server, doc)) == expected

    # More edits from the same client build on the reloaded document.
    text = local.get("t", type=Text)
    before = local.get_state()
    text.insert(0, "after reload: ")
    assert await again.submit(local.get_update(before), None, "http")
    expected = {"t": str(text)}
    await again.compact_now()
    assert await stored_content(server, doc) == expected

    # The idle-room timer unloads it as well; a GET loads it back from the store.
    server.runtime.extras["room_settings"].unload_after_s = 0.05
    player = HttpDoc(await device(server, "dev-p", "bob", "learner"), doc)
    await player.pull()
    assert ydoc.content_json(player.doc.get_update()) == expected

    async def unloaded() -> bool:
        return (TENANT, doc) not in rooms.rooms

    await poll(unloaded, what="the idle room unloading")
    fresh = HttpDoc(player.device, doc)
    await fresh.pull()
    assert ydoc.content_json(fresh.doc.get_update()) == expected
    assert 0 < await store.doc_stored_bytes(TENANT, doc) <= 3 * len(fresh.doc.get_update())


# -- 5. documents over HTTP --------------------------------------------------------------------


def missing_ranges(have: dict[int, int], full: dict[int, int]) -> dict[int, list[tuple[int, int]]]:
    return {c: [(have.get(c, 0), k)] for c, k in full.items() if k > have.get(c, 0)}


async def test_get_returns_exactly_what_the_client_lacks(server: Server) -> None:
    doc = "doc-get"
    author = HttpDoc(await device(server, "dev-a"), doc, client_id=501)
    other = HttpDoc(await device(server, "dev-o"), doc, client_id=502)
    player = HttpDoc(await device(server, "dev-p", "bob", "learner"), doc)

    assert (await author.post(author.insert(0, "hello"))).status_code == 200
    await player.pull()
    assert str(player.text) == "hello"
    have = ydoc.decode_state_vector(player.doc.get_state())

    await other.pull()
    assert (await other.post(other.insert(5, " world"), sv=other.sv())).status_code == 200
    before = author.doc.get_state()
    author.doc.get("m", type=Map)["k"] = {"v": [1, 2]}
    author.text.insert(0, ">")
    assert (await author.post(author.doc.get_update(before))).status_code == 200

    full = await live_update(server, doc)
    full_sv = ydoc.decode_state_vector(state_of(full))
    r = await player.get(player.sv())
    assert r.status_code == 200, r.text
    info = ydoc.update_info(r.content)
    assert info.structs == missing_ranges(have, full_sv), (info.structs, have, full_sv)
    player.doc.apply_update(r.content)
    assert ydoc.content_json(player.doc.get_update()) == ydoc.content_json(full)
    assert ydoc.decode_state_vector(player.doc.get_state()) == full_sv

    # Up to date: nothing to send. Without sv: everything.
    r = await player.get(player.sv())
    assert r.status_code == 200 and ydoc.update_info(r.content).structs == {}
    r = await player.get()
    assert r.status_code == 200
    assert ydoc.content_json(r.content) == ydoc.content_json(full)
    assert ydoc.update_info(r.content).structs == missing_ranges({}, full_sv)
    assert ydoc.content_json(r.content) == {"m": {"k": {"v": [1, 2]}}, "t": ">hello world"}


def state_of(update: bytes) -> bytes:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return doc.get_state()


async def test_post_answers_state_vector_and_reaches_websocket_clients(server: Server) -> None:
    need_node()
    doc = "doc-post-ws"
    editor = await client(server, doc, server.token(TENANT, "carol", "author"))
    try:
        poster = HttpDoc(await device(server, "dev-a"), doc)
        r = await poster.post(poster.insert(0, "from http"))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert set(r.json()) == {"state_vector"}
        sv = ydoc.decode_state_vector(unb64url(r.json()["state_vector"]))
        assert sv == ydoc.decode_state_vector(poster.doc.get_state())
        await editor.wait_content({"t": "from http"}, TEXT)

        # And back: the editor's keystrokes reach the HTTP client on its next GET.
        await editor.insert("t", 0, "ws: ")
        await poll(lambda: _pulled(poster, "ws: from http"), what="the editor's edit over HTTP")
        r = await poster.post(poster.insert(len("ws: from http"), "!"), sv=poster.sv())
        assert r.status_code == 200, r.text
        await editor.wait_content({"t": "ws: from http!"}, TEXT)
    finally:
        await editor.aclose()


async def _pulled(player: HttpDoc, want: str) -> bool:
    await player.pull()
    return str(player.text) == want


def ydoc_changes(changes: list[dict[str, Any]], doc: str) -> list[dict[str, Any]]:
    return [c for c in changes if c["entity_type"] == "ydoc" and c["entity_id"] == doc]


async def test_doc_changes_appear_in_pull_with_their_state_vector(server: Server) -> None:
    doc = "doc-pull"
    author = HttpDoc(await device(server, "dev-a"), doc)
    player = HttpDoc(await device(server, "dev-p", "bob", "learner"), doc)
    outsider = await device(server, "dev-x", "eve", "learner", tenant="other")

    assert (await author.post(author.insert(0, "one"))).status_code == 200
    changes = ydoc_changes(await player.device.pull_all(), doc)
    assert len(changes) == 1, changes
    change = changes[0]
    assert change["op"] == "put"
    assert set(change["payload"]) == {"state_vector"}
    pulled = ydoc.decode_state_vector(unb64url(change["payload"]["state_vector"]))
    assert pulled == ydoc.decode_state_vector(author.doc.get_state())
    assert ydoc.lacks(player.doc.get_state(), pulled)  # the player sees it lacks something
    await player.pull()
    assert str(player.text) == "one"
    assert ydoc.decode_state_vector(player.doc.get_state()) == pulled

    # Next change: the cursor brings just the new state vector; GET brings just the new ops.
    have = ydoc.decode_state_vector(player.doc.get_state())
    assert (await author.post(author.insert(3, " two"), sv=author.sv())).status_code == 200
    changes = await player.device.pull_all()
    assert len(changes) == 1 and ydoc_changes(changes, doc) == changes, changes
    pulled = ydoc.decode_state_vector(unb64url(changes[0]["payload"]["state_vector"]))
    update = await player.pull()
    assert ydoc.update_info(update).structs == missing_ranges(have, pulled)
    assert str(player.text) == "one two"
    r = await player.get(changes[0]["payload"]["state_vector"])  # the pulled sv: nothing lacks
    assert r.status_code == 200 and ydoc.update_info(r.content).structs == {}

    # Another tenant's device sees nothing of it.
    assert ydoc_changes(await outsider.pull_all(), doc) == []


async def store_state(server: Server, doc: str) -> tuple[Any, ...]:
    checkpoint, updates = await stored(server, doc)
    admin = Admin(server)
    return (
        checkpoint,
        updates,
        await server.runtime.store.doc_stored_bytes(TENANT, doc),
        await admin.snapshots(doc),
        ydoc.content_json(await live_update(server, doc)),
    )


async def test_learner_cannot_post(server: Server) -> None:
    doc = "doc-learner"
    author = HttpDoc(await device(server, "dev-a"), doc)
    assert (await author.post(author.insert(0, "mine"))).status_code == 200
    learner = HttpDoc(await device(server, "dev-l", "bob", "learner"), doc)
    await learner.pull()
    before = await store_state(server, doc)
    r = await learner.post(learner.insert(0, "no "))
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert await store_state(server, doc) == before


def unintegrable(parent_client: int, parent_clock: int, with_good_part: bool) -> bytes:
    """A well-formed Yjs v1 update yrs cannot integrate: an item whose parent is a text item
    (not a shared type). With `with_good_part`, a valid insert into root "t" comes first."""
    v = write_var_uint
    content = b"hi"
    bad = bytes([4]) + v(0) + v(parent_client) + v(parent_clock) + v(len(content)) + content
    good = bytes([4]) + v(1) + v(1) + b"t" + v(2) + b"ok"
    structs = [good, bad] if with_good_part else [bad]
    return v(1) + v(len(structs)) + v(777) + v(0) + b"".join(structs) + v(0)


async def test_garbage_body_is_400_and_changes_nothing(server: Server) -> None:
    doc = "doc-garbage"
    author = HttpDoc(await device(server, "dev-a"), doc, client_id=111)
    valid = author.insert(0, "keep")
    assert (await author.post(valid)).status_code == 200
    before = await store_state(server, doc)
    cursor_device = author.device
    await cursor_device.pull_all()

    nested = b"\x01\x01\x05\x00\x08\x01\x01t\x01" + b"\x75\x01" * 2000 + b"\x7f" + b"\x00"
    bodies = {
        "text": b"this is not a Yjs update",
        "one byte": b"\x07",
        "truncated": valid[:-3],
        "trailing": valid + b"\x00",
        "deep nesting": nested,
        "unintegrable": unintegrable(111, 0, with_good_part=False),
        "partly integrable": unintegrable(111, 0, with_good_part=True),
    }
    for name, body in bodies.items():
        r = await asyncio.wait_for(author.post(body), 15)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert r.json()["error"]["code"] == "invalid_update", (name, r.text)
        assert await store_state(server, doc) == before, name
        assert await cursor_device.pull_all() == [], name
    r = await author.post(b"")
    assert r.status_code == 400, r.text
    assert await store_state(server, doc) == before

    # The room still works.
    assert (await author.post(author.insert(4, "!"), sv=author.sv())).status_code == 200
    assert ydoc.content_json(await live_update(server, doc)) == {"t": "keep!"}
    assert await stored_content(server, doc) == {"t": "keep!"}

    # In one group commit: a valid update, the partly integrable one, another valid one.
    room = await server.runtime.extras["rooms"].get(TENANT, doc)
    first, second = author.insert(5, " A"), author.insert(7, " B")
    results = await asyncio.gather(
        room.submit(first, None, "http"),
        room.submit(unintegrable(111, 0, with_good_part=True), None, "http"),
        room.submit(second, None, "http"),
    )
    assert results == [True, False, True]
    assert ydoc.content_json(await live_update(server, doc)) == {"t": "keep! A B"}
    assert await stored_content(server, doc) == {"t": "keep! A B"}


async def test_unintegrable_update_over_websocket_changes_nothing(server: Server) -> None:
    need_node()
    doc = "doc-ws-garbage"
    token = server.token(TENANT, "carol", "author")
    a, b = await asyncio.gather(client(server, doc, token), client(server, doc, token))
    fresh = None
    try:
        await a.insert("t", 0, "keep")
        await b.wait_content({"t": "keep"}, TEXT)
        a_id = (await a.command("info"))["client_id"]
        bad = unintegrable(a_id, 0, with_good_part=True)
        await b.command("send_raw", base64=base64.b64encode(yp.sync_update(bad)).decode())
        closed = await b.wait_event("closed", timeout=10)
        assert closed["code"] == 4400, closed
        assert ydoc.content_json(await live_update(server, doc)) == {"t": "keep"}
        assert await stored_content(server, doc) == {"t": "keep"}
        await a.insert("t", 4, "!")
        fresh = await client(server, doc, token)
        await fresh.wait_content({"t": "keep!"}, TEXT)
        assert (await a.content(TEXT))["t"] == "keep!"
        assert await stored_content(server, doc) == {"t": "keep!"}
    finally:
        await close_all([c for c in (a, b, fresh) if c is not None])


async def test_bad_state_vector_is_400(server: Server) -> None:
    doc = "doc-bad-sv"
    author = HttpDoc(await device(server, "dev-a"), doc)
    assert (await author.post(author.insert(0, "text"))).status_code == 200
    before = await store_state(server, doc)
    good_sv = author.doc.get_state()
    bad = {
        "not base64url": "!!not*base64",
        "truncated varuint": b64url(b"\x01\x85"),
        "count too high": b64url(b"\x03\x01\x01"),
        "trailing bytes": b64url(good_sv + b"\x05"),
    }
    for name, sv in bad.items():
        r = await author.get(sv)
        assert r.status_code == 400, (name, r.status_code, r.content[:200])
        assert "error" in r.json(), name
        r = await author.post(author.insert(0, "x"), sv=sv)
        assert r.status_code == 400, (name, r.status_code, r.text)
        author.doc = Doc()  # forget the refused local edit
        author.text = author.doc.get("t", type=Text)
        await author.pull()
        assert await store_state(server, doc) == before, name
    r = await author.get(b64url(good_sv))
    assert r.status_code == 200
