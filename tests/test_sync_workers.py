"""Sync workers (web/sync_workers.py): push, pull and ack in processes beside the server's.

Real servers on a socket, real worker processes, SQLite files and PostgreSQL. What is shown:
the three routes run in a worker and their metrics reach /metrics; a worker killed with -9
loses nothing (its requests run in the main process, a new worker takes over); revocation in
the main process holds in the workers at once; several processes write one SQLite file
without errors; an optimistic push (decided before its transaction) gives the answers and the
stored state the ordinary one gives, also when a concurrent write makes it decide again;
`crdt-sync serve --sync-workers 2` stops cleanly on SIGTERM and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from crdt_sync.model import LocalMutation
from crdt_sync.ports import ManualClock
from crdt_sync.registry import EntityRegistry
from crdt_sync.services import DeviceContext, Settings, SyncService
from crdt_sync.vector_clock import VectorClock
from storage.engine import open_store
from storage.store import SqlStore
from tests.conftest import Server, poll, run_server
from tests.sync_client import Device
from web.sync_workers import SyncWorkers, merged_metrics

pytestmark = pytest.mark.anyio

TENANT = "acme"


@contextlib.asynccontextmanager
async def worker_server(
    tmp: Path, database_url: str | None, backend: str, workers: int
) -> AsyncIterator[Server]:
    async with run_server(
        tmp, database_url, backend, configure=lambda c: setattr(c, "sync_workers", workers)
    ) as srv:
        yield srv


def pool(srv: Server) -> SyncWorkers:
    workers: SyncWorkers = srv.runtime.extras["sync_workers"]
    return workers


def own_count(srv: Server, route: str, status: str = "200") -> float:
    """Requests the main process answered itself on `route`."""
    value: float = srv.runtime.metrics.requests.labels(route, status)._value.get()
    return value


async def exposed(srv: Server, name: str, **labels: str) -> float:
    text = (await srv.http().get("/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def batch(dev: Device, n: int, tag: str) -> list[dict[str, Any]]:
    return [dev.mutation("bookmark", f"{tag}-{i}", {"i": i, "tag": tag}) for i in range(n)]


async def test_sync_routes_run_in_workers_and_metrics_add_up(
    anyio_backend: str, tmp_path: Path, backend: str, database_url: str | None
) -> None:
    async with worker_server(tmp_path, database_url, backend, 2) as srv:
        user = srv.token(TENANT, "alice")
        devs = [await Device.register(srv.http(), user, f"dev-{i}") for i in range(4)]
        for dev in devs:
            results = await dev.push(batch(dev, 20, dev.device_id))
            assert {r["status"] for r in results} == {"applied"}
        for dev in devs:
            changes = await dev.pull_all()
            # every device of alice sees all 80 bookmarks of hers
            assert len({c["entity_id"] for c in changes}) == 80
            assert (await dev.ack()).status_code == 204
        # The main process answered none of them; /metrics counts all of them.
        for route in ("/sync/v1/push", "/sync/v1/pull"):
            assert own_count(srv, route) == 0
        assert own_count(srv, "/sync/v1/ack", "204") == 0
        assert await exposed(srv, "crdt_sync_http_requests_total", route="/sync/v1/push") == 4
        assert await exposed(srv, "crdt_sync_http_requests_total", route="/sync/v1/ack") == 4
        assert await exposed(srv, "crdt_sync_mutations_total", status="applied") == 80
        assert await exposed(srv, "crdt_sync_pulled_changes_total") == 4 * 80
        # optimistic pushes (two workers) on distinct entities: every plan held
        assert await exposed(srv, "crdt_sync_pushes_decided_again_total") == 0
        assert "crdt_sync_pushes_decided_again_total" in (await srv.http().get("/metrics")).text
        # device registration stays in the main process
        assert own_count(srv, "/sync/v1/devices", "201") == 4


async def test_revocation_in_the_main_process_holds_in_the_workers(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with worker_server(tmp_path, None, "sqlite", 2) as srv:
        user = srv.token(TENANT, "alice")
        dev = await Device.register(srv.http(), user, "dev-a")
        assert (
            await dev.post("/sync/v1/push", {"mutations": batch(dev, 1, "a")})
        ).status_code == 200
        r = await srv.http().delete(
            "/sync/v1/devices/dev-a", headers={"Authorization": f"Bearer {user}"}
        )
        assert r.status_code == 204
        for path in ("/sync/v1/push", "/sync/v1/ack"):
            r = await dev.post(path, {"mutations": batch(dev, 1, "b")})
            assert (r.status_code, r.json()["error"]["code"]) == (401, "device_revoked")
        r = await dev.pull_page()
        assert (r.status_code, r.json()["error"]["code"]) == (401, "device_revoked")
        assert own_count(srv, "/sync/v1/push", "401") == 0  # answered by a worker


async def test_bad_input_through_a_worker_is_a_clear_4xx(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with worker_server(tmp_path, None, "sqlite", 1) as srv:
        dev = await Device.register(srv.http(), srv.token(TENANT, "alice"), "dev-a")
        r = await dev.post("/sync/v1/push", raw=b'{"mutations": [')
        assert (r.status_code, r.json()["error"]["code"][:0]) == (400, "")
        too_big = b"x" * (srv.config.max_body_bytes + 1)
        r = await dev.post("/sync/v1/push", raw=too_big)
        assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
        r = await srv.http().post("/sync/v1/push", content=b"{}")
        assert r.status_code == 401 and "error" in r.json()
        assert (await dev.pull_page()).status_code == 200  # the worker is still there
        assert pool(srv).slots[0] is not None and pool(srv).slots[0].alive


async def test_a_killed_worker_loses_nothing_and_is_replaced(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with worker_server(tmp_path, None, "sqlite", 1) as srv:
        dev = await Device.register(srv.http(), srv.token(TENANT, "alice"), "dev-a")
        first = pool(srv).slots[0]
        assert first is not None
        sent: list[dict[str, Any]] = []
        answered: list[list[dict[str, Any]]] = []

        async def pusher(k: int) -> None:
            for round_ in range(15):
                mutations = batch(dev, 10, f"p{k}-{round_}")
                sent.extend(mutations)
                answered.append(await dev.push(mutations))  # asserts 200

        tasks = [asyncio.create_task(pusher(k)) for k in range(4)]

        async def under_way() -> bool:
            return len(answered) >= 8

        await poll(under_way, what="pushes answered by the worker")
        os.kill(first.process.pid, signal.SIGKILL)
        await asyncio.gather(*tasks)
        assert not first.alive
        # Every push was answered; every mutation is stored exactly once.
        assert sum(len(a) for a in answered) == len(sent) == 600
        statuses = {r["status"] for a in answered for r in a}
        assert statuses <= {"applied", "duplicate"}
        changes = await dev.pull_all()
        assert sorted(c["entity_id"] for c in changes) == sorted(m["entity_id"] for m in sent)
        assert all(c["payload"]["tag"] == c["entity_id"].rsplit("-", 1)[0] for c in changes)

        async def replaced() -> bool:
            now = pool(srv).slots[0]
            return now is not None and now is not first and now.alive

        # the requests in flight at the kill and those until the new worker was up ran here
        assert own_count(srv, "/sync/v1/push") > 0
        await poll(replaced, timeout=30, what="a new worker")
        before = own_count(srv, "/sync/v1/push")
        await dev.push(batch(dev, 5, "after"))
        assert own_count(srv, "/sync/v1/push") == before  # the new worker answered it


async def test_processes_write_one_sqlite_file_at_once(anyio_backend: str, tmp_path: Path) -> None:
    """Device registrations (main process) and pushes and acks (two workers) at once."""
    async with worker_server(tmp_path, None, "sqlite", 2) as srv:
        user = srv.token(TENANT, "alice")
        devs = [await Device.register(srv.http(), user, f"dev-{i}") for i in range(4)]

        async def device_work(dev: Device) -> int:
            n = 0
            for round_ in range(10):
                n += len(await dev.push(batch(dev, 20, f"{dev.device_id}-{round_}")))
                await dev.pull_all()
                assert (await dev.ack()).status_code == 204
            return n

        async def registrations() -> int:
            for i in range(30):
                await Device.register(srv.http(), srv.token(TENANT, f"u{i}"), f"reg-{i}")
            return 30

        done = await asyncio.gather(*(device_work(d) for d in devs), registrations())
        assert done == [200, 200, 200, 200, 30]
        admin = srv.token(TENANT, "root", "admin")
        r = await srv.http().get("/admin/v1/devices", headers={"Authorization": f"Bearer {admin}"})
        assert len(r.json()["devices"]) == 34
        devs[0].cursor = None
        assert len(await devs[0].pull_all()) == 800


# -- the optimistic push ----------------------------------------------------------------------


def mutation(
    entity: str, payload: dict[str, Any] | None, clock: dict[str, int], mid: str
) -> LocalMutation:
    return LocalMutation(
        mutation_id=mid,
        entity_type=entity.split(":")[0],
        entity_id=entity.split(":")[1],
        op="put" if payload is not None else "delete",
        payload=payload,
        clock=VectorClock.from_json(clock),
        ts=None,
    )


SCRIPT = [
    # (device, entity, payload, clock): every policy's applied / merged / conflict / stale /
    # rejected / duplicate paths, with repeats of one key inside a batch
    [
        ("d1", "progress:c1", {"completion": 0.2, "score": 10}, {"d1": 1}),
        ("d1", "bookmark:b1", {"page": 1}, {"d1": 1}),
        ("d1", "note:n1", {"text": "a"}, {"d1": 1}),
        ("d1", "statement:s1", {"id": "s1", "verb": "x"}, {"d1": 1}),
        ("d1", "progress:c1", {"completion": 0.4}, {"d1": 2}),
    ],
    [
        ("d2", "progress:c1", {"completion": 0.3, "score": 50}, {"d2": 1}),
        ("d2", "note:n1", {"text": "b"}, {"d2": 1}),
        ("d2", "bookmark:b1", {"page": 9}, {"d2": 1}),
        ("d2", "statement:s1", {"id": "s1", "verb": "y"}, {"d2": 1}),
        ("d2", "certificate:x", {"a": 1}, {"d2": 1}),
        ("d2", "bookmark:b1", None, {"d2": 2, "d1": 1}),
        ("d2", "progress:c1", {"completion": 0.1}, {"d1": 1}),
    ],
]


CLOCK = ManualClock(datetime(2026, 12, 1, tzinfo=UTC))  # never moved
REGISTRY = EntityRegistry.from_config({})


@contextlib.asynccontextmanager
async def opened(path: Path, database_url: str | None = None) -> AsyncIterator[SqlStore]:
    store = await open_store(database_url, path)
    try:
        yield store
    finally:
        await store.close()


async def run_script(service: SyncService, interfere: bool = False) -> list[list[dict[str, Any]]]:
    out = []
    for n, steps in enumerate(SCRIPT):
        device = steps[0][0]
        ctx = DeviceContext(TENANT, "alice", device)
        muts = [mutation(e, p, c, f"{n}-{i}") for i, (_, e, p, c) in enumerate(steps)]
        results = await service.push(ctx, muts)
        again = await service.push(ctx, muts[:2])  # duplicates
        out.append([r.to_json() for r in results] + [r.to_json() for r in again])
    return out


async def stored(store: SqlStore) -> list[Any]:
    """Entities, archived snapshots and conflicts (without their random ids and times)."""
    from sqlalchemy import select

    from storage.schema import conflicts, entities, snapshots

    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(entities).order_by(entities.c.seq))).all()
        archived = (await conn.execute(select(snapshots))).all()
        recorded = (await conn.execute(select(conflicts))).all()
    return [
        [(r.entity_type, r.entity_id, r.payload, r.clock, r.deleted, r.seq) for r in rows],
        sorted((r.entity_type, r.entity_id, r.reason, r.device_id, r.content) for r in archived),
        sorted((r.entity_type, r.entity_id, r.status) for r in recorded),
    ]


async def test_optimistic_push_answers_and_stores_what_the_ordinary_one_does(
    anyio_backend: str, tmp_path: Path
) -> None:
    outcomes = []
    for optimistic in (False, True):
        async with opened(tmp_path / str(optimistic)) as store:
            service = SyncService(store, REGISTRY, CLOCK, Settings(optimistic_push=optimistic))
            answers = await run_script(service)
            outcomes.append((answers, await stored(store)))
            assert service.pushes_decided_again == 0  # every plan held and was replayed

    # conflict ids are random: compare everything else
    def strip(answers: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return [[{k: v for k, v in r.items() if k != "conflict_id"} for r in a] for a in answers]

    assert strip(outcomes[0][0]) == strip(outcomes[1][0])
    assert outcomes[0][1] == outcomes[1][1]
    assert outcomes[1][1][1] and outcomes[1][1][2]  # the script archives and records conflicts
    statuses = {r["status"] for a in outcomes[1][0] for r in a}
    assert statuses == {"applied", "merged", "conflict", "stale", "rejected", "duplicate"}


async def test_entity_seqs_are_the_seqs_get_entities_reads(
    anyio_backend: str, tmp_path: Path, database_url: str | None
) -> None:
    """The optimistic push's check reads only seqs (`entity_seqs`): the same as the states'."""
    async with opened(tmp_path, database_url) as store:
        service = SyncService(store, REGISTRY, CLOCK, Settings())
        await run_script(service)
        etypes = {name: REGISTRY.get(name) for name in ("progress", "bookmark", "note")}
        keys = [
            service.key_for(TENANT, etype, entity_id, "alice")  # type: ignore[arg-type]
            for name, etype in etypes.items()
            for entity_id in ("c1", "b1", "n1", "absent")
        ]
        keys.append(service.key_for(TENANT, etypes["bookmark"], "b1", "bob"))  # type: ignore[arg-type]
        async with store.reading(TENANT) as reads:
            states = await reads.get_entities(keys)
            seqs = await reads.entity_seqs(keys)
        assert len(states) == 3  # progress c1, bookmark b1 (a tombstone), note n1
        assert seqs == {k: s.seq for k, s in states.items()}
        async with store.write(TENANT, CLOCK.now()) as tx:
            assert await tx.entity_seqs(keys) == seqs
            (state,) = [s for k, s in states.items() if k.entity_type == "note"]
            written = await tx.put_entity(state)
            assert (await tx.entity_seqs(keys))[state.key] == written.seq > seqs[state.key]


class _Interfering:
    """A store whose reads outside the write transaction are followed, before the push's
    transaction, by another device's write to the same entity."""

    def __init__(self, store: SqlStore, other: SyncService) -> None:
        self.store = store
        self.other = other
        self.interfered = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @contextlib.asynccontextmanager
    async def reading(self, tenant_id: str) -> AsyncIterator[Any]:
        async with self.store.reading(tenant_id) as reads:
            yield reads
        self.interfered += 1
        ctx = DeviceContext(TENANT, "alice", "d9")
        n = self.interfered
        await self.other.push(
            ctx, [mutation("progress:c1", {"completion": 0.9}, {"d9": n}, f"x{n}")]
        )


async def test_optimistic_push_decides_again_when_what_it_read_changed(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with opened(tmp_path) as store:
        plain = SyncService(store, REGISTRY, CLOCK, Settings())
        wrapped = _Interfering(store, plain)
        optimistic = SyncService(wrapped, REGISTRY, CLOCK, Settings(optimistic_push=True))  # type: ignore[arg-type]
        ctx = DeviceContext(TENANT, "alice", "d1")
        # Planned as "applied" on an absent entity; d9 writes it first: now it is concurrent
        # and the monotonic policy merges (the plan's answer would have lost d9's 0.9).
        first = mutation("progress:c1", {"completion": 0.5}, {"d1": 1}, "m1")
        (result,) = await optimistic.push(ctx, [first])
        assert wrapped.interfered == 1
        assert optimistic.pushes_decided_again == 1
        assert result.status.value == "merged"
        state = await store.get_entity(
            optimistic.key_for(TENANT, REGISTRY.get("progress"), "c1", "alice")  # type: ignore[arg-type]
        )
        assert state is not None and state.payload == {"completion": 0.9}
        assert state.clock.to_json() == {"d1": 1, "d9": 1, "server": 1}
        # The replay of m1 is a duplicate with the merged answer, decided again as well
        # (d9 wrote once more after the plan).
        (again,) = await optimistic.push(ctx, [first])
        assert (again.status.value, again.clock) == ("duplicate", result.clock)
        assert optimistic.pushes_decided_again == 2


async def test_two_devices_through_two_workers_on_one_entity_lose_no_update(
    anyio_backend: str, tmp_path: Path, backend: str, database_url: str | None
) -> None:
    """Optimistic pushes from two processes at once, on one progress entity: the stored
    value is the max of everything sent, and its clock covers every device's last clock."""
    async with worker_server(tmp_path, database_url, backend, 2) as srv:
        user = srv.token(TENANT, "alice")
        # two devices on each worker (a device's worker follows from its token)
        per_worker: dict[Any, list[Device]] = {}
        for i in range(64):
            dev = await Device.register(srv.http(), user, f"dev-{i}")
            worker = pool(srv).pick(
                {"headers": [(b"authorization", f"Bearer {dev.token}".encode())]}
            )
            per_worker.setdefault(worker, []).append(dev)
            if len(per_worker) == 2 and all(len(d) >= 2 for d in per_worker.values()):
                break
        devs = [d for group in per_worker.values() for d in group[:2]]
        assert len(devs) == 4 and None not in per_worker, per_worker

        async def device(dev: Device, k: int) -> None:
            for step in range(25):
                m = dev.mutation(
                    "progress",
                    "course",
                    {"completion": (k * 100 + step) / 1000, "completed": [f"{k}-{step}"]},
                )
                (r,) = await dev.push([m])
                assert r["status"] in ("applied", "merged"), r

        await asyncio.gather(*(device(d, k) for k, d in enumerate(devs)))
        devs[0].cursor = None
        (change,) = [c for c in await devs[0].pull_all() if c["entity_id"] == "course"]
        assert change["payload"]["completion"] == (3 * 100 + 24) / 1000
        assert len(change["payload"]["completed"]) == 100
        assert all(change["clock"].get(d.device_id) == 25 for d in devs), change["clock"]


# -- metrics and the command line -------------------------------------------------------------


def test_merged_metrics_add_counters_and_histograms() -> None:
    def registry(n: int) -> CollectorRegistry:
        r = CollectorRegistry()
        c = Counter("c_total", "c", ["route"], registry=r)
        h = Histogram("h_seconds", "h", buckets=(0.1, 1.0), registry=r)
        for _ in range(n):
            c.labels("/x").inc()
            h.observe(0.05)
        return r

    from prometheus_client import generate_latest

    out = merged_metrics(registry(2), [generate_latest(registry(3)).decode()]).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(out)
        for s in f.samples
    }
    assert samples[("c_total", (("route", "/x"),))] == 5
    assert samples[("h_seconds_bucket", (("le", "0.1"),))] == 5
    assert samples[("h_seconds_count", ())] == 5
    assert abs(samples[("h_seconds_sum", ())] - 0.25) < 1e-9


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


async def test_cli_with_workers_stops_cleanly_and_leaves_nothing(
    anyio_backend: str, tmp_path: Path
) -> None:
    from tests.test_crash import Cluster, client

    cluster = Cluster(tmp_path, None)
    try:
        proc = await cluster.start("--sync-workers", "2")
        kids = children(proc.process.pid)
        assert len(kids) == 2, kids
        async with client(proc) as http:
            dev = await Device.register(http, cluster.token("alice"), "dev-a")
            await dev.push(batch(dev, 50, "t"))
            proc.process.send_signal(signal.SIGTERM)
            assert await cluster.wait_exit(proc, 15) == 0, proc.output()
        assert not [k for k in kids if alive(k)]
        # kill -9 of the server: its workers see the channel close and exit
        proc = await cluster.start("--sync-workers", "2")
        kids = children(proc.process.pid)
        await cluster.kill9(proc)

        async def gone() -> bool:
            return not [k for k in kids if alive(k)]

        await poll(gone, timeout=20, what="the workers to exit")
        proc = await cluster.start("--sync-workers", "2")
        async with client(proc) as http:
            dev = Device(http, dev.device_id, dev.token, dev.secret)
            assert len(await dev.pull_all()) == 50
    finally:
        await cluster.cleanup()


def test_sync_workers_setting_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from web.config import build_config

    assert build_config(data_dir=str(tmp_path)).sync_workers == 0
    assert build_config(data_dir=str(tmp_path), sync_workers=3).sync_workers == 3
    with pytest.raises(ValueError):
        build_config(data_dir=str(tmp_path), sync_workers=-1)
    monkeypatch.setenv("CRDT_SYNC_SYNC_WORKERS", "two")
    with pytest.raises(ValueError):
        build_config(data_dir=str(tmp_path))
    monkeypatch.setenv("CRDT_SYNC_SYNC_WORKERS", "2")
    assert build_config(data_dir=str(tmp_path)).sync_workers == 2


async def write(store: SqlStore, key: str, hold: asyncio.Event | None = None) -> None:
    """One write transaction of `store`, held open until `hold` is set."""
    async with store.engine.begin() as conn:
        await conn.execute(text("INSERT INTO crdt_meta (key, value) VALUES (:k, 'v')"), {"k": key})
        if hold is not None:
            await hold.wait()


async def test_sqlite_writer_lock_waits_off_the_loop_and_survives_a_cancelled_wait(
    anyio_backend: str, tmp_path: Path
) -> None:
    """Two engines on one file stand for two processes: while one holds the file's writer
    lock, the other's write waits without blocking the event loop; a waiter cancelled
    meanwhile does not keep the lock, nor take it from a later writer."""
    a, b = await open_store(None, tmp_path), await open_store(None, tmp_path)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick = asyncio.create_task(ticker())
    try:
        hold = asyncio.Event()
        first = asyncio.create_task(write(a, "a1", hold))
        await asyncio.sleep(0.1)  # a's batch holds the lock
        waiting = asyncio.create_task(write(b, "b-cancelled"))
        before = ticks
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert ticks - before >= 10, "the event loop stalled while b waited"
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        hold2 = asyncio.Event()
        second = asyncio.create_task(write(b, "b2", hold2))  # joins the cancelled one's wait
        await asyncio.sleep(0.1)
        assert not second.done()
        hold.set()
        await asyncio.wait_for(first, 10)
        await asyncio.sleep(0.2)  # b2 has the lock now, and holds it
        third = asyncio.create_task(write(a, "a3"))
        before = ticks
        await asyncio.sleep(0.3)
        assert ticks - before >= 10, "the event loop stalled: a3 did not wait for the lock"
        assert not third.done(), "a3 wrote while b2 held the lock"
        hold2.set()
        await asyncio.wait_for(asyncio.gather(second, third), 10)
        # everything was given back: a and b both write again at once
        await asyncio.wait_for(asyncio.gather(write(a, "a4"), write(b, "b3")), 10)
        async with a.engine.connect() as conn:
            keys = {r[0] for r in await conn.execute(text("SELECT key FROM crdt_meta"))}
        assert {"a1", "b2", "a3", "a4", "b3"} <= keys and "b-cancelled" not in keys
    finally:
        tick.cancel()
        await a.close()
        await b.close()


async def test_sqlite_writer_lock_cancelled_as_it_is_taken_is_given_back(
    anyio_backend: str, tmp_path: Path
) -> None:
    """The narrowest window: the thread has taken the lock and the waiter is cancelled before
    it resumes. Nobody holds the batch, so the lock must be free again for the other engine."""
    a, b = await open_store(None, tmp_path), await open_store(None, tmp_path)

    try:
        hold = asyncio.Event()
        first = asyncio.create_task(write(a, "a1", hold))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(write(b, "b-cancelled"))
        await asyncio.sleep(0.1)
        taking = b.engine._file_lock._taking  # type: ignore[union-attr]
        assert taking is not None, "b should be waiting for the file lock in a thread"
        # runs after the lock's own callback and after the waiter's wake-up was scheduled
        taking.add_done_callback(lambda _: waiting.cancel())
        hold.set()
        await asyncio.wait_for(first, 10)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.wait_for(write(a, "a2"), 5)  # a would wait forever on a leaked lock
    finally:
        await a.close()
        await b.close()


async def test_a_stuck_worker_is_killed_and_its_request_runs_here(
    anyio_backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from web import sync_workers

    monkeypatch.setattr(sync_workers, "REQUEST_TIMEOUT_S", 1.0)
    async with worker_server(tmp_path, None, "sqlite", 1) as srv:
        dev = await Device.register(srv.http(), srv.token(TENANT, "alice"), "dev-a")
        stuck = pool(srv).slots[0]
        assert stuck is not None
        os.kill(stuck.pid, signal.SIGSTOP)  # alive, never answers
        results = await dev.push(batch(dev, 5, "s"))
        assert {r["status"] for r in results} == {"applied"}
        assert own_count(srv, "/sync/v1/push") == 1
        assert await poll(lambda: asyncio.sleep(0, not alive(stuck.pid)), what="the kill")

        async def replaced() -> bool:
            now = pool(srv).slots[0]
            return now is not None and now is not stuck and now.alive

        await poll(replaced, timeout=30, what="a new worker")


def test_sync_workers_refuse_an_in_memory_database() -> None:
    from web.config import Config

    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&uri=true"):
        with pytest.raises(ValueError, match="memory"):
            SyncWorkers(Config(database_url=url, sync_workers=1))
