"""Drive a stock Yjs + y-websocket client (tests/interop/client.mjs) from asyncio tests.

Each :class:`YjsClient` is one Node process holding one ``Y.Doc`` and one ``WebsocketProvider``.
Commands are JSON lines on its stdin, answered by one JSON line each on its stdout (matched by
``id``); the same stdout also carries events (``synced``, ``status``, ``closed``, ``error``).
See tests/interop/README.md for the command protocol.

    reason = node_available()
    if reason:
        pytest.skip(reason)
    client = await YjsClient.start(url="ws://127.0.0.1:8000/sync/v1/rooms", room="doc", token=jwt)
    try:
        await client.wait_event("synced")
        await client.command("insert", root="t", index=0, text="abc")
    finally:
        await client.aclose()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

INTEROP_DIR = Path(__file__).resolve().parent / "interop"
CLIENT_SCRIPT = INTEROP_DIR / "client.mjs"
REQUIRED_PACKAGES = ("yjs", "y-websocket", "ws")

Event = dict[str, Any]


class YjsClientError(RuntimeError):
    """The Node client failed, timed out, or answered a command with ``ok: false``."""


def node_available() -> str | None:
    """Return why the Node interop client cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not CLIENT_SCRIPT.is_file():
        return f"{CLIENT_SCRIPT} is missing"
    modules = INTEROP_DIR / "node_modules"
    missing = [name for name in REQUIRED_PACKAGES if not (modules / name).is_dir()]
    if missing:
        names = ", ".join(missing)
        return f"{modules} lacks {names}: run `npm ci` in {INTEROP_DIR} (or `make interop`)"
    return None


class YjsClient:
    """One scripted Yjs client process; create it with :meth:`start`."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.name = name
        self._proc = proc
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[Event] = []
        self._consumed = 0  # events before this index were returned by wait_event
        self._taken: set[int] = set()  # indices at or after _consumed already returned
        self._changed = asyncio.Condition()
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._exited = False
        self._reader = asyncio.create_task(self._read_stdout(), name=f"{name}-stdout")
        self._err_reader = asyncio.create_task(self._read_stderr(), name=f"{name}-stderr")

    @classmethod
    async def start(
        cls,
        url: str,
        room: str,
        token: str | None = None,
        *,
        client_id: int | None = None,
        connect: bool = True,
        max_backoff_ms: int | None = None,
        name: str | None = None,
        node: str = "node",
    ) -> YjsClient:
        """Spawn ``node tests/interop/client.mjs`` for ``room`` at ``url`` (the rooms base URL)."""
        args = [str(CLIENT_SCRIPT), "--url", url, "--room", room]
        if token is not None:
            args += ["--token", token]
        if client_id is not None:
            args += ["--client-id", str(client_id)]
        if not connect:
            args.append("--no-connect")
        if max_backoff_ms is not None:
            args += ["--max-backoff-ms", str(max_backoff_ms)]
        proc = await asyncio.create_subprocess_exec(
            node,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        return cls(proc, name or f"yjs-client[{room}]")

    # -- I/O ------------------------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        try:
            while True:
                raw = await self._proc.stdout.readline()
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    await self._add_event({"event": "garbage", "line": line})
                    continue
                if isinstance(msg, dict) and "event" in msg:
                    await self._add_event(msg)
                elif isinstance(msg, dict):
                    msg_id = msg.get("id")
                    fut = self._pending.pop(msg_id, None) if isinstance(msg_id, int) else None
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    elif fut is None:
                        await self._add_event({"event": "unmatched_reply", "reply": msg})
        finally:
            self._exited = True
            error = YjsClientError(f"{self.name} exited{self._stderr_tail()}")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(error)
            self._pending.clear()
            async with self._changed:
                self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        while True:
            raw = await self._proc.stderr.readline()
            if not raw:
                return
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    async def _add_event(self, event: Event) -> None:
        async with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def _stderr_tail(self) -> str:
        if not self._stderr:
            return ""
        return "; stderr:\n" + "\n".join(list(self._stderr)[-20:])

    # -- commands -------------------------------------------------------------------------------

    async def request(self, cmd: str, *, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """Send one command and return its reply as is (``ok`` may be false)."""
        if self._exited or self._proc.stdin is None or self._proc.stdin.is_closing():
            raise YjsClientError(f"{self.name} is not running{self._stderr_tail()}")
        self._next_id += 1
        msg_id = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        line = json.dumps({"id": msg_id, "cmd": cmd, **fields}) + "\n"
        try:
            self._proc.stdin.write(line.encode())
            await self._proc.stdin.drain()
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise YjsClientError(
                f"{self.name}: no reply to {cmd!r} (id {msg_id}) within {timeout}s"
                f"{self._stderr_tail()}"
            ) from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise YjsClientError(f"{self.name} is gone: {exc}{self._stderr_tail()}") from exc
        finally:
            self._pending.pop(msg_id, None)

    async def command(self, cmd: str, *, timeout: float = 15.0, **fields: Any) -> dict[str, Any]:
        """Send one command; raise :class:`YjsClientError` unless the reply has ``ok: true``."""
        reply = await self.request(cmd, timeout=timeout, **fields)
        if not reply.get("ok"):
            raise YjsClientError(f"{self.name}: {cmd!r} failed: {reply}")
        return reply

    # Shorthands for the common commands.

    async def insert(self, root: str, index: int, text: str) -> None:
        await self.command("insert", root=root, index=index, text=text)

    async def content(self, roots: Mapping[str, str] | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {} if roots is None else {"roots": dict(roots)}
        reply = await self.command("content", **fields)
        content: dict[str, Any] = reply["content"]
        return content

    async def wait_content(
        self,
        equals: Mapping[str, Any],
        roots: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Wait until the named roots hold ``equals``; raise with the last content otherwise."""
        fields: dict[str, Any] = {"equals": dict(equals), "timeout_ms": int(timeout * 1000)}
        if roots is not None:
            fields["roots"] = dict(roots)
        reply = await self.request("wait_content", timeout=timeout + 5.0, **fields)
        if not reply.get("ok"):
            raise YjsClientError(
                f"{self.name}: content never became {dict(equals)!r} within {timeout}s; "
                f"last: {reply.get('content')!r} ({reply.get('error')})"
            )
        content: dict[str, Any] = reply["content"]
        return content

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Reconnect and wait until synced again."""
        return await self.command("connect", timeout=timeout + 5.0, timeout_ms=int(timeout * 1000))

    async def disconnect(self) -> None:
        await self.command("disconnect")

    # -- events ---------------------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        """Every event received so far, in order."""
        return list(self._events)

    @property
    def exited(self) -> bool:
        return self._exited

    async def wait_event(
        self,
        name: str,
        timeout: float = 10.0,
        predicate: Callable[[Event], bool] | None = None,
    ) -> Event:
        """Return the oldest event called ``name`` (and passing ``predicate``) not yet returned.

        Each event is returned at most once, so ``wait_event("synced")`` after a reconnect waits
        for the next sync, not the first one.
        """

        def find() -> Event | None:
            for index in range(self._consumed, len(self._events)):
                if index in self._taken:
                    continue
                event = self._events[index]
                if event.get("event") == name and (predicate is None or predicate(event)):
                    self._taken.add(index)
                    while self._consumed in self._taken:
                        self._taken.discard(self._consumed)
                        self._consumed += 1
                    return event
            return None

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while True:
                event = find()
                if event is not None:
                    return event
                remaining = deadline - loop.time()
                if self._exited or remaining <= 0:
                    state = "exited" if self._exited else f"nothing within {timeout}s"
                    raise YjsClientError(
                        f"{self.name}: no {name!r} event ({state}); events: "
                        f"{self._events[-10:]!r}{self._stderr_tail()}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def has_event(self, name: str) -> bool:
        """Whether any event called ``name`` has been received (returned or not)."""
        return any(event.get("event") == name for event in self._events)

    # -- shutdown -------------------------------------------------------------------------------

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop the client: ask it to exit, then kill it if it does not."""
        proc = self._proc
        if proc.returncode is None:
            if proc.stdin is not None and not proc.stdin.is_closing():
                with contextlib.suppress(Exception):
                    proc.stdin.write(b'{"id": null, "cmd": "exit"}\n')
                    await proc.stdin.drain()
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in (self._reader, self._err_reader):
            try:
                await asyncio.wait_for(task, timeout)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def __aenter__(self) -> YjsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def close_all(clients: Sequence[YjsClient]) -> None:
    """Close several clients concurrently (for fixtures' teardown)."""
    await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)
