"""The two room workloads of bench/ws_rooms.py: fan-out editing and idle connections, against
any :class:`Target` (crdt-sync, or a peer server of bench/peers.py).

Fan-out: N stock Yjs clients (Node processes, see bench/ws/load.mjs) join one fresh room of
the server (the first alone, then the others); from a common start time each inserts one
character at a random index of a shared Y.Text, `rate` times a second (random phase). Every
client records when each remote insert (origin client id, clock) became part of its doc; the
origin records when it made the insert (just before the provider sends it). Propagation
latency = receive time - send time, wall clock of the same host. Samples count when the
insert was *sent* inside the measured window (after the warm-up). Convergence: after the
sending stops, every client must hold every insert, all texts must be identical, and the text
must hold exactly as many characters of each client as that client inserted. With `light`,
all but FULL_CLIENTS of the room are protocol-level clients (same messages on the wire; they
only read which inserts an update carries instead of integrating it), so that a small machine
can host 50 busy receivers; the full clients check the text, the light ones that they
received every insert.

Idle: a fresh server; a few warm-up clients first, then `count` clients over `rooms` rooms
open their connection and complete the sync handshake (at most `connect_concurrency` in
flight; the first client of each room first, see opening_phases()), then stay idle for `hold`
seconds. RSS per connection = (server RSS after the hold - RSS before connecting) / count.

Every target is measured the same way: the clients speak the target's protocol (y-websocket,
or Hocuspocus's framing of the same sync messages), CPU and RSS are those of the target's
process tree (by pid).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from bench import report, server_process
from bench.server_process import ServerProcess
from bench.ws_clients import (
    CLIENT_MODULES,
    LoadError,
    NodeLoad,
    close_loads,
    split,
    start_loads,
    tree_rss_bytes,
    tree_runqueue_wait_s,
)

ROOT = "t"
CLIENT_ID_BASE = 1000  # doc.clientID of fan-out client k is CLIENT_ID_BASE + k
FULL_CLIENTS = 2  # stock clients per room when the others are light (they check the text)
CONNECT_DEADLINE_S = 240.0  # idle: no handshake starts later than this into the connect phase
WARM_CLIENTS = 10  # idle: clients that join before the RSS baseline is taken

WindowHook = Callable[[float], Awaitable[object]]  # started at the window start with its length


@dataclass(frozen=True)
class FanoutParams:
    clients: int
    duration: float
    warmup: float
    rate: float
    clients_per_process: int
    deflate: bool = True
    light: bool = False  # all but FULL_CLIENTS are protocol-level clients (bench/ws/load.mjs)
    converge_timeout: float = 30.0
    open_rooms_first: bool = True  # see opening_phases()


@dataclass(frozen=True)
class IdleParams:
    count: int
    rooms: int
    hold: float
    connect_concurrency: int
    per_process: int
    awareness: bool
    deflate: bool = True
    warm_clients: int = WARM_CLIENTS
    connect_timeout: float = 60.0  # per handshake
    connect_deadline: float = CONNECT_DEADLINE_S
    open_rooms_first: bool = True  # see opening_phases()


def author_token(secret: str, tenant: str, user: str) -> str:
    claims = {"sub": user, "tid": tenant, "roles": ["author"], "exp": int(time.time()) + 86400}
    return jwt.encode(claims, secret, algorithm="HS256")


def room_url(server: ServerProcess) -> str:
    return f"ws://{server.host}:{server.port}/sync/v1/rooms"


@dataclass(frozen=True)
class Target:
    """A server under test as the workloads see it: the process tree to sample and how its
    clients connect. `url` is what bench/ws/load.mjs gets: the y-websocket provider's server
    URL (the room is appended as a path segment) or the Hocuspocus URL (one for all rooms)."""

    name: str  # "crdt-sync" or a peer of bench/peers.py
    backend: str  # crdt-sync: sqlite or postgresql; peers: memory
    pid: int
    url: str
    protocol: str  # "y-websocket" or "hocuspocus"
    jwt_secret: str | None = None  # clients get author tokens signed with it; None: no token

    @property
    def modules_dir(self) -> Path:
        return CLIENT_MODULES[self.protocol]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.backend})"

    def token(self, tenant: str, user: str) -> str | None:
        return None if self.jwt_secret is None else author_token(self.jwt_secret, tenant, user)

    @classmethod
    def crdt_sync(cls, server: ServerProcess, backend: str) -> Target:
        assert server.proc is not None
        return cls(
            name="crdt-sync",
            backend=backend,
            pid=server.proc.pid,
            url=room_url(server),
            protocol="y-websocket",
            jwt_secret=server.jwt_secret,
        )


@dataclass
class Probe:
    """CPU seconds of the server and of each load process, machine jiffies, server RSS, and
    the seconds the server's threads waited for a CPU while runnable."""

    t: float
    server_cpu: float
    server_wait: float
    load_cpu: list[float]
    machine: tuple[int, int]
    server_rss: int

    @classmethod
    def take(cls, pid: int, loads: list[NodeLoad]) -> Probe:
        """`pid`: the server's process (its descendants count too)."""
        return cls(
            t=time.monotonic(),
            server_cpu=server_process.process_tree_cpu(pid),
            server_wait=tree_runqueue_wait_s(pid),
            load_cpu=[server_process.process_tree_cpu(x.pid) for x in loads],
            machine=server_process.machine_cpu_ticks(),
            server_rss=tree_rss_bytes(pid),
        )


def cpu_between(a: Probe, b: Probe) -> dict[str, Any]:
    """CPU use from probe a to probe b: % of one core, machine in % of all cores."""
    span = max(b.t - a.t, 1e-9)
    server_pct = 100.0 * (b.server_cpu - a.server_cpu) / span
    loads = [100.0 * (y - x) / span for x, y in zip(a.load_cpu, b.load_cpu, strict=True)]
    busy = b.machine[0] - a.machine[0]
    machine_pct = 100.0 * busy / max(1, b.machine[1] - a.machine[1])
    ncpu = os.cpu_count() or 1
    other = max(0.0, machine_pct * ncpu - server_pct - sum(loads))
    return {
        "server_cpu_pct": round(server_pct, 1),
        # runnable but not running, in % of the window: the machine starved the server
        "server_cpu_wait_pct": round(100.0 * (b.server_wait - a.server_wait) / span, 1),
        "client_cpu_pct_max": round(max(loads, default=0.0), 1),
        "client_cpu_pct_total": round(sum(loads), 1),
        "other_cpu_pct": round(other, 1),
        "machine_cpu_pct": round(machine_pct, 1),
    }


def _pcts(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    out: dict[str, float | None] = {}
    for q in (50, 95, 99):
        p = report.percentile(values, q)
        out[f"p{q}_ms"] = None if p is None else round(p, 2)
    out["max_ms"] = round(values[-1], 2) if values else None
    return out


def opening_phases(specs: list[dict[str, Any]], first: bool) -> list[list[dict[str, Any]]]:
    """With `first`: the first client of every room, then all the others. Every target gets
    the same: stock pycrdt-websocket 0.16.5 hangs clients that join a room that is still
    starting (design.md §5: no sync step 2 until the provider's 30 s reconnect), which would
    turn its connect figures into that timeout; rooms opened by one client are safe to join."""
    if not first:
        return [specs]
    seen: set[str] = set()
    openers: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for spec in specs:
        (rest if spec["room"] in seen else openers).append(spec)
        seen.add(spec["room"])
    return [openers, rest]


async def connect_phases(
    loads: list[NodeLoad],
    phases: list[list[dict[str, Any]]],
    timeout: float,
    deadline_s: float | None = None,
    **fields: Any,
) -> list[dict[str, Any]]:
    """`connect` the clients phase by phase, each phase spread round-robin over the loads and
    done (synced or failed) before the next starts; `deadline_s` counts from the first phase.
    The replies of every load and phase (see bench/ws/load.mjs)."""
    replies: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for phase in phases:
        extra: dict[str, Any] = {}
        if deadline_s is not None:
            extra["deadline_ms"] = max(0.0, deadline_s - (time.monotonic() - t0)) * 1000.0
        parts = split(phase, len(loads))
        shares = [(x, share) for x, share in zip(loads, parts, strict=True) if share]
        replies += await asyncio.gather(
            *(
                x.command("connect", timeout, clients=share, **fields, **extra)
                for x, share in shares
            )
        )
    return replies


def _errors(statuses: list[dict[str, Any]]) -> Counter[str]:
    errors: Counter[str] = Counter()
    for s in statuses:
        errors.update(s["errors"])
    return errors


# -- fan-out ----------------------------------------------------------------------------------


def _row_head(target: Target, workload: str) -> dict[str, Any]:
    return {
        "target": target.name,
        "backend": target.backend,
        "protocol": target.protocol,
        "workload": workload,
    }


async def run_fanout(
    target: Target,
    tenant: str,
    p: FanoutParams,
    on_window: WindowHook | None = None,
) -> dict[str, Any]:
    nproc = max(1, math.ceil(p.clients / p.clients_per_process))
    room = f"fanout-{p.clients}-{os.urandom(3).hex()}"
    specs = [
        {
            "key": k,
            "room": room,
            "token": target.token(tenant, f"editor-{k}"),
            "client_id": CLIENT_ID_BASE + k,
            "light": p.light and k >= FULL_CLIENTS,
        }
        for k in range(p.clients)
    ]
    loads = await start_loads(nproc, f"fanout{p.clients}", target.modules_dir)
    try:
        replies = await connect_phases(
            loads,
            opening_phases(specs, p.open_rooms_first),
            120.0,
            url=target.url,
            protocol=target.protocol,
            concurrency=10,
            deflate=p.deflate,
        )
        failed = sum(r["failed"] + r["not_started"] for r in replies)
        if failed:
            raise LoadError(f"{failed} of {p.clients} fan-out clients did not sync")
        row = await _measure_fanout(target, loads, p, on_window)
        row["deflate_negotiated"] = sum(r["deflate"] for r in replies)
        row["rooms_opened_first"] = p.open_rooms_first
        return row
    finally:
        await close_loads(loads)


async def _measure_fanout(
    target: Target,
    loads: list[NodeLoad],
    p: FanoutParams,
    on_window: WindowHook | None,
) -> dict[str, Any]:
    pid = target.pid
    first = Probe.take(pid, loads)
    start_ms = time.time() * 1000.0 + 500.0
    window0, window1 = start_ms + p.warmup * 1000.0, start_ms + (p.warmup + p.duration) * 1000.0
    edits = [
        asyncio.ensure_future(
            x.command(
                "edit",
                p.warmup + p.duration + 120.0,
                start_at=start_ms,
                warmup_ms=p.warmup * 1000.0,
                duration_ms=p.duration * 1000.0,
                rate_hz=p.rate,
                root=ROOT,
            )
        )
        for x in loads
    ]
    await asyncio.sleep(max(0.0, window0 / 1000.0 - time.time()))
    before = Probe.take(pid, loads)
    hook = asyncio.ensure_future(on_window(p.duration)) if on_window else None
    await asyncio.sleep(max(0.0, window1 / 1000.0 - time.time()))
    after = Probe.take(pid, loads)
    if hook is not None:
        await hook
    sends = [s for reply in await asyncio.gather(*edits) for s in reply["sends"]]
    expected = {str(s["client_id"]): s["next_clock"] for s in sends}
    t0 = time.monotonic()
    converged = await asyncio.gather(
        *(
            x.command(
                "wait_converged",
                p.converge_timeout + 30.0,
                expected=expected,
                timeout_ms=p.converge_timeout * 1000.0,
                root=ROOT,
            )
            for x in loads
        )
    )
    converge_s = time.monotonic() - t0
    last = Probe.take(pid, loads)
    receives = [
        r["receives"] for r in await asyncio.gather(*(x.command("collect", 120.0) for x in loads))
    ]
    statuses = await asyncio.gather(*(x.command("status", 30.0) for x in loads))
    row = _row_head(target, "fanout")
    row["clients"] = p.clients
    row["deflate"] = p.deflate
    row["light"] = p.light
    row["full_clients"] = min(p.clients, FULL_CLIENTS) if p.light else p.clients
    row.update(_latencies(sends, receives, window0, window1, p))
    row.update(_convergence(sends, converged))
    row["converge_wait_s"] = round(converge_s, 2)
    errors = _errors(statuses)
    row["errors"] = sum(errors.values())
    row["error_kinds"] = dict(errors)
    row.update(cpu_between(before, after))
    row["server_rss_mib"] = round(after.server_rss / 2**20, 1)
    row["client_processes"] = len(loads)
    row.update(_cost(first, last, sum(len(flat) // 4 for flat in receives)))
    return row


def _cost(first: Probe, last: Probe, deliveries: int) -> dict[str, Any]:
    """CPU per delivered update from the first edit to convergence, all work included (the
    server also stores every update; clients also send): unlike latency, this hardly depends
    on what else the machine runs. One core at that cost would carry `deliveries_per_core_s`."""
    server_s = last.server_cpu - first.server_cpu
    client_s = sum(last.load_cpu) - sum(first.load_cpu)
    us = 1e6 * server_s / deliveries if deliveries else None
    return {
        "deliveries_all": deliveries,
        "server_cpu_us_per_delivery": None if us is None else round(us, 1),
        "deliveries_per_core_s": None if not us else round(1e6 / us),
        "client_cpu_us_per_delivery": round(1e6 * client_s / deliveries, 1) if deliveries else None,
    }


def _latencies(
    sends: list[dict[str, Any]],
    receives: list[list[float]],
    window0: float,
    window1: float,
    p: FanoutParams,
) -> dict[str, Any]:
    sent_at: dict[tuple[int, int], float] = {}
    for s in sends:
        times = s["times"]
        for i in range(0, len(times), 2):
            if window0 <= times[i + 1] < window1:
                sent_at[(s["client_id"], int(times[i]))] = times[i + 1]
    latencies: list[float] = []
    last_arrival: dict[tuple[int, int], float] = {}
    for flat in receives:
        for i in range(0, len(flat), 4):
            key = (int(flat[i + 1]), int(flat[i + 2]))
            t_sent = sent_at.get(key)
            if t_sent is None:
                continue
            latencies.append(flat[i + 3] - t_sent)
            if flat[i + 3] > last_arrival.get(key, 0.0):
                last_arrival[key] = flat[i + 3]
    expected = len(sent_at) * (p.clients - 1)
    all_received = [last_arrival[k] - sent_at[k] for k in last_arrival]
    return {
        "edits": len(sent_at),
        "edits_per_s": round(len(sent_at) / p.duration, 1),
        "deliveries": len(latencies),
        "deliveries_expected": expected,
        "deliveries_per_s": round(len(latencies) / p.duration, 1),
        **_pcts(latencies),
        "all_received_p95_ms": _pcts(all_received)["p95_ms"],
    }


def _convergence(sends: list[dict[str, Any]], replies: list[dict[str, Any]]) -> dict[str, Any]:
    docs = [d for r in replies for d in r["docs"]]
    digests = {d["digest"] for d in docs}
    counted = [r["counts"] for r in replies if r["docs"]]
    counts = {int(code): n for code, n in counted[0].items()} if counted else {}
    wanted = {0x4E00 + s["key"]: s["count"] for s in sends if s["count"]}
    every_edit = counts == wanted
    total = sum(s["count"] for s in sends)
    return {
        "converged": bool(
            all(r["converged"] for r in replies) and len(digests) == 1 and every_edit
        ),
        "text_length": docs[0]["length"] if docs else 0,
        "edits_total": total,
        "distinct_texts": len(digests),
    }


# -- idle connections -------------------------------------------------------------------------


async def run_idle(target: Target, tenant: str, p: IdleParams) -> dict[str, Any]:
    nproc = max(1, math.ceil(p.count / p.per_process))
    tag = os.urandom(3).hex()
    url, protocol, pid = target.url, target.protocol, target.pid
    specs = [
        {
            "key": k,
            "room": f"idle-{tag}-{k % p.rooms}",
            "token": target.token(tenant, f"idler-{k % 1000}"),
        }
        for k in range(p.count)
    ]
    warm_token = target.token(tenant, "warm")
    warm = [{"key": k, "room": f"warm-{tag}", "token": warm_token} for k in range(p.warm_clients)]
    loads = await start_loads(nproc, f"idle{p.count}", target.modules_dir)
    try:
        await connect_phases(
            loads[:1],
            opening_phases(warm, p.open_rooms_first),
            60.0,
            url=url,
            protocol=protocol,
            awareness=p.awareness,
            deflate=p.deflate,
        )
        await asyncio.sleep(1.0)
        p0 = Probe.take(pid, loads)
        per_lane = max(1, p.connect_concurrency // nproc)
        replies = await connect_phases(
            loads,
            opening_phases(specs, p.open_rooms_first),
            p.connect_deadline + p.connect_timeout + 60.0,
            deadline_s=p.connect_deadline,
            url=url,
            protocol=protocol,
            concurrency=per_lane,
            timeout_ms=p.connect_timeout * 1000.0,
            awareness=p.awareness,
            deflate=p.deflate,
        )
        p1 = Probe.take(pid, loads)
        await asyncio.sleep(p.hold)
        p2 = Probe.take(pid, loads)
        statuses = await asyncio.gather(*(x.command("status", 30.0) for x in loads))
    except BaseException:
        await close_loads(loads)
        raise
    client_rss = sum(s["rss_bytes"] for s in statuses)
    await close_loads(loads)
    await asyncio.sleep(2.0)
    rss_closed = tree_rss_bytes(pid)
    return _idle_row(target, p, replies, statuses, (p0, p1, p2), rss_closed, client_rss)


def _idle_row(
    target: Target,
    p: IdleParams,
    replies: list[dict[str, Any]],
    statuses: list[dict[str, Any]],
    probes: tuple[Probe, Probe, Probe],
    rss_closed: int,
    client_rss: int,
) -> dict[str, Any]:
    p0, p1, p2 = probes
    handshakes = [ms for r in replies for ms in r["handshake_ms"]]
    connected = sum(r["connected"] for r in replies)
    span_s = (max(r["finished_at"] for r in replies) - min(r["started_at"] for r in replies)) / 1e3
    errors = _errors(statuses)
    still = sum(s["synced"] for s in statuses) - p.warm_clients
    connect_cpu = cpu_between(p0, p1)
    hold_cpu = cpu_between(p1, p2)
    return _row_head(target, "idle") | {
        "connections": p.count,
        "rooms": p.rooms,
        "awareness": p.awareness,
        "deflate": p.deflate,
        "connected": connected,
        "deflate_negotiated": sum(r["deflate"] for r in replies),
        "rooms_opened_first": p.open_rooms_first,
        "failed": sum(r["failed"] for r in replies),
        "not_started": sum(r["not_started"] for r in replies),
        "still_synced_after_hold": still,
        "connect_s": round(span_s, 2),
        "conn_per_s": round(connected / span_s, 1) if span_s > 0 else None,
        "handshake_p50_ms": _pcts(handshakes)["p50_ms"],
        "handshake_p95_ms": _pcts(handshakes)["p95_ms"],
        "handshake_p99_ms": _pcts(handshakes)["p99_ms"],
        "rss_before_mib": round(p0.server_rss / 2**20, 1),
        "rss_after_mib": round(p2.server_rss / 2**20, 1),
        "rss_closed_mib": round(rss_closed / 2**20, 1),
        "rss_per_conn_kib": round((p2.server_rss - p0.server_rss) / max(1, connected) / 1024, 1),
        "server_cpu_ms_per_conn": round(
            1000.0 * (p1.server_cpu - p0.server_cpu) / max(1, connected), 2
        ),
        "connect_server_cpu_pct": connect_cpu["server_cpu_pct"],
        "connect_server_cpu_wait_pct": connect_cpu["server_cpu_wait_pct"],
        "connect_client_cpu_pct_total": connect_cpu["client_cpu_pct_total"],
        "connect_other_cpu_pct": connect_cpu["other_cpu_pct"],
        "hold_s": round(p2.t - p1.t, 2),
        "hold_server_cpu_pct": hold_cpu["server_cpu_pct"],
        "client_processes": len(statuses),
        "client_rss_mib": round(client_rss / 2**20, 1),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
    }
