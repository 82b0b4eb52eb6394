"""Open-loop "10k devices" model of the /sync/v1 HTTP endpoints, next to idle room connections.

    python -m bench.open_loop                        # 10k devices + 10k idle, 1x then 3x, 60 s
    python -m bench.open_loop --scale 3 --duration 120
    python -m bench.open_loop --smoke                # seconds: 200 devices, 100 idle, 5 s
    python -m bench.open_loop --render --write-docs  # redo the report/docs from the JSON

The model (the benchmarks issue): every device pushes a batch of 100 mutations every 5 minutes
and pulls every minute, acking the cursor after each pull; arrivals at random phases (or
`--arrivals poisson`): at 10,000 devices ≈ 33 pushes/s, 167 pulls/s and 167 acks/s, times
`--scale`. Meanwhile the same server holds `--idle` room connections that finished the
y-websocket sync handshake (protocol-level "light" clients of bench/ws/load.mjs, packages of
tests/interop; `make interop`). Requests go out at their scheduled time whatever the earlier
ones are doing, and latency runs from that time (bench/open_loop_worker.py), so a server that
falls behind shows it in the latency instead of slowing the load down.

It starts `crdt-sync serve` itself (bench/server_process.py), registers the devices first (not
timed), connects the idle clients, then runs every scale on the same server, one after the
other. Prints Markdown tables, writes JSON (`bench/results/open_loop.json` or `--out`) and,
with `--write-docs`, the open_loop section of docs/benchmarks.md. Exit status 1 when the server,
the devices' setup or the idle connections could not be brought up; slow answers and errors
are reported, not fatal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import jwt

from bench import report, server_process
from bench.open_loop_worker import ENDPOINTS, DeviceSpec, RunParams, WorkerSettings, worker_main
from bench.server_process import ServerError, ServerProcess
from bench.ws_clients import (
    LoadError,
    NodeLoad,
    close_loads,
    node_missing,
    raise_nofile_limit,
    split,
    start_loads,
    tree_rss_bytes,
    tree_runqueue_wait_s,
)

BACKENDS = ("sqlite", "postgresql")
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "open_loop.json"
DEFAULT_DOCS = report.REPO / "docs" / "benchmarks.md"
DOCS_BEGIN = "<!-- open_loop:begin -->"
DOCS_END = "<!-- open_loop:end -->"
STOP_GRACE_S = 30.0
IDLE_PER_PROCESS = 2500
IDLE_CONNECT_CONCURRENCY = 100
IDLE_CONNECT_DEADLINE_S = 300.0
# The issue's model, and its p95 targets (ms) per scale; other models have no targets.
ISSUE_MODEL = {"devices": 10000, "batch": 100, "push_period": 300.0, "pull_period": 60.0}
TARGETS_P95_MS: dict[float, dict[str, float]] = {
    1.0: {"push": 50.0, "pull": 50.0, "ack": 10.0},
    3.0: {"push": 500.0, "pull": 300.0, "ack": 100.0},
}
FULL: dict[str, Any] = {
    "devices": 10000,
    "idle": 10000,
    "idle_rooms": 1000,
    "scale": "1,3",
    "duration": 60.0,
    "warmup": 5.0,
    "batch": 100,
    "push_period": 300.0,
    "pull_period": 60.0,
    "connections": 512,
    "timeout": 30.0,
    "sync_workers": 2,
}
# 200 devices at the issue's periods would push once in 5 s: shorter periods give every
# endpoint enough requests to check.
SMOKE: dict[str, Any] = {
    "devices": 200,
    "idle": 100,
    "idle_rooms": 10,
    "scale": "1,3",
    "duration": 5.0,
    "warmup": 1.0,
    "batch": 10,
    "push_period": 30.0,
    "pull_period": 6.0,
    "connections": 64,
    "timeout": 15.0,
    "sync_workers": 1,
}


@dataclass(frozen=True)
class Config:
    backend: str
    devices: int
    idle: int
    idle_rooms: int
    scales: list[float]
    duration: float
    warmup: float
    batch: int
    push_period: float
    pull_period: float
    pull_limit: int
    arrivals: str
    workers: int
    connections: int
    timeout: float
    idle_deflate: bool
    seed: int
    out: Path
    write_docs: bool
    docs_path: Path
    render_only: bool
    command: str
    sync_workers: int = 0

    def offered(self, scale: float) -> dict[str, float]:
        """Requests per second the model offers at `scale` (acks follow the pulls)."""
        pulls = scale * self.devices / self.pull_period
        return {"push": scale * self.devices / self.push_period, "pull": pulls, "ack": pulls}

    @property
    def issue_model(self) -> bool:
        return all(getattr(self, k) == v for k, v in ISSUE_MODEL.items())


def parse_args(argv: list[str]) -> Config:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="python -m bench.open_loop", description=doc.split("\n")[0])
    p.add_argument("--backend", default="sqlite", choices=BACKENDS, help="crdt-sync's database")
    p.add_argument("--devices", type=int, help="simulated player devices (default 10000)")
    p.add_argument("--idle", type=int, help="idle room connections held meanwhile (10000)")
    p.add_argument("--idle-rooms", type=int, help="rooms they spread over (default 1000)")
    p.add_argument("--scale", help="rate multipliers, comma list, run in order (default 1,3)")
    p.add_argument("--duration", type=float, help="measured seconds per scale (default 60)")
    p.add_argument("--warmup", type=float, help="seconds at the same rates before (default 5)")
    p.add_argument("--batch", type=int, help="mutations per push (default 100)")
    p.add_argument("--push-period", type=float, help="seconds between a device's pushes (300)")
    p.add_argument("--pull-period", type=float, help="seconds between a device's pulls (60)")
    p.add_argument("--pull-limit", type=int, default=500, help="`limit` of every pull (500)")
    p.add_argument(
        "--arrivals",
        default="uniform",
        choices=("uniform", "poisson"),
        help="uniform: every device on its period at a random phase (default); poisson: "
        "exponential gaps with the same mean",
    )
    p.add_argument("--workers", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--connections", type=int, help="keep-alive connections, all workers (512)")
    p.add_argument(
        "--sync-workers",
        type=int,
        help="the server's `--sync-workers` (default 2: push, pull and ack in two processes "
        "beside the one holding the room connections; 0: one process)",
    )
    p.add_argument("--timeout", type=float, help="seconds after its scheduled time a request fails")
    p.add_argument(
        "--idle-deflate",
        default="on",
        choices=("on", "off"),
        help="idle clients offer permessage-deflate like browsers (on, default) or not",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the schedules")
    p.add_argument("--smoke", action="store_true", help="tiny run: 200 devices, 100 idle, 5 s")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    p.add_argument("--docs-path", type=Path, default=DEFAULT_DOCS, help=argparse.SUPPRESS)
    p.add_argument(
        "--render",
        action="store_true",
        help="run nothing: print (and with --write-docs write) the report of the JSON at --out",
    )
    a = p.parse_args(argv)
    preset = SMOKE if a.smoke else FULL

    def pick(name: str) -> Any:
        value = getattr(a, name)
        return preset[name] if value is None else value

    try:
        scales = [float(x) for x in str(pick("scale")).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--scale: not a comma list of numbers: {pick('scale')!r}") from None
    cfg = Config(
        backend=a.backend,
        devices=int(pick("devices")),
        idle=int(pick("idle")),
        idle_rooms=max(1, int(pick("idle_rooms"))),
        scales=scales,
        duration=float(pick("duration")),
        warmup=float(pick("warmup")),
        batch=int(pick("batch")),
        push_period=float(pick("push_period")),
        pull_period=float(pick("pull_period")),
        pull_limit=a.pull_limit,
        arrivals=a.arrivals,
        workers=max(1, a.workers),
        connections=int(pick("connections")),
        sync_workers=max(0, int(pick("sync_workers"))),
        timeout=float(pick("timeout")),
        idle_deflate=a.idle_deflate == "on",
        seed=a.seed,
        out=a.out,
        write_docs=a.write_docs,
        docs_path=a.docs_path,
        render_only=a.render,
        command=shlex.join(["python", "-m", "bench.open_loop", *argv]),
    )
    if cfg.devices < 1 or cfg.idle < 0 or not scales or min(scales) <= 0:
        raise SystemExit("--devices and --scale must be positive, --idle >= 0")
    if cfg.duration <= 0 or cfg.warmup < 0 or cfg.timeout <= 0:
        raise SystemExit("--duration and --timeout must be > 0, --warmup >= 0")
    if not 1 <= cfg.batch <= 500 or not 1 <= cfg.pull_limit <= 1000:
        raise SystemExit("--batch must be 1..500 (contract limit), --pull-limit 1..1000")
    if cfg.push_period <= 0 or cfg.pull_period <= 0 or cfg.connections < cfg.workers:
        raise SystemExit("periods must be > 0 and --connections at least one per worker")
    return cfg


_log = report.log


def _token(secret: str, tenant: str, user: str, role: str) -> str:
    claims = {"sub": user, "tid": tenant, "roles": [role], "exp": int(time.time()) + 86400}
    return jwt.encode(claims, secret, algorithm="HS256")


# -- client workers ---------------------------------------------------------------------------


class WorkerError(Exception):
    """A client worker process failed a command (its message says why)."""


class Workers:
    """Client processes; device k lives in worker k % n."""

    def __init__(self, n: int, settings: WorkerSettings) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, settings), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def _gather(self, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        answers: list[Any] = []
        errors: list[str] = []
        for i, conn in enumerate(self.conns):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerError(f"client worker {i} did not answer within {timeout:.0f} s")
            try:
                status, payload = conn.recv()
            except EOFError:
                raise WorkerError(f"client worker {i} died") from None
            if status == "ok":
                answers.append(payload)
            else:
                errors.append(str(payload))
        if errors:
            raise WorkerError("; ".join(sorted(set(errors))))
        return answers

    async def setup(self, specs: list[DeviceSpec], timeout: float) -> list[dict[str, Any]]:
        n = len(self.conns)
        for i, conn in enumerate(self.conns):
            conn.send(("setup", [s for s in specs if s.index % n == i]))
        return await asyncio.to_thread(self._gather, timeout)

    def start_run(self, params: RunParams) -> None:
        for conn in self.conns:
            conn.send(("run", params))

    async def results(self, timeout: float) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._gather, timeout)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("close",))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


# -- probes -----------------------------------------------------------------------------------


@dataclass
class Probe:
    t: float
    server_cpu: float
    server_wait: float
    server_rss: int
    workers_cpu: list[float]
    idle_cpu: float
    machine: tuple[int, int]

    @classmethod
    def take(cls, server: ServerProcess, workers: Workers, loads: list[NodeLoad]) -> Probe:
        assert server.proc is not None
        return cls(
            t=time.monotonic(),
            server_cpu=server.cpu_seconds(),
            server_wait=tree_runqueue_wait_s(server.proc.pid),
            server_rss=tree_rss_bytes(server.proc.pid),
            workers_cpu=[server_process.process_tree_cpu(pid) for pid in workers.pids],
            idle_cpu=sum(server_process.process_tree_cpu(x.pid) for x in loads),
            machine=server_process.machine_cpu_ticks(),
        )


def cpu_between(a: Probe, b: Probe) -> dict[str, Any]:
    """% of one core from probe a to b (machine: % of all cores)."""
    span = max(b.t - a.t, 1e-9)
    server = 100.0 * (b.server_cpu - a.server_cpu) / span
    workers = [100.0 * (y - x) / span for x, y in zip(a.workers_cpu, b.workers_cpu, strict=True)]
    idle = 100.0 * (b.idle_cpu - a.idle_cpu) / span
    machine = 100.0 * (b.machine[0] - a.machine[0]) / max(1, b.machine[1] - a.machine[1])
    other = max(0.0, machine * (os.cpu_count() or 1) - server - sum(workers) - idle)
    return {
        "server_cpu_pct": round(server, 1),
        "server_cpu_wait_pct": round(100.0 * (b.server_wait - a.server_wait) / span, 1),
        "client_cpu_pct_max": round(max(workers, default=0.0), 1),
        "client_cpu_pct_total": round(sum(workers), 1),
        "idle_clients_cpu_pct": round(idle, 1),
        "other_cpu_pct": round(other, 1),
        "machine_cpu_pct": round(machine, 1),
    }


# -- one scale --------------------------------------------------------------------------------


def _pcts(values: list[float]) -> dict[str, float | None]:
    values = sorted(values)
    out: dict[str, float | None] = {}
    for q in (50, 95, 99):
        v = report.percentile(values, q)
        out[f"p{q}_ms"] = None if v is None else round(v, 2)
    out["max_ms"] = round(values[-1], 2) if values else None
    return out


def summarize_endpoint(
    name: str, parts: list[dict[str, Any]], cfg: Config, scale: float
) -> dict[str, Any]:
    latencies = [x for p in parts for x in p["latencies_ms"]]
    errors: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in p["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    scheduled = sum(p["scheduled"] for p in parts)
    ok = sum(p["ok"] for p in parts)
    target = TARGETS_P95_MS.get(scale, {}).get(name) if cfg.issue_model else None
    row: dict[str, Any] = {
        "endpoint": name,
        "offered_per_s": round(cfg.offered(scale)[name], 1),
        "scheduled_per_s": round(scheduled / cfg.duration, 1),
        "achieved_per_s": round(sum(p["completed_in_window"] for p in parts) / cfg.duration, 1),
        "scheduled": scheduled,
        "ok": ok,
        **_pcts(latencies),
        "mean_ms": round(sum(latencies) / len(latencies), 2) if latencies else None,
        "errors": sum(errors.values()),
        "error_codes": errors,
        "statuses": statuses,
        "items": sum(p["items"] for p in parts),
        "target_p95_ms": target,
    }
    p95 = row["p95_ms"]
    row["target_met"] = (
        None if target is None else bool(p95 is not None and p95 <= target and not row["errors"])
    )
    return row


@dataclass
class Outcome:
    runs: list[dict[str, Any]] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    idle: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    server: dict[str, Any] = field(default_factory=dict)
    pg_version: str | None = None


async def run_scale(
    cfg: Config,
    scale: float,
    server: ServerProcess,
    workers: Workers,
    loads: list[NodeLoad],
) -> dict[str, Any]:
    params = RunParams(
        start_at=time.time() + 1.0,
        warmup=cfg.warmup,
        duration=cfg.duration,
        push_period=cfg.push_period / scale,
        pull_period=cfg.pull_period / scale,
        arrivals=cfg.arrivals,
        seed=cfg.seed * 1000 + int(scale * 10),
    )
    workers.start_run(params)
    await asyncio.sleep(max(0.0, params.start_at + cfg.warmup - time.time()))
    first = Probe.take(server, workers, loads)
    rss_peak = first.server_rss
    end = params.start_at + cfg.warmup + cfg.duration
    while (left := end - time.time()) > 0:
        await asyncio.sleep(min(1.0, left))
        assert server.proc is not None
        rss_peak = max(rss_peak, tree_rss_bytes(server.proc.pid))
    last = Probe.take(server, workers, loads)
    answers = await workers.results(2 * cfg.timeout + 120.0)
    idle_status = await _idle_status(loads)
    lags = sorted(x for a in answers for x in a["lags_ms"])
    row: dict[str, Any] = {
        "scale": scale,
        "devices": cfg.devices,
        "offered_total_per_s": round(sum(cfg.offered(scale).values()), 1),
        "endpoints": [
            summarize_endpoint(name, [a["endpoints"][name] for a in answers], cfg, scale)
            for name in ENDPOINTS
        ],
        "unfinished": sum(a["unfinished"] for a in answers),
        "client_lag_p99_ms": _pcts(lags)["p99_ms"],
        "client_lag_max_ms": _pcts(lags)["max_ms"],
        "client_connections_opened": sum(a["connections_opened"] for a in answers),
        "client_processes": len(answers),
        **cpu_between(first, last),
        "server_rss_mib_start": round(first.server_rss / 2**20, 1),
        "server_rss_mib_peak": round(rss_peak / 2**20, 1),
        "server_rss_mib_end": round(last.server_rss / 2**20, 1),
        "idle_synced_after": idle_status["synced"],
        "idle_errors": idle_status["errors"],
    }
    return row


async def _idle_status(loads: list[NodeLoad]) -> dict[str, Any]:
    if not loads:
        return {"synced": None, "errors": {}}
    statuses = await asyncio.gather(*(x.command("status", 30.0) for x in loads))
    errors: dict[str, int] = {}
    for s in statuses:
        for k, v in s["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {"synced": sum(s["synced"] for s in statuses), "errors": errors}


# -- idle connections -------------------------------------------------------------------------


async def connect_idle(
    cfg: Config, server: ServerProcess, tenant: str, out: Outcome
) -> list[NodeLoad]:
    """`cfg.idle` light y-websocket clients over `cfg.idle_rooms` rooms, handshakes done."""
    if cfg.idle == 0:
        return []
    missing = node_missing()
    if missing:
        out.skipped.append({"what": "idle connections", "reason": missing})
        _log(f"note: no idle connections: {missing}")
        return []
    nproc = max(1, -(-cfg.idle // IDLE_PER_PROCESS))
    tag = os.urandom(3).hex()
    specs = [
        {
            "key": k,
            "room": f"idle-{tag}-{k % cfg.idle_rooms}",
            "token": _token(server.jwt_secret, tenant, f"idler-{k % 1000}", "author"),
            "light": True,
        }
        for k in range(cfg.idle)
    ]
    url = f"ws://{server.host}:{server.port}/sync/v1/rooms"
    assert server.proc is not None
    rss0 = tree_rss_bytes(server.proc.pid)
    loads = await start_loads(nproc, "openloop-idle")
    t0 = time.monotonic()
    try:
        replies = await asyncio.gather(
            *(
                x.command(
                    "connect",
                    IDLE_CONNECT_DEADLINE_S + 120.0,
                    url=url,
                    clients=share,
                    concurrency=max(1, IDLE_CONNECT_CONCURRENCY // nproc),
                    timeout_ms=60000.0,
                    deadline_ms=IDLE_CONNECT_DEADLINE_S * 1000.0,
                    deflate=cfg.idle_deflate,
                )
                for x, share in zip(loads, split(specs, nproc), strict=True)
            )
        )
    except BaseException:
        await close_loads(loads)
        raise
    handshakes = [ms for r in replies for ms in r["handshake_ms"]]
    out.idle = {
        "connections": cfg.idle,
        "rooms": cfg.idle_rooms,
        "connected": sum(r["connected"] for r in replies),
        "failed": sum(r["failed"] + r["not_started"] for r in replies),
        "deflate_negotiated": sum(r.get("deflate", 0) for r in replies),
        "connect_s": round(time.monotonic() - t0, 1),
        "handshake_p95_ms": _pcts(handshakes)["p95_ms"],
        "server_rss_mib_before": round(rss0 / 2**20, 1),
        "server_rss_mib_after": round(tree_rss_bytes(server.proc.pid) / 2**20, 1),
        "node_processes": nproc,
    }
    _log(
        f"idle: {out.idle['connected']}/{cfg.idle} synced in {out.idle['connect_s']} s, server RSS "
        f"{out.idle['server_rss_mib_before']} -> {out.idle['server_rss_mib_after']} MiB"
    )
    return loads


# -- the whole run ----------------------------------------------------------------------------


async def run(cfg: Config, out: Outcome) -> None:
    db_name: str | None = None
    url: str | None = None
    if cfg.backend == "postgresql":
        out.pg_version = await asyncio.to_thread(server_process.pg_version)
        if out.pg_version is None:
            raise ServerError(f"PostgreSQL not reachable at {server_process.PG_ADMIN_DSN}")
        db_name, url = await asyncio.to_thread(server_process.create_database)
    data_dir = Path(tempfile.mkdtemp(prefix=f"crdt-bench-openloop-{cfg.backend}-"))
    server = ServerProcess(data_dir=data_dir, database_url=url, sync_workers=cfg.sync_workers)
    workers: Workers | None = None
    loads: list[NodeLoad] = []
    try:
        await asyncio.to_thread(server.start)
        pid = server.proc and server.proc.pid
        _log(f"{cfg.backend}: server ready at {server.base_url} (pid {pid})")
        settings = WorkerSettings(
            host=server.host,
            port=server.port,
            connections=max(1, cfg.connections // cfg.workers),
            batch=cfg.batch,
            pull_limit=cfg.pull_limit,
            timeout_s=cfg.timeout,
        )
        workers = Workers(min(cfg.workers, cfg.devices), settings)
        tenant = f"bench-{secrets.token_hex(4)}"
        specs = [
            DeviceSpec(
                index=k,
                user_id=f"player-{k}",
                device_id=f"player-{k}-device",
                user_token=_token(server.jwt_secret, tenant, f"player-{k}", "learner"),
            )
            for k in range(cfg.devices)
        ]
        t0 = time.monotonic()
        await workers.setup(specs, timeout=3600.0)
        out.setup = {"devices": cfg.devices, "seconds": round(time.monotonic() - t0, 1)}
        _log(f"{cfg.devices} devices registered, first cursors taken in {out.setup['seconds']} s")
        loads = await connect_idle(cfg, server, tenant, out)
        for scale in cfg.scales:
            row = await run_scale(cfg, scale, server, workers, loads)
            out.runs.append(row)
            for e in row["endpoints"]:
                _log(
                    f"x{scale:g} {e['endpoint']}: offered {e['offered_per_s']}/s, achieved "
                    f"{e['achieved_per_s']}/s, p50 {e['p50_ms']} p95 {e['p95_ms']} p99 "
                    f"{e['p99_ms']} ms, errors {e['errors']} {e['error_codes'] or ''}"
                )
            _log(
                f"x{scale:g}: server CPU {row['server_cpu_pct']}% (wait "
                f"{row['server_cpu_wait_pct']}%), RSS peak {row['server_rss_mib_peak']} MiB, "
                f"client CPU {row['client_cpu_pct_total']}%, client lag p99 "
                f"{row['client_lag_p99_ms']} ms, idle synced {row['idle_synced_after']}"
            )
            await asyncio.sleep(2.0)
    finally:
        await close_loads(loads)
        if workers is not None:
            await asyncio.to_thread(workers.close)
        await asyncio.to_thread(server.stop, STOP_GRACE_S)
        out.server = {"exit_code": server.exit_code, "shutdown_s": server.shutdown_s}
        if server.exit_code not in (0, None):
            kept = RESULTS / "open_loop_server.log"
            with contextlib.suppress(OSError):
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(server.log_path, kept)
            out.server["log"] = str(kept)
            _log(f"server exited with {server.exit_code} after SIGTERM (log: {kept})")
        shutil.rmtree(data_dir, ignore_errors=True)
        if db_name:
            await asyncio.to_thread(server_process.drop_database, db_name)


def build_result(
    cfg: Config, out: Outcome, started: datetime, load0: tuple[float, ...], nofile: Any
) -> dict[str, Any]:
    return {
        "meta": {
            **report.run_meta(cfg.command, started, load0, nofile, out.pg_version),
            "params": {
                "backend": cfg.backend,
                "devices": cfg.devices,
                "idle": cfg.idle,
                "idle_rooms": cfg.idle_rooms,
                "idle_deflate": cfg.idle_deflate,
                "scales": cfg.scales,
                "duration": cfg.duration,
                "warmup": cfg.warmup,
                "batch": cfg.batch,
                "push_period": cfg.push_period,
                "pull_period": cfg.pull_period,
                "pull_limit": cfg.pull_limit,
                "arrivals": cfg.arrivals,
                "workers": cfg.workers,
                "connections": cfg.connections,
                "sync_workers": cfg.sync_workers,
                "timeout": cfg.timeout,
                "seed": cfg.seed,
                "issue_model": cfg.issue_model,
            },
            "setup": out.setup,
            "server": out.server,
        },
        "idle": out.idle,
        "runs": out.runs,
        "skipped": out.skipped,
        "failures": out.failures,
    }


# -- report -----------------------------------------------------------------------------------

WHAT_IS_MEASURED = """\
What is measured: `crdt-sync serve{serve_flags}` ({backend}) started by the
benchmark{processes}. {devices:,} simulated player devices, each its own `learner` user of
one tenant, registered up front (`POST /sync/v1/devices`, not timed) and holding the cursor
of a first pull. Each device pushes {batch} `progress` mutations every {push_period:g} s and
pulls (`limit={pull_limit}`) every {pull_period:g} s, acking the returned cursor as soon as
the pull is answered; {arrivals}. At 1x that offers {push_rate:.1f} pushes/s,
{pull_rate:.1f} pulls/s and as many acks/s; a scale multiplies every rate. Open loop: each
request is sent at its scheduled time whether or not earlier ones have been answered, and
its latency runs from the scheduled time to the end of the response, so waiting for the
client (its event loop, a free connection) counts and a server that falls behind shows it as
latency instead of slowing the load down. Percentiles cover the requests *scheduled* in the
{duration:g} s window after {warmup:g} s at the same rates; achieved/s counts the 2xx
answers that *arrived* in the window. A request not answered {timeout:g} s after its
scheduled time is an error (timeout), as is any non-2xx.
Clients: {workers} processes (asyncio and a small HTTP/1.1 client on asyncio streams,
`bench/lite_http.py`, at most {connections} keep-alive connections in all, like a proxy in
front of the server; httpx costs about 3 ms of CPU per request here, this one about 0.2 ms),
separate from the server. Client lag = how late a request's task started after its scheduled
time (a client that falls behind would show it).
Meanwhile the server holds {idle:,} idle room connections over {idle_rooms:,} rooms, opened
and synced before the first scale and kept for the whole run: protocol-level "light"
y-websocket clients (`bench/ws/load.mjs`, no awareness state; they offer permessage-deflate:
{deflate}), in Node processes of their own.
CPU in % of one core over the window: server = `crdt-sync` and its children; CPU wait = time
the server's threads were runnable but had no CPU; client = the busiest client process / all;
idle = the Node processes; other = the rest of the machine; machine = all cores.
"""


def _cell(value: Any) -> str:
    return report.md_cell(value, "met", "**missed**")


def _row(cells: list[Any]) -> str:
    return report.md_row(cells, "met", "**missed**")


def _errors(e: dict[str, Any]) -> str:
    if not e["errors"]:
        return "0"
    codes = ", ".join(f"{k} x{v}" for k, v in sorted(e["error_codes"].items()))
    return f"{e['errors']:,} ({codes})"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| scale | endpoint | offered /s | achieved /s | requests | p50 ms | p95 ms | p99 ms "
        "| max ms | p95 target ms | target | errors |",
        "|" + "---|" * 12,
    ]
    for r in result["runs"]:
        for e in r["endpoints"]:
            lines.append(
                _row(
                    [
                        f"{r['scale']:g}x",
                        e["endpoint"],
                        e["offered_per_s"],
                        e["achieved_per_s"],
                        e["scheduled"],
                        e["p50_ms"],
                        e["p95_ms"],
                        e["p99_ms"],
                        e["max_ms"],
                        e["target_p95_ms"],
                        e["target_met"],
                        _errors(e),
                    ]
                )
            )
    lines += [
        "",
        "| scale | server CPU % (wait %) | server RSS MiB start / peak / end | client CPU % "
        "max / all (procs) | client lag p99 / max ms | idle clients CPU % | other CPU % "
        "| machine CPU % | idle conns synced after | unfinished |",
        "|" + "---|" * 10,
    ]
    for r in result["runs"]:
        cells = [
            f"{r['scale']:g}x",
            f"{_cell(r['server_cpu_pct'])} ({_cell(r['server_cpu_wait_pct'])})",
            " / ".join(
                _cell(r[k])
                for k in ("server_rss_mib_start", "server_rss_mib_peak", "server_rss_mib_end")
            ),
            f"{_cell(r['client_cpu_pct_max'])} / {_cell(r['client_cpu_pct_total'])} "
            f"({r['client_processes']})",
            f"{_cell(r['client_lag_p99_ms'])} / {_cell(r['client_lag_max_ms'])}",
            r["idle_clients_cpu_pct"],
            r["other_cpu_pct"],
            r["machine_cpu_pct"],
            r["idle_synced_after"],
            r["unfinished"],
        ]
        lines.append(_row(cells))
    idle = result["idle"]
    if idle:
        lines.append(
            f"\nIdle connections: {idle['connected']:,} of {idle['connections']:,} synced over "
            f"{idle['rooms']:,} rooms in {idle['connect_s']} s (handshake p95 "
            f"{_cell(idle['handshake_p95_ms'])} ms, {idle['failed']} failed, permessage-deflate "
            f"negotiated by {idle['deflate_negotiated']}); server RSS "
            f"{idle['server_rss_mib_before']} → {idle['server_rss_mib_after']} MiB."
        )
    for r in result["runs"]:
        if r["idle_errors"]:
            lines.append(f"\nIdle clients at {r['scale']:g}x reported: {r['idle_errors']}")
        for e in r["endpoints"]:
            odd = set(e["statuses"]) - {"applied"}
            if odd:
                lines.append(f"\nNote: {r['scale']:g}x push result statuses {e['statuses']}")
    setup = result["meta"].get("setup") or {}
    if setup:
        lines.append(
            f"\nSetup (not timed): {setup['devices']:,} devices registered and first cursors "
            f"taken in {setup['seconds']} s."
        )
    for s in result["skipped"]:
        lines.append(f"\nSkipped {s['what']}: {s['reason']}")
    for f in result["failures"]:
        lines.append(f"\nFAILED {f['what']}: {f['error']}")
    return "\n".join(lines)


def docs_section(result: dict[str, Any]) -> str:
    meta = result["meta"]
    m = meta["machine"]
    params = meta["params"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    arrivals = (
        "each device at a random phase of its periods"
        if params["arrivals"] == "uniform"
        else "exponential gaps between a device's requests (Poisson arrivals)"
    )
    sync = int(params.get("sync_workers", 0))
    measured = WHAT_IS_MEASURED.format(
        backend=params["backend"],
        devices=params["devices"],
        batch=params["batch"],
        push_period=params["push_period"],
        pull_period=params["pull_period"],
        pull_limit=params["pull_limit"],
        arrivals=arrivals,
        push_rate=params["devices"] / params["push_period"],
        pull_rate=params["devices"] / params["pull_period"],
        duration=params["duration"],
        warmup=params["warmup"],
        timeout=params["timeout"],
        workers=params["workers"],
        connections=params["connections"],
        idle=params["idle"],
        idle_rooms=params["idle_rooms"],
        deflate="yes" if params["idle_deflate"] else "no",
        serve_flags=f" --sync-workers {sync}" if sync else "",
        processes=(
            f": one process holds the room connections and {sync} worker processes run push, "
            "pull and ack on the same store (web/sync_workers.py)"
            if sync
            else ", one process"
        ),
    )
    targets = (
        "Targets (the issue): p95 push ≤ 50 ms, pull ≤ 50 ms, ack ≤ 10 ms at 1x; at 3x push "
        "≤ 500 ms, pull ≤ 300 ms, ack ≤ 100 ms; met = p95 within it and no errors."
        if params["issue_model"]
        else "Not the issue's model (devices, batch or periods differ): no targets apply."
    )
    load = " ".join(f"{x:.2f}" for x in meta["loadavg_at_start"])
    return "\n".join(
        [
            DOCS_BEGIN,
            "## Open loop: 10k devices next to idle room connections",
            "",
            f"Measured {meta['finished_at']} at commit `{meta['commit'] or 'uncommitted'}` with",
            "",
            "```",
            meta["command"],
            "```",
            "",
            f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory, Linux {m['kernel']},",
            f"Python {m['python']}, SQLite {m['sqlite']}"
            + (f", PostgreSQL {meta['postgresql_version']}" if meta["postgresql_version"] else "")
            + f"; {pkgs}.",
            f"Client and server share the machine; load average at the start: {load}.",
            "",
            measured,
            targets,
            "",
            markdown(result),
            DOCS_END,
        ]
    )


def render(cfg: Config, result: dict[str, Any]) -> None:
    print(markdown(result))
    if cfg.write_docs:
        report.update_docs(cfg.docs_path, docs_section(result), DOCS_BEGIN, DOCS_END)
        print(f"docs: {cfg.docs_path}")


def exit_status(result: dict[str, Any]) -> int:
    """1 when something could not run or idle connections failed; latency is reported only."""
    idle = result["idle"]
    broken = bool(idle) and idle["connected"] < idle["connections"]
    return 1 if result["failures"] or broken or not result["runs"] else 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    if cfg.render_only:
        result = json.loads(cfg.out.read_text())
        render(cfg, result)
        return exit_status(result)
    try:
        server_process.find_cli()
    except ServerError as exc:
        _log(f"error: {exc}")
        return 1
    nofile = raise_nofile_limit(2 * cfg.idle + cfg.connections + 4096)
    started, load0 = datetime.now(UTC), os.getloadavg()
    out = Outcome()
    t0 = time.monotonic()
    try:
        asyncio.run(run(cfg, out))
    except (ServerError, WorkerError, LoadError, OSError) as exc:
        out.failures.append({"what": "run", "error": f"{type(exc).__name__}: {exc}"})
        _log(f"FAILED: {exc}")
    result = build_result(cfg, out, started, load0, nofile)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2) + "\n")
    render(cfg, result)
    print(f"\nJSON: {cfg.out} ({time.monotonic() - t0:.0f} s)")
    return exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
