"""Node load-generator processes (bench/ws/load.mjs) driven from asyncio, and process metrics.

Each :class:`NodeLoad` is one Node process hosting many stock Yjs clients of one protocol:
y-websocket (`yjs` + `y-websocket`'s `WebsocketProvider` over `ws`, the packages of
tests/interop/node_modules) or Hocuspocus (`yjs` + `@hocuspocus/provider` over `ws`, the
packages of bench/peers/node_modules). Commands are JSON lines on its stdin, each answered by
one JSON line on stdout (matched by ``id``); see the header of bench/ws/load.mjs for the
commands.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import resource
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOAD_SCRIPT = Path(__file__).resolve().parent / "ws" / "load.mjs"
MODULES_DIR = REPO / "tests" / "interop"
PEER_MODULES_DIR = REPO / "bench" / "peers"
# where the clients of each protocol come from, and the packages they need there
CLIENT_MODULES = {"y-websocket": MODULES_DIR, "hocuspocus": PEER_MODULES_DIR}
CLIENT_PACKAGES = {
    "y-websocket": ("yjs", "y-websocket", "ws"),
    "hocuspocus": ("yjs", "@hocuspocus/provider", "ws"),
}
REQUIRED_PACKAGES = CLIENT_PACKAGES["y-websocket"]
STDOUT_LIMIT = 512 * 1024 * 1024  # `collect` answers with one long line
PAGE = os.sysconf("SC_PAGE_SIZE")


class LoadError(RuntimeError):
    """A Node load process failed, timed out, or answered ``ok: false``."""


def node_missing(protocol: str = "y-websocket") -> str | None:
    """Why the Node load generator cannot run clients of `protocol` here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if protocol not in CLIENT_PACKAGES:
        return f"no clients for protocol {protocol!r}"
    modules = CLIENT_MODULES[protocol] / "node_modules"
    missing = [p for p in CLIENT_PACKAGES[protocol] if not (modules / p).is_dir()]
    if missing:
        fix = "make interop" if protocol == "y-websocket" else f"npm ci in {PEER_MODULES_DIR}"
        return f"{modules} lacks {', '.join(missing)}: run `{fix}`"
    return None


def raise_nofile_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's open-files soft limit towards `wanted` (capped by the hard limit);
    the server and the Node processes inherit it. Returns the (soft, hard) limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                out += [int(c) for c in text.split()]
    return out


def tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants (0 when it is gone)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            statm = Path(f"/proc/{pid}/statm").read_text().split()
            total += int(statm[1]) * PAGE
        todo += _children(pid)
    return total


def tree_runqueue_wait_s(root: int) -> float:
    """Seconds the threads of a process tree spent runnable but waiting for a CPU
    (/proc/PID/task/TID/schedstat, field 2): high when other processes starve it."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
        todo += _children(pid)
    return total / 1e9


class NodeLoad:
    """One Node load-generator process; create it with :meth:`start`."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.name = name
        self.proc = proc
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_stdout())
        self._err_reader = asyncio.create_task(self._read_stderr())

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls, name: str, timeout: float = 30.0, modules_dir: Path = MODULES_DIR
    ) -> NodeLoad:
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(LOAD_SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "CRDT_BENCH_NODE_MODULES_DIR": str(modules_dir)},
            limit=STDOUT_LIMIT,
        )
        load = cls(proc, name)
        try:
            await asyncio.wait_for(asyncio.shield(load._started), timeout)
        except (TimeoutError, LoadError):
            await load.aclose()
            raise LoadError(f"{name} did not start: {load.stderr_tail()}") from None
        return load

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                msg = json.loads(line)
                if msg.get("event") == "started":
                    if not self._started.done():
                        self._started.set_result(None)
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        finally:
            gone = LoadError(f"{self.name} exited: {self.stderr_tail()}")
            if not self._started.done():
                self._started.set_exception(gone)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(gone)
            self._pending.clear()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self._stderr.append(line.decode(errors="replace").rstrip())

    def stderr_tail(self) -> str:
        return " | ".join(self._stderr) or "(no stderr)"

    async def command(self, cmd: str, timeout: float, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self._next_id += 1
        ident = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        self.proc.stdin.write(json.dumps({"id": ident, "cmd": cmd, **fields}).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._pending.pop(ident, None)
            raise LoadError(f"{self.name}: {cmd} timed out after {timeout:.0f} s") from None
        if not reply.get("ok"):
            raise LoadError(f"{self.name}: {cmd} failed: {reply.get('error')}")
        return reply

    async def aclose(self, timeout: float = 10.0) -> None:
        """Ask the process to close its clients and exit; kill it when it does not."""
        if self.proc.returncode is None:
            with contextlib.suppress(LoadError, OSError, ConnectionError):
                await self.command("exit", timeout=timeout)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        for task in (self._reader, self._err_reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LoadError):
                await task


async def start_loads(count: int, prefix: str, modules_dir: Path = MODULES_DIR) -> list[NodeLoad]:
    loads: list[NodeLoad] = []
    try:
        for i in range(count):
            loads.append(await NodeLoad.start(f"{prefix}-{i}", modules_dir=modules_dir))
    except BaseException:
        await close_loads(loads)
        raise
    return loads


async def close_loads(loads: list[NodeLoad]) -> None:
    await asyncio.gather(*(load.aclose() for load in loads), return_exceptions=True)


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """Round-robin `items` over `parts` lists."""
    return [items[i::parts] for i in range(parts)]
