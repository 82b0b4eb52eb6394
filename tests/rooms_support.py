"""Shared bits of the room tests: real Yjs clients (Node) against a real server."""

from __future__ import annotations

import pytest

from tests.conftest import Server, require
from tests.interop_client import YjsClient, node_available


def need_node() -> None:
    reason = node_available()
    if reason is not None:
        require("NODE", reason)


def rooms_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/sync/v1/rooms"


async def client(
    server: Server,
    room: str,
    token: str | None,
    *,
    synced: bool = True,
    name: str | None = None,
    **kwargs: object,
) -> YjsClient:
    c = await YjsClient.start(rooms_url(server), room, token, name=name, **kwargs)  # type: ignore[arg-type]
    if synced:
        await c.wait_event("synced", timeout=15)
    return c


__all__ = ["client", "need_node", "pytest", "rooms_url"]
