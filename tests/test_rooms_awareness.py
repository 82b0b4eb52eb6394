"""Awareness relay in batches: changes within one tick per room, renewals every
`awareness_renew_s`, leaves as changes (web/rooms.py). Bare protocol clients, so every byte
the server relays is seen."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocol import yprotocol as yp
from tests.conftest import Server, poll
from tests.interop_client import YjsClient, close_all
from tests.rooms_support import client, need_node
from tests.test_rooms import RawWs
from web.rooms import CLOSE_PROTOCOL_ERROR, MAX_AWARENESS_IDS

pytestmark = pytest.mark.anyio


def awareness(entries: list[tuple[int, int, Any]]) -> bytes:
    return yp.awareness_message(
        yp.encode_awareness([yp.AwarenessEntry(c, clock, state) for c, clock, state in entries])
    )


async def relayed(ws: RawWs, seconds: float) -> list[list[yp.AwarenessEntry]]:
    """The awareness messages `ws` receives within `seconds`, one entry list per message."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    start = len(ws.messages)
    while (left := deadline - loop.time()) > 0:
        try:
            await ws._read_some(left)
        except TimeoutError:
            break
    out = []
    for data in ws.messages[start:]:
        assert isinstance(data, bytes)
        message = yp.decode(data)
        if message.type is yp.MessageType.AWARENESS:
            out.append(yp.decode_awareness(message.payload))
    return out


def received(ws: RawWs) -> list[list[yp.AwarenessEntry]]:
    """Every awareness message `ws` has received since it opened (its greeting included)."""
    decoded = [yp.decode(m) for m in ws.messages if isinstance(m, bytes)]
    return [yp.decode_awareness(m.payload) for m in decoded if m.type is yp.MessageType.AWARENESS]


async def test_awareness_changes_batched_and_renewals_deferred(server: Server) -> None:
    settings = server.runtime.extras["room_settings"]
    settings.awareness_tick_s = 0.5  # wide enough that both changes below land in one tick
    settings.awareness_renew_s = 2.0
    room = "doc-awareness"
    a, b, watcher = [
        await RawWs.open(server, room, server.token("acme", user, "author"))
        for user in ("alice", "bob", "carol")
    ]
    try:
        await relayed(watcher, 0.3)  # the greeting
        await a.send(awareness([(101, 1, {"user": "alice"})]))
        await b.send(awareness([(202, 1, {"user": "bob"})]))
        got = await relayed(watcher, 1.5)
        # both joins in ONE relayed message, not one message per client
        assert [sorted(e.client_id for e in m) for m in got] == [[101, 202]]

        # a renewal (same state, next clock) is not relayed at once ...
        await a.send(awareness([(101, 2, {"user": "alice"})]))
        assert await relayed(watcher, 1.0) == []
        # ... but within awareness_renew_s, with its new clock
        later = await relayed(watcher, 2.5)
        assert [(e.client_id, e.clock, e.state) for m in later for e in m] == [
            (101, 2, {"user": "alice"})
        ]

        # a change goes out within the tick
        await a.send(awareness([(101, 3, {"user": "alice", "cursor": 5})]))
        changed = await relayed(watcher, 1.5)
        assert [(e.client_id, e.state) for m in changed for e in m] == [
            (101, {"user": "alice", "cursor": 5})
        ]

        # a client that leaves is relayed as removed (state null), once
        await a.aclose()
        gone = await relayed(watcher, 1.5)
        assert [(e.client_id, e.state) for m in gone for e in m] == [(101, None)]
    finally:
        for ws in (b, watcher):
            await ws.aclose()


async def test_stale_copies_and_echoes_change_nothing(server: Server) -> None:
    """y-protocols' rule: an entry counts only with a newer clock. Every y-websocket client
    sends back what it is relayed; those copies (and late, older ones) must neither be relayed
    again, nor roll a state back, nor make the sender the owner of another client's state."""
    settings = server.runtime.extras["room_settings"]
    settings.awareness_tick_s = 0.2
    settings.awareness_renew_s = 0.5
    room = "doc-awareness-stale"
    a, b, watcher = [
        await RawWs.open(server, room, server.token("acme", user, "author"))
        for user in ("alice", "bob", "carol")
    ]
    late: RawWs | None = None
    try:
        await relayed(watcher, 0.3)
        await a.send(awareness([(101, 3, {"user": "alice", "cursor": 9})]))
        assert [(e.client_id, e.clock) for m in await relayed(watcher, 1.0) for e in m] == [
            (101, 3)
        ]
        # bob echoes alice's state (same clock) and sends an older copy (lower clock), in
        # other bytes than relayed (key order), so the clock rule decides, not the echo cache
        await b.send(awareness([(101, 3, {"cursor": 9, "user": "alice"})]))
        await b.send(awareness([(101, 2, {"user": "alice", "cursor": 1})]))
        assert await relayed(watcher, 1.2) == []  # no change, and no renewal either
        late = await RawWs.open(server, room, server.token("acme", "dave", "author"))
        await relayed(late, 0.5)
        assert [(e.client_id, e.clock, e.state) for m in received(late) for e in m] == [
            (101, 3, {"user": "alice", "cursor": 9})
        ]
        # bob leaving does not remove alice's state: the echo did not make it bob's
        await b.aclose()
        assert await relayed(watcher, 1.0) == []
        # alice leaving does; a late copy of her old state does not bring her back
        await a.aclose()
        gone, _ = await asyncio.gather(relayed(watcher, 1.0), relayed(late, 1.0))
        assert [(e.client_id, e.state) for m in gone for e in m] == [(101, None)]
        await watcher.send(awareness([(101, 3, {"user": "alice", "cursor": 9})]))
        assert await relayed(late, 1.2) == []
        fresh = await RawWs.open(server, room, server.token("acme", "erin", "author"))
        try:
            await relayed(fresh, 0.5)
            assert received(fresh) == []  # nobody's awareness left to greet with
        finally:
            await fresh.aclose()
    finally:
        for ws in (b, watcher, late):
            if ws is not None:
                await ws.aclose()


async def test_relayed_states_keep_their_clients_bytes(server: Server) -> None:
    """States are relayed as their client wrote them (validated, not re-encoded), so a
    receiving y-websocket client re-encodes them to the same bytes; invalid JSON still closes
    the sender."""
    settings = server.runtime.extras["room_settings"]
    settings.awareness_tick_s = 0.1
    room = "doc-awareness-bytes"
    a, watcher = [
        await RawWs.open(server, room, server.token("acme", user, "author"))
        for user in ("alice", "carol")
    ]
    try:
        await relayed(watcher, 0.3)
        raw = '{"user":{"name":"Zoë","color":"#30bced"}}'.encode()
        entry = yp.awareness_entry(7, 1, raw)
        await a.send(yp.awareness_message(yp.varuint(1) + entry))
        await relayed(watcher, 0.6)
        last = next(
            yp.decode(m)
            for m in reversed(watcher.messages)
            if isinstance(m, bytes) and yp.decode(m).type is yp.MessageType.AWARENESS
        )
        assert last.payload == yp.varuint(1) + entry
        await a.send(yp.awareness_message(yp.varuint(1) + yp.awareness_entry(7, 2, b"{nope")))
        assert await a.wait_closed(timeout=5) == CLOSE_PROTOCOL_ERROR
    finally:
        await a.aclose()
        await watcher.aclose()


async def test_client_back_from_a_lost_connection_is_told_to_reannounce(server: Server) -> None:
    """A client whose connection dropped comes back announcing its state with the clock it
    had, which its removal already passed. The server answers with a removal at the clock it
    holds; the client then re-announces with the next clock, which every other client takes."""
    settings = server.runtime.extras["room_settings"]
    settings.awareness_tick_s = 0.1
    room = "doc-awareness-back"
    a = await RawWs.open(server, room, server.token("acme", "alice", "author"))
    watcher = await RawWs.open(server, room, server.token("acme", "carol", "author"))
    back: RawWs | None = None
    try:
        await relayed(watcher, 0.3)
        await a.send(awareness([(101, 3, {"user": "alice"})]))
        assert [(e.client_id, e.clock) for m in await relayed(watcher, 0.5) for e in m] == [
            (101, 3)
        ]
        await a.aclose()
        gone = await relayed(watcher, 0.5)
        assert [(e.client_id, e.clock, e.state) for m in gone for e in m] == [(101, 4, None)]

        back = await RawWs.open(server, room, server.token("acme", "alice", "author"))
        await relayed(back, 0.3)
        await back.send(awareness([(101, 3, {"user": "alice"})]))  # what y-websocket does
        told = await relayed(back, 0.5)
        assert [(e.client_id, e.clock, e.state) for m in told for e in m] == [(101, 4, None)]
        assert await relayed(watcher, 0.3) == []  # the stale announce is not relayed
        await back.send(awareness([(101, 5, {"user": "alice"})]))  # y-protocols' answer
        again = await relayed(watcher, 0.5)
        assert [(e.client_id, e.clock, e.state) for m in again for e in m] == [
            (101, 5, {"user": "alice"})
        ]
    finally:
        for ws in (watcher, back):
            if ws is not None:
                await ws.aclose()


async def test_stock_client_back_from_a_lost_connection_is_seen_at_once(server: Server) -> None:
    """The same with stock y-websocket clients: after a reconnect the others see the client's
    state again within a tick, not after two of its renewals (30 s)."""
    need_node()
    server.runtime.extras["room_settings"].awareness_tick_s = 0.05
    room = "doc-awareness-stock-back"
    clients: list[YjsClient] = []
    try:
        a = await client(server, room, server.token("acme", "alice", "author"))
        clients.append(a)
        watcher = await client(server, room, server.token("acme", "carol", "author"))
        clients.append(watcher)
        await a.command("awareness_set", state={"user": "alice"})

        async def sees_alice() -> bool:
            states = (await watcher.command("awareness_states"))["states"]
            return {"user": "alice"} in states.values()

        async def alice_gone() -> bool:
            return not await sees_alice()

        await poll(sees_alice, timeout=5, what="alice's state at the watcher")
        await a.disconnect()
        await poll(alice_gone, timeout=5, what="alice's removal at the watcher")
        await a.connect()
        await poll(sees_alice, timeout=3, what="alice's state after her reconnect")
    finally:
        await close_all(clients)


async def test_one_connection_speaks_for_a_bounded_number_of_clients(server: Server) -> None:
    """A connection claiming states for more client ids than any real client has is refused
    as a protocol error, and nothing of that message is applied."""
    settings = server.runtime.extras["room_settings"]
    settings.awareness_tick_s = 0.1
    room = "doc-awareness-cap"
    ok = await RawWs.open(server, room, server.token("acme", "alice", "author"))
    flood = await RawWs.open(server, room, server.token("acme", "mallory", "author"))
    watcher = await RawWs.open(server, room, server.token("acme", "carol", "author"))
    try:
        await relayed(watcher, 0.3)
        await ok.send(awareness([(cid, 1, {"n": cid}) for cid in range(1, 4)]))
        assert len(await relayed(watcher, 0.5)) == 1
        many = [(1000 + i, 1, {"n": i}) for i in range(MAX_AWARENESS_IDS + 1)]
        await flood.send(awareness(many))
        assert await flood.wait_closed(timeout=5) == CLOSE_PROTOCOL_ERROR
        assert await relayed(watcher, 0.5) == []  # none of the flood reached anyone
        late = await RawWs.open(server, room, server.token("acme", "dave", "author"))
        try:
            await relayed(late, 0.3)
            greeted = sorted(e.client_id for m in received(late) for e in m)
            assert greeted == [1, 2, 3]
        finally:
            await late.aclose()
        # the limit is per connection: a client within it is untouched
        await ok.send(awareness([(cid, 2, {"n": -cid}) for cid in range(1, 4)]))
        assert len(await relayed(watcher, 0.5)) == 1
        assert ok.close_code is None
    finally:
        for ws in (ok, flood, watcher):
            await ws.aclose()
