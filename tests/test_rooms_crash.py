"""Rooms across a crash, a clean stop, and an idle unload, with stock Yjs clients.

`crdt-sync serve` runs as a real subprocess (kill -9 / SIGTERM, restarted on the same port
and store). What any client has received was stored before it was forwarded (design.md §3
Rooms), so it survives `kill -9`; clients that stay open reconnect by themselves and nothing
is duplicated (compared as exact strings).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pycrdt import Doc, Text

from storage.engine import open_store
from tests.conftest import Server, free_port, poll
from tests.interop_client import YjsClient, close_all
from tests.rooms_support import client, need_node
from web.auth import mint_token

pytestmark = pytest.mark.anyio

CLI = str(Path(sys.executable).with_name("crdt-sync"))
TENANT = "acme"
ROOM = "doc-crash"
TEXT = {"t": "text"}


class ServeProcess:
    """`crdt-sync serve` on one port and one store, started again after each stop."""

    def __init__(self, tmp: Path, database_url: str | None) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rooms_url = f"ws://127.0.0.1:{self.port}/sync/v1/rooms"
        self.secret = "rooms-crash-" + uuid.uuid4().hex
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    def token(self, user: str) -> str:
        return mint_token(self.secret, tenant=TENANT, user=user, roles=["author"])

    @property
    def log(self) -> Path:
        return self.tmp / f"serve-{self.starts}.log"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def start(self) -> None:
        self.starts += 1
        args = [CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRDT_SYNC_")}
        env["CRDT_SYNC_JWT_SECRET"] = self.secret
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                *args, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as http:
            while True:
                if self.process.returncode is not None:
                    pytest.fail(f"serve exited with {self.process.returncode}:\n{self.output()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        return
                if loop.time() > deadline:
                    pytest.fail(f"serve not ready after 30 s:\n{self.output()}")
                await asyncio.sleep(0.05)

    async def stop(self, sig: signal.Signals, timeout: float) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            pytest.fail(f"serve still running {timeout} s after {sig.name}:\n{self.output()}")

    async def stored_text(self, doc_id: str = ROOM) -> str:
        """The document as the store holds it (read while no server runs)."""
        store = await open_store(self.database_url, self.data_dir)
        try:
            checkpoint, updates = await store.load_doc(TENANT, doc_id)
        finally:
            await store.close()
        doc: Doc[Any] = Doc()
        if checkpoint is not None:
            doc.apply_update(checkpoint)
        for item in updates:
            doc.apply_update(item.update)
        return str(doc.get("t", type=Text))

    async def client(self, user: str, **kwargs: Any) -> YjsClient:
        c = await YjsClient.start(
            self.rooms_url, ROOM, self.token(user), max_backoff_ms=300, name=user, **kwargs
        )
        await c.wait_event("synced", timeout=15)
        return c

    async def cleanup(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def serve(
    anyio_backend: str, tmp_path: Path, database_url: str | None
) -> AsyncIterator[ServeProcess]:
    proc = ServeProcess(tmp_path, database_url)
    try:
        yield proc
    finally:
        await proc.cleanup()


async def text_of(c: YjsClient) -> str:
    value: str = (await c.content(TEXT))["t"]
    return value


async def converge(clients: Sequence[YjsClient], total: int, timeout: float = 20.0) -> str:
    async def full() -> str | None:
        text = await text_of(clients[0])
        return text if len(text) >= total else None

    text: str = await poll(full, timeout, f"{total} characters at {clients[0].name}")
    assert len(text) == total, text
    await asyncio.gather(*(c.wait_content({"t": text}, TEXT, timeout) for c in clients[1:]))
    return text


def typed(alphabet: str, n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


async def test_kill_9_keeps_what_was_broadcast_and_clients_resync_once(
    serve: ServeProcess,
) -> None:
    need_node()
    await serve.start()
    a = await serve.client("alice")
    b = await serve.client("bob")
    fresh: YjsClient | None = None
    try:
        a_text, b_text = typed("abcdefgh", 30, 1), typed("12345678", 30, 2)
        await asyncio.gather(
            a.command("type_chars", root="t", text=a_text, interval_ms=3),
            b.command("type_chars", root="t", text=b_text, interval_ms=3),
        )
        # each sees the other's keystrokes: the server stored and broadcast all of them
        final = await converge([a, b], 60)

        assert await serve.stop(signal.SIGKILL, 10) == -signal.SIGKILL
        assert await serve.stored_text() == final  # in the store, before anyone resends it

        await serve.start()
        fresh = await serve.client("carol")
        assert await text_of(fresh) == final
        # the clients that stayed open reconnect by themselves, and nothing is doubled
        await asyncio.gather(a.wait_event("synced", 15), b.wait_event("synced", 15))
        for c in (a, b, fresh):
            assert await text_of(c) == final
        await a.insert("t", 0, "after-restart:")
        for c in (b, fresh):
            await c.wait_content({"t": "after-restart:" + final}, TEXT)
    finally:
        await close_all([c for c in (a, b, fresh) if c is not None])


async def test_sigterm_exits_0_and_keeps_acknowledged_text(serve: ServeProcess) -> None:
    need_node()
    await serve.start()
    a = await serve.client("alice")
    b = await serve.client("bob")
    fresh: YjsClient | None = None
    typing: asyncio.Task[Any] | None = None
    try:
        await a.insert("t", 0, "before the signal|")
        await b.wait_content({"t": "before the signal|"}, TEXT)
        tail = typed("abcdefghijklmnopqrstuvwxyz", 120, 3)
        typing = asyncio.create_task(
            a.command("type_chars", root="t", text=tail, interval_ms=10, timeout=30)
        )

        async def b_got_some() -> bool:
            return len(await text_of(b)) >= len("before the signal|") + 10

        await poll(b_got_some, what="keystrokes reaching b")  # keystrokes are in flight now
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await serve.stop(signal.SIGTERM, 15) == 0, serve.output()
        assert loop.time() - started < 15
        seen_by_b = await text_of(b)  # b got it from the server: stored first
        closed = await b.wait_event("closed", timeout=5)
        assert closed["code"] == 1001, closed  # told "going away", not just dropped
        log = serve.log.read_text(errors="replace")
        assert "Traceback" not in log and "ERROR" not in log, log[-4000:]  # a clean stop
        await typing
        everything = "before the signal|" + tail
        assert await text_of(a) == everything
        stored = await serve.stored_text()
        assert stored.startswith(seen_by_b), (stored, seen_by_b)
        assert everything.startswith(stored), stored

        await serve.start()
        fresh = await serve.client("carol")
        # a reconnects by itself and sends what the server never got; exactly once
        await asyncio.gather(*(c.wait_content({"t": everything}, TEXT, 20) for c in (a, b, fresh)))
    finally:
        if typing is not None and not typing.done():
            typing.cancel()
            with contextlib.suppress(BaseException):
                await typing
        await close_all([c for c in (a, b, fresh) if c is not None])


async def test_idle_room_unloads_and_reloads_the_same(server: Server) -> None:
    need_node()
    rooms = server.runtime.extras["rooms"]
    server.runtime.extras["room_settings"].unload_after_s = 0.3
    token = server.token(TENANT, "alice", "author")
    a = await client(server, "doc-idle", token, name="a")
    b = await client(server, "doc-idle", token, name="b")
    later: YjsClient | None = None
    try:
        for word in ("one ", "two ", "three "):
            await a.insert("t", len(await text_of(a)), word)
        await b.wait_content({"t": "one two three "}, TEXT)
        await b.insert("t", 0, "zero ")
        await a.wait_content({"t": "zero one two three "}, TEXT)
        assert (TENANT, "doc-idle") in rooms.rooms
        await b.aclose()
        await a.disconnect()  # a stays around offline, holding the same content

        async def unloaded() -> bool:
            return (TENANT, "doc-idle") not in rooms.rooms

        await poll(unloaded, timeout=10, what="the idle room to unload")
        later = await client(server, "doc-idle", token, name="later")
        assert await text_of(later) == "zero one two three "
        await a.connect()  # a's state meets the reloaded room: nothing doubles
        await a.insert("t", 0, ">")
        await later.wait_content({"t": ">zero one two three "}, TEXT)
        assert await text_of(a) == ">zero one two three "
    finally:
        await close_all([c for c in (a, b, later) if c is not None])
