"""Rooms end to end: real stock Yjs clients (yjs + y-websocket under Node) over real sockets.

Every test runs against a real Hypercorn server (SQLite and PostgreSQL). Clients are the stock
`WebsocketProvider` (tests/interop/client.mjs); where the stock client cannot produce the input
(a text frame, a client that stops reading) a minimal wsproto client speaks the socket directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import socket
import string
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pycrdt import Doc, Text
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from protocol import yprotocol as yp
from tests.conftest import Server, poll, run_server
from tests.interop_client import INTEROP_DIR, YjsClient, close_all
from tests.rooms_support import client, need_node, rooms_url
from web.auth import mint_token
from web.config import Config

pytestmark = pytest.mark.anyio

TEXT = {"t": "text"}
MAP = {"m": "map"}


# -- helpers ------------------------------------------------------------------------------------


async def text_of(c: YjsClient, root: str = "t") -> str:
    content = await c.content({root: "text"})
    value: str = content[root]
    return value


async def converge(clients: Sequence[YjsClient], total: int, timeout: float = 20.0) -> str:
    """Wait until the first client holds `total` characters, then until every client holds
    exactly the same text; return it."""

    async def full() -> str | None:
        text = await text_of(clients[0])
        return text if len(text) >= total else None

    text: str = await poll(full, timeout, f"{total} characters at {clients[0].name}")
    assert len(text) == total, f"more text than was typed: {text!r}"
    await asyncio.gather(*(c.wait_content({"t": text}, TEXT, timeout) for c in clients[1:]))
    return text


def only(text: str, alphabet: str) -> str:
    return "".join(ch for ch in text if ch in alphabet)


async def metric(server: Server, name: str) -> float:
    response = await server.http().get("/metrics")
    assert response.status_code == 200
    for line in response.text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def ws_path(room: str, token: str | None) -> str:
    path = f"/sync/v1/rooms/{quote(room, safe='')}"
    return path if token is None else f"{path}?token={quote(token, safe='')}"


class RawWs:
    """A bare WebSocket client (wsproto over asyncio streams): sends exactly what it is told,
    reads only when asked to, and never answers pings (the server does not ask for pongs; a
    pong that reaches a server which has already closed would reset the connection and drop
    the close frame still in flight)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.messages: list[bytes | str] = []
        self.close_code: int | None = None
        self.status: int | None = None
        self.pings = 0
        self._partial: list[Any] = []

    @classmethod
    async def open(
        cls, server: Server, room: str, token: str | None, *, rcvbuf: int | None = None
    ) -> RawWs:
        host, port = server.config.host, server.config.port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        ws = cls(reader, writer)
        writer.write(ws.conn.send(Request(host=f"{host}:{port}", target=ws_path(room, token))))
        await writer.drain()
        while ws.status is None:
            await ws._read_some(10.0)
        return ws

    async def _read_some(self, timeout: float) -> None:
        data = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
        self.conn.receive_data(data or None)
        for event in self.conn.events():
            if isinstance(event, AcceptConnection):
                self.status = 101
            elif isinstance(event, RejectConnection):
                self.status = event.status_code
                self.close_code = -1
            elif isinstance(event, BytesMessage | TextMessage):
                self._partial.append(event.data)
                if event.message_finished:
                    joined = (b"" if isinstance(event, BytesMessage) else "").join(self._partial)
                    self.messages.append(joined)
                    self._partial = []
            elif isinstance(event, Ping):
                self.pings += 1
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if self.conn.state is ConnectionState.REMOTE_CLOSING:  # not on a bare EOF
                    self.writer.write(self.conn.send(event.response()))
        if not data and self.close_code is None:
            self.close_code = 1006

    async def send(self, data: bytes | str) -> None:
        event = BytesMessage(data=data) if isinstance(data, bytes) else TextMessage(data=data)
        self.writer.write(self.conn.send(event))
        await self.writer.drain()

    async def wait_closed(self, timeout: float = 10.0) -> int:
        """Read (everything) until the server closes; return the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.close_code is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"the server did not close within {timeout} s")
            await self._read_some(remaining)
        return self.close_code

    async def aclose(self) -> None:
        # abort: a reset from the server (unread data on either side) must not surface as an
        # unretrieved stream error
        self.writer.transport.abort()
        await asyncio.sleep(0)


async def refused(c: YjsClient) -> int | None:
    event = await c.wait_event("closed", timeout=10)
    status: int | None = event["http_status"]
    return status


# -- 1. convergence -----------------------------------------------------------------------------


def use_send_path(server: Server, path: str) -> None:
    """Rooms write each client's socket themselves (`direct`, ws_direct) or go through a send
    queue and task per client and the ASGI send (`queued`, used where the server allows no
    direct writes)."""
    server.runtime.extras["room_settings"].direct_writes = path == "direct"


def room_peers(server: Server, tenant: str, doc_id: str) -> set[Any]:
    room = server.runtime.extras["rooms"].rooms.get((tenant, doc_id))
    return set(room.peers) if room else set()


SEND_PATHS = pytest.mark.parametrize("send_path", ["direct", "queued"])


@SEND_PATHS
@pytest.mark.parametrize("editors", [2, 10])
async def test_concurrent_editors_converge(server: Server, editors: int, send_path: str) -> None:
    need_node()
    use_send_path(server, send_path)
    token = server.token("acme", "alice", "author")
    clients = await asyncio.gather(
        *(client(server, "doc-conv", token, name=f"editor{i}") for i in range(editors))
    )
    try:
        peers = room_peers(server, "acme", "doc-conv")
        assert len(peers) == editors
        assert {p.writes_directly for p in peers} == {send_path == "direct"}
        pool = string.ascii_letters + string.digits
        size = len(pool) // editors
        alphabets = [pool[i * size : (i + 1) * size] for i in range(editors)]
        rng = random.Random(editors)
        typed = ["".join(rng.choice(a) for _ in range(24)) for a in alphabets]
        await asyncio.gather(
            *(
                c.command("type_chars", root="t", text=text, interval_ms=2)
                for c, text in zip(clients, typed, strict=True)
            )
        )
        final = await converge(clients, sum(map(len, typed)))
        for alphabet, text in zip(alphabets, typed, strict=True):
            # every keystroke is there exactly once and in the order it was typed
            assert only(final, alphabet) == text
    finally:
        await close_all(clients)


async def test_offline_editor_reconnects_and_merges_once(server: Server) -> None:
    need_node()
    token = server.token("acme", "alice", "author")
    a, b = await asyncio.gather(client(server, "doc-off", token), client(server, "doc-off", token))
    fresh: YjsClient | None = None
    try:
        await a.insert("t", 0, "shared.")
        await b.wait_content({"t": "shared."}, TEXT)
        await a.disconnect()
        pieces = ["<a-offline-1>", "<a-offline-2>", "<b-online-1>", "<b-online-2>"]
        await a.insert("t", 0, pieces[0])
        await a.insert("t", len(pieces[0]) + 3, pieces[1])
        await b.insert("t", 0, pieces[2])
        await b.insert("t", len(pieces[2]) + 3, pieces[3])
        await b.wait_content({"t": "<b-online-1>sha<b-online-2>red."}, TEXT)
        assert await text_of(a) == "<a-offline-1>sha<a-offline-2>red."
        await a.connect()
        final = await converge([a, b], len("shared.") + sum(map(len, pieces)))
        rest = final
        for piece in pieces:
            assert final.count(piece) == 1, (piece, final)
            rest = rest.replace(piece, "")
        assert rest == "shared.", final
        fresh = await client(server, "doc-off", token)
        await fresh.wait_content({"t": final}, TEXT)
    finally:
        await close_all([c for c in (a, b, fresh) if c is not None])


JOIN_RACE_JS = r"""
// Stock yjs + y-websocket: ROUNDS rounds of two providers created in the same tick for a
// never-seen room; each must sync and see the other's edit. One JSON line per round.
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'

const [url, token, prefix, rounds, timeoutMs] = process.argv.slice(1)
const once = (provider) => new Promise((resolve) => {
  if (provider.synced) resolve(true)
  else provider.on('sync', (s) => { if (s) resolve(true) })
})
const seen = (doc, want) => new Promise((resolve) => {
  const map = doc.getMap('m')
  const check = () => {
    if (want.every((k) => map.has(k))) resolve(true)
  }
  map.observe(check)
  check()
})
const within = (promise) => Promise.race([
  promise, new Promise((resolve) => setTimeout(() => resolve(false), Number(timeoutMs)))
])
for (let n = 0; n < Number(rounds); n++) {
  const room = `${prefix}-${n}`
  const pair = [0, 1].map(() => {
    const doc = new Y.Doc()
    const provider = new WebsocketProvider(url, room, doc, {
      params: { token }, WebSocketPolyfill: WebSocket, disableBc: true
    })
    const entry = { doc, provider, closes: 0 }
    provider.on('connection-close', () => { entry.closes++ })
    return entry
  })
  const synced = await within(Promise.all(pair.map(({ provider }) => once(provider))))
  let both = false
  if (synced) {
    pair.forEach(({ doc }, i) => doc.getMap('m').set(`c${i}`, n))
    both = await within(Promise.all(pair.map(({ doc }) => seen(doc, ['c0', 'c1']))))
  }
  const content = pair.map(({ doc }) => doc.getMap('m').toJSON())
  const closes = pair.map(({ closes }) => closes)
  process.stdout.write(JSON.stringify({ round: n, synced, both, content, closes }) + '\n')
  pair.forEach(({ provider }) => provider.destroy())
}
process.exit(0)
"""


async def test_simultaneous_joins_of_fresh_rooms(server: Server) -> None:
    """20 rounds: two stock providers join a never-seen room in the same tick (design §5)."""
    need_node()
    token = server.token("acme", "alice", "author")
    proc = await asyncio.create_subprocess_exec(
        "node",
        "--input-type=module",
        "-e",
        JOIN_RACE_JS,
        rooms_url(server),
        token,
        "fresh",
        "20",
        "10000",
        cwd=INTEROP_DIR,  # resolves the pinned yjs / y-websocket / ws
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    rounds = [json.loads(line) for line in out.decode().splitlines()]
    assert len(rounds) == 20, (rounds, err.decode())
    for result in rounds:
        n = result["round"]
        assert result["synced"] and result["both"], result
        assert result["content"] == [{"c0": n, "c1": n}] * 2, result
        assert result["closes"] == [0, 0], result  # each synced on its first connection
    rooms = server.runtime.extras["rooms"]
    assert {("acme", f"fresh-{n}") for n in range(20)} <= set(rooms.rooms)


# -- 2. who may connect -------------------------------------------------------------------------


async def test_upgrade_refused_without_valid_token(server: Server) -> None:
    need_node()
    secret = server.config.jwt_secret
    assert secret is not None
    cases = {
        "none": (None, 401),
        "garbage": ("not-a-jwt", 401),
        "other-key": (
            mint_token("another-secret-" + "x" * 32, tenant="acme", user="u", roles=["author"]),
            401,
        ),
        "expired": (server.token("acme", "u", "author", ttl=-600), 401),
        "no-reader-role": (mint_token(secret, tenant="acme", user="u", roles=["guest"]), 403),
    }
    # on the wire first: the stock clients below retry, and refused upgrades are rate-capped
    for name, (token, status) in cases.items():
        raw = await RawWs.open(server, "doc-auth", token)
        assert raw.status == status, name
        await raw.aclose()
    clients = await asyncio.gather(
        *(client(server, "doc-auth", tok, synced=False, name=n) for n, (tok, _) in cases.items())
    )
    try:
        statuses = await asyncio.gather(*(refused(c) for c in clients))
        assert dict(zip(cases, statuses, strict=True)) == {n: s for n, (_, s) in cases.items()}
        assert not any(c.has_event("synced") for c in clients)
    finally:
        await close_all(clients)


async def test_revoked_device_is_refused_and_disconnected(server: Server) -> None:
    need_node()
    user_token = server.token("acme", "dana", "author")
    http = server.http()
    auth = {"Authorization": f"Bearer {user_token}"}
    registered = await http.post("/sync/v1/devices", json={"device_id": "tab-1"}, headers=auth)
    assert registered.status_code == 201, registered.text
    device_token = registered.json()["device_token"]
    other = await client(server, "doc-dev", user_token)
    tab = await client(server, "doc-dev", device_token)
    late: YjsClient | None = None
    try:
        await tab.insert("t", 0, "from the tablet")
        await other.wait_content({"t": "from the tablet"}, TEXT)
        loop = asyncio.get_running_loop()
        started = loop.time()
        revoked = await http.delete("/sync/v1/devices/tab-1", headers=auth)
        assert revoked.status_code == 204, revoked.text
        closed = await tab.wait_event("closed", timeout=5)
        assert loop.time() - started < 1.0
        assert closed["code"] == 4401
        assert closed["will_reconnect"] is False
        late = await client(server, "doc-dev", device_token, synced=False)
        assert await refused(late) == 401
        # the user's own (non-device) connection is untouched
        await other.insert("t", 0, "still here: ")
        assert await text_of(other) == "still here: from the tablet"
        assert not other.has_event("closed")
    finally:
        await close_all([c for c in (other, tab, late) if c is not None])


async def test_server_pings_room_clients(server: Server) -> None:
    """WebSocket pings are on (`ws_ping_interval_s`, 0.5 s in the tests): a connection that
    says nothing still hears from the server, so dead peers and idle proxies are found."""
    ws = await RawWs.open(server, "doc-pings", server.token("acme", "alice", "author"))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5 * server.config.ws_ping_interval_s
        while ws.pings < 2 and (left := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await ws._read_some(left)
        assert ws.pings >= 2, f"{ws.pings} pings in {5 * server.config.ws_ping_interval_s} s"
        assert ws.close_code is None
    finally:
        await ws.aclose()


async def test_same_doc_id_in_two_tenants_is_two_documents(server: Server) -> None:
    need_node()
    ta = server.token("tenant-a", "alice", "author")
    tb = server.token("tenant-b", "bob", "author")
    a, b = await asyncio.gather(client(server, "same-doc", ta), client(server, "same-doc", tb))
    fresh: list[YjsClient] = []
    try:
        await asyncio.gather(a.insert("t", 0, "only A"), b.insert("t", 0, "only B"))
        fresh = list(
            await asyncio.gather(client(server, "same-doc", ta), client(server, "same-doc", tb))
        )
        await fresh[0].wait_content({"t": "only A"}, TEXT)
        await fresh[1].wait_content({"t": "only B"}, TEXT)
        await a.insert("t", 6, "!")  # a live update after both rooms are loaded
        await fresh[0].wait_content({"t": "only A!"}, TEXT)
        assert await text_of(a) == "only A!"
        assert await text_of(b) == "only B"
        assert (await b.command("update_count"))["count"] == 0  # nothing from A reached b
    finally:
        await close_all([a, b, *fresh])


async def test_learner_reads_but_cannot_write(server: Server) -> None:
    need_node()
    author_token = server.token("acme", "alice", "author")
    learner_token = server.token("acme", "lee", "learner")
    author, learner = await asyncio.gather(
        client(server, "doc-ro", author_token), client(server, "doc-ro", learner_token)
    )
    fresh: YjsClient | None = None
    try:
        await author.command("awareness_set", state={"user": "alice"})
        await author.insert("t", 0, "lesson one")
        await learner.wait_content({"t": "lesson one"}, TEXT)

        async def sees_author() -> bool:
            states = (await learner.command("awareness_states"))["states"]
            return {"user": "alice"} in states.values()

        await poll(sees_author, what="the author's awareness at the learner")

        dropped = await metric(server, "crdt_sync_readonly_updates_dropped_total")
        await learner.insert("t", 0, "LEARNER WAS HERE ")

        async def counted() -> bool:
            now = await metric(server, "crdt_sync_readonly_updates_dropped_total")
            return now > dropped

        await poll(counted, what="the dropped-update metric to rise")
        # the learner keeps receiving while its own edit stays local
        await author.insert("t", 10, ", part two")
        await learner.wait_content({"t": "LEARNER WAS HERE lesson one, part two"}, TEXT)
        assert await text_of(author) == "lesson one, part two"
        fresh = await client(server, "doc-ro", author_token)
        assert await text_of(fresh) == "lesson one, part two"
        # reconnecting sends the learner's whole state again (sync step 2): dropped as well
        await learner.disconnect()
        await learner.connect()
        await poll(counted, what="the dropped-update metric to rise")
        assert await text_of(fresh) == "lesson one, part two"
    finally:
        await close_all([c for c in (author, learner, fresh) if c is not None])


# -- 3. garbage on the socket -------------------------------------------------------------------

SMALL_LIMIT = 64 * 1024


@pytest.fixture
async def small_server(
    anyio_backend: str, tmp_path: Path, backend: str, database_url: str | None
) -> AsyncIterator[Server]:
    """A server whose WebSocket message limit (Hypercorn's) is 64 KiB."""

    def configure(config: Config) -> None:
        config.ws_max_message_bytes = SMALL_LIMIT

    async with run_server(tmp_path, database_url, backend, configure=configure) as srv:
        yield srv


def _garbage() -> dict[str, tuple[bytes, int]]:
    rng = random.Random(7)
    noise = bytes([0x09]) + rng.randbytes(63)  # 9 is no y-websocket message type
    source: Doc[Any] = Doc()
    source["t"] = text = Text()
    text += "injected"
    valid = source.get_update()
    not_an_update = b"\x03\xff\xff\xff\x0f\x01garbage"
    with pytest.raises(ValueError):
        Doc().apply_update(not_an_update)
    cases = {
        "random bytes": (noise, 4400),
        "truncated sync message": (yp.sync_update(valid)[:-4], 4400),
        "sync message with trailing bytes": (yp.sync_update(valid) + b"\x00", 4400),
        "update that is not Yjs": (yp.sync_update(not_an_update), 4400),
        "bad state vector": (yp.sync_step1(b"\x05\x01"), 4400),
        "awareness that is not JSON": (yp.awareness_message(b"\x01\x07\x01\x03{x:"), 4400),
        "empty message": (b"", 4400),
        "too big": (yp.sync_update(b"\x00" * (SMALL_LIMIT + 1)), 1009),
    }
    return cases


async def test_garbage_closes_only_that_connection(small_server: Server) -> None:
    need_node()
    server = small_server
    token = server.token("acme", "alice", "author")
    a, b, victim = await asyncio.gather(
        client(server, "doc-junk", token, name="a"),
        client(server, "doc-junk", token, name="b"),
        client(server, "doc-junk", token, name="victim"),
    )
    fresh: YjsClient | None = None
    typing = asyncio.gather(
        a.command("type_chars", root="t", text="abcdefghij" * 4, interval_ms=10),
        b.command("type_chars", root="t", text="0123456789" * 4, interval_ms=10),
    )
    try:
        codes: dict[str, int] = {}
        for name, (data, _) in _garbage().items():
            reply = await victim.command("send_raw", base64=base64.b64encode(data).decode())
            assert reply["sent"] == len(data)
            closed = await victim.wait_event("closed", timeout=5)
            codes[name] = closed["code"]
            await victim.connect()  # a 44xx close is final for the provider: reconnect by hand
        assert codes == {name: code for name, (_, code) in _garbage().items()}

        raw = await RawWs.open(server, "doc-junk", token)
        await raw.send("a text frame")
        assert await raw.wait_closed() == 4400
        await raw.aclose()

        await typing
        final = await converge([a, b, victim], 80)
        assert only(final, "abcdefghij") == "abcdefghij" * 4
        assert only(final, "0123456789") == "0123456789" * 4
        assert not a.has_event("closed") and not b.has_event("closed")
        fresh = await client(server, "doc-junk", token)
        assert await text_of(fresh) == final  # nothing of the garbage was stored
    finally:
        typing.cancel()
        await asyncio.gather(typing, return_exceptions=True)
        await close_all([c for c in (a, b, victim, fresh) if c is not None])


# -- 4. a client that stops reading -------------------------------------------------------------


@SEND_PATHS
async def test_slow_client_is_disconnected_others_unaffected(
    server: Server, send_path: str
) -> None:
    """Bounded send queue: a reader that falls behind is closed with 1013 and gets the close
    frame once it reads again; one that never reads leaves the room all the same. Directly
    written clients are bounded by what their transport holds beyond the kernel's buffer."""
    need_node()
    use_send_path(server, send_path)
    server.runtime.extras["room_settings"].send_queue = 8
    token = server.token("acme", "alice", "author")
    a, b = await asyncio.gather(
        client(server, "doc-slow", token), client(server, "doc-slow", token)
    )
    slow = await RawWs.open(server, "doc-slow", server.token("acme", "slow", "author"), rcvbuf=4096)
    stuck = await RawWs.open(
        server, "doc-slow", server.token("acme", "stuck", "author"), rcvbuf=4096
    )
    draining: asyncio.Task[int] | None = None
    try:
        assert slow.status == stuck.status == 101

        async def joined() -> dict[str, Any]:
            found = {
                p.user_id: p
                for p in room_peers(server, "acme", "doc-slow")
                if p.user_id in ("slow", "stuck")
            }
            return found if len(found) == 2 else {}

        peers = await poll(joined, what="the raw clients in the room")
        assert {p.writes_directly for p in peers.values()} == {send_path == "direct"}
        chunk = 256 * 1024
        total = 0
        for n in range(80):  # at most 20 MiB; the kernel buffers hold a few MiB
            await a.insert("t", total, string.ascii_lowercase[n % 26] * chunk)
            total += chunk

            async def b_has_it(n: int = n) -> bool:
                # b reads at its own pace: the writer waits for it, never for the slow ones
                return bool((await b.command("update_count"))["count"] > n)

            await poll(b_has_it, what=f"update {n} at b")
            if peers["slow"].closed and draining is None:
                draining = asyncio.create_task(slow.wait_closed(timeout=30))  # reads again
            if peers["slow"].closed and peers["stuck"].closed:
                break
        assert peers["slow"].closed and peers["stuck"].closed, "a slow client was kept"
        assert draining is not None
        assert await draining == 1013
        # the others got everything, and keep editing
        before = await text_of(a)
        await b.wait_content({"t": before}, TEXT, timeout=30)
        await b.insert("t", 0, "after-")
        await a.wait_content({"t": "after-" + before}, TEXT, timeout=30)
        assert not a.has_event("closed") and not b.has_event("closed")

        async def released() -> bool:
            now = room_peers(server, "acme", "doc-slow")
            return not now & set(peers.values()) and len(now) == 2

        # the server lets go of the stuck one although it still reads nothing
        await poll(released, timeout=10, what="the slow clients to leave the room")
        if send_path == "direct":
            # and of what its socket still held for it: dropped with the connection, which
            # would otherwise keep up to send_queue_bytes per stuck client until TCP gives up
            async def freed() -> bool:
                return peers["stuck"].unsent_bytes == 0

            await poll(freed, timeout=10, what="the stuck client's buffered bytes to go")
        # Its close frame cannot get out: Hypercorn's ping task holds the connection's send
        # lock while it waits on the full socket. So the connection is dropped (1006 at the
        # client); either way the stock client reconnects and resyncs.
        assert await stuck.wait_closed(timeout=30) in (1013, 1006)
    finally:
        if draining is not None and not draining.done():
            draining.cancel()
        await slow.aclose()
        await stuck.aclose()
        await close_all([a, b])
