"""Benchmark of the WebSocket rooms of a real crdt-sync server, side by side with peer servers.

    python -m bench.ws_rooms                    # fan-out 2/10/50 editors, 1k/5k/10k idle,
                                                # crdt-sync (sqlite) and every peer
    python -m bench.ws_rooms --write-docs
    python -m bench.ws_rooms --smoke            # seconds: 2 editors for 2 s, 50 idle, per target
    python -m bench.ws_rooms --targets crdt-sync --backends sqlite,postgresql --profile
    python -m bench.ws_rooms --targets crdt-sync,hocuspocus --idle 1000
    python -m bench.ws_rooms --receivers stock,light --client-deflate stock,off

Targets (`--targets`, default all): `crdt-sync` (`crdt-sync serve`, started by
bench/server_process.py: SQLite in a temporary data dir, or a fresh PostgreSQL database dropped
afterwards; once per `--backends` entry) and the peers of bench/peers.py — Hocuspocus v3, the
y-websocket reference server, stock pycrdt-websocket on Hypercorn — all in memory. Every row runs
the same workload on a fresh server, one server at a time, the targets one after the other for
each row. The clients are stock Yjs clients of each target's protocol hosted in Node processes
(bench/ws/load.mjs; y-websocket clients from tests/interop, `make interop`; Hocuspocus clients
from bench/peers, `npm ci` there). A peer whose packages are missing is skipped with a note
(a failure when named in `--targets`). Workloads, light receivers and metrics: see
bench/ws_workloads.py. Prints Markdown tables (the targets side by side, with crdt-sync/peer
ratios), writes JSON (`bench/results/ws_rooms.json` or `--out`; every row has its "target")
and, with `--write-docs`, the ws_rooms section of docs/benchmarks.md (`--render` redoes that
from the JSON, e.g. with other `--notes`). `--profile` samples the crdt-sync server with py-spy
(`pip install py-spy`) during the largest fan-out. Exit status 1 when a server or the load
generator could not run, a room did not converge, or idle connections failed; errors the
clients saw are reported, not fatal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import peers, report, server_process, ws_profile, ws_report
from bench.peers import PEERS, PeerError
from bench.server_process import ServerError, ServerProcess
from bench.ws_clients import (
    MODULES_DIR,
    PEER_MODULES_DIR,
    LoadError,
    node_missing,
    raise_nofile_limit,
)
from bench.ws_workloads import (
    CONNECT_DEADLINE_S,
    FULL_CLIENTS,
    WARM_CLIENTS,
    FanoutParams,
    IdleParams,
    Target,
    run_fanout,
    run_idle,
)

BACKENDS = ("sqlite", "postgresql")
CRDT_SYNC = "crdt-sync"
# the WebSocket peers (an HTTP peer of bench/peers.py has no protocol: not a rooms target)
TARGETS = (CRDT_SYNC, *(name for name, spec in PEERS.items() if spec.protocol))
PEER_BACKEND = "memory"
# the server may take its own graceful timeout (10 s) for lingering sockets, then flushes
STOP_GRACE_S = 30.0
WORKLOADS = ("fanout", "idle")
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "ws_rooms.json"
DEFAULT_DOCS = report.REPO / "docs" / "benchmarks.md"
FULL: dict[str, Any] = {
    "clients": "2,10,50",
    "duration": 10.0,
    "warmup": 2.0,
    "idle": "1000,5000,10000",
    "idle_rooms": 100,
    "hold": 5.0,
}
SMOKE: dict[str, Any] = {
    "clients": "2",
    "duration": 2.0,
    "warmup": 0.5,
    "idle": "50",
    "idle_rooms": 5,
    "hold": 1.0,
}


@dataclass(frozen=True)
class Config:
    targets: list[str]
    targets_named: bool  # --targets given: a target that cannot run is a failure, not a skip
    backends: list[str]
    workloads: list[str]
    clients: list[int]
    duration: float
    warmup: float
    rate: float
    idle: list[int]
    idle_rooms: int
    hold: float
    connect_concurrency: int
    awareness: list[bool]
    deflate: list[bool]
    light: list[bool]
    clients_per_process: int
    idle_per_process: int
    profile: bool
    out: Path
    write_docs: bool
    docs_path: Path
    notes: Path | None
    render_only: bool
    command: str


def _ints(value: str) -> list[int]:
    try:
        items = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise SystemExit(f"not a comma list of numbers: {value!r}") from None
    if any(i < 1 for i in items):
        raise SystemExit(f"counts must be positive: {value!r}")
    return items


def _names(value: str, allowed: tuple[str, ...]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"unknown value(s) {bad}; choose from {', '.join(allowed)}")
    return items


def parse_args(argv: list[str]) -> Config:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="python -m bench.ws_rooms", description=doc.split("\n")[0])
    p.add_argument(
        "--targets",
        help=f"servers under test, comma list of {','.join(TARGETS)} (default: all; peers "
        "whose packages are missing are skipped)",
    )
    p.add_argument("--backends", default="sqlite", help="crdt-sync's: sqlite,postgresql")
    p.add_argument("--workloads", default="fanout,idle", help="comma list of fanout,idle")
    p.add_argument("--clients", help="fan-out editors per room, comma list (default 2,10,50)")
    p.add_argument("--duration", type=float, help="measured fan-out seconds (default 10)")
    p.add_argument("--warmup", type=float, help="fan-out warm-up seconds (default 2)")
    p.add_argument("--rate", type=float, default=10.0, help="edits per second per editor")
    p.add_argument("--idle", help="idle connection counts, comma list (default 1000,5000,10000)")
    p.add_argument("--idle-rooms", type=int, help="rooms the idle connections spread over")
    p.add_argument("--hold", type=float, help="seconds the idle connections are held (5)")
    p.add_argument("--connect-concurrency", type=int, default=100, help="handshakes in flight")
    p.add_argument(
        "--idle-awareness",
        default="stock",
        help="idle clients keep the stock awareness state (stock, default) or none (off); "
        "stock,off: both",
    )
    p.add_argument(
        "--client-deflate",
        default="stock",
        help="stock: clients offer permessage-deflate like `ws` and browsers (default); off: "
        "they do not; stock,off: every row both ways",
    )
    p.add_argument(
        "--receivers",
        default="stock",
        help="fan-out clients: stock (every one a WebsocketProvider, default) or light (all "
        "but 2 protocol-level, see bench/ws/load.mjs); stock,light: both",
    )
    p.add_argument("--clients-per-process", type=int, default=25, help="fan-out clients/Node")
    p.add_argument("--idle-per-process", type=int, default=2500, help="idle clients/Node")
    p.add_argument(
        "--profile", action="store_true", help="py-spy the crdt-sync server (largest fan-out)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny run per target: 2 editors 2 s, 50 idle"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    p.add_argument("--docs-path", type=Path, default=DEFAULT_DOCS, help=argparse.SUPPRESS)
    p.add_argument("--notes", type=Path, help="Markdown file appended to the docs section")
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

    duration, warmup, hold = float(pick("duration")), float(pick("warmup")), float(pick("hold"))
    if duration <= 0 or warmup < 0 or hold < 0 or a.rate <= 0:
        raise SystemExit("--duration and --rate must be > 0, --warmup and --hold >= 0")
    clients = _ints(str(pick("clients")))
    if max(clients) > 20000:  # the insert character is U+4E00 + client index
        raise SystemExit("at most 20,000 editors per room")
    targets = _names(a.targets, TARGETS) if a.targets else list(TARGETS)
    if not targets:
        raise SystemExit("--targets: name at least one")
    return Config(
        targets=list(dict.fromkeys(targets)),
        targets_named=a.targets is not None,
        backends=_names(a.backends, BACKENDS),
        workloads=_names(a.workloads, WORKLOADS),
        clients=clients,
        duration=duration,
        warmup=warmup,
        rate=a.rate,
        idle=_ints(str(pick("idle"))),
        idle_rooms=max(1, int(pick("idle_rooms"))),
        hold=hold,
        connect_concurrency=max(1, a.connect_concurrency),
        awareness=[v == "stock" for v in _names(a.idle_awareness, ("stock", "off"))],
        deflate=[v == "stock" for v in _names(a.client_deflate, ("stock", "off"))],
        light=[v == "light" for v in _names(a.receivers, ("stock", "light"))],
        clients_per_process=max(1, a.clients_per_process),
        idle_per_process=max(1, a.idle_per_process),
        profile=a.profile,
        out=a.out,
        write_docs=a.write_docs,
        docs_path=a.docs_path,
        notes=a.notes,
        render_only=a.render,
        command=shlex.join(["python", "-m", "bench.ws_rooms", *argv]),
    )


_log = report.log


@dataclass
class Outcome:
    fanout: list[dict[str, Any]] = field(default_factory=list)
    idle: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    servers: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    pg_version: str | None = None


@dataclass(frozen=True)
class Plan:
    """One server under test: a target, and for crdt-sync its backend (and database)."""

    target: str
    backend: str
    database_url: str | None = None

    @property
    def label(self) -> str:
        return f"{self.target} ({self.backend})"


def _kept_log(plan: Plan, out: Outcome) -> Path:
    return RESULTS / f"ws_rooms_server_{plan.target}_{plan.backend}_{len(out.servers) + 1}.log"


def _server_record(plan: Plan, exit_code: int | None, shutdown_s: float | None) -> dict[str, Any]:
    return {
        "target": plan.target,
        "backend": plan.backend,
        "exit_code": exit_code,
        "shutdown_s": shutdown_s,
    }


@asynccontextmanager
async def serving(plan: Plan, out: Outcome) -> AsyncIterator[Target]:
    """A fresh server of `plan` for one row; its exit code goes to `out.servers`."""
    if plan.target == CRDT_SYNC:
        async with serving_crdt_sync(plan, out) as target:
            yield target
        return
    started: list[peers.RunningPeer] = []
    try:
        # a peer's log is kept only when it exits with another status than 0
        with peers.start_peer(plan.target, keep_failed_log=_kept_log(plan, out)) as peer:
            started.append(peer)
            _log(f"{plan.label}: ready at {peer.base_url} (pid {peer.pid})")
            assert peer.protocol is not None
            yield Target(
                name=plan.target,
                backend=plan.backend,
                pid=peer.pid,
                url=peer.base_url,
                protocol=peer.protocol,
            )
    finally:
        for peer in started:  # stopped by now
            out.servers.append(_server_record(plan, peer.exit_code, peer.shutdown_s))
            if peer.exit_code != 0:
                out.servers[-1]["log"] = str(peer.kept_log)
                _log(f"{plan.label}: exited with {peer.exit_code} on SIGTERM ({peer.kept_log})")


@asynccontextmanager
async def serving_crdt_sync(plan: Plan, out: Outcome) -> AsyncIterator[Target]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"crdt-bench-ws-{plan.backend}-"))
    server = ServerProcess(data_dir=data_dir, database_url=plan.database_url)
    try:
        server.start()
        assert server.proc is not None
        _log(f"{plan.label}: server ready at {server.base_url} (pid {server.proc.pid})")
        yield Target.crdt_sync(server, plan.backend)
    finally:
        server.stop(grace=STOP_GRACE_S)
        out.servers.append(_server_record(plan, server.exit_code, server.shutdown_s))
        if server.exit_code not in (0, None):
            kept = _kept_log(plan, out)
            with contextlib.suppress(OSError):
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(server.log_path, kept)
            out.servers[-1]["log"] = str(kept)
            _log(f"{plan.label}: exited with {server.exit_code} after SIGTERM (log: {kept}):")
            _log(server.log_tail(20))
        shutil.rmtree(data_dir, ignore_errors=True)


def fanout_params(cfg: Config) -> list[FanoutParams]:
    rows: list[FanoutParams] = []
    for light, deflate, n in itertools.product(cfg.light, cfg.deflate, cfg.clients):
        if light and n <= FULL_CLIENTS and False in cfg.light:
            continue  # every client would be a stock one: the same as the stock row
        rows.append(
            FanoutParams(
                clients=n,
                duration=cfg.duration,
                warmup=cfg.warmup,
                rate=cfg.rate,
                clients_per_process=cfg.clients_per_process,
                deflate=deflate,
                light=light,
            )
        )
    return rows


def idle_params(cfg: Config) -> list[IdleParams]:
    return [
        IdleParams(
            count=count,
            rooms=min(cfg.idle_rooms, count),
            hold=cfg.hold,
            connect_concurrency=cfg.connect_concurrency,
            per_process=cfg.idle_per_process,
            awareness=awareness,
            deflate=deflate,
        )
        for awareness, deflate, count in itertools.product(cfg.awareness, cfg.deflate, cfg.idle)
    ]


ROW_ERRORS = (ServerError, PeerError, LoadError, OSError)


async def fanout_row(cfg: Config, plan: Plan, params: FanoutParams, out: Outcome) -> None:
    """One fresh server per row: a room that breaks cannot spoil the next row."""
    n = params.clients
    try:
        async with serving(plan, out) as target:
            hook = None
            if cfg.profile and plan.target == CRDT_SYNC and n == cfg.clients[-1]:
                hook = _profiler(target, n, params.deflate, params.light, out)
            row = await run_fanout(target, f"bench-{secrets.token_hex(4)}", params, on_window=hook)
    except ROW_ERRORS as exc:
        _failed(out, plan, f"fanout x{n}", exc)
        return
    row["server_exit_code"] = out.servers[-1]["exit_code"]
    row["server_shutdown_s"] = out.servers[-1]["shutdown_s"]
    out.fanout.append(row)
    _log(
        f"{plan.label} fanout x{n}: p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, "
        f"{row['deliveries_per_s']} deliveries/s, converged {row['converged']}, "
        f"server CPU {row['server_cpu_pct']}%, errors {row['errors']}"
    )


def _failed(out: Outcome, plan: Plan, workload: str, exc: BaseException) -> None:
    out.failures.append(
        {"target": plan.target, "backend": plan.backend, "workload": workload, "error": str(exc)}
    )
    _log(f"{plan.label} {workload}: FAILED: {exc}")


def _profiler(target: Target, clients: int, deflate: bool, light: bool, out: Outcome) -> Any:
    async def hook(seconds: float) -> None:
        variant = ("_light" if light else "") + ("" if deflate else "_nodeflate")
        path = RESULTS / f"ws_rooms_profile_{target.backend}_{clients}{variant}.txt"
        recorded = await ws_profile.record(target.pid, seconds, path)
        if recorded is not None:
            top = ws_profile.top_frames(recorded)
            out.profiles.append(
                {"backend": target.backend, "clients": clients, "deflate": deflate}
                | {"light": light, "raw": str(path)}
                | top
            )

    return hook


async def idle_row(plan: Plan, params: IdleParams, out: Outcome) -> None:
    count = params.count
    try:
        async with serving(plan, out) as target:
            row = await run_idle(target, f"bench-{secrets.token_hex(4)}", params)
    except ROW_ERRORS as exc:
        _failed(out, plan, f"idle x{count}", exc)
        return
    row["server_exit_code"] = out.servers[-1]["exit_code"]
    row["server_shutdown_s"] = out.servers[-1]["shutdown_s"]
    out.idle.append(row)
    _log(
        f"{plan.label} idle x{count}: {row['connected']} synced in {row['connect_s']} s "
        f"({row['conn_per_s']} conn/s), handshake p95 {row['handshake_p95_ms']} ms, "
        f"RSS {row['rss_before_mib']} -> {row['rss_after_mib']} MiB "
        f"({row['rss_per_conn_kib']} KiB/conn), errors {row['errors']}"
    )


def target_missing(name: str) -> str | None:
    """Why target `name` cannot run here (server or clients), or None when it can."""
    if name == CRDT_SYNC:
        try:
            server_process.find_cli()
        except ServerError as exc:
            return str(exc)
        return node_missing("y-websocket")
    protocol = PEERS[name].protocol
    return peers.peer_missing(name) or (node_missing(protocol) if protocol else None)


async def prepare(cfg: Config, out: Outcome, databases: list[str]) -> list[Plan]:
    """The servers to run, in order; targets that cannot run are skipped (or failed when named
    in --targets). PostgreSQL databases created for crdt-sync are added to `databases`."""
    plans: list[Plan] = []
    for name in cfg.targets:
        missing = target_missing(name)
        if missing:
            if cfg.targets_named:
                out.failures.append({"target": name, "workload": "", "error": missing})
                _log(f"error: {name} cannot run: {missing}")
            else:
                out.skipped.append({"target": name, "reason": missing})
                _log(f"note: skipping {name}: {missing}")
            continue
        if name != CRDT_SYNC:
            plans.append(Plan(name, PEER_BACKEND))
            continue
        for backend in cfg.backends:
            url: str | None = None
            if backend == "postgresql":
                # these helpers run their own event loop: keep them off this one
                out.pg_version = await asyncio.to_thread(server_process.pg_version)
                if out.pg_version is None:
                    reason = f"PostgreSQL not reachable at {server_process.PG_ADMIN_DSN}"
                    out.skipped.append({"target": name, "backend": backend, "reason": reason})
                    _log(f"note: skipping {name} on postgresql: {reason}")
                    continue
                db_name, url = await asyncio.to_thread(server_process.create_database)
                databases.append(db_name)
            plans.append(Plan(name, backend, url))
    return plans


def node_versions() -> dict[str, str | None]:
    """Node, and the client packages: y-websocket clients from tests/interop, Hocuspocus ones
    from bench/peers."""
    out: dict[str, str | None] = {}
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
        out["node"] = node.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["node"] = None
    wanted = [(MODULES_DIR, p) for p in ("yjs", "y-websocket", "ws")]
    wanted.append((PEER_MODULES_DIR, "@hocuspocus/provider"))
    for where, pkg in wanted:
        try:
            meta = json.loads((where / "node_modules" / pkg / "package.json").read_text())
            out[pkg] = str(meta["version"])
        except (OSError, ValueError, KeyError):
            out[pkg] = None
    return out


def peer_meta(cfg: Config) -> dict[str, Any]:
    return {
        name: {"about": PEERS[name].about, "versions": peers.peer_versions(name)}
        for name in cfg.targets
        if name in PEERS
    }


def build_result(
    cfg: Config, out: Outcome, started: datetime, load0: tuple[float, ...], nofile: Any
) -> dict[str, Any]:
    return {
        "meta": {
            **report.run_meta(cfg.command, started, load0, nofile, out.pg_version),
            "node": node_versions(),
            "peers": peer_meta(cfg),
            "params": {
                "targets": cfg.targets,
                "backends": cfg.backends,
                "workloads": cfg.workloads,
                "clients": cfg.clients,
                "duration": cfg.duration,
                "warmup": cfg.warmup,
                "rate": cfg.rate,
                "idle": cfg.idle,
                "idle_rooms": cfg.idle_rooms,
                "hold": cfg.hold,
                "connect_concurrency": cfg.connect_concurrency,
                "idle_awareness": cfg.awareness,
                "connect_deadline_s": CONNECT_DEADLINE_S,
                "client_deflate": cfg.deflate,
                "light_receivers": cfg.light,
                "idle_warm_clients": WARM_CLIENTS,
                "clients_per_process": cfg.clients_per_process,
                "idle_per_process": cfg.idle_per_process,
            },
            "servers": out.servers,
        },
        "fanout": out.fanout,
        "idle": out.idle,
        "profiles": out.profiles,
        "skipped": out.skipped,
        "failures": out.failures,
    }


async def _run(cfg: Config, out: Outcome) -> None:
    databases: list[str] = []
    try:
        plans = await prepare(cfg, out, databases)
        if "fanout" in cfg.workloads:
            for fp in fanout_params(cfg):
                for plan in plans:
                    await fanout_row(cfg, plan, fp, out)
        if "idle" in cfg.workloads:
            for ip in idle_params(cfg):
                for plan in plans:
                    await idle_row(plan, ip, out)
    finally:
        for db_name in databases:
            await asyncio.to_thread(server_process.drop_database, db_name)


def render(cfg: Config, result: dict[str, Any]) -> None:
    print(ws_report.markdown(result))
    for prof in result["profiles"]:
        print("\n" + ws_profile.markdown(prof))
    if cfg.write_docs:
        notes = cfg.notes.read_text() if cfg.notes else ""
        section = ws_report.docs_section(result, notes)
        report.update_docs(cfg.docs_path, section, ws_report.DOCS_BEGIN, ws_report.DOCS_END)
        print(f"docs: {cfg.docs_path}")


def exit_status(result: dict[str, Any]) -> int:
    """1 when something could not run, or a crdt-sync room did not converge or its connections
    failed. A peer that does not converge or connect is a measured finding, shown in its row;
    errors the clients saw (e.g. closes for a full send queue) are reported, not fatal."""

    def ours(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("target", "crdt-sync") == "crdt-sync"]

    broken = [r for r in ours(result["fanout"]) if not r["converged"]]
    broken += [r for r in ours(result["idle"]) if r["connected"] < r["connections"]]
    return 1 if result["failures"] or broken else 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    if cfg.render_only:
        result = json.loads(cfg.out.read_text())
        render(cfg, result)
        return exit_status(result)
    nofile = raise_nofile_limit(2 * max(cfg.idle, default=0) + 4096)
    started, load0 = datetime.now(UTC), os.getloadavg()
    out = Outcome()
    t0 = time.monotonic()
    asyncio.run(_run(cfg, out))
    result = build_result(cfg, out, started, load0, nofile)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2) + "\n")
    render(cfg, result)
    print(f"\nJSON: {cfg.out} ({time.monotonic() - t0:.0f} s)")
    return exit_status(result)


if __name__ == "__main__":
    sys.exit(main())
