"""A cursor never skips a change under concurrent writers on PostgreSQL (design.md §3 Pull,
§5 "Cursor gaps on PostgreSQL").

Two app instances (each with its own engine and pool, like two server processes) serve one
fresh PostgreSQL database over real sockets. For ~10 s, eight pusher devices (two per user,
four users of one tenant) write overlapping entities so their updates race, an admin writes
tenant-wide bundles, and four puller devices of the same users pull continuously with their
cursors, starting from an initial (cursor-less) pull while the writes run.

Two more pullers start their initial pull halfway, paging with small pages through a populated
store while the writes go on.

Afterwards each puller pulls once more and must hold exactly the server's state for what it
may see, and must have missed no version: every applied/merged version the writers were told
about (the complete log of their 200 results) whose request was sent after the puller's first
page was answered (so it commits after the initial snapshot) was either received or
superseded by a later version of the same entity that was received. (Versions from before
that may legitimately be skipped: an initial pull leaves out entities already deleted.)
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select

from crdt_sync.vector_clock import Ordering, VectorClock
from storage.codec import entity_from_row
from storage.schema import entities
from tests.conftest import PG_URL, Server, run_server
from tests.sync_client import Device

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

TENANT = "acme"
USERS = ["u0", "u1", "u2", "u3"]
PUSHERS_PER_USER = 2
WRITE_SECONDS = 10.0
MAX_WRITE_SECONDS = 40.0
MIN_VERSIONS = 600
ENTITIES_PER_USER = 60  # bookmark (lww) and progress (monotonic) ids, shared by the pushers
BUNDLES = 20

Key = tuple[str, str, str]  # (owner or "", entity_type, entity_id)


@dataclass
class Version:
    key: Key
    clock: VectorClock
    status: str
    writer: str
    sent_at: float  # event-loop time the writing request was sent


def now() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class Puller:
    dev: Device
    user: str
    limit: int
    replica: dict[tuple[str, str], tuple[Any, dict[str, int]]] = field(default_factory=dict)
    received: dict[tuple[str, str], list[VectorClock]] = field(default_factory=dict)
    pulls: int = 0
    nonempty_pages: int = 0
    regressions: list[str] = field(default_factory=list)
    # When the answer to its first (cursor-less) pull arrived: every write sent after this
    # commits after the initial snapshot, so the puller must receive it (or a later version).
    first_answer_at: float | None = None
    initial_pages: int = 0  # pages of the initial pull (until has_more was first false)

    def take(self, changes: list[dict[str, Any]]) -> None:
        for c in changes:
            key = (c["entity_type"], c["entity_id"])
            clock = VectorClock.from_json(c["clock"])
            history = self.received.setdefault(key, [])
            if history and clock.compare(history[-1]) in (Ordering.BEFORE, Ordering.CONCURRENT):
                self.regressions.append(f"{key}: {history[-1].to_json()} then {c['clock']}")
            history.append(clock)
            if c["op"] == "delete":
                self.replica.pop(key, None)
            else:
                self.replica[key] = (c["payload"], c["clock"])

    async def pull_once(self) -> bool:
        r = await self.dev.pull_page(self.dev.cursor, self.limit)
        assert r.status_code == 200, r.text
        body = r.json()
        if self.first_answer_at is None:
            self.first_answer_at = now()
        if self.initial_pages == self.pulls:
            self.initial_pages += body["has_more"]
        self.pulls += 1
        if body["changes"]:
            self.nonempty_pages += 1
        self.take(body["changes"])
        self.dev.cursor = body["cursor"]
        return bool(body["has_more"])


class Pusher:
    def __init__(self, dev: Device, user: str, rng: random.Random, log: list[Version]) -> None:
        self.dev = dev
        self.user = user
        self.rng = rng
        self.log = log
        self.known: dict[tuple[str, str], VectorClock] = {}
        self.statuses: Counter[str] = Counter()

    def next_mutation(self) -> dict[str, Any]:
        rng = self.rng
        etype = rng.choice(["bookmark", "progress"])
        entity_id = f"{etype[0]}{rng.randrange(ENTITIES_PER_USER)}"
        self.dev.counter += 1
        # What this device last heard about the entity, plus its own new event: it dominates
        # when nobody else wrote in between, and is concurrent when the other device did.
        base = self.known.get((etype, entity_id), VectorClock())
        clock = base.merge(VectorClock.of({self.dev.device_id: self.dev.counter}))
        if etype == "bookmark":
            payload = None if rng.random() < 0.15 else {"pos": rng.randrange(10_000)}
        else:
            payload = {"completion": rng.random(), "done": [f"m{rng.randrange(8)}"]}
        return self.dev.mutation(etype, entity_id, payload, clock=clock.to_json())

    async def push_once(self) -> None:
        batch = [self.next_mutation() for _ in range(self.rng.randint(1, 12))]
        sent_at = now()
        results = await self.dev.push(batch)
        for m, r in zip(batch, results, strict=True):
            self.statuses[r["status"]] += 1
            if r["clock"] is not None:
                self.known[(m["entity_type"], m["entity_id"])] = VectorClock.from_json(r["clock"])
            if r["status"] in ("applied", "merged"):
                key = (self.user, m["entity_type"], m["entity_id"])
                clock = VectorClock.from_json(r["clock"])
                self.log.append(Version(key, clock, r["status"], self.dev.device_id, sent_at))


async def watch_pg(database: str, stop: asyncio.Event) -> int:
    """The most transactions seen open at once on the database (proof of real overlap)."""
    conn = await asyncpg.connect(PG_URL, timeout=5)
    peak = 0
    try:
        while not stop.is_set():
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND xact_start IS NOT"
                " NULL AND pid <> pg_backend_pid()",
                database,
            )
            peak = max(peak, int(n))
            try:
                await asyncio.wait_for(stop.wait(), 0.02)
            except TimeoutError:
                pass
    finally:
        await conn.close()
    return peak


async def server_view(server: Server, user: str) -> dict[tuple[str, str], Any]:
    """The stored state a device of `user` may see, read straight from the tables."""
    stmt = select(entities).where(
        entities.c.tenant_id == TENANT,
        entities.c.owner.in_(["", user]),
        entities.c.deleted.is_(False),
    )
    async with server.runtime.store.engine.connect() as conn:
        rows = [entity_from_row(r) for r in await conn.execute(stmt)]
    return {(s.key.entity_type, s.key.entity_id): (s.payload, s.clock.to_json()) for s in rows}


async def test_no_cursor_skips_a_change_under_concurrent_writers(
    anyio_backend: str, tmp_path: Path, pg_database: str
) -> None:
    rng = random.Random(20261127)
    log: list[Version] = []
    async with (
        run_server(tmp_path / "a", pg_database, "postgresql") as srv_a,
        run_server(tmp_path / "b", pg_database, "postgresql") as srv_b,
    ):
        servers = [srv_a, srv_b]

        async def register(srv: Server, user: str, device_id: str) -> Device:
            return await Device.register(
                srv.http(), srv.token(TENANT, user), device_id, srv.clock.time
            )

        pushers: list[Pusher] = []
        pullers: list[Puller] = []
        late: list[Puller] = []  # start their initial pull halfway, on a full store
        for u, user in enumerate(USERS):
            for p in range(PUSHERS_PER_USER):
                dev = await register(servers[(u + p) % 2], user, f"push-{user}-{p}")
                pushers.append(Pusher(dev, user, random.Random(rng.random()), log))
            dev = await register(servers[u % 2], user, f"pull-{user}")
            pullers.append(Puller(dev, user, limit=[5, 37, 200, 1000][u]))
        for u, user in enumerate(USERS[:2]):
            dev = await register(servers[(u + 1) % 2], user, f"late-{user}")
            late.append(Puller(dev, user, limit=[2, 7][u]))
        admin_http = srv_b.http()
        admin_headers = {"Authorization": f"Bearer {srv_b.token(TENANT, 'root', 'admin')}"}

        stop = asyncio.Event()
        half_way = asyncio.Event()  # the late pullers start then, on a populated store
        loop = asyncio.get_running_loop()

        async def push_loop(pusher: Pusher) -> None:
            while not stop.is_set():
                await pusher.push_once()

        async def admin_loop() -> None:
            arng = random.Random(rng.random())
            while not stop.is_set():
                bundle = f"bundle-{arng.randrange(BUNDLES)}"
                path = f"/admin/v1/entities/bundle/{bundle}"
                sent_at = now()
                if arng.random() < 0.2:
                    r = await admin_http.delete(path, headers=admin_headers)
                    assert r.status_code == 204, r.text
                    continue
                r = await admin_http.put(path, json={"v": arng.random()}, headers=admin_headers)
                assert r.status_code == 200, r.text
                clock = VectorClock.from_json(r.json()["clock"])
                log.append(Version(("", "bundle", bundle), clock, "", "admin", sent_at))

        async def pull_loop(puller: Puller, start: asyncio.Event | None = None) -> None:
            if start is not None:
                await start.wait()
            while not stop.is_set():
                await puller.pull_once()
                if puller.pulls % 10 == 0:
                    assert (await puller.dev.ack()).status_code == 204

        async def timer() -> None:
            # At least WRITE_SECONDS, and on a loaded machine until enough versions were
            # written to mean something (capped).
            while not stop.is_set():
                elapsed = loop.time() - started
                if elapsed >= WRITE_SECONDS / 2 and len(log) >= MIN_VERSIONS / 3:
                    half_way.set()
                if elapsed >= MAX_WRITE_SECONDS or (
                    elapsed >= WRITE_SECONDS and len(log) >= MIN_VERSIONS
                ):
                    stop.set()
                    half_way.set()
                await asyncio.sleep(0.1)

        started = loop.time()
        watcher = asyncio.create_task(watch_pg(pg_database.rsplit("/", 1)[1], stop))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(timer())
            for pusher in pushers:
                tg.create_task(push_loop(pusher))
            tg.create_task(admin_loop())
            for puller in pullers:
                tg.create_task(pull_loop(puller))
            for puller in late:
                tg.create_task(pull_loop(puller, half_way))
        peak_open_transactions = await watcher
        assert loop.time() - started < MAX_WRITE_SECONDS + 10

        # Writers have stopped: one final pull to the end, for every puller.
        for puller in pullers + late:
            while await puller.pull_once():
                pass

        statuses = sum((p.statuses for p in pushers), Counter[str]())
        # The workload really raced: concurrent updates were merged, pages were served while
        # writes were going on, and transactions overlapped on the database.
        assert len(log) >= MIN_VERSIONS, statuses
        assert statuses["applied"] > 100, statuses
        assert statuses["merged"] > 30, statuses
        assert statuses.get("rejected", 0) == 0, statuses
        assert peak_open_transactions >= 3, peak_open_transactions
        for puller in pullers + late:
            assert puller.nonempty_pages > 5, (puller.dev.device_id, puller.nonempty_pages)
        for puller in late:
            # Its initial pull paged through a populated store while writes went on.
            assert puller.first_answer_at is not None
            assert puller.first_answer_at - started >= WRITE_SECONDS / 2
            assert puller.initial_pages >= 10, (puller.dev.device_id, puller.initial_pages)

        for puller in pullers + late:
            name = puller.dev.device_id
            assert not puller.regressions, (name, puller.regressions[:5])
            assert puller.replica == await server_view(srv_a, puller.user), name
            assert puller.first_answer_at is not None
            missed = []
            checked = 0
            for v in log:
                owner, etype, entity_id = v.key
                if owner not in ("", puller.user) or v.sent_at <= puller.first_answer_at:
                    continue
                checked += 1
                got = puller.received.get((etype, entity_id), [])
                if not any(c.compare(v.clock) in (Ordering.EQUAL, Ordering.AFTER) for c in got):
                    missed.append(v)
            assert checked > 50, (name, checked)
            assert not missed, (
                f"{name} missed {len(missed)} of {checked} versions, e.g. "
                + ", ".join(f"{m.key} {m.clock.to_json()} ({m.status})" for m in missed[:5])
            )
        # The users' versions came from both of their pushers (on both servers).
        writers_seen: dict[str, set[str]] = defaultdict(set)
        for v in log:
            writers_seen[v.key[0]].add(v.writer)
        assert all(len(writers_seen[u]) == PUSHERS_PER_USER for u in USERS), writers_seen
