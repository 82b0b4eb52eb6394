from __future__ import annotations

import pytest

from tests.conftest import Server
from tests.interop_client import close_all
from tests.rooms_support import client, need_node

pytestmark = pytest.mark.anyio


async def test_two_editors_converge(server: Server) -> None:
    need_node()
    token = server.token("acme", "alice", "author")
    a = await client(server, "doc-1", token)
    b = await client(server, "doc-1", token)
    try:
        await a.insert("t", 0, "hello")
        await b.wait_content({"t": "hello"}, {"t": "text"})
        await b.insert("t", 5, " world")
        await a.wait_content({"t": "hello world"}, {"t": "text"})
    finally:
        await close_all([a, b])
