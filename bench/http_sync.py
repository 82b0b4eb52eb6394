"""Load generator for the /sync/v1 HTTP endpoints (push, pull, ack) of a real crdt-sync server,
side by side with pouchdb-server (in memory) doing CouchDB's nearest equivalents.

    python -m bench.http_sync                       # crdt-sync (sqlite) vs pouchdb, 1/20 devices
    python -m bench.http_sync --smoke               # seconds: sqlite (+ pouchdb), 1/2 devices
    python -m bench.http_sync --targets crdt-sync   # crdt-sync alone: sqlite + postgresql, 1/10/50
    python -m bench.http_sync --backends sqlite,postgresql --concurrency 1,10 --write-docs
    python -m bench.http_sync --render --write-docs # redo the report/docs from the JSON

It starts `crdt-sync serve` itself (SQLite in a temporary data dir, or a fresh PostgreSQL
database that it drops afterwards) and pouchdb-server (bench/pouch.py; `npm ci` in
bench/peers), drives them from client worker processes (see `bench.sync_devices` and
`bench.pouch_devices`), prints Markdown tables (the targets side by side), writes JSON
(`bench/results/http_sync.json` or `--out`) and, with `--write-docs`, the http_sync section of
`docs/benchmarks.md`. Where node or the pouchdb packages are missing, pouchdb is skipped with
a note. Exit status 1 when a server could not be started or a workload could not be set up.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import jwt

from bench import pouch, pouch_devices, report, server_process
from bench.pouch import PouchError, PouchProcess
from bench.server_process import ServerError, ServerProcess
from bench.sync_devices import TARGETS, WORKLOADS, DeviceSpec, Settings, SetupError, worker_main

BACKENDS = ("sqlite", "postgresql")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "http_sync.json"
DEFAULT_DOCS = report.REPO / "docs" / "benchmarks.md"
FULL = {
    "targets": "crdt-sync,pouchdb",
    "backends": "sqlite,postgresql",
    "concurrency": "1,10,50",
    "duration": 10.0,
    "warmup": 2.0,
    "batch": 100,
    "pull_size": 500,
    "workloads": "push,pull,ack",
    "sync_workers": "0",
}
# With pouchdb among the targets (the default) the run is the peer comparison: these win.
COMPARE = {"backends": "sqlite", "concurrency": "1,20", "sync_workers": "0,2"}
SMOKE = {
    "targets": "crdt-sync,pouchdb",
    "backends": "sqlite",
    "concurrency": "1,2",
    "duration": 1.0,
    "warmup": 0.3,
    "batch": 10,
    "pull_size": 50,
    "workloads": "push,pull,ack",
    "workers": 2,
    "sync_workers": "0,1",
}
DEVICES_PER_WORKER = 25  # one Python client process saturates well before 50 busy devices


@dataclass(frozen=True)
class Config:
    targets: list[str]
    backends: list[str]
    concurrency: list[int]
    workloads: list[str]
    duration: float
    warmup: float
    batch: int
    pull_size: int
    workers: int
    out: Path
    write_docs: bool
    docs_path: Path
    command: str
    render_only: bool = False
    pouchdb_mode: str = "full"
    sync_workers: tuple[int, ...] = (0,)


def _csv(value: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if allowed is not None:
        bad = [v for v in items if v not in allowed]
        if bad:
            raise SystemExit(f"unknown value(s) {bad}; choose from {', '.join(allowed)}")
    return items


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(
        prog="python -m bench.http_sync", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--targets",
        help="comma list of crdt-sync,pouchdb (default both: the peer comparison, where "
        "--backends defaults to sqlite and --concurrency to 1,20)",
    )
    p.add_argument("--backends", help="crdt-sync's: comma list of sqlite,postgresql")
    p.add_argument(
        "--pouchdb-mode",
        choices=("full", "minimum"),
        default="full",
        help="express-pouchdb's parts: full (fullCouchDB, what the pouchdb-server CLI serves; "
        "default) or minimum (minimumForPouchDB: no auth/security/validation layers)",
    )
    p.add_argument(
        "--concurrency", help="comma list of device counts (default 1,20; crdt-sync alone 1,10,50)"
    )
    p.add_argument("--duration", type=float, help="measured seconds per cell (default 10)")
    p.add_argument("--warmup", type=float, help="warm-up seconds before each cell (default 2)")
    p.add_argument(
        "--workloads", help=f"comma list of {','.join(WORKLOADS)} (default push,pull,ack)"
    )
    p.add_argument("--batch", type=int, help="mutations per push (default 100)")
    p.add_argument("--pull-size", type=int, help="changes per measured pull (default 500)")
    p.add_argument("--workers", type=int, help="client processes (default: 1 per 25 devices)")
    p.add_argument(
        "--sync-workers",
        help="comma list: each crdt-sync server runs once per value, as `crdt-sync serve "
        "--sync-workers N` (default 0; 0,2 in the peer comparison)",
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny run: sqlite (+ pouchdb), 1 and 2 devices, 1 s"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    p.add_argument("--docs-path", type=Path, default=DEFAULT_DOCS, help=argparse.SUPPRESS)
    p.add_argument(
        "--render",
        action="store_true",
        help="run nothing: print (and with --write-docs write) the report of the JSON at --out",
    )
    a = p.parse_args(argv)
    preset: dict[str, Any] = dict(SMOKE if a.smoke else FULL)
    targets = _csv(a.targets or preset["targets"], TARGETS)
    if not targets:
        raise SystemExit("--targets needs at least one of " + ", ".join(TARGETS))
    if "pouchdb" in targets and not a.smoke:
        preset.update(COMPARE)

    def pick(name: str) -> Any:
        value = getattr(a, name)
        return preset.get(name) if value is None else value

    concurrency = sorted({int(c) for c in _csv(pick("concurrency"))})
    if not concurrency or concurrency[0] < 1:
        raise SystemExit("--concurrency needs positive device counts")
    batch, pull_size = int(pick("batch")), int(pick("pull_size"))
    if not 1 <= batch <= 500 or not 1 <= pull_size <= 1000:
        raise SystemExit("--batch must be 1..500 (contract limit), --pull-size 1..1000")
    if float(pick("duration")) <= 0 or float(pick("warmup")) < 0:
        raise SystemExit("--duration must be > 0 and --warmup >= 0")
    workers = pick("workers") or max(1, math.ceil(concurrency[-1] / DEVICES_PER_WORKER))
    sync_workers = tuple(sorted({int(w) for w in _csv(pick("sync_workers"))}))
    if not sync_workers or sync_workers[0] < 0:
        raise SystemExit("--sync-workers needs whole numbers >= 0")
    return Config(
        targets=targets,
        backends=_csv(pick("backends"), BACKENDS),
        concurrency=concurrency,
        workloads=_csv(pick("workloads"), WORKLOADS),
        duration=float(pick("duration")),
        warmup=float(pick("warmup")),
        batch=batch,
        pull_size=pull_size,
        workers=min(int(workers), concurrency[-1]),
        out=a.out,
        write_docs=a.write_docs,
        docs_path=a.docs_path,
        command=shlex.join(["python", "-m", "bench.http_sync", *argv]),
        render_only=a.render,
        pouchdb_mode=a.pouchdb_mode,
        sync_workers=sync_workers,
    )


class Measured(Protocol):
    """A server under test, as the cells measure it (ServerProcess, PouchProcess)."""

    def cpu_seconds(self) -> float: ...


class WorkerError(Exception):
    """A client worker process failed a command (its message says why)."""


class WorkerPool:
    """Client processes, each with its own event loop; device k lives in worker k % n."""

    def __init__(self, n: int, settings: Settings) -> None:
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

    def _gather(self, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        answers: list[Any] = []
        errors: list[Any] = []
        for i, conn in enumerate(self.conns):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerError(f"client worker {i} did not answer within {timeout:.0f} s")
            try:
                status, payload = conn.recv()
            except EOFError:
                raise WorkerError(f"client worker {i} died") from None
            (answers if status == "ok" else errors).append(payload)
        if errors:
            raise WorkerError("; ".join(sorted(set(map(str, errors)))))
        return answers

    def setup(
        self, workload: str, specs: list[DeviceSpec], extra: Any = None, timeout: float = 900.0
    ) -> None:
        n = len(self.conns)
        for i, conn in enumerate(self.conns):
            conn.send(("setup", workload, [s for s in specs if s.index % n == i], extra))
        self._gather(timeout)

    def run(
        self, workload: str, active: int, warmup: float, duration: float, server: Measured
    ) -> tuple[list[dict[str, Any]], float, float]:
        """One cell; returns (worker stats, server CPU s, machine busy %) over the window."""
        start_at = time.time() + 0.3
        for conn in self.conns:
            conn.send(("run", workload, active, start_at, warmup, duration))
        time.sleep(max(0.0, start_at + warmup - time.time()))
        cpu0, (busy0, total0) = server.cpu_seconds(), server_process.machine_cpu_ticks()
        time.sleep(max(0.0, start_at + warmup + duration - time.time()))
        cpu1, (busy1, total1) = server.cpu_seconds(), server_process.machine_cpu_ticks()
        stats = self._gather(warmup + duration + 120.0)
        busy_pct = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
        return stats, cpu1 - cpu0, busy_pct

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def user_token(secret: str, tenant: str, user: str) -> str:
    claims = {"sub": user, "tid": tenant, "roles": ["learner"], "exp": int(time.time()) + 86400}
    return jwt.encode(claims, secret, algorithm="HS256")


def device_specs(secret: str | None, tenant: str, workload: str, count: int) -> list[DeviceSpec]:
    """`count` devices, each its own user of `tenant`; no user token without a secret."""
    return [
        DeviceSpec(
            index=k,
            tenant=tenant,
            user_id=f"{workload}-user-{k}",
            device_id=f"{workload}-dev-{k}",
            user_token=user_token(secret, tenant, f"{workload}-user-{k}") if secret else "",
        )
        for k in range(count)
    ]


_log = report.log


@dataclass
class Outcome:
    rows: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    servers: list[dict[str, Any]]
    pg_version: str | None = None
    loadavg_at_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    peer_versions: dict[str, str | None] | None = None


POUCH_BACKEND = "memory"  # pouchdb-server's storage in these runs (the memory adapter)


def run_workloads(
    cfg: Config, target: str, backend: str, server: ServerProcess | PouchProcess, out: Outcome
) -> None:
    settings = Settings(
        base_url=server.base_url, batch=cfg.batch, pull_size=cfg.pull_size, target=target
    )
    secret = server.jwt_secret if isinstance(server, ServerProcess) else None
    pool = WorkerPool(cfg.workers, settings)
    tenant = f"bench-{secrets.token_hex(4)}"
    name = f"{target} {backend}"
    try:
        for workload in cfg.workloads:
            where = {"target": target, "backend": backend, "endpoint": workload}
            if target == "pouchdb" and not pouch_devices.supports(workload):
                reason = f"pouchdb has no equivalent of {workload}"
                out.skipped.append(where | {"reason": reason})
                _log(f"{name} {workload}: skipped ({reason})")
                continue
            specs = device_specs(secret, tenant, workload, cfg.concurrency[-1])
            t0 = time.monotonic()
            try:
                extra = None
                if target == "pouchdb":
                    extra = pouch_devices.prepare(
                        server.base_url, workload, cfg.concurrency[-1], settings
                    )
                pool.setup(workload, specs, extra)
            except (WorkerError, SetupError) as exc:
                out.failures.append(where | {"error": str(exc)})
                _log(f"{name} {workload}: setup FAILED: {exc}")
                continue
            took = time.monotonic() - t0
            _log(f"{name} {workload}: {len(specs)} devices set up in {took:.1f} s")
            for n in cfg.concurrency:
                stats, server_cpu, busy = pool.run(workload, n, cfg.warmup, cfg.duration, server)
                row = report.summarize_cell(
                    backend, workload, n, stats, cfg.duration, server_cpu, busy, target=target
                )
                out.rows.append(row)
                _log(
                    f"{name} {workload} x{n}: {row['rps']} req/s, p50 {row['p50_ms']} ms, "
                    f"p95 {row['p95_ms']} ms, errors {row['errors']} {row['error_codes'] or ''}"
                )
    finally:
        pool.close()


def backend_label(backend: str, sync_workers: int) -> str:
    """How a crdt-sync configuration is named in the results: `sqlite`, `sqlite+2w`."""
    return backend if sync_workers == 0 else f"{backend}+{sync_workers}w"


def run_backend(cfg: Config, backend: str, out: Outcome, sync_workers: int = 0) -> None:
    db_name: str | None = None
    database_url: str | None = None
    if backend == "postgresql":
        out.pg_version = server_process.pg_version()
        if out.pg_version is None:
            reason = f"PostgreSQL not reachable at {server_process.PG_ADMIN_DSN}"
            print(f"note: skipping postgresql: {reason}", flush=True)
            out.skipped.append({"target": "crdt-sync", "backend": backend, "reason": reason})
            return
        db_name, database_url = server_process.create_database()
    data_dir = Path(tempfile.mkdtemp(prefix=f"crdt-bench-{backend}-"))
    server = ServerProcess(data_dir=data_dir, database_url=database_url, sync_workers=sync_workers)
    label = backend_label(backend, sync_workers)
    try:
        server.start()
        _log(f"{label}: server ready at {server.base_url} (pid {server.proc and server.proc.pid})")
        run_workloads(cfg, "crdt-sync", label, server, out)
    except (ServerError, WorkerError) as exc:
        out.failures.append({"target": "crdt-sync", "backend": label, "error": str(exc)})
        _log(f"{label}: FAILED: {exc}")
    finally:
        server.stop()
        info = {
            "target": "crdt-sync",
            "backend": label,
            "exit_code": server.exit_code,
            "shutdown_s": server.shutdown_s,
        }
        out.servers.append(info)
        if server.exit_code not in (0, None):
            _log(f"{label}: server exited with {server.exit_code} after SIGTERM:")
            _log(server.log_tail(20))
        shutil.rmtree(data_dir, ignore_errors=True)
        if db_name:
            server_process.drop_database(db_name)


def run_pouchdb(cfg: Config, out: Outcome) -> None:
    where = {"target": "pouchdb", "backend": POUCH_BACKEND}
    missing = pouch.pouch_missing()
    if missing:
        print(f"note: skipping pouchdb: {missing}", flush=True)
        out.skipped.append(where | {"reason": missing})
        return
    out.peer_versions = pouch.versions()
    peer = PouchProcess(mode=cfg.pouchdb_mode)
    try:
        peer.start()
        _log(f"pouchdb: ready at {peer.base_url} (pid {peer.pid})")
        run_workloads(cfg, "pouchdb", POUCH_BACKEND, peer, out)
    except (PouchError, WorkerError) as exc:
        out.failures.append(where | {"error": str(exc)})
        _log(f"pouchdb: FAILED: {exc}")
    finally:
        peer.stop()
        out.servers.append(where | {"exit_code": peer.exit_code, "shutdown_s": peer.shutdown_s})
        if peer.exit_code not in (0, None):
            _log(f"pouchdb: exited with {peer.exit_code} after SIGTERM:\n{peer.log_tail(20)}")
        peer.cleanup()


def build_report(cfg: Config, out: Outcome, started: datetime) -> dict[str, Any]:
    return {
        "meta": {
            "started_at": report.stamp(started),
            "finished_at": report.stamp(datetime.now(UTC)),
            "command": cfg.command,
            "commit": report.git_commit(),
            "machine": report.machine_info(),
            "postgresql_version": out.pg_version,
            "peers": {"pouchdb": out.peer_versions} if out.peer_versions else {},
            "loadavg_at_start": out.loadavg_at_start,
            "params": {
                "targets": cfg.targets,
                "pouchdb_mode": cfg.pouchdb_mode,
                "backends": cfg.backends,
                "concurrency": cfg.concurrency,
                "workloads": cfg.workloads,
                "duration": cfg.duration,
                "warmup": cfg.warmup,
                "batch": cfg.batch,
                "pull_size": cfg.pull_size,
                "workers": cfg.workers,
                "sync_workers": list(cfg.sync_workers),
            },
            "servers": out.servers,
        },
        "results": out.rows,
        "saturation": report.saturation(out.rows),
        "skipped": out.skipped,
        "failures": out.failures,
    }


def render(cfg: Config, result: dict[str, Any]) -> None:
    print(report.markdown_tables(result))
    if cfg.write_docs:
        report.update_docs(cfg.docs_path, report.docs_section(result))
        print(f"docs: {cfg.docs_path}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    if cfg.render_only:
        result = json.loads(cfg.out.read_text())
        render(cfg, result)
        return 1 if result["failures"] else 0
    started = datetime.now(UTC)
    out = Outcome(rows=[], skipped=[], failures=[], servers=[], loadavg_at_start=os.getloadavg())
    if "crdt-sync" in cfg.targets:
        try:
            server_process.find_cli()
        except ServerError as exc:
            _log(f"error: {exc}")
            return 1
        for backend in cfg.backends:
            for sync_workers in cfg.sync_workers:
                run_backend(cfg, backend, out, sync_workers)
    if "pouchdb" in cfg.targets:
        run_pouchdb(cfg, out)
    result = build_report(cfg, out, started)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2) + "\n")
    render(cfg, result)
    print(f"\nJSON: {cfg.out}")
    return 1 if out.failures else 0


if __name__ == "__main__":
    sys.exit(main())
