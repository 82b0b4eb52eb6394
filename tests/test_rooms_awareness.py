"""Awareness relay in batches: changes within one tick per room, renewals every
`awareness_renew_s`, leaves as changes (web/rooms.py). Bare protocol clients, so every byte
the server relays is seen."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocol import yprotocol as yp
from tests.conftest import Server
from tests.test_rooms import RawWs

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
