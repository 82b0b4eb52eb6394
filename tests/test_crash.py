"""Crash safety of `crdt-sync serve` as a real subprocess (design.md §3 Push, Command line).

Every push the server acknowledged (200) survives `kill -9`; a replay is `duplicate` with
the first results; a batch in flight when the server dies is applied entirely or not at all;
SIGTERM ends the process with exit code 0 within 15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from storage.engine import create_engine, sqlite_url
from storage.schema import mutation_results
from tests.conftest import free_port
from tests.sync_client import Device
from web.auth import mint_token

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("crdt-sync"))
TENANT = "acme"
START_TIMEOUT_S = 30.0
TERM_TIMEOUT_S = 15.0


@dataclass
class Proc:
    process: asyncio.subprocess.Process
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


class Cluster:
    """Starts and stops `crdt-sync serve` on one store (data dir and, for PG, a database)."""

    def __init__(self, tmp: Path, database_url: str | None) -> None:
        self.data_dir = tmp / "data"
        self.tmp = tmp
        self.database_url = database_url
        self.secret = "crash-test-" + uuid.uuid4().hex
        self.procs: list[Proc] = []

    def token(self, user: str) -> str:
        return mint_token(self.secret, tenant=TENANT, user=user, roles=["learner"])

    async def start(self, *extra: str) -> Proc:
        if not Path(CLI).exists():
            pytest.fail(f"{CLI} is missing: install crdt-sync into this virtual environment")
        port = free_port()
        args = [CLI, "serve", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        args += extra
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRDT_SYNC_")}
        env["CRDT_SYNC_JWT_SECRET"] = self.secret
        log = self.tmp / f"server-{len(self.procs)}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *args, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
            )
        proc = Proc(process, f"http://127.0.0.1:{port}", log)
        self.procs.append(proc)
        await self.wait_ready(proc)
        return proc

    async def wait_ready(self, proc: Proc) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        async with httpx.AsyncClient(base_url=proc.url, timeout=2) as client:
            while loop.time() < deadline:
                if proc.process.returncode is not None:
                    pytest.fail(
                        f"the server exited with {proc.process.returncode}:\n{proc.output()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        pytest.fail(f"the server was not ready after {START_TIMEOUT_S} s:\n{proc.output()}")

    async def wait_exit(self, proc: Proc, timeout: float) -> int | None:
        try:
            return await asyncio.wait_for(proc.process.wait(), timeout)
        except TimeoutError:
            return None

    async def kill9(self, proc: Proc) -> None:
        proc.process.send_signal(signal.SIGKILL)
        assert await self.wait_exit(proc, 10) == -signal.SIGKILL

    async def cleanup(self) -> None:
        for proc in self.procs:
            if proc.process.returncode is None:
                proc.process.kill()
                await proc.process.wait()


@pytest.fixture
async def cluster(
    anyio_backend: str, tmp_path: Path, database_url: str | None
) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, database_url)
    try:
        yield c
    finally:
        await c.cleanup()


@contextlib.asynccontextmanager
async def client(proc: Proc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=proc.url, timeout=30) as http:
        yield http


def on(dev: Device, http: httpx.AsyncClient) -> Device:
    """The same device (token, secret, cursor) talking to another server process."""
    moved = Device(http, dev.device_id, dev.token, dev.secret)
    moved.counter = dev.counter
    moved.cursor = dev.cursor
    return moved


class Ledger:
    """Every acknowledged batch, with its results; the expected final state per entity."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
        self.final: dict[tuple[str, str], tuple[dict[str, Any] | None, dict[str, int]]] = {}

    def record(self, batch: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        assert [r["mutation_id"] for r in results] == [m["mutation_id"] for m in batch]
        self.batches.append((batch, results))
        for m, r in zip(batch, results, strict=True):
            assert r["status"] == "applied", r
            self.final[(m["entity_type"], m["entity_id"])] = (m["payload"], r["clock"])


def make_batch(dev: Device, n: int, tag: str) -> list[dict[str, Any]]:
    """Puts and deletes over a small id space, so later batches overwrite earlier ones."""
    batch = []
    for i in range(n):
        entity_id = f"b{(dev.counter * 7) % 97}"
        payload = None if i % 9 == 4 else {"pos": dev.counter, "tag": tag}
        batch.append(dev.mutation("bookmark", entity_id, payload))
    return batch


async def check_store(dev: Device, ledger: Ledger) -> None:
    """A full pull of a fresh replica shows exactly the acknowledged state."""
    fresh = Device(dev.http, dev.device_id, dev.token, dev.secret)
    changes = await fresh.pull_all(limit=1000)
    got = {(c["entity_type"], c["entity_id"]): (c["payload"], c["clock"]) for c in changes}
    want = {k: v for k, v in ledger.final.items() if v[0] is not None}
    assert got == want


@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "sync-workers"])
async def test_acknowledged_pushes_survive_kill_9(cluster: Cluster, workers: int) -> None:
    """Also with sync workers (web/sync_workers.py): they answer the pushes, and the kill
    of the server process closes their channel."""
    ledger = Ledger()
    extra = ["--sync-workers", str(workers)]
    proc = await cluster.start(*extra)
    async with client(proc) as http:
        dev = await Device.register(http, cluster.token("alice"), "dev-a")
        for b in range(3):
            batch = make_batch(dev, 60, f"first-{b}")
            ledger.record(batch, await dev.push(batch))
    await cluster.kill9(proc)

    proc = await cluster.start(*extra)
    async with client(proc) as http:
        dev = on(dev, http)
        await check_store(dev, ledger)
        for b in range(3):
            batch = make_batch(dev, 60, f"second-{b}")
            ledger.record(batch, await dev.push(batch))
        # The client pulls and acks before the crash, too.
        await dev.pull_all()
        assert (await dev.ack()).status_code == 204
    await cluster.kill9(proc)

    proc = await cluster.start(*extra)
    async with client(proc) as http:
        dev = on(dev, http)
        await check_store(dev, ledger)
        # The device's cursor from before the crash is still served: nothing new since.
        r = await dev.pull_page(dev.cursor)
        assert r.status_code == 200, r.text
        assert r.json()["changes"] == []
        # A replay of the last batch (and of every earlier one) is all `duplicate`, with the
        # first results, and changes nothing.
        for batch, results in reversed(ledger.batches):
            replay = await dev.push(batch)
            assert [r["status"] for r in replay] == ["duplicate"] * len(batch)
            assert [r["clock"] for r in replay] == [r["clock"] for r in results]
        await check_store(dev, ledger)


async def push_on_the_wire(
    dev: Device, mutations: list[dict[str, Any]]
) -> asyncio.Task[httpx.Response]:
    """Start a push; return once its whole body has been written to the socket."""
    body = json.dumps({"mutations": mutations}).encode()
    headers = dev.headers("POST", "/sync/v1/push", body)
    sent = asyncio.Event()

    async def stream() -> AsyncIterator[bytes]:
        yield body
        sent.set()

    request = asyncio.create_task(dev.http.post("/sync/v1/push", content=stream(), headers=headers))
    await asyncio.wait_for(sent.wait(), 10)
    return request


async def wait_committed(cluster: Cluster, mutation_id: str, timeout: float = 20) -> None:
    """Poll the store (from outside the server) until the mutation's result is committed."""
    engine = create_engine(cluster.database_url or sqlite_url(cluster.data_dir))
    stmt = select(mutation_results.c.mutation_id).where(
        mutation_results.c.mutation_id == mutation_id
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline:
            async with engine.connect() as conn:
                if (await conn.execute(stmt)).first() is not None:
                    return
            await asyncio.sleep(0.002)
        pytest.fail(f"the batch was not committed within {timeout} s")
    finally:
        await engine.dispose()


@pytest.mark.parametrize("moment", ["on_the_wire", "at_commit"])
async def test_batch_in_flight_at_kill_9_is_all_or_nothing(cluster: Cluster, moment: str) -> None:
    ledger = Ledger()
    proc = await cluster.start()
    async with client(proc) as http:
        dev = await Device.register(http, cluster.token("alice"), "dev-a")
        batch = make_batch(dev, 100, "before")
        ledger.record(batch, await dev.push(batch))

        # A big batch; the server is killed as soon as the request is on the wire, or as
        # soon as the batch's transaction is visible in the store (before or while the
        # answer is sent).
        big = [dev.mutation("bookmark", f"big-{i}", {"i": i}) for i in range(500)]
        request = await push_on_the_wire(dev, big)
        if moment == "at_commit":
            await wait_committed(cluster, big[-1]["mutation_id"])
        await cluster.kill9(proc)
        with contextlib.suppress(httpx.HTTPError):
            response = await request
            # It may have been answered before the kill: then it must be complete.
            if response.status_code == 200:
                ledger.record(big, response.json()["results"])

    proc = await cluster.start()
    async with client(proc) as http:
        dev = on(dev, http)
        replay = await dev.push(big)
        statuses = {r["status"] for r in replay}
        # Either the whole batch committed (all duplicates) or none of it (all applied now).
        assert statuses in ({"duplicate"}, {"applied"}), statuses
        if moment == "at_commit":
            assert statuses == {"duplicate"}
        if statuses == {"applied"}:
            ledger.record(big, replay)
        else:
            ledger.final.update(
                {
                    ("bookmark", m["entity_id"]): (m["payload"], r["clock"])
                    for m, r in zip(big, replay, strict=True)
                }
            )
        await check_store(dev, ledger)


async def test_sigterm_exits_0_within_15_s_and_keeps_data(cluster: Cluster) -> None:
    ledger = Ledger()
    proc = await cluster.start()
    async with client(proc) as http:
        dev = await Device.register(http, cluster.token("alice"), "dev-a")
        batch = make_batch(dev, 50, "term")
        ledger.record(batch, await dev.push(batch))
        await dev.pull_all()
        # A keep-alive connection is still open while the signal arrives.
        proc.process.send_signal(signal.SIGTERM)
        code = await cluster.wait_exit(proc, TERM_TIMEOUT_S)
    assert code == 0, f"exit code {code} after SIGTERM:\n{proc.output()}"

    proc = await cluster.start()
    async with client(proc) as http:
        dev = on(dev, http)
        await check_store(dev, ledger)
        # SIGTERM while a big push is in flight: a clean exit, and if the push was answered,
        # its results are stored; if not, it was not applied at all.
        big = [dev.mutation("bookmark", f"big-{i}", {"i": i}) for i in range(500)]
        request = await push_on_the_wire(dev, big)
        proc.process.send_signal(signal.SIGTERM)
        code = await cluster.wait_exit(proc, TERM_TIMEOUT_S)
        assert code == 0, f"exit code {code} after SIGTERM:\n{proc.output()}"
        answered = False
        with contextlib.suppress(httpx.HTTPError):
            response = await request
            assert response.status_code == 200, response.text
            ledger.record(big, response.json()["results"])
            answered = True

    proc = await cluster.start()
    async with client(proc) as http:
        dev = on(dev, http)
        replay = await dev.push(big)
        statuses = {r["status"] for r in replay}
        assert statuses in ({"duplicate"}, {"applied"}), statuses
        if answered:
            assert statuses == {"duplicate"}
        for m, r in zip(big, replay, strict=True):
            ledger.final[("bookmark", m["entity_id"])] = (m["payload"], r["clock"])
        await check_store(dev, ledger)
        proc.process.send_signal(signal.SIGINT)
        assert await cluster.wait_exit(proc, TERM_TIMEOUT_S) == 0, proc.output()
